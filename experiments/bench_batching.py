"""Throughput and padding of the length-grouped batch pipeline on a multilingual corpus.

    .venv/bin/python experiments/bench_batching.py [--corpus ../shared/data/corpus] [--seconds 2] [--num-threads 2]

Binarises every line of the corpus folder (`<lang>.txt`; default the shared 15-language corpus when present,
else the embedded one) with the mBERT cased vocabulary through `distil prepare`'s code path (long lines split,
short ones dropped) at max_length 128 and 512; then, for global batch 32 and 256, with and without length grouping,
reads batches through `iter_from_step` (grain, single process, crossing epochs) for `--seconds`, and prints a
Markdown table: batches/s, real tokens/s (attention_mask == 1), padded positions/s (L * rows), and the padding
fraction of epoch 0 (from the plan) with L rounded up to a multiple of 8, as the pipeline pads, and with
L = longest.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np

from distil.data import batching
from distil.data.binarize import open_binarized, prepare
from distil.data.embedded import embedded_corpus_dir

SHARED_CORPUS = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "corpus"


def measure(source: batching.GroupedBatchSource, seconds: float, num_threads: int) -> dict[str, float]:
    iterator = batching.iter_from_step(source, num_threads=num_threads, prefetch_buffer_size=16)
    num_batches = real_tokens = positions = 0
    start = time.perf_counter()
    for batch in iterator:
        num_batches += 1
        real_tokens += int(batch["attention_mask"].sum())
        positions += batch["input_ids"].size
        if time.perf_counter() - start > seconds:
            break
    elapsed = time.perf_counter() - start
    return {
        "batches": num_batches,
        "batches_per_s": num_batches / elapsed,
        "tokens_per_s": real_tokens / elapsed,
        "positions_per_s": positions / elapsed,
        "padding": epoch_padding(source, source.pad_to_multiple),
        "padding_exact": epoch_padding(source, 1),
    }


def epoch_padding(source: batching.GroupedBatchSource, pad_to_multiple: int) -> float:
    """Padding fraction of epoch 0, from the plan and the lengths alone (no tokens read)."""
    positions = real = 0
    for step in range(source.batches_per_epoch):
        lengths = source.lengths[source.global_rows(step)[:, 0]]
        length = batching.padded_length(
            lengths.max(), pad_to_multiple=pad_to_multiple, max_length=source.max_length,
            fixed_length=source.fixed_length,
        )
        positions += length * len(lengths)
        real += int(lengths.sum())
    return 1.0 - real / positions


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--corpus", type=Path,
                        default=SHARED_CORPUS if SHARED_CORPUS.is_dir() else embedded_corpus_dir())
    parser.add_argument("--seconds", type=float, default=2.0, help="seconds timed per configuration")
    parser.add_argument("--num-threads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    workdir = Path(tempfile.mkdtemp(prefix="bench_batching-"))
    datasets = {}
    for max_length in (128, 512):
        start = time.perf_counter()
        summary = prepare(args.corpus, workdir / str(max_length), max_length=max_length, progress=False)
        datasets[max_length] = open_binarized(workdir / str(max_length))
        print(f"binarised {args.corpus} at max_length {max_length} in {time.perf_counter() - start:.1f}s: "
              f"{summary.sequences} sequences, median length {int(np.median(datasets[max_length].lengths))}")
    print()
    print("| global batch | max_length | grouped | batches timed | batches/s | tokens/s | padded positions/s "
          "| padding (L to multiple of 8) | padding (L = longest) |")
    print("|---:|---:|:---:|---:|---:|---:|---:|---:|---:|")
    for max_length in (128, 512):
        data = datasets[max_length]
        for global_batch in (32, 256):
            for grouped in (True, False):
                source = batching.GroupedBatchSource(
                    data, global_batch=global_batch, max_length=max_length, seed=args.seed,
                    group_by_length=grouped, process_index=0, process_count=1,
                )
                result = measure(source, args.seconds, args.num_threads)
                print(f"| {global_batch} | {max_length} | {'yes' if grouped else 'no'} | {result['batches']} "
                      f"| {result['batches_per_s']:,.0f} | {result['tokens_per_s']:,.0f} "
                      f"| {result['positions_per_s']:,.0f} | {result['padding']:.3f} | {result['padding_exact']:.3f} |")


if __name__ == "__main__":
    main()
