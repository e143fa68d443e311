"""Issue 13, precision: the teacher's forward in bfloat16 while the student trains in float32, and everything in
bfloat16 compute, against float32 throughout: the effect on the loss over a short real run, and on speed.

    python experiments/bench_precision.py [--config distilmbert:runlocal] [--steps 60] [--out precision.json]
    distil bench precision --out precision.json

A random teacher predicts a nearly uniform distribution, which no precision can get wrong, so by default a teacher
is first trained: `--pretrain-steps` of MLM pre-training of a 4-layer, 128-wide BERT on the embedded corpus (the
trainer with `teacher.source=none`), exported as a Hugging Face folder (`--teacher FOLDER` uses a given one, e.g.
bert-base-multilingual-cased with `--config distilmbert`). Each variant is then one `distil distill` run from it
(the real trainer: embedded corpus, masking, accumulation, AdamW, student from teacher layers 0 and 3) in a fresh
process with the same seed, data and initialisation, differing only in `teacher.dtype` / `student.dtype`
(parameters and optimizer state stay float32; losses run in float32). The table compares each term's mean over
the last `--tail` logged steps and its largest per-step deviation from the float32 run, and the median logged
tokens/s. bench_step.py's `teacher-bf16` / `all-bf16` variants give the full-size speed and first-step loss.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import benchlib  # noqa: E402

VARIANTS = {"float32": ("float32", "float32"), "teacher bf16": ("bfloat16", "float32"),
            "all bf16": ("bfloat16", "bfloat16")}
TERMS = ("loss", "ce", "mlm", "cos")


PRETRAIN = ["teacher.source=none", "student.init=random", "student.family=bert", "student.hidden_size=128",
            "student.num_hidden_layers=4", "student.num_attention_heads=4", "student.intermediate_size=512",
            "loss.alpha_ce=0", "loss.alpha_cos=0", "optimizer.learning_rate=1e-3"]


def distill(config: str, workdir: Path, overrides: list[str]) -> list[dict]:
    command = [sys.executable, "-m", "distil", "distill", "--config", config, "--workdir", str(workdir),
               *(f"--config.{o}" for o in overrides)]
    done = subprocess.run(command, env=benchlib.worker_env(1), capture_output=True, text=True)
    if done.returncode:
        raise RuntimeError(f"{' '.join(command)} failed:\n{(done.stdout + done.stderr)[-3000:]}")
    return [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines() if line.strip()]


def run(config: str, workdir: Path, teacher: str, teacher_dtype: str, student_dtype: str, steps: int,
        chunk: int) -> list[dict]:
    return distill(config, workdir, [
        "teacher.source=checkpoint", f"teacher.checkpoint={teacher}", f"teacher.dtype={teacher_dtype}",
        f"student.dtype={student_dtype}", f"num_steps={steps}", f"loss.vocab_chunk_size={chunk}",
        "log_every_steps=1", f"checkpoint.every_steps={steps}", "checkpoint.async_save=False"])


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", default="distilmbert:runlocal")
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--tail", type=int, default=20, help="steps averaged at the end of the run")
    parser.add_argument("--chunk", type=int, default=512, help="loss.vocab_chunk_size")
    parser.add_argument("--teacher", help="a Hugging Face BERT MLM folder (default: pre-train one first)")
    parser.add_argument("--pretrain-steps", type=int, default=300)
    parser.add_argument("--out")
    benchlib.add_environment_flag(parser)
    args = parser.parse_args(argv)

    machine = benchlib.machine()
    machine["environment"] = benchlib.use_environment(args)
    runs = {}
    pretrained = None
    with tempfile.TemporaryDirectory(prefix="bench_precision-") as tmp:
        teacher = args.teacher
        if teacher is None:
            print(f"pre-training a teacher for {args.pretrain_steps} steps ...", flush=True)
            pretrained = distill(args.config, Path(tmp) / "teacher", [
                *PRETRAIN, f"num_steps={args.pretrain_steps}", f"log_every_steps={args.pretrain_steps // 10}",
                f"checkpoint.every_steps={args.pretrain_steps}", "checkpoint.async_save=False"])
            teacher = str(Path(tmp) / "teacher" / "student")
            print(f"  teacher MLM loss {pretrained[0]['mlm']:.3f} -> {pretrained[-1]['mlm']:.3f}", flush=True)
        for name, (teacher_dtype, student_dtype) in VARIANTS.items():
            print(f"{name} ...", flush=True)
            runs[name] = run(args.config, Path(tmp) / name.replace(" ", "_"), teacher, teacher_dtype, student_dtype,
                             args.steps, args.chunk)
    reference = runs["float32"]
    rows, summary = [], {}
    for name, metrics in runs.items():
        tail = metrics[-args.tail:]
        means = {term: statistics.fmean(row[term] for row in tail) for term in TERMS}
        deviation = {term: max(abs(row[term] - ref[term]) / abs(ref[term]) for row, ref in zip(metrics, reference))
                     for term in TERMS}
        speed = statistics.median(row["tokens_per_sec"] for row in metrics[2:])
        summary[name] = {"tail_means": means, "max_relative_deviation": deviation, "tokens_per_sec": speed}
        rows.append([name, *(f"{means[t]:.4f}" for t in TERMS),
                     *(f"{100 * deviation[t]:.2f}%" for t in ("loss", "ce", "mlm")), f"{speed:,.0f}",
                     f"{speed / summary['float32']['tokens_per_sec']:.2f}x"])
    table = benchlib.markdown_table(
        ["compute (teacher / student)", *(f"{t} (last {args.tail})" for t in TERMS), "max dev. loss", "max dev. ce",
         "max dev. mlm", "tokens/s", "x float32"], rows)
    source = (f"a teacher pre-trained for {args.pretrain_steps} MLM steps (MLM loss {pretrained[0]['mlm']:.2f} -> "
              f"{pretrained[-1]['mlm']:.2f})" if pretrained else f"teacher {args.teacher}")
    print(f"\n### Precision, `{args.config}`, {args.steps} steps from {source} (chunked vocabulary losses, chunk "
          f"{args.chunk})\n")
    print(table)
    print(f"\nmax dev.: the largest |x - x_float32| / |x_float32| over the run's steps. Machine {machine['cpu']}, "
          f"{machine['cores']} cores, load {machine['load_average']}.")
    benchlib.write_json(args.out, {"machine": machine, "config": args.config, "steps": args.steps,
                                   "summary": summary, "metrics": runs, "pretraining": pretrained,
                                   "markdown": table})


if __name__ == "__main__":
    main()
