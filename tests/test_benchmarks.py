"""The benchmarks of experiments/ call the trainer's own functions; these checks keep them runnable as the trainer
changes (their timings are measured by `make bench`, never asserted here)."""

from __future__ import annotations

import sys

from conftest import REPO

sys.path.insert(0, str(REPO / "experiments"))
import bench_input_vs_step  # noqa: E402


def test_input_pipeline_benchmark_reads_the_trainers_batches(tmp_path):
    """bench_input_vs_step times `distil.data.pipeline.input_pipeline` at the runlocal size (length-grouped batches of <= 128
    tokens): both the single-threaded and the grain path produce batches."""
    rates = bench_input_vs_step.pipeline_rates("runlocal", 0.2, tmp_path)
    assert rates["sequences"] > 1000 and rates["max_length"] == 128
    for mode in ("single_thread", "grain"):
        assert rates[mode]["batches"] >= 1 and rates[mode]["real_tokens_per_s"] > 0, mode
        assert 0 <= rates[mode]["padding_fraction"] < 1, mode


def test_the_benchmarked_step_is_the_step_that_trains():
    """bench_step builds its step with the trainer's own builder: at the runlocal size with the recipe's packed rows
    and remat, its compiled program is the one the memory dry run compiles (same instructions, same memory), and
    it trains on packed batches."""
    import jax
    import numpy as np

    import bench_step
    from distil import sharding
    from distil.train import distill

    config = bench_step.trainer_config("runlocal")
    config.batching.composition, config.student.remat = "packed", "nothing_saveable"
    compiled, state, teacher_params, batch_sharding, mesh, rules, info = bench_step.build_trainer_step(config)
    assert info["batch_names"] == ("input_ids", "attention_mask", "mlm_labels", "segment_ids", "position_ids")
    dry = distill.dry_run(config)
    for key in ("argument_bytes", "temp_bytes", "peak_bytes", "flops"):
        assert info[key] == dry[key], key
    batch = bench_step.random_batch(info["shape"], info["vocab_size"], names=info["batch_names"])
    with sharding.activation_rules(mesh, rules):
        _, metrics = compiled(state, teacher_params, sharding.make_global_batch(batch, batch_sharding))
    metrics = jax.device_get(metrics)
    assert np.isfinite(float(metrics["loss"])) and float(metrics["real_tokens"]) == np.prod(info["shape"])


def test_the_trainer_row_times_distil_distill_itself():
    """bench_step's `trainer` row runs `distil distill` (train_and_evaluate, its input pipeline and metrics) at the
    size's shape and reads the step time and real tokens from the trainer's own log."""
    import math

    import bench_step

    spec = {"size": "runlocal", "variant": "trainer", "steps": 2, "warmup": 1, **bench_step.VARIANTS["trainer"]}
    spec.update(vocab_chunk_size=bench_step.DEFAULT_CHUNK, vocab_tile_size=0)
    row = bench_step.trainer_worker(spec)
    shape = bench_step.SIZES["runlocal"]
    assert len(row["times_s"]) == 2 and all(time > 0 for time in row["times_s"])
    assert 0 < row["real_tokens_per_step"] <= shape["batch"] * shape["length"]
    assert math.isfinite(row["first_step"]["loss"])
