"""The benchmarks of experiments/ call the trainer's own functions; these checks keep them runnable as the trainer
changes (their timings are measured by `make bench`, never asserted here)."""

from __future__ import annotations

import sys

from conftest import REPO

sys.path.insert(0, str(REPO / "experiments"))
import bench_input_vs_step  # noqa: E402


def test_input_pipeline_benchmark_reads_the_trainers_batches(tmp_path):
    """bench_input_vs_step times `distill.input_pipeline` at the runlocal size (length-grouped batches of <= 128
    tokens): both the single-threaded and the grain path produce batches."""
    rates = bench_input_vs_step.pipeline_rates("runlocal", 0.2, tmp_path)
    assert rates["sequences"] > 1000 and rates["max_length"] == 128
    for mode in ("single_thread", "grain"):
        assert rates[mode]["batches"] >= 1 and rates[mode]["real_tokens_per_s"] > 0, mode
        assert 0 <= rates[mode]["padding_fraction"] < 1, mode
