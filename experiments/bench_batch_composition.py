"""How an optimizer update is composed at recipe scale: real tokens per update, their spread, and padding.

    .venv/bin/python experiments/bench_batch_composition.py [--tile 100] [--steps 20] [--out runs/bench_composition]

The embedded 15-language corpus binarised with the mBERT vocabulary at max length 512 (3,596 sequences) is tiled
`--tile` times (359,600 sequences, as in issue 11). For the recipe's update (2,000 sequences of <= 512 tokens on
8 GPUs; 16 GPUs double it) it
plans epoch 0 three ways (`distil.data.batching.epoch_rows`) and prints, per update: real tokens (min, max,
coefficient of variation), how many length bins a micro-batch / update draws from, and the padding fraction:

  grouped-per-update  2,000 sequences grouped as one batch (distil before issue 11): one length bin per update;
  reference           8 GPUs x 50 accumulation steps x 5 sequences, each micro-batch of 5 grouped, each padded to
                      its own longest (what HF's distillation code does; not a shape XLA can compile once);
  grouped-per-micro   micro-batches of 40 grouped sequences (50 per update) in distil's one jitted step, the update
                      padded to its longest micro-batch;
  packed              160 rows of 512 tokens, sequences packed (segment ids, block-diagonal attention).

Then it runs the `distilmbert:runlocal` trainer for `--steps` steps with each composition and reports its steps/s
and real tokens/s over the run (small model, embedded corpus at max length 128; the same machine, one after the
other). These include compiling the step for every new padded length a composition produces: packing has one.
Writes `composition.json` and `composition.md` to `--out`.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np

from distil.data import batching
from distil.data.binarize import open_binarized, prepare
from distil.data.embedded import embedded_corpus_dir

MAX_LENGTH = 512


def update_stats(lengths: np.ndarray, plan: np.ndarray, micro_batches: int, pad: str) -> dict:
    """plan: [updates, rows, segments]. pad: 'update' (one L per update) or 'micro' (one L per micro-batch)."""
    row_lengths = np.where(plan >= 0, lengths[np.maximum(plan, 0)], 0).sum(-1)  # [updates, rows]
    real = row_lengths.sum(1)
    by_micro = row_lengths.reshape(len(plan), micro_batches, -1)
    longest = by_micro.max(-1) if pad == "micro" else np.broadcast_to(row_lengths.max(1)[:, None], by_micro.shape[:2])
    padded_length = np.minimum(-(-longest // 8) * 8, MAX_LENGTH)  # rounded up to 8, as the pipeline pads
    positions = (padded_length * by_micro.shape[-1]).sum(1)
    groups = batching.length_groups(lengths, MAX_LENGTH)
    first = plan[:, :, 0]
    bins_per_micro = np.mean([len(set(groups[m[m >= 0]])) for u in first.reshape(len(plan), micro_batches, -1)
                              for m in u])
    return {
        "updates": int(len(plan)),
        "sequences_per_update": float((plan >= 0).sum((1, 2)).mean()),
        "real_tokens_min": int(real.min()), "real_tokens_max": int(real.max()),
        "real_tokens_mean": float(real.mean()), "real_tokens_cv": float(real.std() / real.mean()),
        "bins_per_update": float(np.mean([len(set(groups[u[u >= 0]])) for u in first])),
        "bins_per_micro_batch": float(bins_per_micro),
        "padding": float(1 - real.sum() / positions.sum()),
    }


def trainer_speed(composition: str, steps: int, workdir: Path) -> dict:
    from distil.config import load_config
    from distil.train.distill import train_and_evaluate
    from distil.train.metrics import read_metrics

    overrides = [f"num_steps={steps}", f"log_every_steps={steps}", "checkpoint.every_steps=1000",
                 f"batching.composition={composition}"]
    if composition == "packed":  # rows of 128 hold ~3 sequences: 8 rows ~ the 32 sequences of the other two
        overrides += ["batching.global_batch=8", "masking.group_size=2", "batching.pad_to_multiple=128"]
    started = time.perf_counter()
    train_and_evaluate(load_config("distilmbert:runlocal", overrides), workdir)
    last = read_metrics(workdir / "metrics.jsonl")[-1]
    return {"steps_per_sec": last["steps_per_sec"], "tokens_per_sec": last["tokens_per_sec"],
            "padding_fraction": last["padding_fraction"], "seconds": time.perf_counter() - started}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tile", type=int, default=100)
    parser.add_argument("--steps", type=int, default=20, help="trainer steps per composition (0 skips them)")
    parser.add_argument("--out", default="runs/bench_composition")
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)

    with tempfile.TemporaryDirectory() as tmp:
        prepare(embedded_corpus_dir(), Path(tmp) / "data", max_length=MAX_LENGTH, num_workers=0, progress=False)
        lengths = np.tile(np.asarray(open_binarized(Path(tmp) / "data").lengths), args.tile)
    print(f"{len(lengths):,} sequences (embedded corpus x {args.tile}), mean {lengths.mean():.1f} tokens")

    plans = {
        "grouped-per-update": (batching.epoch_rows(lengths, composition="update", global_batch=2000, micro_batches=1,
                                                   seed=0, epoch=0, max_length=MAX_LENGTH, drop_remainder=True),
                               1, "update"),
        "reference": (batching.epoch_rows(lengths, composition="micro_batch", global_batch=2000, micro_batches=400,
                                          seed=0, epoch=0, max_length=MAX_LENGTH, drop_remainder=True), 400, "micro"),
        "grouped-per-micro": (batching.epoch_rows(lengths, composition="micro_batch", global_batch=2000,
                                                  micro_batches=50, seed=0, epoch=0, max_length=MAX_LENGTH,
                                                  drop_remainder=True), 50, "update"),
        "packed": (batching.epoch_rows(lengths, composition="packed", global_batch=160, micro_batches=10, seed=0,
                                       epoch=0, max_length=MAX_LENGTH, drop_remainder=True), 10, "update"),
    }
    results = {name: update_stats(lengths, plan, micro, pad) for name, (plan, micro, pad) in plans.items()}
    if args.steps:
        for name, composition in (("grouped-per-update", "update"), ("grouped-per-micro", "micro_batch"),
                                  ("packed", "packed")):
            with tempfile.TemporaryDirectory() as tmp:
                results[name]["runlocal"] = trainer_speed(composition, args.steps, Path(tmp))

    lines = ["| update | seq/update | real tokens min | max | CV | bins/update | bins/micro-batch | padding | "
             "runlocal steps/s | runlocal tokens/s |", "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for name, r in results.items():
        speed = r.get("runlocal")
        steps_per_sec = f"{speed['steps_per_sec']:.2f}" if speed else "-"
        tokens_per_sec = f"{speed['tokens_per_sec']:,.0f}" if speed else "-"
        lines.append(
            f"| {name} | {r['sequences_per_update']:,.0f} | {r['real_tokens_min']:,} | {r['real_tokens_max']:,} | "
            f"{r['real_tokens_cv']:.3f} | {r['bins_per_update']:.1f} | {r['bins_per_micro_batch']:.1f} | "
            f"{r['padding']:.1%} | {steps_per_sec} | {tokens_per_sec} |")
    table = "\n".join(lines)
    print(table)
    (out / "composition.json").write_text(json.dumps(results, indent=2) + "\n")
    (out / "composition.md").write_text(table + "\n")


if __name__ == "__main__":
    main()
