"""The run scaffold: a workdir is one run, of one config, by one live process at a time.

Every command that writes a run (`distil distill`, `distil xnli`, `distil demo` and its stages, each sweep point)
opens its workdir with `open_run`, which, before anything else is written:

- **Exclusive.** Takes `run.lock` with `flock`: the kernel drops it when its process ends however it ends, so a
  killed run never blocks the next one. A second live run exits 2 naming the holder (command, host, pid, since).
  Under `jax.distributed` process 0 decides and every process learns its decision. On an object store, which has
  no flock, `run.lock` is a lease (`LeaseLock`) that the live run renews and a dead run's lapses.
- **One config per run.** The resolved config and the library versions are fingerprinted into `run.json` when
  the run starts. A rerun with any difference that changes results is refused, listing each key `old -> new`,
  before anything is written. `MUTABLE` lists what may change on a resume (logging and checkpoint cadence, the
  mesh, more steps or seeds); a run extended on purpose says so in its record and summary.
- **Finished is final.** Rerunning a finished run says where its results are and exits 0, every file untouched.
- **Never another's files.** A folder that holds files but no `run.json` (the user's, or another tool's) is
  refused with their names; a run only ever writes the names of its `*_FILE` / `*_DIR` constants.
- **Failures are one line** (`TrainingError`, exit code `EXIT_TRAINING_FAILED`): the step, the term and the last
  good checkpoint, or "no checkpoint yet".

`run.json` is written first (its config is what a resume is checked against), then `config.json` (the same
config, for people and `distil report`); a kill between the two leaves a run that the next start completes.
Only process 0 writes. Nothing here imports JAX at module level: `distil sweep` and `distil report` read these
names without starting it.
"""

from __future__ import annotations

import dataclasses
import datetime
import errno
import fcntl
import hashlib
import importlib.metadata
import json
import os
import secrets
import socket
import sys
import threading
import time
from pathlib import Path
from typing import Any, Iterable, Mapping

from distil import storage
from distil.atomic import OutputError, is_temporary, make_output_folder, write_text_atomically

# Files of a workdir, each name said once. Every command's run has RUN_FILE, LOCK_FILE and RUN_CONFIG_FILE.
RUN_FILE = "run.json"  # the record: command, config fingerprint, the config, versions, status, history
LOCK_FILE = "run.lock"  # flock-ed by the live run; its text names the holder
RUN_CONFIG_FILE = "config.json"  # the resolved config (a copy of run.json's, for people and reports)
METRICS_FILE = "metrics.jsonl"  # one JSON object per logged step
TENSORBOARD_DIR = "tensorboard"  # event files of the run's scalars (and profiles), beside metrics.jsonl
SUMMARY_FILE = "summary.json"  # distill: written last, the run's outcome
CHECKPOINT_DIR = "checkpoints"
DATA_DIR = "data"  # distill: the binarised corpus
STUDENT_DIR = "student"  # distill: the student as a Hugging Face folder
TRIM_DIR = "trim"  # distill with config.trim: the trimmed tokenizer and kept_ids.json
RESULTS_FILE = "xnli_results.json"  # xnli: per language and seed (+ .md, .png beside it)
SEED_DIR = "xnli_seed{seed}"  # xnli: one seed's checkpoints, metrics, results.json and model/
SEED_RESULTS_FILE = "results.json"  # xnli, in a seed's folder: its accuracies and the settings they came from
SWEEP_RECORD = "sweep.json"  # a sweep root: each current point's status, overrides and fingerprint
XNLI_DIR = "xnli"  # a sweep point's XNLI run, inside its distill workdir
REPORT_FILE = "report.md"  # demo: the report a person reads first
DEMO_FILE = "demo.json"  # demo: stage times, speed, XNLI averages, the dry run
LOSS_CURVES_FILE = "loss_curves.png"  # demo and distil report
DRY_RUN_FILE = "dry_run.txt"  # demo: the full recipe's memory dry run

# Exit codes of the `distil` command (cli.py): 2 bad input or a refused workdir; 3 a training failure.
EXIT_BAD_INPUT = 2
EXIT_TRAINING_FAILED = 3

