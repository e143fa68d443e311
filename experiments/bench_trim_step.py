"""Step time of a trimmed student beside the untrimmed one at the runlocal size (the README's comparison).

    .venv/bin/python experiments/bench_trim_step.py [--steps 30] [--languages en,fr,de] [--rounds 2]

Each variant is the same `distil distill --config distilmbert:runlocal...` command on the same data (the embedded
corpus in `--languages`), logging every step; rounds alternate the variants so that a shared machine's load hits
both alike. The step time is the median over steps after the first few (compilations of the padded lengths and the
checkpoint fall outside the median). Variants:
  untrimmed  mBERT's 119,547-token vocabulary (`--config.tokenizer=`) and `data.languages` set to the same languages
  trimmed    `distilmbert:runlocal,languages=...`: the same teacher trimmed to the tokens of those languages
  8k         the plain runlocal recipe (its 8,000-token WordPiece of the embedded corpus), for reference
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path


def variants(languages: str) -> dict[str, list[str]]:
    as_tuple = "(" + "".join(f"'{language}'," for language in languages.split(",")) + ")"
    return {
        "untrimmed": ["--config", "distilmbert:runlocal", "--config.tokenizer=", f"--config.data.languages={as_tuple}"],
        "trimmed": ["--config", f"distilmbert:runlocal,languages={languages}"],
        "8k": ["--config", "distilmbert:runlocal", f"--config.data.languages={as_tuple}"],
    }


def run(name: str, arguments: list[str], steps: int, workdir: Path) -> dict:
    shutil.rmtree(workdir, ignore_errors=True)
    command = [sys.executable, "-m", "distil", "distill", *arguments, "--workdir", str(workdir),
               f"--config.num_steps={steps}", "--config.log_every_steps=1", "--config.checkpoint.every_steps=1000"]
    started = time.perf_counter()
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL, env={**os.environ})
    rows = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
    summary = json.loads((workdir / "summary.json").read_text())
    step_seconds = [1 / row["steps_per_sec"] for row in rows[5:]]
    return {"variant": name, "vocab_size": summary["student"]["vocab_size"],
            "median_step_s": statistics.median(step_seconds), "wall_s": time.perf_counter() - started,
            "peak_mib": max(a.get("peak_bytes", 0) for a in summary["step_analysis"].values()) / 2**20}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--languages", default="en,fr,de")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--only", default="untrimmed,trimmed,8k")
    parser.add_argument("--out", default="runs/bench_trim")
    args = parser.parse_args()
    chosen = {name: arguments for name, arguments in variants(args.languages).items() if name in args.only.split(",")}
    results = []
    for round_number in range(args.rounds):
        for name, arguments in chosen.items():
            result = run(name, arguments, args.steps, Path(args.out) / name)
            results.append({**result, "round": round_number})
            print(json.dumps(result), flush=True)
    print("\n| variant | vocabulary | median step (s), per round | step peak memory per device |")
    print("|---|---|---|---|")
    for name in chosen:
        mine = [r for r in results if r["variant"] == name]
        medians = ", ".join(f"{r['median_step_s']:.3f}" for r in mine)
        print(f"| {name} | {mine[0]['vocab_size']:,} | {medians} | {mine[0]['peak_mib']:,.0f} MiB |")


if __name__ == "__main__":
    main()
