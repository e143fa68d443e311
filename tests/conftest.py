"""Helpers for every test file: tiny transformers reference models, the test data folder, and the skip count.

Every test reads its real data from the repository itself: the embedded default data
(`distil/data/embedded/`) or the small fixtures in `tests/data/` (sources and licenses in its README.md).
A clone with nothing beside it runs the whole suite.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

# Eight fake CPU devices for the sharding tests, also when pytest is run without `make test` (set before jax loads).
os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ.setdefault("JAX_PLATFORMS", "cpu")

REPO = Path(__file__).resolve().parents[1]
TEST_DATA = REPO / "tests" / "data"


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    """Always print how many tests were skipped, 0 included, and why.

    pytest's own last line names skips only when there are some, so a run that should skip nothing cannot
    be told apart at a glance from one whose summary was cut; CI and `make test` logs show this line instead.
    """
    skipped = terminalreporter.stats.get("skipped", [])
    terminalreporter.write_line(f"skipped: {len(skipped)}")
    for report in skipped:
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
        terminalreporter.write_line(f"  {report.nodeid}: {reason}")


def padded_batch(vocab_size: int, lengths: list[int], length: int, seed: int = 0):
    """Random token ids with [CLS]-like first token and padding after each row's length, as numpy int32."""
    rng = np.random.default_rng(seed)
    input_ids = rng.integers(5, vocab_size, size=(len(lengths), length)).astype(np.int32)
    attention_mask = (np.arange(length)[None, :] < np.asarray(lengths)[:, None]).astype(np.int32)
    input_ids = np.where(attention_mask == 1, input_ids, 0).astype(np.int32)
    token_type_ids = (np.arange(length)[None, :] >= np.asarray(lengths)[:, None] // 2).astype(np.int32) * attention_mask
    return input_ids, attention_mask, token_type_ids