# Keys that may differ when a run resumes: they change how a run is logged, saved or laid out on devices, not its
# numbers (batches and masks do not depend on the mesh; only float sums are reordered). "grow" keys may only grow:
# a distillation extended to more steps (its schedule then follows the new num_steps), an XNLI run given more seeds.
MUTABLE = {
    "distill": ("log_every_steps", "checkpoint.every_steps", "checkpoint.keep", "checkpoint.async_save",
                "profile.*", "mesh.*", "sharding.*"),
    "xnli": ("log_every_steps", "checkpoint.async_save", "profile.*", "mesh.*", "sharding.*"),
    "demo": (),
}
GROW = {"distill": ("num_steps",), "xnli": ("seeds",), "demo": ()}
# Config values that are paths, per command: `~` and environment variables are expanded (`resolve_config`) before a
# run is fingerprinted and read.
PATH_KEYS = {
    "distill": ("tokenizer", "teacher.checkpoint", "data.corpus", "data.tfds_data_dir"),
    "xnli": ("init", "tokenizer", "train.path", "train.xnli_mt_dir", "eval.path"),
    "demo": (),
}
# Inputs a reader needs as local files: an object-store value (gs://) is copied into the cache first
# (`local_inputs`). Not tfds' data_dir (tfds reads buckets itself), nor xnli's init (a distil workdir: only its
# student/ is copied, by `xnli.starting_model`).
LOCAL_INPUT_KEYS = {command: tuple(key for key in keys if key not in ("data.tfds_data_dir", "init")) for command, keys
                    in PATH_KEYS.items()}
# Packages whose versions are part of a run's identity (their arithmetic is the run's).
VERSIONED_PACKAGES = ("distil", "jax", "jaxlib", "flax", "optax", "orbax-checkpoint", "grain", "tokenizers")


class TrainingError(RuntimeError):
    """The run cannot go on (a non-finite loss); one line naming the step, the term and the last good checkpoint.
    The command exits with `EXIT_TRAINING_FAILED`."""


class RunConfigError(OutputError):
    """A rerun whose config differs from the run in its workdir; names every differing key."""


class WorkdirInUse(OutputError):
    """Another live process holds the workdir; names it."""


def resolve_config(command: str, config) -> None:
    """The config as a run of `command` reads it: its path values expanded, in place (`config.expand_paths`)."""
    from distil.config import expand_paths

    expand_paths(config, PATH_KEYS[command])


def local_inputs(command: str, config):
    """A copy of `config` whose object-store inputs (`LOCAL_INPUT_KEYS`) name local copies of them
    (`storage.local_copy`); `config` itself, with the URLs, is what the run records."""
    import copy

    local = copy.deepcopy(config)
    for key in LOCAL_INPUT_KEYS[command]:
        *parents, leaf = key.split(".")
        node = local
        for name in parents:
            node = node[name]
        if isinstance(node[leaf], str) and storage.is_remote(node[leaf]):
            node[leaf] = str(storage.local_copy(node[leaf], f"config.{key}"))
    return local


def versions() -> dict[str, str]:
    out = {}
    for name in VERSIONED_PACKAGES:
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            out[name] = "not installed"
    return out


