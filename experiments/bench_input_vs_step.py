"""Benchmark 3 of issue 13: does the input pipeline keep up with training? Batches/s of the trainer's host
pipeline next to the steps/s of the trainer's step, at the same batch shape (the pipeline must be >= 10x).

    python experiments/bench_input_vs_step.py [--sizes full,runlocal] [--seconds 5] [--out input.json]
    distil bench input_vs_step --out input.json

Pipeline: exactly what `distil distill` runs per step on the host (`distil.data.pipeline.input_pipeline`, the trainer's own
function): the embedded corpus binarised with the size's tokenizer (`prepare_corpus`), the config's batch
composition (`GroupedBatchSource`; the recipe packs rows of 512), MLM masking per group of rows with count^-0.7
token probabilities (`MaskUpdate`), through grain with the trainer's read options (2 threads, prefetch 4); timed
for `--seconds`, and once more single-threaded without grain (the CPU cost of one batch). Step: the
trainer's compiled step on the same shape (`bench_step`'s chunked float32 variant, in a fresh process). Both
compete for the same cores during training, so the single-threaded rate is the honest one: its inverse is the
share of a core the input costs per step.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_step  # noqa: E402
import benchlib  # noqa: E402


def pipeline_rates(size: str, seconds: float, workdir: Path) -> dict:
    """Batches/s of the trainer's pipeline for `size` (the same calls, in the same order, as train_and_evaluate)."""
    from distil.tokenization import default_vocab_path, load_tokenizer
    from distil.data.pipeline import input_pipeline, prepare_corpus

    config = bench_step.trainer_config(size)
    config.data.corpus = "embedded"
    config.batching.pad_to_multiple = 8 if size == "full" else 32  # the recipe's own padding, lengths vary
    tokenizer_path = config.tokenizer or default_vocab_path()
    tokenizer = load_tokenizer(tokenizer_path)
    data_dir = workdir / size
    started = time.perf_counter()
    prepare_corpus(config, tokenizer_path, data_dir, progress=False)
    prepare_s = time.perf_counter() - started
    pipeline = input_pipeline(config, data_dir, tokenizer, tokenizer.get_vocab_size())
    source, mask_update, batching = pipeline.source, pipeline.mask_update, config.batching

    def measure(batches) -> dict:
        count = tokens = positions = 0
        start, cpu_start = time.perf_counter(), time.process_time()
        for batch in batches:
            count += 1
            tokens += int(batch["attention_mask"].sum())
            positions += batch["attention_mask"].size
            if time.perf_counter() - start > seconds:
                break
        elapsed = time.perf_counter() - start
        return {"batches": count, "batches_per_s": count / elapsed, "cpu_s_per_batch":
                (time.process_time() - cpu_start) / count, "real_tokens_per_s": tokens / elapsed,
                "padding_fraction": 1.0 - tokens / positions}

    single = measure(mask_update(step, source[step]) for step in range(len(source)))
    threaded = measure(iter(pipeline.dataset))
    return {"single_thread": single, "grain": threaded, "sequences": len(pipeline.sequences), "prepare_s": prepare_s,
            "global_batch": batching.global_batch, "micro_batches": batching.micro_batches,
            "max_length": config.data.max_length}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="full,runlocal")
    parser.add_argument("--seconds", type=float, default=5.0, help="seconds each pipeline mode is timed")
    parser.add_argument("--steps", type=int, default=3, help="timed steps (median)")
    parser.add_argument("--chunk", type=int, default=bench_step.DEFAULT_CHUNK)
    parser.add_argument("--out")
    benchlib.add_environment_flag(parser)
    args = parser.parse_args(argv)

    machine = benchlib.machine()
    machine["environment"] = benchlib.use_environment(args)
    results = {"machine": machine, "sizes": {}}
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench_input-") as tmp:
        for size in args.sizes.split(","):
            print(f"[{size}] pipeline ...", flush=True)
            pipeline = pipeline_rates(size, args.seconds, Path(tmp))
            print(f"[{size}] step ...", flush=True)
            step = benchlib.run_worker(bench_step.__file__, {
                "size": size, "variant": "chunked", "steps": args.steps, "warmup": 1, "vocab_chunk_size": args.chunk,
                "vocab_tile_size": None, "teacher_dtype": "float32", "student_dtype": "float32"})
            steps_per_s = 1.0 / step["median_s"]
            shape = bench_step.SIZES[size]
            for mode, label in (("single_thread", "1 thread, no grain"), ("grain", "grain, 2 threads")):
                rate = pipeline[mode]
                rows.append([size, f"{shape['batch']} x <= {shape['length']} ({shape['micro_batches']} micro)",
                             label, f"{rate['batches_per_s']:,.1f}", f"{rate['real_tokens_per_s']:,.0f}",
                             f"{steps_per_s:,.3f}", f"{rate['batches_per_s'] / steps_per_s:,.0f}x",
                             f"{100 * rate['cpu_s_per_batch'] / step['median_s']:.2f}%"])
            results["sizes"][size] = {"pipeline": pipeline, "step": step, "steps_per_s": steps_per_s}
    table = benchlib.markdown_table(
        ["size", "batch", "pipeline", "batches/s", "real tokens/s", "steps/s (chunked fp32 step)",
         "pipeline x step", "pipeline CPU per step"], rows, align="lllrrrrr")
    print("\n### Input pipeline (batching + masking) vs the step it feeds\n")
    print(table)
    print(f"\nThe embedded corpus, batched as the config composes them (the recipe packs rows); machine "
          f"{machine['cpu']}, {machine['cores']} cores, load {machine['load_average']}.")
    results["markdown"] = table
    benchlib.write_json(args.out, results)


if __name__ == "__main__":
    main()
