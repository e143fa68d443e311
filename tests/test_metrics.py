"""distil/train/metrics.py on its own: reading metrics.jsonl (no file, blank lines, a torn last line, bad lines named
by file and line), `MetricsWriter` on a local workdir (rows on disk as soon as they are written, the rows past the
resumed step dropped, nothing written by other processes), and `Progress`'s rates, ETA and console line for a
hand-worked sequence of steps, tokens and clock readings (the module's clock replaced by a fake one). The object-store
variant of the writer is tested in tests/test_storage.py, its TensorBoard events in tests/test_tensorboard.py."""

from __future__ import annotations

import io
import json
import sys
import time
import types

import jax
import pytest

from distil.train import metrics
from distil.train.metrics import MetricsFileError, MetricsWriter, Progress, read_metrics


def _write_lines(path, text: str):
    path.write_text(text, encoding="utf-8")
    return path


# ---------------------------------------------------------------------------------------------------- reading


def test_a_missing_file_reads_as_no_rows(tmp_path):
    assert read_metrics(tmp_path / "metrics.jsonl") == []
    assert read_metrics(tmp_path / "metrics.jsonl", torn_tail_ok=True) == []


def test_rows_are_read_in_order_skipping_blank_lines(tmp_path):
    path = _write_lines(tmp_path / "metrics.jsonl", '{"step": 1, "loss": 2.5}\n\n  \n{"step": 2, "loss": NaN, '
                                                    '"note": "x"}\n{"step": 3, "loss": Infinity}')
    rows = read_metrics(path)
    assert [row["step"] for row in rows] == [1, 2, 3]
    assert rows[0] == {"step": 1, "loss": 2.5} and rows[1]["note"] == "x"
    assert rows[1]["loss"] != rows[1]["loss"] and rows[2]["loss"] == float("inf")  # as json.dumps writes them


def test_a_torn_last_line_is_dropped_only_when_allowed(tmp_path):
    path = _write_lines(tmp_path / "metrics.jsonl", '{"step": 1, "loss": 2.5}\n{"step": 2, "lo')
    assert read_metrics(path, torn_tail_ok=True) == [{"step": 1, "loss": 2.5}]
    with pytest.raises(MetricsFileError, match=rf"^{path}:2: not a JSON object \("):
        read_metrics(path)


def test_a_complete_last_line_without_its_newline_is_a_row(tmp_path):
    path = _write_lines(tmp_path / "metrics.jsonl", '{"step": 1}\n{"step": 2}')
    assert read_metrics(path) == read_metrics(path, torn_tail_ok=True) == [{"step": 1}, {"step": 2}]


@pytest.mark.parametrize("text, line", [
    ('{"step": 1}\nnot json\n{"step": 3}\n', 2),  # in the middle
    ('{"step": 1}\n\n{"step": 2\n', 3),  # a bad last line that ends with its newline was not torn; blank lines count
    ('{"step": 1, "lo\n{"step": 2}', 1),  # a torn line that is not the last one
])
def test_a_bad_line_is_an_error_naming_file_and_line_even_with_torn_tail_ok(tmp_path, text, line):
    path = _write_lines(tmp_path / "metrics.jsonl", text)
    with pytest.raises(MetricsFileError, match=rf"^{path}:{line}: not a JSON object \("):
        read_metrics(path, torn_tail_ok=True)


@pytest.mark.parametrize("row", ['[1, 2]', '"step"', '{"loss": 1.0}', '{"step": "3"}', '{"step": 3.0}',
                                 '{"step": null}'])
def test_a_line_that_is_not_an_object_with_an_integer_step_is_an_error(tmp_path, row):
    path = _write_lines(tmp_path / "metrics.jsonl", '{"step": 1}\n' + row + '\n')
    with pytest.raises(MetricsFileError, match=rf"^{path}:2: expected an object with an integer 'step'$"):
        read_metrics(path, torn_tail_ok=True)


# ---------------------------------------------------------------------------------------------------- writing


def _lines(path) -> list[str]:
    return path.read_text(encoding="utf-8").splitlines(keepends=True)


def test_rows_are_on_disk_as_soon_as_they_are_written(tmp_path):
    writer = MetricsWriter(tmp_path, resume_step=0)
    path = tmp_path / "metrics.jsonl"
    try:
        writer.write({"step": 1, "loss": 3.5, "learning_rate": 1e-4})
        assert _lines(path) == ['{"step": 1, "loss": 3.5, "learning_rate": 0.0001}\n']
        writer.write({"step": 2, "loss": float("nan")})
        assert read_metrics(path)[1]["step"] == 2 and len(_lines(path)) == 2
    finally:
        writer.close()
    assert (tmp_path / "tensorboard").is_dir()


def test_resuming_drops_the_rows_after_the_checkpoint_and_a_torn_tail(tmp_path):
    path = tmp_path / "metrics.jsonl"
    kept = [json.dumps({"step": step, "loss": 10.0 - step}) + "\n" for step in (2, 4)]
    _write_lines(path, "".join(kept) + '{"step": 6, "loss": 4.0}\n{"step": 8, "loss": 2.0}\n{"step": 10, "l')
    writer = MetricsWriter(tmp_path, resume_step=5)  # the checkpoint was at step 5: 6 and 8 are logged again
    assert _lines(path) == kept
    writer.write({"step": 6, "loss": 4.5})
    writer.close()
    assert read_metrics(path) == [{"step": 2, "loss": 8.0}, {"step": 4, "loss": 6.0}, {"step": 6, "loss": 4.5}]


