"""The workdir contract (distil/train/run.py), through the `distil` command on real runlocal runs: one live run per
workdir, one config per run, finished is final, never another's files, one-line failures; and its pieces by hand
(the lock dies with its process, config differences, fingerprints)."""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import REPO
from distil import cli
from distil.train import run as run_scaffold
from distil.train.metrics import read_metrics

# A distil distill of distilmbert:runlocal small enough for a few seconds: 16 sequences of 64 tokens per update.
FAST = ["data.max_length=64", "batching.pad_to_multiple=64", "batching.global_batch=16", "log_every_steps=1",
        "teacher.max_position_embeddings=64", "student.max_position_embeddings=64", "checkpoint.every_steps=100"]


def _distill_args(workdir: Path, *overrides: str) -> list[str]:
    return ["distill", "--config", "distilmbert:runlocal", "--workdir", str(workdir),
            *(f"--config.{override}" for override in [*FAST, *overrides])]


def _env() -> dict:
    return dict(os.environ, PYTHONPATH=str(REPO), PYTHONUNBUFFERED="1")


def _start(workdir: Path, *overrides: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "distil", *_distill_args(workdir, *overrides)], env=_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _run(workdir: Path, *overrides: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "distil", *_distill_args(workdir, *overrides)], env=_env(),
                          capture_output=True, text=True, timeout=300)


def _tree_digest(folder: Path) -> dict[str, str]:
    """Every file under `folder` (the lock too) -> sha256 of its bytes, and its modification time."""
    return {str(path.relative_to(folder)): hashlib.sha256(path.read_bytes()).hexdigest() + f"@{path.stat().st_mtime_ns}"
            for path in sorted(folder.rglob("*")) if path.is_file()}


@pytest.fixture(scope="module")
def finished(tmp_path_factory) -> Path:
    """A finished 3-step run, made by the command itself."""
    workdir = tmp_path_factory.mktemp("finished") / "run"
    done = _run(workdir, "num_steps=3")
    assert done.returncode == 0, done.stdout + done.stderr
    return workdir


# ------------------------------------------------------------------------------------------- finished is final


def test_rerunning_a_finished_run_changes_no_file(finished, capsys):
    before = _tree_digest(finished)
    assert cli.main(_distill_args(finished, "num_steps=3")) == 0
    assert f"{finished}: finished earlier" in capsys.readouterr().out
    assert _tree_digest(finished) == before
    summary = json.loads((finished / "summary.json").read_text())
    assert summary["final"]["step"] == 3 and summary["extended"] == []


def test_a_rerun_with_another_config_is_refused_naming_every_key(finished, capsys):
    before = _tree_digest(finished)
    code = cli.main(_distill_args(finished, "num_steps=3", "optimizer.learning_rate=1e-3", "loss.alpha_ce=2.0",
                                  "student.teacher_layers=(0, 2)"))
    err = capsys.readouterr().err
    assert code == 2 and len(err.strip().splitlines()) == 1, err
    for change in ("config.optimizer.learning_rate: 0.0005 -> 0.001", "config.loss.alpha_ce: 5.0 -> 2.0",
                   "config.student.teacher_layers: [0, 3] -> [0, 2]"):
        assert change in err
    assert "Traceback" not in err and _tree_digest(finished) == before  # config.json not rewritten either
    assert cli.main(_distill_args(finished, "num_steps=2")) == 2  # steps may only grow
    assert "config.num_steps: 3 -> 2" in capsys.readouterr().err
    assert _tree_digest(finished) == before


def test_more_steps_extend_a_finished_run_and_say_so(finished, tmp_path):
    """Also: a kill in the middle of a metrics write leaves a last line without its newline; the resume drops it
    with the rows past the restored checkpoint (a torn line anywhere else is still an error naming file and line)."""
    workdir = tmp_path / "extended"
    shutil.copytree(finished, workdir)
    before = read_metrics(workdir / "metrics.jsonl")
    with open(workdir / "metrics.jsonl", "a", encoding="utf-8") as metrics:
        metrics.write('{"step": 4, "loss": 18.1')  # torn
    done = _run(workdir, "num_steps=5", "log_every_steps=2")  # a logging change rides along
    assert done.returncode == 0, done.stderr
    assert "extended with changed settings: config.log_every_steps: 1 -> 2; config.num_steps: 3 -> 5" in done.stdout
    assert "resumed from" in done.stdout and "at step 3" in done.stdout
    rows = read_metrics(workdir / "metrics.jsonl")
    assert rows[:3] == before and [row["step"] for row in rows] == [1, 2, 3, 4, 5]
    summary = json.loads((workdir / "summary.json").read_text())
    assert summary["steps"] == 5 and summary["final"]["step"] == 5
    assert summary["extended"][0]["changed"] == ["config.log_every_steps: 1 -> 2", "config.num_steps: 3 -> 5"]
    record = json.loads((workdir / "run.json").read_text())
    assert record["status"] == "finished" and record["config"]["num_steps"] == 5
    assert json.loads((workdir / "config.json").read_text())["num_steps"] == 5


