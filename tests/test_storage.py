"""Workdirs and inputs on object stores (distil/storage.py), against a local fake with an object store's semantics
(tests/object_store.py: objects published whole at close, no append, rename only as copy + delete, no locks).

The rules of the run scaffold on `gs://`: files written as whole objects (no temporaries, no renames), growing files
rewritten whole, folders uploaded with their manifest or index last, the workdir lock as a lease; and real runs of
`distil distill`, `xnli` and `report` on `gs://` workdirs, through the command in a fresh process."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

import object_store
from conftest import REPO
from distil import atomic, storage
from distil.train import run as run_scaffold
from distil.train.metrics import MetricsWriter, read_metrics


@pytest.fixture
def bucket(tmp_path, monkeypatch):
    """The fake store under tmp_path/store, for this test; the cache under tmp_path/cache."""
    store = object_store.install(tmp_path / "store", setattr=monkeypatch.setattr)
    monkeypatch.setenv(storage.CACHE_VARIABLE, str(tmp_path / "cache"))
    monkeypatch.chdir(tmp_path)  # a URL taken for a local path would make tmp_path/gs:
    object_store.PUBLISHED.clear()
    object_store.RENAMES.clear()
    yield store
    assert not (tmp_path / "gs:").exists(), "a gs:// URL was used as a local path"
    assert object_store.RENAMES == [], "distil renamed an object (an object store has no atomic rename)"


def test_location_and_urls():
    assert isinstance(storage.location("runs/x"), Path)
    assert os.fspath(storage.location("gs://bucket/runs/x") / "run.json") == "gs://bucket/runs/x/run.json"
    with pytest.raises(storage.StorageError, match=r"ftp:// is not a storage distil can use; expected .*gs://"):
        storage.location("ftp://host/x")
    with pytest.raises(storage.StorageError, match="expected gs://BUCKET/PATH"):
        storage.location("gs://")


def test_atomic_writes_are_whole_objects(bucket):
    path = "gs://b/run/summary.json"
    atomic.write_text_atomically(path, '{"a": 1}\n')
    atomic.write_text_atomically(path, '{"a": 2}\n')
    assert storage.location(path).read_text() == '{"a": 2}\n'
    assert object_store.PUBLISHED == [bucket.local(path).as_posix()] * 2  # no temporary object, ever
    assert atomic.stale_temporaries("gs://b/run") == []
    with pytest.raises(OSError, match="cannot append"):  # the fake refuses what a store cannot do
        storage.location(path).open("a")


def test_metrics_rewritten_whole_and_trimmed_on_resume(bucket):
    workdir = "gs://b/run"
    writer = MetricsWriter(workdir, resume_step=0)
    for step in (1, 2, 3):
        writer.write({"step": step, "loss": float(step)})
    writer.close()
    path = f"{workdir}/metrics.jsonl"
    assert [row["step"] for row in read_metrics(path)] == [1, 2, 3]
    assert object_store.PUBLISHED.count(bucket.local(path).as_posix()) == 3  # one whole object per logged step
    resumed = MetricsWriter(workdir, resume_step=2)  # the checkpoint was at step 2: step 3 is logged again
    resumed.write({"step": 3, "loss": 30.0})
    resumed.close()
    assert [(row["step"], row["loss"]) for row in read_metrics(path)] == [(1, 1.0), (2, 2.0), (3, 30.0)]
    events = [entry for entry in storage.location(f"{workdir}/tensorboard").iterdir()]
    assert events and all(entry.stat().length > 0 for entry in events)  # TensorBoard through the same store


def test_folder_upload_manifest_last_and_old_files_removed(bucket, tmp_path):
    folder = "gs://b/run/student"

    def write_v1(staging: Path):
        (staging / "config.json").write_text("{}")
        (staging / "old.bin").write_bytes(b"1")

    def write_v2(staging: Path):
        (staging / "config.json").write_text('{"v": 2}')

    atomic.write_folder_atomically(folder, write_v1)
    assert object_store.PUBLISHED[-1].endswith(f"student/{atomic.MANIFEST}")
    atomic.write_folder_atomically(folder, write_v2)
    assert object_store.PUBLISHED[-1].endswith(f"student/{atomic.MANIFEST}")
    assert sorted(entry.name for entry in storage.location(folder).iterdir()) == [atomic.MANIFEST, "config.json"]
    (bucket.local(folder) / "notes.txt").write_text("mine")  # a user's file: the folder is no longer replaceable
    with pytest.raises(atomic.OutputError, match=r"holds files distil did not write \(notes.txt\)"):
        atomic.write_folder_atomically(folder, write_v2)


def test_local_copy_is_cached_and_follows_changes(bucket):
    remote = bucket.local("gs://b/data")
    remote.mkdir(parents=True)
    (remote / "a.txt").write_text("one")
    (remote / "sub").mkdir()
    (remote / "sub" / "b.txt").write_text("two")
    local = storage.local_copy("gs://b/data")
    assert (local / "a.txt").read_text() == "one" and (local / "sub" / "b.txt").read_text() == "two"
    copied_at = (local / "a.txt").stat().st_mtime_ns
    assert storage.local_copy("gs://b/data") == local and (local / "a.txt").stat().st_mtime_ns == copied_at
    (remote / "a.txt").write_text("changed")
    os.utime(remote / "a.txt", (time.time() + 5, time.time() + 5))
    (remote / "sub" / "b.txt").unlink()
    storage.local_copy("gs://b/data")
    assert (local / "a.txt").read_text() == "changed" and not (local / "sub" / "b.txt").exists()
    single = storage.local_copy("gs://b/data/a.txt")
    assert single.name == "a.txt" and single.read_text() == "changed"
    with pytest.raises(storage.StorageError, match="gs://b/nothing: does not exist"):
        storage.local_copy("gs://b/nothing")


def test_staged_folder_uploads_index_last_and_resumes_from_the_bucket(bucket, tmp_path, monkeypatch):
    with storage.staged("gs://b/prepared", last=("index.json",)) as local:
        (local / "index.json").write_text("{}")
        (local / "tokens-00000.npy").write_bytes(b"x" * 10)
    assert object_store.PUBLISHED[-1].endswith("prepared/index.json")
    sent = len(object_store.PUBLISHED)
    with storage.staged("gs://b/prepared", last=("index.json",)) as again:  # unchanged shards are not sent again
        assert (again / "tokens-00000.npy").read_bytes() == b"x" * 10
    assert [path.rsplit("/", 1)[1] for path in object_store.PUBLISHED[sent:]] == ["index.json"]
    monkeypatch.setenv(storage.CACHE_VARIABLE, str(tmp_path / "another-host"))  # an empty cache sees the bucket's
    with storage.staged("gs://b/prepared", last=("index.json",)) as elsewhere:
        assert sorted(path.name for path in elsewhere.iterdir() if not path.name.startswith(".")) == [
            "index.json", "tokens-00000.npy"]


# --------------------------------------------------------------------------------------------------- the lease


@pytest.fixture
def quick_lease(monkeypatch):
    monkeypatch.setattr(run_scaffold.LeaseLock, "lease_seconds", 1.5)
    monkeypatch.setattr(run_scaffold.LeaseLock, "renew_seconds", 0.2)
    monkeypatch.setattr(run_scaffold.LeaseLock, "settle_seconds", 0.5)


def test_lease_refuses_a_live_holder_and_is_released(bucket, quick_lease):
    holder = run_scaffold.workdir_lock("gs://b/run", "distill")
    assert isinstance(holder, run_scaffold.LeaseLock)
    holder.acquire()
    try:
        started = time.monotonic()
        with pytest.raises(run_scaffold.WorkdirInUse, match=r"gs://b/run: in use by distil distill \(host .*, pid "
                                                            rf"{os.getpid()}, since"):
            run_scaffold.LeaseLock("gs://b/run", "distill").acquire()
        assert time.monotonic() - started < 1.5  # seen renewed within a renewal interval, not after the lease
    finally:
        holder.release()
    assert not storage.location("gs://b/run/run.lock").exists()
    second = run_scaffold.LeaseLock("gs://b/run", "xnli")
    second.acquire()
    second.release()


def test_a_dead_holders_lease_lapses(bucket, quick_lease):
    dead = {"command": "distil distill", "host": "gone", "pid": 1, "since": "then", "token": "dead",
            "renewed": time.time()}
    storage.write_object(storage.location("gs://b/run/run.lock"), json.dumps(dead).encode())
    started = time.monotonic()
    lock = run_scaffold.LeaseLock("gs://b/run", "distill")
    lock.acquire()  # waited for the lapse instead of refusing
    assert 1.0 < time.monotonic() - started < 5
    assert json.loads(storage.location("gs://b/run/run.lock").read_text())["token"] == lock.token
    lock.release()


def test_two_starting_together_one_wins_and_a_takeover_is_noticed(bucket, quick_lease):
    locks = [run_scaffold.LeaseLock("gs://b/run", "distill") for _ in range(2)]
    outcomes = {}

    def take(index):
        try:
            locks[index].acquire()
            outcomes[index] = "held"
        except run_scaffold.WorkdirInUse as err:
            outcomes[index] = str(err)

    threads = [threading.Thread(target=take, args=(index,)) for index in range(2)]
    try:
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert sorted(outcome == "held" for outcome in outcomes.values()) == [False, True], outcomes
        winner = locks[[index for index, outcome in outcomes.items() if outcome == "held"][0]]
        intruder = {"command": "distil distill", "host": "h", "pid": 2, "since": "now", "token": "x",
                    "renewed": time.time()}
        storage.write_object(winner.path, json.dumps(intruder).encode())
        deadline = time.monotonic() + 3
        while not winner.lost and time.monotonic() < deadline:
            time.sleep(0.05)
        assert winner.lost
    finally:
        for lock in locks:  # no renewal thread outlives the fake store
            lock.release()
    assert storage.location("gs://b/run/run.lock").exists()  # the intruder's lease is not ours to delete


# --------------------------------------------------------------------------------------------------- the command


def _distil(store: Path, cache: Path, cwd: Path, *args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=f"{REPO}{os.pathsep}{REPO / 'tests'}", PYTHONUNBUFFERED="1",
               DISTIL_CACHE=str(cache), JAX_PLATFORMS="cpu")
    return subprocess.run([sys.executable, str(REPO / "tests" / "object_store.py"), str(store), "--", "distil",
                           *args], env=env, cwd=cwd, capture_output=True, text=True, timeout=300)


def _digest(folder: Path) -> dict[str, str]:
    return {str(path.relative_to(folder)): hashlib.sha256(path.read_bytes()).hexdigest() + f"@{path.stat().st_mtime_ns}"
            for path in sorted(folder.rglob("*")) if path.is_file()}


FAST = ["--config.data.max_length=64", "--config.batching.pad_to_multiple=64", "--config.batching.global_batch=16",
        "--config.log_every_steps=1", "--config.teacher.max_position_embeddings=64",
        "--config.student.max_position_embeddings=64", "--config.checkpoint.every_steps=2"]


def test_runs_on_a_bucket_through_the_command(tmp_path):
    """distill (extended once), xnli from the distilled workdir and report, all on gs://, each in a fresh process;
    a second host's empty cache; nothing renamed, nothing written under a local `gs:` folder."""
    store, cwd = tmp_path / "store", tmp_path / "cwd"
    cwd.mkdir()
    distill = ["distill", "--config", "distilmbert:runlocal", "--workdir", "gs://b/run", *FAST]
    done = _distil(store, tmp_path / "cache", cwd, *distill, "--config.num_steps=3")
    assert done.returncode == 0, done.stdout + done.stderr
    workdir = store / "b" / "run"
    record = json.loads((workdir / "run.json").read_text())
    assert record["status"] == "finished"
    assert [row["step"] for row in read_metrics(workdir / "metrics.jsonl")] == [1, 2, 3]
    assert (workdir / "checkpoints" / "3" / "commit_success.txt").is_file()  # orbax's object-store commit
    assert (workdir / "data" / "index.json").is_file() and (workdir / "student" / atomic.MANIFEST).is_file()
    assert not (workdir / "run.lock").exists()  # the lease is released

    before = _digest(workdir)
    again = _distil(store, tmp_path / "cache", cwd, *distill, "--config.num_steps=3")
    assert again.returncode == 0 and "finished earlier" in again.stdout + again.stderr
    assert _digest(workdir) == before  # finished is final on a bucket too

    # Extended on "another host" (an empty cache): the corpus and checkpoint come from the bucket.
    shards = {path.name: path.stat().st_mtime_ns for path in (workdir / "data").glob("*-00000.npy")}
    longer = _distil(store, tmp_path / "cache2", cwd, *distill, "--config.num_steps=5")
    assert longer.returncode == 0, longer.stdout + longer.stderr
    assert "resumed from gs://b/run/checkpoints at step 3" in longer.stdout + longer.stderr
    # The prepared corpus came from the bucket (its shards checked, not made or uploaded again).
    assert {path.name: path.stat().st_mtime_ns for path in (workdir / "data").glob("*-00000.npy")} == shards
    assert [row["step"] for row in read_metrics(workdir / "metrics.jsonl")] == [1, 2, 3, 4, 5]

    xnli = _distil(store, tmp_path / "cache3", cwd, "xnli", "--config", "distilmbert_xnli:runlocal", "--workdir",
                   "gs://b/xnli", "--config.init=gs://b/run", "--config.seeds=(0,)", "--config.num_steps=4", "--config.max_length=64",
                   "--config.eval.languages=('en','de')", "--config.export_models=False")
    assert xnli.returncode == 0, xnli.stdout + xnli.stderr
    results = json.loads((store / "b" / "xnli" / "xnli_results.json").read_text())
    assert results["init"] == "gs://b/run/student" and results["model"] == "run"
    assert (store / "b" / "xnli" / "xnli_seed0" / "results.json").is_file()

    report = _distil(store, tmp_path / "cache3", cwd, "report", "gs://b/run", "gs://b/xnli", "--out", "gs://b/report")
    assert report.returncode == 0, report.stdout + report.stderr
    assert {"sweep_report.md", "loss_curves.png", "xnli_report.md"} <= {p.name for p in (store / "b" / "report").iterdir()}

    renamed = [json.loads(path.read_text()) for path in store.glob("renames-*.json")]
    assert len(renamed) == 5 and not any(renamed), renamed  # every process wrote its record; none renamed
    assert not (cwd / "gs:").exists()


