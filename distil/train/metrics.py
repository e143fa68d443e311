"""The metrics file (`metrics.jsonl`, one JSON object per logged step) and console progress.

Only process 0 writes. Each line is appended and flushed as it is logged; on resume, lines for steps after the
restored checkpoint (logged by the interrupted run after its last save) are dropped first, in one atomic rewrite, so
the file reads as one uninterrupted run. An object store cannot append: there the file is rewritten whole at each
logged step (one object, published whole; `distil.storage`).

Each row also goes to TensorBoard event files in `tensorboard/` beside it (`distil.train.tensorboard`).
"""

from __future__ import annotations

import json
import math
import sys
import time
from pathlib import Path
from typing import Mapping

import jax

from distil import storage
from distil.atomic import write_text_atomically
from distil.train.run import METRICS_FILE
from distil.train.tensorboard import ScalarWriter


class MetricsFileError(ValueError):
    """A metrics.jsonl line that is not a JSON object with an integer 'step'; the message names file and line."""


def read_metrics(path: str | Path, *, torn_tail_ok: bool = False) -> list[dict]:
    """The logged rows of a metrics file ([] where there is none yet). With `torn_tail_ok`, a last line with no
    newline that is not JSON is left out: what a run killed in the middle of a write leaves (a resume drops it)."""
    path = storage.location(path)
    if not path.exists():
        return []
    text = path.read_text(encoding="utf-8")
    lines = text.splitlines()
    rows = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as err:
            if torn_tail_ok and number == len(lines) and not text.endswith("\n"):
                break
            raise MetricsFileError(f"{path}:{number}: not a JSON object ({err})") from None
        if not isinstance(row, dict) or not isinstance(row.get("step"), int):
            raise MetricsFileError(f"{path}:{number}: expected an object with an integer 'step'")
        rows.append(row)
    return rows


class MetricsWriter:
    def __init__(self, workdir: str | Path, *, resume_step: int):
        self.path = storage.location(workdir) / METRICS_FILE
        self.enabled = jax.process_index() == 0
        self._lines: list[str] = []  # the whole file, where it cannot be appended to (an object store)
        if self.enabled and self.path.exists():
            kept = [row for row in read_metrics(self.path, torn_tail_ok=True) if row["step"] <= resume_step]
            self._lines = [json.dumps(row) + "\n" for row in kept]
            write_text_atomically(self.path, "".join(self._lines))
        appendable = self.enabled and not storage.is_remote(self.path)
        self._file = open(self.path, "a", encoding="utf-8") if appendable else None
        self._scalars = ScalarWriter(workdir, resume_step=resume_step)

    def write(self, row: Mapping[str, float]) -> None:
        line = json.dumps(dict(row)) + "\n"
        if self._file is not None:
            self._file.write(line)
            self._file.flush()
        elif self.enabled:
            self._lines.append(line)
            write_text_atomically(self.path, "".join(self._lines))
        self._scalars.write(row)

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
        self._scalars.close()


class Progress:
    """One console line per logged step: step, loss terms, steps/s, tokens/s, ETA (process 0 only)."""

    def __init__(self, total_steps: int, start_step: int, *, stream=None):
        self.total_steps = total_steps
        self.stream = stream  # None: sys.stdout as it is when printing (a default bound at import would outlive it)
        self.enabled = jax.process_index() == 0
        self._last_time = time.perf_counter()
        self._last_step = start_step
        self._tokens = 0.0

    def add_tokens(self, tokens: float) -> None:
        self._tokens += tokens

    def rates(self, step: int) -> tuple[float, float]:
        """(steps/s, real tokens/s) since the previous call; resets the window."""
        now = time.perf_counter()
        elapsed = max(now - self._last_time, 1e-9)
        steps_per_sec = (step - self._last_step) / elapsed
        tokens_per_sec = self._tokens / elapsed
        self._last_time, self._last_step, self._tokens = now, step, 0.0
        return steps_per_sec, tokens_per_sec

    def report(self, row: Mapping[str, float], terms: tuple[str, ...]) -> None:
        if not self.enabled:
            return
        step, steps_per_sec = row["step"], row["steps_per_sec"]
        remaining = (self.total_steps - step) / steps_per_sec if steps_per_sec > 0 else math.inf
        eta = _duration(remaining) if math.isfinite(remaining) else "?"
        parts = " ".join(f"{term} {row[term]:.4f}" for term in terms)
        print(f"step {step}/{self.total_steps}  loss {row['loss']:.4f} ({parts})  lr {row['learning_rate']:.2e}  "
              f"{steps_per_sec:.2f} steps/s  {row['tokens_per_sec']:,.0f} tokens/s  ETA {eta}",
              file=self.stream or sys.stdout, flush=True)


def _duration(seconds: float) -> str:
    """HH:MM:SS, with days in front past one (a full-size distillation runs for days)."""
    days, rest = divmod(int(seconds), 86_400)
    clock = time.strftime("%H:%M:%S", time.gmtime(rest))
    return f"{days}d {clock}" if days else clock