# ---------------------------------------------------------------------------------------------------- exclusive


def test_two_runs_started_together_one_runs_the_other_is_refused(tmp_path):
    workdir = tmp_path / "contested"
    processes = [_start(workdir, "num_steps=40") for _ in range(2)]
    try:
        outputs = [process.communicate(timeout=300) for process in processes]
    finally:
        for process in processes:
            process.kill()
    codes = sorted(process.returncode for process in processes)
    assert codes == [0, 2], outputs
    refused = next(err for (out, err), process in zip(outputs, processes) if process.returncode == 2)
    winner = next(process for process in processes if process.returncode == 0)
    assert f"{workdir}: in use by distil distill (host " in refused and f"pid {winner.pid}, since " in refused
    assert len(refused.strip().splitlines()) == 1
    assert [row["step"] for row in read_metrics(workdir / "metrics.jsonl")] == list(range(1, 41))


def test_a_refused_run_waits_for_the_holders_name(tmp_path):
    """A holder names itself a moment after taking the lock (`announce`): a run refused in that moment waits for
    the name; with no name at all (a finished run's rerun writes none), it says so after the wait."""
    import threading

    holder = run_scaffold.WorkdirLock(tmp_path, "distill")
    holder.acquire()  # flock: a second descriptor of this process is refused as another process would be
    try:
        with pytest.raises(run_scaffold.WorkdirInUse, match=r"in use by another process \(it has not written its "
                                                           r"name yet\)"):
            run_scaffold.WorkdirLock(tmp_path, "xnli").acquire()
        late = threading.Timer(0.3, holder.announce)
        late.start()
        with pytest.raises(run_scaffold.WorkdirInUse, match=rf"in use by distil distill \(host .*, pid {os.getpid()}"):
            run_scaffold.WorkdirLock(tmp_path, "xnli").acquire()
        late.join()
    finally:
        holder.release()


