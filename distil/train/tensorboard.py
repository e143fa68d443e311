"""TensorBoard beside `metrics.jsonl`: the same scalars as event files in `tensorboard/`, and an optional profile.

`metrics.jsonl` is the record; this is for watching a run live. tensorboardX writes the event files without
TensorFlow. Only process 0 writes; elsewhere everything is a no-op.

Resume: every writer starts its file with a `SessionLog.START` at step `resume_step + 1` (tensorboardX's
`purge_step`). TensorBoard, reading a run's event files in name order, takes a START after the first as a restart
and hides the earlier files' events at that step or later: the scalars the interrupted run logged after its last
checkpoint, as `MetricsWriter` drops them from `metrics.jsonl`. A fresh run writes its START at step 1 too,
because TensorBoard takes the first START it sees as the run's start and purges nothing for it. (TensorBoard's
Rust data server ignores START and instead drops a series' points at or after a step logged again.)

The event file's name is the writer's start time; the nanosecond suffix keeps two writers started in the same
second (a test's quick resume) from sharing one file, which tensorboardX would truncate, and orders them.

`ProfileWindow` traces steps N..M with `jax.profiler` into the same folder, where TensorBoard's profile plugin
looks (`plugins/profile/<time>/<host>.xplane.pb`).

On an object store (`gs://` workdirs) an event file is one object, rewritten whole at each flush (no append there;
tensorboardX's own gs:// writer does the same through google-cloud-storage, this one through `distil.storage`), and
a profile is traced into a local folder and uploaded when the window closes.
"""

from __future__ import annotations

import io
import time
from pathlib import Path
from typing import Any, Mapping

import jax

from distil import storage
from distil.train.objective import TERMS
from distil.train.run import TENSORBOARD_DIR

# A metrics row's field -> its TensorBoard tag: the slash groups a dashboard's sections. Others go to "other/".
TAGS = {
    "loss": "loss/total",
    **{term: f"loss/{term}" for term in TERMS},
    "learning_rate": "optimizer/learning_rate",
    "grad_norm": "optimizer/grad_norm",
    "tokens_per_sec": "throughput/tokens_per_sec",
    "steps_per_sec": "throughput/steps_per_sec",
    "mfu": "throughput/mfu",
    "real_tokens": "batch/real_tokens",
    "padding_fraction": "batch/padding_fraction",
    "examples": "batch/examples",
    "accuracy": "train/accuracy",
    "dev_en_accuracy": "xnli/dev_en_accuracy",
}
NOT_SCALARS = ("step", "seed")  # a row's coordinates, not values over steps
FLUSH_SECONDS = 5  # tensorboardX's writer thread writes the queued events to disk at most this long after they come


def tag_for(name: str) -> str:
    return TAGS.get(name, f"other/{name}")


class _ObjectRecordWriter:
    """tensorboardX's record-writer interface for an object: the bytes so far, uploaded whole at a flush that has
    new ones (tensorboardX's writer thread flushes every `FLUSH_SECONDS`, events or not)."""

    def __init__(self, path: str):
        self.path, self.buffer, self._uploaded = storage.location(path), io.BytesIO(), -1

    def write(self, data: bytes) -> None:
        self.buffer.write(data)

    def flush(self) -> None:
        if self.buffer.tell() != self._uploaded:
            storage.write_object(self.path, self.buffer.getvalue())
            self._uploaded = self.buffer.tell()

    def close(self) -> None:
        self.flush()


class _ObjectRecordWriterFactory:
    def open(self, path: str) -> _ObjectRecordWriter:
        return _ObjectRecordWriter(path)

    def directory_check(self, path: str) -> None:
        storage.location(path).mkdir(parents=True, exist_ok=True)


def _register_object_stores() -> None:
    from tensorboardX import record_writer

    for scheme in storage.REMOTE_SCHEMES:
        record_writer.register_writer_factory(scheme, _ObjectRecordWriterFactory())


class ScalarWriter:
    """Each numeric field of a metrics row (finite or not; never a bool, "step" or "seed") as a scalar at its step.

    tensorboardX queues events for a writer thread, so a flush after each write would not reach disk any sooner:
    the thread writes and flushes within `FLUSH_SECONDS`, and `close` drains the queue."""

    def __init__(self, folder: str | Path, *, resume_step: int):
        self.directory = storage.location(folder) / TENSORBOARD_DIR
        self._writer = None
        if jax.process_index() == 0:
            from tensorboardX import SummaryWriter  # imports torch where it is installed: only the writing process

            _register_object_stores()
            self._writer = SummaryWriter(logdir=str(self.directory), purge_step=resume_step + 1,
                                         flush_secs=FLUSH_SECONDS, filename_suffix=f".{time.time_ns()}")

    def write(self, row: Mapping[str, Any]) -> None:
        if self._writer is None:
            return
        for name, value in row.items():
            if name not in NOT_SCALARS and isinstance(value, (int, float)) and not isinstance(value, bool):
                self._writer.add_scalar(tag_for(name), value, global_step=row["step"])

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None


class ProfileWindow:
    """A `jax.profiler` trace of steps `start_step` .. `start_step + num_steps - 1` (1-based; process 0 only).

    Call `before_step(step)` before running step `step` and `after_step(step, outputs)` after: at the window's last
    step it waits for `outputs`, so the trace holds the device work of every step in it, and stops. A run resumed
    past `start_step` traces nothing. `num_steps <= 0` or `start_step <= 0` turns it off."""

    @classmethod
    def from_config(cls, folder: str | Path, profile) -> "ProfileWindow":
        """From a config's `profile` section (start_step, num_steps); a config without one traces nothing."""
        return cls(folder, start_step=profile.start_step if profile else 0, num_steps=profile.num_steps if profile
                   else 0)

    def __init__(self, folder: str | Path, *, start_step: int, num_steps: int):
        self.directory = storage.location(folder) / TENSORBOARD_DIR
        self.first_step = start_step
        self.last_step = start_step + num_steps - 1
        self.enabled = start_step > 0 and num_steps > 0 and jax.process_index() == 0
        self.tracing = False

    def before_step(self, step: int) -> None:
        if self.enabled and step == self.first_step:
            local = storage.cache_folder(self.directory) if storage.is_remote(self.directory) else self.directory
            jax.profiler.start_trace(str(local))
            self.tracing = True

    def after_step(self, step: int, outputs: Any = None) -> None:
        if self.tracing and step >= self.last_step:
            jax.block_until_ready(outputs)
            self.close()

    def close(self) -> None:
        if self.tracing:
            jax.profiler.stop_trace()
            self.tracing = False
            if storage.is_remote(self.directory):
                storage.upload_folder(storage.cache_folder(self.directory), self.directory)