def flatten(config: Mapping, prefix: str = "") -> dict[str, Any]:
    """{'loss': {'temperature': 2.0}} -> {'loss.temperature': 2.0}; lists become tuples (hashable, comparable)."""
    out = {}
    for key, value in config.items():
        if isinstance(value, Mapping):
            out.update(flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = _hashable(value)
    return out


def _hashable(value):
    return tuple(_hashable(item) for item in value) if isinstance(value, (list, tuple)) else value


def config_data(config) -> dict:
    """A ConfigDict (or mapping) as plain JSON data: what run.json stores and fingerprints."""
    text = config.to_json_best_effort() if hasattr(config, "to_json_best_effort") else json.dumps(config)
    return json.loads(text)


def _matches(key: str, patterns: Iterable[str]) -> bool:
    return any(key == pattern or (pattern.endswith(".*") and key.startswith(pattern[:-1])) for pattern in patterns)


_PACKAGE_DIR = str(Path(__file__).resolve().parents[1])  # distil/: its shipped files are the same wherever it lies


def _portable(value):
    """A path into the distil package (a shipped vocabulary) as `<distil>/...`: the same file in every checkout
    or install of one version."""
    if isinstance(value, str) and value.startswith(_PACKAGE_DIR + os.sep):
        return "<distil>" + value[len(_PACKAGE_DIR):]
    return value


def identity(command: str, config: Mapping, package_versions: Mapping[str, str]) -> dict:
    """What makes two runs the same run: the command, every config value that is not `MUTABLE` (grow keys
    included: an extended run is not the same as the shorter one, though it may continue it), and the versions."""
    flat = {key: _portable(value) for key, value in flatten(config).items() if not _matches(key, MUTABLE[command])}
    return {"command": command, "config": flat, "versions": dict(package_versions)}


def fingerprint(command: str, config: Mapping, package_versions: Mapping[str, str] | None = None) -> str:
    """A short hash of `identity(...)`: equal exactly when the runs are the same run."""
    value = identity(command, config, versions() if package_versions is None else package_versions)
    text = json.dumps(value, sort_keys=True, default=repr)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


def _grows(key: str, old, new) -> bool:
    if key == "seeds":
        return set(old or ()) <= set(new or ()) and old != new
    return isinstance(old, int) and isinstance(new, int) and new > old > 0


def config_changes(command: str, old: Mapping, new: Mapping, old_versions: Mapping, new_versions: Mapping):
    """(refused, allowed, grown): lists of 'key: old -> new' between a run's stored config and a rerun's."""
    flat_old = {key: _portable(value) for key, value in flatten(old).items()}
    flat_new = {key: _portable(value) for key, value in flatten(new).items()}
    refused, allowed, grown = [], [], []
    for key in sorted(set(flat_old) | set(flat_new)):
        before, after = flat_old.get(key, "<absent>"), flat_new.get(key, "<absent>")
        if before == after:
            continue
        line = f"config.{key}: {_show(before)} -> {_show(after)}"
        if _matches(key, MUTABLE[command]):
            allowed.append(line)
        elif key in GROW[command] and _grows(key, before, after):
            grown.append(line)
        else:
            refused.append(line)
    for name in sorted(set(old_versions) | set(new_versions)):
        if old_versions.get(name) != new_versions.get(name):
            refused.append(f"{name} version: {old_versions.get(name)} -> {new_versions.get(name)}")
    return refused, allowed, grown


def _show(value) -> str:
    return repr(list(value)) if isinstance(value, tuple) else repr(value)


def _now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def read_json(path, what: str) -> dict:
    """A JSON file distil wrote; an unreadable one is an `OutputError` naming it (never a traceback)."""
    return storage.read_json(path, what, error=OutputError)


# ------------------------------------------------------------------------------------------------------- lock


NAME_WAIT_SECONDS = 2.0  # how long a refused run waits for the holder's name (a finished run's rerun never writes one)


def is_finished(workdir: str | os.PathLike) -> bool:
    """Whether the run in `workdir` finished (its record says so): a demo stage or sweep point to reuse. A missing
    or unreadable record is not finished; opening the run then says what is wrong with it."""
    try:
        return json.loads((Path(workdir) / RUN_FILE).read_text(encoding="utf-8")).get("status") == "finished"
    except (OSError, ValueError, AttributeError):
        return False


class WorkdirLock:
    """An exclusive `flock` on `folder/run.lock` that the holding process keeps until `release()` or its end.

    A dead holder holds nothing: the kernel releases a process' locks when it exits, SIGKILL included, so there is
    no stale lock to clean up. The file's text (command, host, pid, since) only names the holder in the refusal.
    """

    def __init__(self, folder: Path, command: str):
        self.path = Path(folder) / LOCK_FILE
        self.command = command
        self._descriptor: int | None = None

    def acquire(self) -> None:
        descriptor = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o666)
        try:
            fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as err:
            os.close(descriptor)
            if err.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise WorkdirInUse(f"{self.path.parent}: in use by {self.holder()}; wait for it to end, or use "
                                   "another workdir") from None
            raise OutputError(f"{self.path}: the file system refuses a lock ({err.strerror}); distil needs one to "
                              "keep two runs out of one workdir") from None
        self._descriptor = descriptor

    def announce(self) -> None:
        """Writes the holder's name into the lock file, for a refused second run to print (a finished run's rerun
        does not: it changes no file)."""
        holder = {"command": f"distil {self.command}", "host": socket.gethostname(), "pid": os.getpid(),
                  "since": _now()}
        os.ftruncate(self._descriptor, 0)
        os.pwrite(self._descriptor, (json.dumps(holder) + "\n").encode(), 0)

    def holder(self, wait_seconds: float = NAME_WAIT_SECONDS) -> str:
        """The holder's name from the lock file. A run that has just taken the lock writes its name a moment later
        (`announce`, after reading its workdir's record), so a run refused in that moment waits up to
        `wait_seconds` for it rather than printing no name."""
        deadline = time.monotonic() + wait_seconds
        while True:
            try:
                info = json.loads(self.path.read_text(encoding="utf-8"))
            except (OSError, ValueError):  # not written yet, or between the truncation and the write
                info = None
            if isinstance(info, dict) and "pid" in info:
                return _holder(info)
            if time.monotonic() >= deadline:
                return "another process (it has not written its name yet)"
            time.sleep(0.05)

    def release(self) -> None:
        if self._descriptor is not None:
            fcntl.flock(self._descriptor, fcntl.LOCK_UN)
            os.close(self._descriptor)
            self._descriptor = None


