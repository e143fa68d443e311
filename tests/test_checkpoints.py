"""distil/train/checkpoints.py on its own, with real orbax checkpoints of a small state pytree and a real grain
iterator (read by threads with prefetching, as `distil distill` reads its batches) in tmp_path: what is saved when,
what a restore gives back (the state's values onto the target shardings, the iterator at the next batch, the step),
the refusals (changed data settings naming the key, damaged checkpoints naming the step folder, iterator positions
that disagree between processes), the iterator position of a checkpoint written by another number of processes,
and `PreemptionGuard` turning a real SIGTERM into a flag. Expected values are the arrays saved and the batches an
uninterrupted iterator yields; the resume of a whole run is tested in tests/test_distill.py."""

from __future__ import annotations

import json
import shutil
import signal
import threading

import grain
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import NamedSharding, PartitionSpec

from distil.train import checkpoints
from distil.train.checkpoints import PreemptionGuard, ResumeError

SETTINGS = {"seed": 3, "global_batch": 16, "micro_batches": 2, "masking": {"mlm_mask_prop": 0.15}, "corpus": "ab12"}


def _iterator():
    """Batch i is {"x": [i, i, i]}; threads and a prefetch buffer as in distil.train.distill's pipeline."""
    dataset = grain.MapDataset.range(64).map(lambda i: {"x": np.full((3,), i, np.int32)})
    return iter(dataset.to_iter_dataset(grain.ReadOptions(num_threads=2, prefetch_buffer_size=4)))


def _state(scale: float = 1.0) -> dict:
    """A train-state-like pytree: float32 and bfloat16 parameters, an int32 step and an optimizer count."""
    return {
        "params": {"kernel": scale * jnp.arange(16, dtype=jnp.float32).reshape(8, 2),
                   "bias": (scale * jnp.linspace(-1, 1, 8)).astype(jnp.bfloat16)},
        "opt_state": {"count": jnp.asarray(int(7 * scale), jnp.int32)},
        "step": jnp.asarray(int(4 * scale), jnp.int32),
    }


def _abstract(sharded: bool = True):
    """Restore targets: the kernel and bias split over the 8 CPU devices (conftest), the scalars replicated."""
    mesh = jax.sharding.Mesh(np.array(jax.devices()), ("data",))
    split = NamedSharding(mesh, PartitionSpec("data")) if sharded else NamedSharding(mesh, PartitionSpec())
    replicated = NamedSharding(mesh, PartitionSpec())
    shardings = {"params": {"kernel": split, "bias": split}, "opt_state": {"count": replicated}, "step": replicated}
    return jax.tree.map(lambda leaf, where: jax.ShapeDtypeStruct(leaf.shape, leaf.dtype, sharding=where),
                        jax.eval_shape(_state), shardings)


def _manager(tmp_path, **options):
    return checkpoints.make_manager(tmp_path / "checkpoints", **{"every_steps": 2, "keep": 2, "async_save": False,
                                                                 **options})


def _train(manager, steps, state_at=lambda step: _state(step / 4), settings=SETTINGS, force_last=True):
    """Consumes one batch per step and saves as the training loop does; returns what each save call returned."""
    iterator, started = _iterator(), []
    for step in range(1, steps + 1):
        assert int(next(iterator)["x"][0]) == step - 1
        started.append(checkpoints.save(manager, step, state_at(step), iterator, settings,
                                        force=force_last and step == steps))
    manager.wait_until_finished()
    manager.close()
    return started


def _assert_tree_equal(got, want):
    assert jax.tree.structure(got) == jax.tree.structure(want)
    for got_leaf, want_leaf in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
        assert got_leaf.dtype == want_leaf.dtype
        np.testing.assert_array_equal(np.asarray(got_leaf), np.asarray(want_leaf))


# ---------------------------------------------------------------------------------------------------- saving


@pytest.mark.parametrize("async_save", [False, True])
def test_restore_gives_the_saved_state_on_the_target_shardings_and_the_next_batch(tmp_path, async_save):
    _train(_manager(tmp_path, async_save=async_save), 5)  # saves at 2 and 4 (every 2 steps) and 5 (forced)
    manager, iterator = _manager(tmp_path), _iterator()
    abstract = _abstract()
    state, step = checkpoints.restore(manager, abstract, iterator, SETTINGS)
    assert step == 5
    _assert_tree_equal(state, _state(5 / 4))
    for got, target in zip(jax.tree.leaves(state), jax.tree.leaves(abstract)):
        assert got.sharding == target.sharding
    assert len(state["params"]["kernel"].addressable_shards) == 8
    assert [int(next(iterator)["x"][0]) for _ in range(3)] == [5, 6, 7]  # steps 6, 7, 8 read batches 5, 6, 7


