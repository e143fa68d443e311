"""TensorBoard event files and the profiler window, read back with TensorFlow's own event reader.

The resume test applies TensorBoard's purge rule itself (`plugin_event_accumulator._CheckForRestartAndMaybePurge`):
event files are read in name order, and a `SessionLog.START` after the first one hides every scalar read before it
whose step is >= the START's step. Older TensorBoards purge at the first START too; both readings are checked.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from distil.train import tensorboard
from distil.train.metrics import MetricsWriter, read_metrics
from distil.train.run import TENSORBOARD_DIR
from distil.train.tensorboard import ProfileWindow, ScalarWriter


def read_events(folder):
    """Every event of every event file in `folder/tensorboard`, file by file in name order (as TensorBoard)."""
    tf = pytest.importorskip("tensorflow")
    paths = sorted((folder / TENSORBOARD_DIR).glob("events.out.tfevents.*"))
    return [list(tf.compat.v1.train.summary_iterator(str(path))) for path in paths]


def scalars_as_tensorboard_shows(folder, *, first_start_purges=False):
    """{tag: [(step, value), ...]} after TensorBoard's SessionLog.START purge."""
    tf = pytest.importorskip("tensorflow")
    series, seen_start = {}, False
    for events in read_events(folder):
        for event in events:
            if event.HasField("session_log") and event.session_log.status == tf.compat.v1.SessionLog.START:
                if seen_start or first_start_purges:
                    series = {tag: [(s, v) for s, v in points if s < event.step] for tag, points in series.items()}
                seen_start = True
            for value in event.summary.value:
                series.setdefault(value.tag, []).append((event.step, value.simple_value))
    return series


def as_float32(value):
    return float(np.float32(value))


def same(points, expected):
    """Equal step by step, values at float32 precision (NaN equals NaN)."""
    return len(points) == len(expected) and all(
        s == es and (v == as_float32(ev) or (math.isnan(v) and math.isnan(ev)))
        for (s, v), (es, ev) in zip(points, expected))


def test_every_numeric_field_is_a_scalar_under_its_tag(tmp_path):
    rows = [
        {"step": 10, "seed": 3, "loss": 2.5, "ce": 1.25, "mlm": 0.1 + 0.2, "learning_rate": 3e-5, "grad_norm": 7,
         "tokens_per_sec": 12345.678, "steps_per_sec": 1.5, "real_tokens": 4096.0, "padding_fraction": 0.125,
         "dev_en_accuracy": 0.6, "accuracy": 0.55, "something_new": -1.0, "flag": True, "note": "text"},
        {"step": 20, "seed": 3, "loss": math.inf, "ce": math.nan, "learning_rate": 1e-5},
    ]
    writer = ScalarWriter(tmp_path, resume_step=0)
    for row in rows:
        writer.write(row)
    writer.close()
    writer.close()  # a second close is a no-op

    expected = {}
    for row in rows:
        for name, value in row.items():
            if name not in ("step", "seed", "flag", "note"):
                expected.setdefault(tensorboard.tag_for(name), []).append((row["step"], value))
    shown = scalars_as_tensorboard_shows(tmp_path)
    assert sorted(shown) == sorted(expected)
    for tag, points in expected.items():
        assert same(shown[tag], points), (tag, shown[tag], points)
    assert {"loss/total", "loss/ce", "loss/mlm", "optimizer/learning_rate", "optimizer/grad_norm",
            "throughput/tokens_per_sec", "throughput/steps_per_sec", "batch/real_tokens", "batch/padding_fraction",
            "xnli/dev_en_accuracy", "train/accuracy", "other/something_new"} == set(shown)


def test_a_resume_hides_the_scalars_logged_after_the_checkpoint(tmp_path):
    def run(resume_step, steps, scale):
        writer = MetricsWriter(tmp_path, resume_step=resume_step)
        for step in steps:
            writer.write({"step": step, "loss": step * scale, "learning_rate": step * scale / 100})
        writer.close()

    run(0, range(1, 6), 1.0)  # steps 1..5, then killed; its last checkpoint was at step 3
    run(3, range(4, 8), 10.0)  # resumed: 4..7, then killed after its checkpoint at 5
    run(5, range(6, 9), 100.0)  # resumed again: 6..8

    expected = [(1, 1.0), (2, 2.0), (3, 3.0), (4, 40.0), (5, 50.0), (6, 600.0), (7, 700.0), (8, 800.0)]
    assert [(row["step"], row["loss"]) for row in read_metrics(tmp_path / "metrics.jsonl")] == expected
    assert len(read_events(tmp_path)) == 3  # one file per writer, none overwritten
    for first_start_purges in (False, True):
        shown = scalars_as_tensorboard_shows(tmp_path, first_start_purges=first_start_purges)
        assert set(shown) == {"loss/total", "optimizer/learning_rate"}
        assert same(shown["loss/total"], expected), shown["loss/total"]
        assert same(shown["optimizer/learning_rate"], [(s, v / 100) for s, v in expected])


def test_only_process_0_writes(tmp_path, monkeypatch):
    monkeypatch.setattr(jax, "process_index", lambda: 1)
    writer = MetricsWriter(tmp_path, resume_step=0)
    writer.write({"step": 1, "loss": 1.0})
    writer.close()
    window = ProfileWindow(tmp_path, start_step=1, num_steps=1)
    window.before_step(1)
    window.after_step(1, None)
    window.close()
    assert not window.tracing and list(tmp_path.iterdir()) == []


def profile_files(folder):
    return sorted((folder / TENSORBOARD_DIR / "plugins" / "profile").glob("*/*.xplane.pb"))


def test_profile_window_traces_its_steps(tmp_path):
    step_fn = jax.jit(lambda x: jnp.tanh(x @ x.T))
    x = jnp.ones((32, 32))
    window = ProfileWindow(tmp_path, start_step=2, num_steps=2)
    tracing = []
    for step in range(1, 6):
        window.before_step(step)
        x = step_fn(x)
        window.after_step(step, x)
        tracing.append(window.tracing)
    window.close()
    assert tracing == [False, True, False, False, False]  # on from step 2's start to step 3's end
    assert len(profile_files(tmp_path)) == 1


def test_close_stops_a_trace_and_a_window_can_be_off(tmp_path):
    for start_step, num_steps in ((0, 3), (2, 0), (4, 2)):  # off, off, and never reached
        window = ProfileWindow(tmp_path / "off", start_step=start_step, num_steps=num_steps)
        for step in range(1, 4):
            window.before_step(step)
            window.after_step(step, None)
        window.close()
    assert not (tmp_path / "off").exists()

    window = ProfileWindow(tmp_path, start_step=1, num_steps=10)
    window.before_step(1)
    window.after_step(1, jnp.zeros(3) + 1)
    assert window.tracing
    window.close()  # a run that stops inside the window still leaves its trace, and the profiler free
    assert not window.tracing and len(profile_files(tmp_path)) == 1
    jax.profiler.start_trace(str(tmp_path / "again"))
    jax.profiler.stop_trace()
