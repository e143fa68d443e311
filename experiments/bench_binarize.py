"""Throughput of `distil.data.binarize` on the shared multilingual corpus: tokens/s and lines/s per worker count.

    .venv/bin/python experiments/bench_binarize.py [--corpus ../shared/data/corpus] [--workers 0 1 2]

`workers=0` tokenises in the main process with the tokenizers library's own threads; N >= 1 uses N spawned,
single-threaded processes. Wall time covers the whole call (tokenizer load, process start, writing shards and
counts), i.e. what a user waits for; the best of `--repeats` runs is reported.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

from distil.data import binarize, text

REPO = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--corpus", type=Path, default=REPO.parent / "shared" / "data" / "corpus")
    parser.add_argument("--vocab", type=Path, default=REPO.parent / "shared" / "data" / "mbert-cased" / "vocab.txt")
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--max-length", type=int, default=512)
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()

    sources = text.language_files(args.corpus)
    lines = list(text.tag_languages(sources))  # read once, so the timing is tokenisation, not file reading
    print(f"corpus {args.corpus}: {len(sources)} languages, {len(lines):,} lines, "
          f"{sum(len(line) for _, line in lines):,} characters; {os.cpu_count()} CPUs")
    print(f"| workers | seconds | lines/s | tokens/s | sequences | kept tokens |")
    print(f"|---:|---:|---:|---:|---:|---:|")
    for workers in args.workers:
        best = None
        for _ in range(args.repeats):
            with tempfile.TemporaryDirectory() as out_dir:
                started = time.perf_counter()
                summary = binarize.binarize(lines, args.vocab, out_dir, max_length=args.max_length,
                                            num_workers=workers, shard_size=20_000, progress=False)
                seconds = time.perf_counter() - started
            if best is None or seconds < best[0]:
                best = (seconds, summary)
        seconds, summary = best
        print(f"| {workers} | {seconds:.2f} | {summary.encoded_lines / seconds:,.0f} | "
              f"{summary.encoded_tokens / seconds:,.0f} | {summary.sequences:,} | {summary.tokens:,} |")


if __name__ == "__main__":
    main()