def test_saves_every_steps_keeping_the_last_and_force_saves_any_step(tmp_path):
    started = _train(_manager(tmp_path, every_steps=3, keep=2), 10, force_last=False)
    # Step 1 aside (orbax's first save: test_the_first_step_is_not_a_save_step), every third step.
    assert [step for step, saved in enumerate(started, 1) if saved and step != 1] == [3, 6, 9]
    manager = _manager(tmp_path, every_steps=3, keep=2)
    assert manager.all_steps() == [6, 9]
    assert checkpoints.save(manager, 10, _state(), _iterator(), SETTINGS) is False
    assert checkpoints.save(manager, 10, _state(), _iterator(), SETTINGS, force=True) is True
    manager.wait_until_finished()
    assert manager.all_steps() == [9, 10]


def test_the_first_step_is_not_a_save_step(tmp_path):
    """Only multiples of `every_steps` (orbax's default would also save a fresh run's first step: at full size its
    host copy of the state, overlapping the next step, set the trainer's peak memory)."""
    manager = _manager(tmp_path, every_steps=100)
    assert checkpoints.save(manager, 1, _state(), _iterator(), SETTINGS) is False
    assert checkpoints.save(manager, 2, _state(), _iterator(), SETTINGS) is False
    assert checkpoints.save(manager, 100, _state(), _iterator(), SETTINGS) is True


def test_the_checkpoint_holds_the_settings_and_the_iterator_position(tmp_path):
    _train(_manager(tmp_path), 4)
    folder = tmp_path / "checkpoints" / "4"
    assert json.loads((folder / "settings" / "metadata").read_text()) == SETTINGS
    assert json.loads((folder / "data" / "process_0-of-1.json").read_text()) == {"next_index": 4}


# ---------------------------------------------------------------------------------------------------- resuming


def test_restore_without_a_checkpoint_is_none_at_step_0_and_leaves_the_iterator(tmp_path):
    iterator = _iterator()
    assert checkpoints.restore(_manager(tmp_path), _abstract(), iterator, SETTINGS) == (None, 0)
    assert int(next(iterator)["x"][0]) == 0


def test_check_settings_names_the_first_differing_key_and_both_values(tmp_path):
    checkpoints.check_settings(SETTINGS, dict(SETTINGS), tmp_path)  # equal: no error
    with pytest.raises(ResumeError) as err:
        checkpoints.check_settings(SETTINGS, {**SETTINGS, "seed": 4, "masking": {"mlm_mask_prop": 0.2}}, tmp_path)
    assert str(err.value).startswith(f"{tmp_path}: the checkpoint was written with masking={{'mlm_mask_prop': 0.15}}, "
                                     "this run has masking={'mlm_mask_prop': 0.2}; resuming would change the batches")
    with pytest.raises(ResumeError, match=r"written with process_count=None, this run has process_count=2"):
        checkpoints.check_settings(SETTINGS, {**SETTINGS, "process_count": 2}, tmp_path)
    with pytest.raises(ResumeError, match=r"written with corpus='ab12', this run has corpus=None"):
        checkpoints.check_settings(SETTINGS, {k: v for k, v in SETTINGS.items() if k != "corpus"}, tmp_path)


def test_restore_with_a_changed_data_setting_is_refused_before_anything_moves(tmp_path):
    _train(_manager(tmp_path), 4)
    iterator = _iterator()
    with pytest.raises(ResumeError, match=rf"^{tmp_path / 'checkpoints'}: the checkpoint was written with "
                                          r"global_batch=16, this run has global_batch=32;"):
        checkpoints.restore(_manager(tmp_path), _abstract(), iterator, {**SETTINGS, "global_batch": 32})
    assert int(next(iterator)["x"][0]) == 0


def _truncate_array_files(step_folder):
    files = [path for path in (step_folder / "state").rglob("*") if path.is_file() and path.parent.name == "d"]
    assert files
    for path in files:
        path.write_bytes(path.read_bytes()[:2])


@pytest.mark.parametrize("damage", [
    pytest.param(_truncate_array_files, id="array-data-truncated"),
    pytest.param(lambda folder: shutil.rmtree(folder / "state"), id="state-deleted"),
    pytest.param(lambda folder: (folder / "settings" / "metadata").write_text('{"seed": 3, "glo'),
                 id="settings-truncated"),
    pytest.param(lambda folder: (folder / "data" / "process_0-of-1.json").write_text('{"next_in'),
                 id="iterator-truncated"),
])
def test_a_damaged_checkpoint_is_one_resume_error_naming_its_step_folder(tmp_path, damage):
    _train(_manager(tmp_path), 4)
    damage(tmp_path / "checkpoints" / "4")
    with pytest.raises(ResumeError) as err:
        checkpoints.restore(_manager(tmp_path), _abstract(), _iterator(), SETTINGS)
    message = str(err.value)
    assert message.startswith(f"{tmp_path / 'checkpoints' / '4'}: cannot restore this checkpoint (")
    assert message.endswith("it may be damaged: move it aside to resume from the one before, or use a new workdir")
    assert "\n" not in message and err.value.__cause__ is None and err.value.__suppress_context__