class LeaseLock:
    """The workdir lock on an object store, which has no flock: `run.lock` is a lease object naming its holder, with
    a random token and the time it was last renewed. A thread of the holder renews it every `renew_seconds`.

    - **Taking it.** No lease, or one not renewed for `lease_seconds` (its holder died), is free. A live-looking
      lease is watched for up to `lease_seconds`: renewed meanwhile, its holder is alive and the run is refused
      (within one renewal interval); lapsed, it is taken. So a restarted job (a preempted pod) waits at most one
      lease period for its dead predecessor's lease, and never needs a person to delete it.
    - **Two starting together.** Each writes its lease, waits `settle_seconds` and reads it back: the last writer
      wins, the other is refused. This holds when the two writes land within `settle_seconds` of each other;
      beyond that, the later one sees the earlier one's lease first.
    - **Lost.** A renewal that finds another's token stops renewing and says so on stderr; `lost` is then set.
    - **Released** by deleting the lease (only if it is still ours).
    """

    lease_seconds = 60.0
    renew_seconds = 15.0
    settle_seconds = 2.0

    def __init__(self, folder, command: str):
        self.path = storage.location(folder) / LOCK_FILE
        self.command = command
        self.token = secrets.token_hex(8)
        self.lost = False
        self._since = _now()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _read(self) -> dict | None:
        try:
            lease = json.loads(self.path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return None
        except (OSError, ValueError):
            return {}  # torn or foreign: treated as a lease that nobody renews
        return lease if isinstance(lease, dict) else {}

    def _write(self) -> None:
        lease = {"command": f"distil {self.command}", "host": socket.gethostname(), "pid": os.getpid(),
                 "since": self._since, "token": self.token, "renewed": time.time()}
        storage.write_object(self.path, (json.dumps(lease) + "\n").encode())

    def acquire(self) -> None:
        lease = self._read()
        if lease is not None and lease.get("token") != self.token:
            self._wait_for_lapse(lease)
        self._write()
        time.sleep(self.settle_seconds)
        lease = self._read()
        if not lease or lease.get("token") != self.token:
            raise WorkdirInUse(f"{self.path.parent}: in use by {_holder(lease)}, which started at the same time; "
                               "wait for it to end, or use another workdir")
        self._thread = threading.Thread(target=self._renew, name="distil-lease", daemon=True)
        self._thread.start()

    def _wait_for_lapse(self, lease: dict) -> None:
        """Returns once `lease` has lapsed; raises `WorkdirInUse` if its holder renews it meanwhile."""
        renewed = lease.get("renewed")
        deadline = (renewed if isinstance(renewed, (int, float)) else 0.0) + self.lease_seconds
        while time.time() < deadline:
            time.sleep(min(self.renew_seconds / 3, max(deadline - time.time(), 0.0)) + 0.01)
            now = self._read()
            if now is None:
                return
            if now.get("renewed") != renewed:
                raise WorkdirInUse(f"{self.path.parent}: in use by {_holder(now)} (its lease on {self.path.name} is "
                                   "renewed while it runs); wait for it to end, or use another workdir")

    def _renew(self) -> None:
        while not self._stop.wait(self.renew_seconds):
            try:
                lease = self._read()
                if lease is not None and lease.get("token") != self.token:
                    self.lost = True
                    print(f"distil: {self.path.parent}: the workdir lease was taken over by {_holder(lease)}; this "
                          "run no longer holds its workdir", file=sys.stderr, flush=True)
                    return
                self._write()
            except Exception as err:  # a store's transient error (any type: tf.io.gfile's are not OSError)
                print(f"distil: {self.path}: lease renewal failed ({type(err).__name__}: {err}); trying again in "
                      f"{self.renew_seconds:g} s", file=sys.stderr, flush=True)

    def announce(self) -> None:
        """The lease already names its holder."""

    def release(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None
            lease = self._read()
            if lease and lease.get("token") == self.token:
                self.path.unlink()


def _holder(lease: dict | None) -> str:
    try:
        return f"{lease['command']} (host {lease['host']}, pid {lease['pid']}, since {lease['since']})"
    except (KeyError, TypeError):
        return "another process"


def workdir_lock(folder, command: str):
    """The lock for `folder`: `flock` locally, a lease on an object store."""
    return LeaseLock(folder, command) if storage.is_remote(folder) else WorkdirLock(folder, command)


# -------------------------------------------------------------------------------------------------------- run


@dataclasses.dataclass
class Run:
    """An opened workdir. `status`: "new", "resumed" (a checkpoint or partial files may follow), "extended" (a
    finished run given more steps or seeds) or "finished" (nothing to do: `finished_message()` says where the
    results are)."""

    workdir: storage.Location
    command: str
    status: str
    record: dict
    changes: list[str]
    _lock: WorkdirLock | LeaseLock | None = None

    @property
    def finished(self) -> bool:
        return self.status == "finished"

    @property
    def is_writer(self) -> bool:
        return self._lock is not None

    def finished_message(self) -> str:
        return (f"{self.workdir}: finished earlier ({self.record.get('finished')}); its results are in "
                f"{self.workdir} and nothing was changed. A new config needs a new workdir")

    def check_held(self) -> None:
        """Raises `TrainingError` once this run has lost its workdir to another (a lease taken over on an object
        store; a `flock` is never lost)."""
        if isinstance(self._lock, LeaseLock) and self._lock.lost:
            raise TrainingError(f"{self.workdir}: another run took over this workdir's lease; stopped without "
                                "writing more (one run per workdir)")

    def report(self, log) -> None:
        """Says what opening the workdir found: a finished run (where its results are; nothing will be written) or the
        settings that changed since the run started."""
        if self.finished:
            log(self.finished_message())
        elif self.changes:
            log(f"{self.status} with changed settings: " + "; ".join(self.changes))

    def extensions(self) -> list[dict]:
        return list(self.record.get("history", []))

    def mark_finished(self) -> None:
        """Records the run as finished (after its results are written): a rerun then changes nothing."""
        if self.is_writer:
            self.record.update(status="finished", finished=_now())
            write_text_atomically(self.workdir / RUN_FILE, json.dumps(self.record, indent=2) + "\n")

    def close(self) -> None:
        if self._lock is not None:
            self._lock.release()
            self._lock = None

    def __enter__(self) -> "Run":
        return self

    def __exit__(self, *exc) -> bool:
        self.close()
        return False


def _own_entries(folder) -> set[str]:
    """What a workdir holds before its run.json: the lock, and temporaries of distil's atomic writes (a starting
    run's own, or those of one that started a moment earlier)."""
    return {LOCK_FILE, *(entry.name for entry in storage.entries(folder) if is_temporary(entry.name))}


def _refuse_foreign(workdir: Path) -> None:
    """A workdir without run.json must hold nothing but what a starting run leaves (its lock, our temporaries)."""
    if (workdir / RUN_FILE).exists():
        return
    foreign = [entry.name for entry in storage.entries(workdir) if entry.name not in _own_entries(workdir)]
    if foreign:
        shown = ", ".join(foreign[:6]) + (f" and {len(foreign) - 6} more" if len(foreign) > 6 else "")
        raise OutputError(f"{workdir}: holds files distil did not write for a run ({shown}; no {RUN_FILE}); "
                          "choose a new or empty workdir")


def _write_record(workdir: Path, record: dict) -> None:
    """run.json first (what a resume is checked against), then config.json, its copy for people and reports."""
    write_text_atomically(workdir / RUN_FILE, json.dumps(record, indent=2) + "\n")
    write_text_atomically(workdir / RUN_CONFIG_FILE, json.dumps(record["config"], indent=2) + "\n")


def _open_on_writer(workdir: Path, command: str, data: dict, package_versions: dict) -> Run:
    make_output_folder(workdir, "workdir")
    _refuse_foreign(workdir)  # before the lock file is created in someone else's folder
    lock = workdir_lock(workdir, command)
    lock.acquire()
    try:
        record_path = workdir / RUN_FILE
        if not record_path.exists():
            _refuse_foreign(workdir)  # again, under the lock
            lock.announce()
            record = {"command": command, "fingerprint": fingerprint(command, data, package_versions),
                      "config": data, "versions": package_versions, "created": _now(), "status": "running",
                      "history": []}
            _write_record(workdir, record)
            return Run(workdir, command, "new", record, [], lock)

        record = read_json(record_path, "run record")
        if not isinstance(record, dict) or not isinstance(record.get("config"), dict):
            raise OutputError(f"{record_path}: not a run record of distil (expected 'command' and 'config')")
        if record.get("command") != command:
            raise OutputError(f"{workdir}: holds a `distil {record.get('command')}` run; `distil {command}` needs a "
                              "workdir of its own")
        refused, allowed, grown = config_changes(command, record["config"], data, record.get("versions", {}),
                                                 package_versions)
        if refused:
            raise RunConfigError(f"{workdir}: holds a run of another config, which this one would mix into it: "
                                 + "; ".join(refused) + ". Use the original settings to resume it, or another workdir")
        finished = record.get("status") == "finished"
        if finished and not grown:
            return Run(workdir, command, "finished", record, allowed, lock)
        lock.announce()
        if allowed or grown:
            record["history"] = [*record.get("history", []),
                                 {"at": _now(), "changed": allowed + grown, "extended": bool(grown and finished)}]
        record.update(config=data, fingerprint=fingerprint(command, data, package_versions), status="running")
        _write_record(workdir, record)
        return Run(workdir, command, "extended" if finished else "resumed", record, allowed + grown, lock)
    except BaseException:
        lock.release()
        raise


def open_run(workdir: str | os.PathLike, command: str, config) -> Run:
    """Opens `workdir` for a run of `distil COMMAND` with `config` (a ConfigDict or JSON-like mapping), enforcing
    the rules of this module; process 0 decides, every process gets the same `Run` status (only process 0 holds the
    lock and writes). Raises `OutputError` (exit 2) for a workdir that is in use, of another config or another's."""
    workdir = storage.location(workdir)
    data = config_data(config)
    package_versions = versions()
    process_count, process_index = _processes()
    if process_index == 0:
        try:
            run = _open_on_writer(workdir, command, data, package_versions)
        except BaseException as err:
            if process_count > 1:
                _share_status("refused", str(err))
            raise
        if process_count > 1:
            _share_status(run.status, "")
        return run
    status, message = _share_status(None, "")
    if status == "refused":
        raise OutputError(f"process 0 refused {workdir}: {message}")
    return Run(workdir, command, status, {}, [], None)


_STATUSES = ("new", "resumed", "extended", "finished", "refused")


def _processes() -> tuple[int, int]:
    import jax

    return jax.process_count(), jax.process_index()


def _share_status(status: str | None, message: str) -> tuple[str, str]:
    """Process 0's decision (status, and the refusal's first 500 characters) broadcast to every process."""
    import numpy as np
    from jax.experimental import multihost_utils

    encoded = np.zeros(501, np.int32)
    if status is not None:
        encoded[0] = _STATUSES.index(status)
        text = message.encode("utf-8")[:500]
        encoded[1:1 + len(text)] = np.frombuffer(text, np.uint8)
    received = np.asarray(multihost_utils.broadcast_one_to_all(encoded))
    text = bytes(received[1:].astype(np.uint8)).rstrip(b"\0").decode("utf-8", errors="replace")
    return _STATUSES[int(received[0])], text


def check_output_folder(folder: str | os.PathLike, names: Iterable[str], what: str) -> Path:
    """A folder that commands rewrite file by file (`distil report --out`): new, empty, or holding nothing but files
    distil wrote there earlier (`MANIFEST` of atomic.py lists them). Returns it, created."""
    from distil.atomic import MANIFEST, foreign_files, manifest_text

    folder = make_output_folder(folder, what)
    foreign = [name for name in foreign_files(folder) if name not in _own_entries(folder)]
    if foreign:
        shown = ", ".join(foreign[:6]) + (f" and {len(foreign) - 6} more" if len(foreign) > 6 else "")
        raise OutputError(f"{folder}: holds files distil did not write ({shown}); choose a new or empty {what}")
    listed = sorted(set(names) | set(entry.name for entry in storage.entries(folder) if entry.name != MANIFEST
                                     and not entry.name.startswith(".")))
    write_text_atomically(folder / MANIFEST, manifest_text(listed))
    return folder