def test_urls_where_a_local_path_is_needed_are_refused(tmp_path, capsys):
    from distil import cli

    assert cli.main(["inspect", "gs://b/model"]) == 2
    assert "gs://b/model: this argument takes a local path" in capsys.readouterr().err
    assert cli.main(["distill", "--config", "distilmbert:runlocal", "--workdir", "ftp://h/x"]) == 2
    assert "ftp:// is not a storage distil can use" in capsys.readouterr().err
    assert cli.main(["distill", "--config", "distilmbert:runlocal", "--workdir", str(tmp_path / "w"),
                     "--config.data.corpus=http://example.com/corpus"]) == 2
    assert "config.data.corpus=http://example.com/corpus: http:// is not a storage" in capsys.readouterr().err


def test_remote_inputs_are_read_from_local_copies_and_recorded_as_given(bucket, tmp_path):
    """`run.local_inputs`: every path key a reader needs locally (teacher checkpoint, tokenizer, corpus; XNLI's train
    and eval data) is replaced by its cached copy in the config the trainer reads; the config the run records keeps
    the URLs; tfds' data_dir and xnli's init are left to their own readers."""
    from distil.config import load_config
    from distil.data.embedded import embedded_wordpiece_vocab

    for key, content in {"models/teacher/config.json": "{}", "vocab.txt": embedded_wordpiece_vocab().read_text(),
                         "corpus/en.txt": "one line\n", "xnli/dev-en.tsv": "x\n", "mnli/train.jsonl": "{}\n"}.items():
        target = bucket.local(f"gs://b/{key}")
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(content)
    distill = load_config("distilmbert:runlocal", ["teacher.checkpoint=gs://b/models/teacher",
                                                   "tokenizer=gs://b/vocab.txt", "data.corpus=gs://b/corpus",
                                                   "data.tfds_data_dir=gs://b/tfds"])
    local = run_scaffold.local_inputs("distill", distill)
    assert Path(local.teacher.checkpoint, "config.json").read_text() == "{}"
    assert Path(local.tokenizer).read_text() == embedded_wordpiece_vocab().read_text()
    assert Path(local.data.corpus, "en.txt").read_text() == "one line\n"
    assert local.data.tfds_data_dir == "gs://b/tfds" and distill.teacher.checkpoint == "gs://b/models/teacher"
    assert all(str(tmp_path / "cache") in value for value in (local.teacher.checkpoint, local.tokenizer,
                                                               local.data.corpus))
    xnli = load_config("distilmbert_xnli:runlocal", ["init=gs://b/run", "eval.path=gs://b/xnli",
                                                     "train.path=gs://b/mnli/train.jsonl"])
    local = run_scaffold.local_inputs("xnli", xnli)
    assert local.init == "gs://b/run" and Path(local.eval.path, "dev-en.tsv").read_text() == "x\n"
    assert Path(local.train.path).read_text() == "{}\n" and xnli.train.path == "gs://b/mnli/train.jsonl"