def test_after_moving_a_damaged_checkpoint_aside_the_one_before_resumes(tmp_path):
    _train(_manager(tmp_path), 4)
    _truncate_array_files(tmp_path / "checkpoints" / "4")
    shutil.move(tmp_path / "checkpoints" / "4", tmp_path / "damaged-4")
    iterator = _iterator()
    state, step = checkpoints.restore(_manager(tmp_path), _abstract(), iterator, SETTINGS)
    assert step == 2
    _assert_tree_equal(state, _state(2 / 4))
    assert int(next(iterator)["x"][0]) == 2


# ------------------------------------------------------------------------------------ another number of processes


def _as_written_by(data_dir, positions: list[int]):
    """The data item as `len(positions)` processes would have written it, process i at `positions[i]`."""
    for path in data_dir.glob("process_*-of-*.json"):
        path.unlink()
    for index, position in enumerate(positions):
        (data_dir / f"process_{index}-of-{len(positions)}.json").write_text(
            json.dumps({"next_index": position}, indent=4))


def test_a_checkpoint_of_two_processes_resumes_in_one_at_their_common_position(tmp_path):
    _train(_manager(tmp_path), 4)
    _as_written_by(tmp_path / "checkpoints" / "4" / "data", [4, 4])
    iterator = _iterator()
    state, step = checkpoints.restore(_manager(tmp_path), _abstract(sharded=False), iterator, SETTINGS)
    assert step == 4
    _assert_tree_equal(state, _state(1.0))
    assert int(next(iterator)["x"][0]) == 4


def test_processes_that_saved_different_positions_are_refused_naming_their_files(tmp_path):
    _train(_manager(tmp_path), 4)
    data_dir = tmp_path / "checkpoints" / "4" / "data"
    _as_written_by(data_dir, [4, 4, 3])
    with pytest.raises(ResumeError, match=rf"^{data_dir}: the processes that wrote this checkpoint saved different "
                                          r"iterator states \(process_0-of-3.json, process_1-of-3.json, "
                                          r"process_2-of-3.json\); it can only resume with the same number of "
                                          r"processes$"):
        checkpoints.restore(_manager(tmp_path), _abstract(), _iterator(), SETTINGS)


def test_a_checkpoint_without_iterator_positions_is_reported_as_damaged(tmp_path):
    _train(_manager(tmp_path), 4)
    (tmp_path / "checkpoints" / "4" / "data" / "process_0-of-1.json").unlink()
    with pytest.raises(ResumeError) as err:
        checkpoints.restore(_manager(tmp_path), _abstract(), _iterator(), SETTINGS)
    assert "same number of processes" not in str(err.value) and "damaged" in str(err.value)


# ---------------------------------------------------------------------------------------------------- SIGTERM


@pytest.fixture
def sigterm_sentinel():
    """A SIGTERM handler of the test's own (so a guard that failed to install cannot end pytest), restored after."""
    calls = []
    original = signal.signal(signal.SIGTERM, lambda signum, frame: calls.append(signum))
    yield calls
    signal.signal(signal.SIGTERM, original)


def test_sigterm_becomes_a_flag_and_the_previous_handler_returns(tmp_path, sigterm_sentinel, capsys):
    manager = _manager(tmp_path)
    previous = signal.getsignal(signal.SIGTERM)
    with PreemptionGuard() as guard:
        assert not guard.requested and not guard.should_stop(manager, 1)
        signal.raise_signal(signal.SIGTERM)
        assert guard.requested and guard.should_stop(manager, 2)
    assert sigterm_sentinel == []  # the guard took it, not the handler before it
    assert "received SIGTERM: saving a checkpoint after this step, then exiting" in capsys.readouterr().out
    assert signal.getsignal(signal.SIGTERM) is previous
    signal.raise_signal(signal.SIGTERM)
    assert sigterm_sentinel == [signal.SIGTERM] and guard.requested


def test_outside_the_main_thread_the_guard_installs_nothing(sigterm_sentinel):
    previous, seen = signal.getsignal(signal.SIGTERM), []

    def enter():
        with PreemptionGuard() as guard:
            seen.append(signal.getsignal(signal.SIGTERM))
        seen.append(guard.requested)

    thread = threading.Thread(target=enter)
    thread.start()
    thread.join()
    assert seen == [previous, False] and signal.getsignal(signal.SIGTERM) is previous