def test_a_killed_holder_holds_nothing(tmp_path):
    """flock dies with its process: a lock file left by SIGKILL blocks nobody (no stale lock to clean up)."""
    code = ("import sys, time; from pathlib import Path; from distil.train.run import WorkdirLock; "
            "lock = WorkdirLock(Path(sys.argv[1]), 'distill'); lock.acquire(); lock.announce(); "
            "print('held', flush=True); time.sleep(60)")
    tmp_path.mkdir(exist_ok=True)
    holder = subprocess.Popen([sys.executable, "-c", code, str(tmp_path)], env=_env(), stdout=subprocess.PIPE,
                              text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(run_scaffold.WorkdirInUse, match=rf"in use by distil distill \(host .*, pid {holder.pid}"):
            run_scaffold.WorkdirLock(tmp_path, "xnli").acquire()
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait(timeout=30)
    lock = run_scaffold.WorkdirLock(tmp_path, "xnli")
    lock.acquire()  # the dead holder's file is still there, its lock is not
    lock.release()


def test_a_kill_between_fingerprint_and_first_checkpoint_resumes_cleanly(tmp_path, capsys):
    workdir = tmp_path / "killed"
    process = _start(workdir, "num_steps=6")
    deadline = time.monotonic() + 240
    while not (workdir / "run.json").exists():
        assert process.poll() is None, process.communicate()
        assert time.monotonic() < deadline, "no run.json"
        time.sleep(0.02)
    process.send_signal(signal.SIGKILL)
    process.wait(timeout=60)
    assert not list((workdir / "checkpoints").glob("[0-9]*")) if (workdir / "checkpoints").exists() else True
    assert json.loads((workdir / "run.json").read_text())["status"] == "running"
    # The same command finishes the run from scratch; another config is refused as for any run.
    assert cli.main(_distill_args(workdir, "num_steps=6", "seed=1")) == 2
    assert "config.seed: 0 -> 1" in capsys.readouterr().err
    done = _run(workdir, "num_steps=6")
    assert done.returncode == 0, done.stderr
    assert [row["step"] for row in read_metrics(workdir / "metrics.jsonl")] == [1, 2, 3, 4, 5, 6]
    assert json.loads((workdir / "run.json").read_text())["status"] == "finished"


# ------------------------------------------------------------------------------------------ another's files


def test_a_folder_of_someone_elses_files_is_refused_and_kept(tmp_path, capsys):
    workdir = tmp_path / "mine"
    workdir.mkdir()
    (workdir / "config.json").write_text('{"my": "notes"}\n')
    (workdir / "metrics.jsonl").write_text('{"step": 1, "mine": true}\n')
    assert cli.main(_distill_args(workdir, "num_steps=2")) == 2
    err = capsys.readouterr().err
    assert f"{workdir}: holds files distil did not write for a run (config.json, metrics.jsonl; no run.json)" in err
    assert (workdir / "config.json").read_text() == '{"my": "notes"}\n'
    assert sorted(path.name for path in workdir.iterdir()) == ["config.json", "metrics.jsonl"]


def test_a_report_folder_with_someone_elses_files_is_refused(finished, tmp_path, capsys):
    out = tmp_path / "report"
    out.mkdir()
    (out / "sweep_report.md").write_text("my own table\n")
    assert cli.main(["report", str(finished), "--out", str(out)]) == 2
    assert f"{out}: holds files distil did not write (sweep_report.md)" in capsys.readouterr().err
    assert (out / "sweep_report.md").read_text() == "my own table\n"
    # A folder distil wrote is rewritten in place, as often as asked.
    fresh = tmp_path / "fresh"
    for _ in range(2):
        assert cli.main(["report", str(finished), "--out", str(fresh)]) == 0
    assert {path.name for path in fresh.iterdir()} == {".distil-files.json", "sweep_report.json", "sweep_report.md",
                                                      "loss_curves.png"}


def test_one_command_per_workdir(finished, capsys):
    assert cli.main(["xnli", "--config", "distilmbert_xnli:runlocal", "--workdir", str(finished),
                     "--config.seeds=(0,)"]) == 2
    assert f"{finished}: holds a `distil distill` run; `distil xnli` needs a workdir of its own" in \
        capsys.readouterr().err


# ------------------------------------------------------------------------------------------- one-line failures


def test_a_non_finite_loss_is_one_line_with_its_own_exit_code(tmp_path, capsys):
    workdir = tmp_path / "nan"
    code = cli.main(_distill_args(workdir, "num_steps=6", "optimizer.learning_rate=1e30",
                                  "optimizer.warmup_fraction=0.0"))
    err = capsys.readouterr().err
    assert code == run_scaffold.EXIT_TRAINING_FAILED == 3
    assert "Traceback" not in err
    last = err.strip().splitlines()[-1]  # after the corpus' progress bar
    assert re.fullmatch(rf"distil distill: training failed: step \d+: the (ce|mlm|cos) loss is nan; stopped \((the "
                        rf"last good checkpoint is step \d+|no checkpoint yet) in {re.escape(str(workdir))}/checkpoints\)",
                        last), last


@pytest.mark.parametrize("command, overrides, message", [
    ("distill", ["student.teacher_layers=abc"], "config.student.teacher_layers[0] is int (0); cannot set it to 'abc'"),
    ("distill", ["optimizer.learning_rate=-1e-3"], "config.optimizer.learning_rate must be > 0 and finite, got -0.001"),
    ("distill", ["masking.word_mask=0.5"], "config.masking.word_mask + word_keep + word_rand must be 1"),
    ("distill", ["loss.temperature=0.0"], "config.loss.temperature must be > 0"),
    ("distill", ["teacher.source=checkpoint", "teacher.checkpoint=~/no-teacher"], "{home}/no-teacher"),
    ("xnli", ["optimizer.b2=1.0"], "config.optimizer.b2 must be in [0, 1), got 1.0"),
    ("xnli", ["init=$DISTIL_TEST_MODELS/none"], "config.init={home}/models/none: no such folder"),
    ("demo", ["speed_batch=0"], "config.speed_batch must be an integer >= 1, got 0"),
    ("distill", ["teacher.checkpoint=hdfs://b/mbert", "teacher.source=checkpoint"],
     "config.teacher.checkpoint=hdfs://b/mbert: hdfs:// is not a storage distil can use; expected a local path or "
     "gs://bucket/path / s3://bucket/path"),
])
def test_bad_values_are_named_before_anything_is_written(command, overrides, message, tmp_path, monkeypatch,
                                                         capsys):
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setenv("DISTIL_TEST_MODELS", str(tmp_path / "home" / "models"))
    config = {"distill": "distilmbert:runlocal", "xnli": "distilmbert_xnli:runlocal", "demo": "demo"}[command]
    code = cli.main([command, "--config", config, "--workdir", "~/run", *(f"--config.{o}" for o in overrides)])
    err = capsys.readouterr().err
    assert code == 2 and len(err.strip().splitlines()) == 1, err
    assert message.format(home=tmp_path / "home") in err
    assert not (tmp_path / "home" / "run").exists()


# ------------------------------------------------------------------------------------------------------ pieces


def test_config_changes_sort_what_may_change_from_what_may_not():
    old = {"num_steps": 10, "log_every_steps": 5, "mesh": {"data": -1}, "loss": {"alpha_ce": 5.0}, "seeds": [0, 1]}
    new = {"num_steps": 20, "log_every_steps": 1, "mesh": {"data": 8}, "loss": {"alpha_ce": 5.0}, "seeds": [0, 1]}
    refused, allowed, grown = run_scaffold.config_changes("distill", old, new, {"jax": "1"}, {"jax": "1"})
    assert refused == [] and grown == ["config.num_steps: 10 -> 20"]
    assert allowed == ["config.log_every_steps: 5 -> 1", "config.mesh.data: -1 -> 8"]
    refused, _, _ = run_scaffold.config_changes("distill", old, {**new, "num_steps": 0}, {"jax": "1"}, {"jax": "2"})
    assert refused == ["config.num_steps: 10 -> 0", "jax version: 1 -> 2"]
    _, _, grown = run_scaffold.config_changes("xnli", {"seeds": [0]}, {"seeds": [0, 2]}, {}, {})
    assert grown == ["config.seeds: [0] -> [0, 2]"]
    refused, _, _ = run_scaffold.config_changes("xnli", {"seeds": [0, 1]}, {"seeds": [0]}, {}, {})
    assert refused == ["config.seeds: [0, 1] -> [0]"]


def test_fingerprints_ignore_what_may_change_and_where_distil_lies():
    config = {"num_steps": 10, "log_every_steps": 5, "tokenizer": str(REPO / "distil" / "data" / "x.txt")}
    versions = {"jax": "1"}
    same = run_scaffold.fingerprint("distill", config, versions)
    assert run_scaffold.fingerprint("distill", {**config, "log_every_steps": 1}, versions) == same
    assert run_scaffold.fingerprint("distill", {**config, "num_steps": 11}, versions) != same
    assert run_scaffold.fingerprint("distill", config, {"jax": "2"}) != same
    assert run_scaffold.identity("distill", config, versions)["config"]["tokenizer"] == "<distil>/data/x.txt"


def test_a_corpus_prepared_elsewhere_is_read_by_the_run_as_it_is(tmp_path, capsys):
    """`distil prepare` once (any machine, into shared storage), then runs read that folder as their corpus: the
    same batches as a run that prepares the corpus itself; a folder prepared for another length is named."""
    from distil.data.embedded import embedded_corpus_dir, embedded_wordpiece_vocab

    prepared = tmp_path / "prepared"
    assert cli.main(["prepare", str(embedded_corpus_dir()), str(prepared), "--tokenizer",
                     str(embedded_wordpiece_vocab()), "--max-length", "64", "--sampling-alpha", "0.7"]) == 0
    assert cli.main(_distill_args(tmp_path / "own", "num_steps=2")) == 0
    assert cli.main(_distill_args(tmp_path / "reader", "num_steps=2", f"data.corpus={prepared}")) == 0
    assert not (tmp_path / "reader" / "data").exists()  # nothing prepared in the workdir
    own, reader = (read_metrics(tmp_path / name / "metrics.jsonl") for name in ("own", "reader"))
    assert [{k: row[k] for k in ("loss", "real_tokens")} for row in reader] == \
        [{k: row[k] for k in ("loss", "real_tokens")} for row in own]
    capsys.readouterr()
    assert cli.main(_distill_args(tmp_path / "other", "num_steps=2", f"data.corpus={prepared}",
                                  "data.max_length=32", "batching.pad_to_multiple=32")) == 2
    assert "sequences split at max_length=64, the run has config.data.max_length=32" in capsys.readouterr().err


def test_a_url_where_a_local_folder_is_needed_is_refused_not_made_a_local_folder(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)  # (object-store workdirs themselves: tests/test_storage.py)
    assert cli.main(["demo", "--workdir", "gs://bucket/demo"]) == 2
    assert "argument --workdir: gs://bucket/demo: this argument takes a local path" in capsys.readouterr().err
    assert not (tmp_path / "gs:").exists()


def test_is_finished_reads_the_record_and_tolerates_none(tmp_path):
    """A demo stage or sweep point is reused only when its run.json says finished; no record, another status, an
    unreadable or non-object record are not finished (opening the run then reports what is wrong)."""
    record = tmp_path / run_scaffold.RUN_FILE
    assert not run_scaffold.is_finished(tmp_path) and not run_scaffold.is_finished(tmp_path / "missing")
    for text, finished in ((json.dumps({"status": "finished"}), True), (json.dumps({"status": "running"}), False),
                           ("{not json", False), ("[1, 2]", False)):
        record.write_text(text)
        assert run_scaffold.is_finished(tmp_path) is finished, text