def test_resuming_at_the_last_logged_step_keeps_every_row(tmp_path):
    path = _write_lines(tmp_path / "metrics.jsonl", '{"step": 1}\n{"step": 2}\n')
    MetricsWriter(tmp_path, resume_step=2).close()
    assert read_metrics(path) == [{"step": 1}, {"step": 2}]


def test_a_bad_row_in_the_file_to_resume_is_an_error_and_the_file_is_kept(tmp_path):
    text = '{"step": 1}\n[2]\n{"step": 3}\n'
    path = _write_lines(tmp_path / "metrics.jsonl", text)
    with pytest.raises(MetricsFileError, match=rf"^{path}:2:"):
        MetricsWriter(tmp_path, resume_step=1)
    assert path.read_text() == text


def test_other_processes_neither_write_nor_trim_nor_print(tmp_path, monkeypatch):
    text = '{"step": 1}\n{"step": 2}\n{"step": 3}\n'
    path = _write_lines(tmp_path / "metrics.jsonl", text)
    monkeypatch.setattr(jax, "process_index", lambda *args, **kwargs: 1)
    writer = MetricsWriter(tmp_path, resume_step=1)
    writer.write({"step": 2, "loss": 1.0})
    writer.close()
    assert path.read_text() == text and not (tmp_path / "tensorboard").exists()
    stream = io.StringIO()
    Progress(10, 0, stream=stream).report(_row(step=2), ("ce",))
    assert stream.getvalue() == ""


# ---------------------------------------------------------------------------------------------------- progress


class FakeClock:
    """`time` as distil.train.metrics uses it, with a perf_counter that reads what the test set."""

    def __init__(self, now: float):
        self.now = now

    def perf_counter(self) -> float:
        return self.now


@pytest.fixture
def clock(monkeypatch):
    fake = FakeClock(1000.0)
    monkeypatch.setattr(metrics, "time", types.SimpleNamespace(perf_counter=fake.perf_counter,
                                                               strftime=time.strftime, gmtime=time.gmtime))
    return fake


def _row(**values) -> dict:
    return {"step": 24, "loss": 1.23456, "ce": 0.5, "mlm": 0.25, "learning_rate": 5e-4, "steps_per_sec": 2.0,
            "tokens_per_sec": 12345.6, **values}


def test_rates_are_steps_and_tokens_per_second_since_the_previous_call(clock):
    progress = Progress(1000, start_step=10)  # a resumed run: the first window starts at its step
    progress.add_tokens(1000)
    progress.add_tokens(3000.5)
    clock.now += 2.5
    assert progress.rates(14) == (4 / 2.5, 4000.5 / 2.5)
    clock.now += 0.5  # a window without tokens: the tokens counted so far went with the previous one
    assert progress.rates(15) == (1 / 0.5, 0.0)
    progress.add_tokens(64)
    steps_per_sec, tokens_per_sec = progress.rates(15)  # no time at all has passed: large, finite rates
    assert (steps_per_sec, tokens_per_sec) == (0.0, 64 / 1e-9)


def test_the_console_line_for_a_logged_step(clock):
    stream = io.StringIO()
    Progress(1000, start_step=0, stream=stream).report(_row(), ("ce", "mlm"))
    # (1000 - 24) steps at 2 steps/s: 488 s = 8 min 8 s.
    assert stream.getvalue() == ("step 24/1000  loss 1.2346 (ce 0.5000 mlm 0.2500)  lr 5.00e-04  2.00 steps/s  "
                                 "12,346 tokens/s  ETA 00:08:08\n")


@pytest.mark.parametrize("steps_per_sec, eta", [(0.0, "?"), (0.25, "01:05:04"), (1e9, "00:00:00")])
def test_the_eta_is_the_remaining_steps_at_the_current_rate(clock, steps_per_sec, eta):
    """976 steps left: never at 0 steps/s; 3,904 s = 1 h 5 min 4 s at 0.25 steps/s; under a second at 1e9."""
    stream = io.StringIO()
    Progress(1000, start_step=0, stream=stream).report(_row(steps_per_sec=steps_per_sec), ())
    assert stream.getvalue().endswith(f"  ETA {eta}\n")
    assert "loss 1.2346 ()" in stream.getvalue()


def test_an_eta_of_more_than_a_day_does_not_read_as_less(clock):
    stream = io.StringIO()
    # 100,000 steps left at 1 step/s: 100,000 s = 1 day 3 h 46 min 40 s.
    Progress(100_024, start_step=0, stream=stream).report(_row(steps_per_sec=1.0), ())
    assert stream.getvalue().rsplit("ETA ", 1)[1].strip() == "1d 03:46:40"


def test_without_a_stream_it_prints_to_stdout_as_it_is_when_printing(clock, monkeypatch):
    progress = Progress(1000, start_step=0)
    replaced = io.StringIO()
    monkeypatch.setattr(sys, "stdout", replaced)  # after the Progress was made
    progress.report(_row(), ("ce",))
    assert replaced.getvalue().startswith("step 24/1000  loss 1.2346 (ce 0.5000)  lr 5.00e-04")
