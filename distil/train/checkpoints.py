"""Checkpoints with orbax: the train state, the data iterator and the data settings, saved together; exact resume.

One `ocp.CheckpointManager` in `WORKDIR/checkpoints` saves, every `every_steps` (asynchronously, keeping the last
`keep`), a Composite of
  state:    the `TrainState` (student and loss-side parameters, optimizer state, step, RNG) — never the teacher;
  data:     the grain iterator's position (`grain.checkpoint.CheckpointSave`; one file per process);
  settings: the data settings the batches depend on (seed, global batch, micro-batches, max length, masking,
            corpus fingerprint, process count) as JSON.
Resuming restores the state onto its shardings and the iterator to the same next batch; settings that differ from
the checkpoint's are an error naming the field, never a silent change of batches.

Orbax installs no signal handler: `PreemptionGuard` turns SIGTERM (a pre-emptible TPU VM going away) into a flag
the loop polls, and under `jax.distributed` the manager's `reached_preemption(step)` reports the coordinated
pre-emption point; either way the loop saves with `force=True` and exits 0.
"""

from __future__ import annotations

import contextlib
import json
import signal
import threading
from pathlib import Path
from typing import Any, Mapping

import grain
import jax
import orbax.checkpoint as ocp

from distil import storage


class ResumeError(ValueError):
    """A checkpoint that cannot resume this run exactly; the message names the differing setting."""


def make_manager(directory: str | Path, *, every_steps: int, keep: int, async_save: bool) -> ocp.CheckpointManager:
    """Saves at multiples of `every_steps` (and when asked, `force`). Not orbax's default initial save at a fresh
    run's first step: its host copy of the state overlapped the second step's temporaries and set the trainer's
    peak memory (`distil bench step --variants trainer` at full size: 8.04 GiB peak RSS with it, 5.11 without)."""
    policies = ocp.checkpoint_managers
    options = ocp.CheckpointManagerOptions(
        save_decision_policy=policies.AnySavePolicy([policies.FixedIntervalPolicy(every_steps),
                                                     policies.PreemptionCheckpointingPolicy()]),
        max_to_keep=keep,
        enable_async_checkpointing=async_save,
        create=True,
    )
    directory = storage.location(directory)  # orbax writes gs:// itself (no rename there: commit_success.txt)
    return ocp.CheckpointManager(directory if storage.is_remote(directory) else directory.absolute(), options=options)


def save(manager: ocp.CheckpointManager, step: int, state, iterator, settings: Mapping[str, Any], *,
         force: bool = False) -> bool:
    """Saves if `step` is a save step, a multiple of `every_steps` (or `force`); returns whether a save was
    started."""
    return manager.save(
        step,
        args=ocp.args.Composite(
            state=ocp.args.StandardSave(state),
            data=grain.checkpoint.CheckpointSave(iterator),
            settings=ocp.args.JsonSave(dict(settings)),
        ),
        force=force,
    )


def check_settings(saved: Mapping[str, Any], current: Mapping[str, Any], directory: str | Path) -> None:
    """Every data setting of the checkpoint must equal this run's: the batches after a resume must be the ones the
    interrupted run would have seen."""
    for key in sorted(set(saved) | set(current)):
        if saved.get(key) != current.get(key):
            raise ResumeError(
                f"{directory}: the checkpoint was written with {key}={saved.get(key)!r}, this run has "
                f"{key}={current.get(key)!r}; resuming would change the batches. Use the original setting or a new "
                "workdir"
            )


def restore(manager: ocp.CheckpointManager, abstract_state, iterator, settings: Mapping[str, Any]):
    """(state, step) from the latest checkpoint, the iterator moved to its next batch; (None, 0) when there is
    none. `abstract_state` carries the target shardings (`jax.ShapeDtypeStruct(..., sharding=...)` leaves)."""
    step = manager.latest_step()
    if step is None:
        return None, 0
    where = manager.directory / str(step)
    with _named_failures(where):
        saved_settings = manager.restore(step, args=ocp.args.Composite(settings=ocp.args.JsonRestore()))["settings"]
    check_settings(saved_settings, settings, manager.directory)
    data_dir = where / "data"
    own = data_dir / f"process_{jax.process_index()}-of-{jax.process_count()}.json"
    with _named_failures(where):
        if own.exists():
            restored = manager.restore(step, args=ocp.args.Composite(
                state=ocp.args.StandardRestore(abstract_state), data=grain.checkpoint.CheckpointRestore(iterator)))
        else:  # written by another number of processes
            restored = manager.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract_state)))
            iterator.set_state(_shared_iterator_state(data_dir))
    return restored["state"], step


@contextlib.contextmanager
def _named_failures(where: Path):
    """An unreadable checkpoint is one line naming it (orbax's own errors run to pages of tree dumps). The run
    scaffold has already refused any config change that alters the state's shapes, so this is damage or a
    checkpoint from another program."""
    try:
        yield
    except ResumeError:
        raise
    except Exception as err:  # orbax, tensorstore and asyncio raise many types
        first = str(err).strip().splitlines()[0][:300] if str(err).strip() else ""
        raise ResumeError(f"{where}: cannot restore this checkpoint ({type(err).__name__}: {first}); it may be "
                          "damaged: move it aside to resume from the one before, or use a new workdir") from None


def _shared_iterator_state(data_dir: Path) -> dict:
    """The iterator position of a checkpoint written by a different number of processes.

    Every process of a run walks the same global plan (`GroupedBatchSource`: a step's rows and masks do not depend
    on the process count), so their saved positions are one position, which any process count can resume from.
    """
    states = {path.name: json.loads(path.read_text()) for path in sorted(data_dir.glob("process_*-of-*.json"))}
    if not states:
        raise ResumeError(f"{data_dir.parent}: the checkpoint holds no iterator position (no {data_dir.name}/"
                          "process_*-of-*.json); it is damaged: move it aside to resume from the one before, or use a "
                          "new workdir")
    distinct = {json.dumps(state, sort_keys=True) for state in states.values()}
    if len(distinct) != 1:
        raise ResumeError(f"{data_dir}: the processes that wrote this checkpoint saved different iterator states "
                          f"({', '.join(sorted(states))}); it can only resume with the same number of processes")
    return json.loads(distinct.pop())


class PreemptionGuard:
    """Turns SIGTERM into a flag (`requested`) that the training loop polls between steps; restores the previous
    handler on exit. Only the main thread may install signal handlers; elsewhere it is a no-op."""

    def __init__(self, signals=(signal.SIGTERM,)):
        self.requested = False
        self._signals = signals
        self._previous = {}

    def _handle(self, signum, frame):
        del frame
        self.requested = True
        print(f"received {signal.Signals(signum).name}: saving a checkpoint after this step, then exiting",
              flush=True)

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            for signum in self._signals:
                self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def __exit__(self, *exc):
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        return False

    def should_stop(self, manager: ocp.CheckpointManager, step: int) -> bool:
        """True when this process got SIGTERM; under jax.distributed, when the job reached its coordinated
        pre-emption point (every process must stop at the same step, so a local flag alone is not enough)."""
        if jax.process_count() > 1:
            return manager.reached_preemption(step)
        return self.requested
