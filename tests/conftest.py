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


def recipe_objective(**changes):
    """The shipped recipe's objective (`distilmbert`'s loss section through the trainer's hand-off,
    `assembly.make_objective`) with full logits (no vocabulary chunks), and `changes`."""
    import dataclasses

    return dataclasses.replace(_recipe_objective(), **{"vocab_chunk_size": 0, "vocab_tile_size": 0, **changes})


def _recipe_objective():
    from distil.config import load_config
    from distil.train.assembly import make_objective

    global _RECIPE
    if _RECIPE is None:
        _RECIPE = make_objective(load_config("distilmbert"))
    return _RECIPE


_RECIPE = None


def free_port(low: int = 20000, high: int = 60000) -> int:
    """A port of [low, high) that nothing on 127.0.0.1 listens on now."""
    import random
    import socket

    for port in random.Random().sample(range(low, high), min(200, high - low)):
        with socket.socket() as probe:
            try:
                probe.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise RuntimeError(f"no free port in [{low}, {high})")


def run_processes(commands: list[tuple[list[str], dict]], *, coordinator_port: int, timeout: float = 240) -> list:
    """Runs one `jax.distributed` process per (argv, env) on 127.0.0.1 and returns (returncode, output) of each.

    Process 0 starts first and the others once its coordinator listens on `coordinator_port`: a peer that finds no
    coordinator retries with gRPC's exponential back-off, up to minutes. Outputs go to files (a full pipe would stall
    a talkative process), and a peer that dies or hangs ends the wait: every process is killed by `timeout`.
    """
    import socket
    import subprocess
    import tempfile
    import time

    deadline = time.monotonic() + timeout
    logs = [tempfile.TemporaryFile("w+") for _ in commands]
    processes = []
    try:
        for index, ((argv, env), log) in enumerate(zip(commands, logs)):
            processes.append(subprocess.Popen(argv, env=env, stdout=log, stderr=subprocess.STDOUT, text=True))
            while index == 0 and len(commands) > 1 and processes[0].poll() is None and time.monotonic() < deadline:
                with socket.socket() as probe:
                    if probe.connect_ex(("127.0.0.1", coordinator_port)) == 0:
                        break
                time.sleep(0.05)
        while any(p.poll() is None for p in processes) and time.monotonic() < deadline:
            if any(p.poll() not in (None, 0) for p in processes):
                break
            time.sleep(0.1)
    finally:
        for process in processes:
            process.kill()
            process.wait()
    outputs = []
    for process, log in zip(processes, logs):
        log.seek(0)
        outputs.append((process.returncode, log.read()))
        log.close()
    return outputs
