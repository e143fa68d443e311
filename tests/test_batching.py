"""Tests of distil/data/batching.py against an independent re-implementation of HF's grouped batching.

Token ids are real: lines of the embedded corpus tokenized with the shipped mBERT cased vocabulary by `tokenizers`.
"""

from __future__ import annotations

import bisect
import json
from collections import defaultdict
from pathlib import Path

import grain
import jax
import numpy as np
import pytest
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from distil import sharding, tokenization
from distil.data import batching, embedded
from hosts.synthetic import InMemorySequences, synthetic_sequences, row_checksums

LANGUAGES = ("en", "de", "fr", "es", "ru", "ar", "zh", "hi", "sw", "th", "tr", "ur", "bg", "el", "vi")


def _tokenize_corpus(lines_per_language: int, max_length: int) -> InMemorySequences:
    from tokenizers import BertWordPieceTokenizer

    tokenizer = BertWordPieceTokenizer(
        str(tokenization.default_vocab_path()), lowercase=False, strip_accents=False, handle_chinese_chars=True
    )
    tokenizer.enable_truncation(max_length)
    lines = []
    for language in LANGUAGES:
        text = embedded.embedded_corpus_file(language).read_text(encoding="utf-8")
        lines += text.split("\n")[:lines_per_language]
    encodings = tokenizer.encode_batch([line for line in lines if line.strip()])
    return InMemorySequences([np.array(e.ids, dtype=np.int32) for e in encodings])


@pytest.fixture(scope="module")
def corpus() -> InMemorySequences:
    """~1500 real sequences of 15 languages, at most 128 tokens."""
    return _tokenize_corpus(lines_per_language=100, max_length=128)


def reference_groups(lengths, k):
    """HF create_lengths_groups, written out: bins 3, 7, ... < k (or [10]), group = bisect_right."""
    bins = list(range(3, k, 4)) if k > 0 else [10]
    return [bisect.bisect_right(bins, int(length)) for length in lengths]


def reference_grouped_batches(visit_order, groups, batch_size):
    """HF GroupedBatchSampler, written out: buffers per group, then leftovers in ascending group order."""
    buffers = defaultdict(list)
    full, mixed = [], []
    for index in visit_order:
        buffers[groups[index]].append(int(index))
        if len(buffers[groups[index]]) == batch_size:
            full.append(buffers.pop(groups[index]))
    rest = [index for _, members in sorted(buffers.items()) for index in members]
    for start in range(0, len(rest), batch_size):
        mixed.append(rest[start : start + batch_size])
    return full, mixed


# ---------------------------------------------------------------------------------------------------- grouping


@pytest.mark.parametrize("k", [0, 9, 128, 512])
def test_length_groups_match_reference_bins(k):
    lengths = np.arange(0, 700)
    assert batching.length_groups(lengths, k).tolist() == reference_groups(lengths, k)
    # Hand-worked: with k=128 the edges are 3, 7, 11, ...: 2 -> 0, 3..6 -> 1, 7 -> 2, 127 -> 32, 600 -> 32.
    assert batching.length_groups(np.array([2, 3, 6, 7, 127, 600]), 128).tolist() == [0, 1, 1, 2, 32, 32]


def test_epoch_plan_equals_hf_grouped_batch_sampler(corpus):
    lengths, batch_size = corpus.lengths, 16
    plan = batching.epoch_batches(
        lengths, global_batch=batch_size, seed=3, epoch=1, max_length=128, drop_remainder=False
    )
    visit_order = batching.epoch_permutation(len(lengths), seed=3, epoch=1)
    full, mixed = reference_grouped_batches(visit_order, reference_groups(lengths, 128), batch_size)
    expected = full + mixed[:-1] + [mixed[-1] + [-1] * (batch_size - len(mixed[-1]))]
    assert sorted(map(tuple, plan.tolist())) == sorted(map(tuple, expected))
    # every sequence exactly once, the only fill rows complete the last partial batch
    members = plan[plan >= 0]
    assert sorted(members.tolist()) == list(range(len(lengths)))
    assert (plan < 0).sum() == (-len(lengths)) % batch_size
    # all but the few leftover batches hold a single length bin
    groups = np.array(reference_groups(lengths, 128))
    single_bin = [len(set(groups[row[row >= 0]])) == 1 for row in plan]
    assert sum(single_bin) >= len(full) and len(full) > 0.8 * len(plan)


def test_drop_remainder_drops_only_leftovers(corpus):
    lengths, batch_size = corpus.lengths, 32
    plan = batching.epoch_batches(lengths, global_batch=batch_size, seed=0, epoch=0, max_length=128)
    assert plan.shape == (len(lengths) // batch_size, batch_size) and (plan >= 0).all()
    assert len(set(plan.ravel().tolist())) == plan.size
    visit_order = batching.epoch_permutation(len(lengths), seed=0, epoch=0)
    full, mixed = reference_grouped_batches(visit_order, reference_groups(lengths, 128), batch_size)
    plan_batches = set(map(tuple, plan.tolist()))
    assert all(tuple(batch) in plan_batches for batch in full)
    dropped = set(range(len(lengths))) - set(plan.ravel().tolist())
    assert len(dropped) == len(lengths) % batch_size
    assert dropped <= {index for batch in mixed for index in batch}
    # drawn at random from the leftovers, not the tail of the length-sorted leftovers (the longest ones)
    dropped_lengths = []
    for epoch in range(10):
        kept = batching.epoch_batches(lengths, global_batch=batch_size, seed=0, epoch=epoch, max_length=128)
        dropped_lengths += [lengths[i] for i in set(range(len(lengths))) - set(kept.ravel().tolist())]
    assert min(dropped_lengths) < np.median(lengths)


def test_batches_pad_and_mask_every_element(corpus):
    source = batching.GroupedBatchSource(
        corpus, global_batch=24, max_length=128, seed=5, drop_remainder=False, num_epochs=1
    )
    seen = []
    for step, batch in enumerate(batching.iter_from_step(source)):
        rows = source.global_rows(step)[:, 0]
        input_ids, mask = batch["input_ids"], batch["attention_mask"]
        assert input_ids.dtype == mask.dtype == batch["lengths"].dtype == np.int32
        longest = max(len(corpus[i]) for i in rows if i >= 0)
        assert input_ids.shape[1] % 8 == 0 and longest <= input_ids.shape[1] < longest + 8
        for row, index in enumerate(rows):
            tokens = corpus[index] if index >= 0 else np.zeros(0, np.int32)
            for position in range(input_ids.shape[1]):
                real = position < len(tokens)
                assert input_ids[row, position] == (tokens[position] if real else 0)
                assert mask[row, position] == int(real)
            assert batch["lengths"][row] == len(tokens)
            if index >= 0:
                assert tokens[0] == 101 and tokens[-1] == 102
                seen.append(int(index))
    assert step + 1 == source.batches_per_epoch
    assert sorted(seen) == list(range(len(corpus)))


def test_fixed_length_pads_to_max_length(corpus):
    source = batching.GroupedBatchSource(corpus, global_batch=8, max_length=128, seed=0, fixed_length=True)
    batch = source[0]
    assert batch["input_ids"].shape == (8, 128)
    assert batch["attention_mask"].sum() == batch["lengths"].sum() == corpus.lengths[source.global_rows(0)[:, 0]].sum()


def test_rejects_sequences_longer_than_max_length(corpus):
    with pytest.raises(ValueError, match="more than max_length=64"):
        batching.GroupedBatchSource(corpus, global_batch=8, max_length=64, seed=0)


# ---------------------------------------------------------------------------------------------------- per host


def test_host_batches_assemble_the_global_batch(corpus):
    options = dict(global_batch=32, max_length=128, seed=11)
    whole = batching.GroupedBatchSource(corpus, process_index=0, process_count=1, **options)
    hosts = [batching.GroupedBatchSource(corpus, process_index=p, process_count=4, **options) for p in range(4)]
    for step in (0, 1, whole.batches_per_epoch - 1, whole.batches_per_epoch + 2):
        expected = whole[step]
        parts = [host[step] for host in hosts]
        assert {part["input_ids"].shape for part in parts} == {(8, expected["input_ids"].shape[1])}
        for name in ("input_ids", "attention_mask", "lengths"):
            np.testing.assert_array_equal(np.concatenate([part[name] for part in parts]), expected[name])


def test_global_batch_must_fit_processes_and_data():
    sequences = synthetic_sequences(20)
    with pytest.raises(batching.GlobalBatchError, match=r"global_batch=30 .* processes \(4\)"):
        batching.GroupedBatchSource(sequences, global_batch=30, max_length=64, seed=0, process_index=0,
                                    process_count=4)
    with pytest.raises(batching.GlobalBatchError, match=r"20 sequences do not fill one batch of global_batch=32"):
        batching.GroupedBatchSource(sequences, global_batch=32, max_length=64, seed=0, process_index=0,
                                    process_count=1)


@pytest.mark.parametrize("axes", [P("data", None), P(("data", "fsdp"))])
def test_make_global_batch_on_eight_devices(corpus, axes):
    mesh = Mesh(np.array(jax.devices()[:8]).reshape(4, 2), ("data", "fsdp"))
    source = batching.GroupedBatchSource(corpus, global_batch=16, max_length=128, seed=2)
    local = source[3]
    placed = sharding.make_global_batch(local, NamedSharding(mesh, axes))
    for name, array in placed.items():
        np.testing.assert_array_equal(np.asarray(array), local[name])
        expected_spec = P(*(tuple(axes) + (None,))[: local[name].ndim])
        assert array.sharding == NamedSharding(mesh, expected_spec)
        rows_per_shard = 16 // (4 if axes == P("data", None) else 8)
        for shard in array.addressable_shards:
            assert shard.data.shape[0] == rows_per_shard
            np.testing.assert_array_equal(np.asarray(shard.data), local[name][shard.index])


# ---------------------------------------------------------------------------------------------------- resume


def _take(iterator, count):
    return [next(iterator) for _ in range(count)]


def _assert_same_batches(actual, expected):
    assert len(actual) == len(expected)
    for got, want in zip(actual, expected):
        for name in want:
            np.testing.assert_array_equal(got[name], want[name])


def test_resume_from_saved_state_yields_the_uninterrupted_batches(corpus, tmp_path):
    options = dict(global_batch=64, max_length=128, seed=7)
    source = batching.GroupedBatchSource(corpus, **options)
    k = source.batches_per_epoch - 2  # resume just before an epoch boundary
    uninterrupted = _take(batching.iter_from_step(source), k + 5)

    interrupted = batching.iter_from_step(batching.GroupedBatchSource(corpus, **options))
    _take(interrupted, k)
    state = interrupted.get_state()
    assert state == {"next_index": k}

    restored = batching.iter_from_step(batching.GroupedBatchSource(corpus, **options))
    restored.set_state(state)
    _assert_same_batches(_take(restored, 5), uninterrupted[k:])
    _assert_same_batches(_take(batching.iter_from_step(source, k), 5), uninterrupted[k:])

    # the same through grain's orbax checkpoint handler (what train/checkpoints saves)
    handler = grain.checkpoint.CheckpointHandler()
    handler.save(tmp_path, args=grain.checkpoint.CheckpointSave(interrupted))
    fresh = batching.iter_from_step(batching.GroupedBatchSource(corpus, **options))
    fresh = handler.restore(tmp_path, args=grain.checkpoint.CheckpointRestore(fresh))
    _assert_same_batches(_take(fresh, 5), uninterrupted[k:])


def test_epochs_differ_and_seeds_repeat(corpus):
    lengths = corpus.lengths

    def plan(seed, epoch):
        return batching.epoch_batches(lengths, global_batch=16, seed=seed, epoch=epoch, max_length=128)

    np.testing.assert_array_equal(plan(1, 0), plan(1, 0))
    assert not np.array_equal(plan(1, 0), plan(1, 1))
    assert not np.array_equal(plan(1, 0), plan(2, 0))
    # an epoch of the source is the plan of that epoch
    source = batching.GroupedBatchSource(corpus, global_batch=16, max_length=128, seed=1)
    np.testing.assert_array_equal(source.global_rows(source.batches_per_epoch + 4)[:, 0], plan(1, 1)[4])


def test_num_epochs_bounds_the_iterator(corpus):
    source = batching.GroupedBatchSource(corpus, global_batch=256, max_length=128, seed=0, num_epochs=2)
    assert len(list(batching.iter_from_step(source))) == 2 * (len(corpus) // 256)


# ---------------------------------------------------------------------------------------------------- padding


def test_pad_batch_hand_worked():
    batch = batching.pad_batch([[101, 7, 102], [101, 102]], 4, pad_id=9, token_type_ids=[[0, 0, 1], [0, 0]])
    np.testing.assert_array_equal(batch["input_ids"], [[101, 7, 102, 9], [101, 102, 9, 9]])
    np.testing.assert_array_equal(batch["attention_mask"], [[1, 1, 1, 0], [1, 1, 0, 0]])
    np.testing.assert_array_equal(batch["token_type_ids"], [[0, 0, 1, 0], [0, 0, 0, 0]])
    np.testing.assert_array_equal(batch["lengths"], [3, 2])
    assert {array.dtype for array in batch.values()} == {np.dtype(np.int32)}
    assert "token_type_ids" not in batching.pad_batch([[5]], 2)
    assert batching.pad_batch([[5]], 2)["input_ids"].tolist() == [[5, batching.PAD_ID]]
    with pytest.raises(ValueError, match="sequence 1 has 3 tokens, more than the padded length 2"):
        batching.pad_batch([[1], [1, 2, 3]], 2)
    with pytest.raises(ValueError, match="sequence 0: 1 token type ids for 2 tokens"):
        batching.pad_batch([[1, 2]], 2, token_type_ids=[[0]])


def test_padding_fraction_hand_worked():
    batches = [{"attention_mask": np.array([[1, 1, 0, 0], [1, 0, 0, 0]])}, {"attention_mask": np.ones((1, 8))}]
    assert batching.padding_fraction(batches) == pytest.approx(5 / 16)


def test_grouping_pads_less_on_corpus_lengths(corpus):
    def fraction(group_by_length):
        source = batching.GroupedBatchSource(
            corpus, global_batch=32, max_length=128, seed=0, num_epochs=1, group_by_length=group_by_length
        )
        batches = [source[step] for step in range(len(source))]
        # independent count: padded positions = L * rows - real tokens
        padded = sum(b["input_ids"].size - int(b["lengths"].sum()) for b in batches)
        assert batching.padding_fraction(batches) == pytest.approx(padded / sum(b["input_ids"].size for b in batches))
        return batching.padding_fraction(batches)

    grouped, ungrouped = fraction(True), fraction(False)
    assert grouped < 0.5 * ungrouped, (grouped, ungrouped)


def _free_port() -> int:
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_two_processes_assemble_the_global_batch(tmp_path):
    """Two real JAX processes (jax.distributed on 127.0.0.1, 4 CPU devices each): the global array built from each
    host's rows equals the single-process global batch, row for row."""
    import os
    import subprocess
    import sys

    worker = Path(__file__).parent / "hosts" / "global_batch_worker.py"
    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=4", "JAX_PLATFORMS": "cpu"}
    port = _free_port()
    outputs = [tmp_path / f"process{i}.json" for i in range(2)]
    processes = [subprocess.Popen([sys.executable, str(worker), str(port), str(i), str(outputs[i])], env=env,
                                  stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for i in range(2)]
    logs = []
    try:
        for process in processes:
            logs.append(process.communicate(timeout=150)[0])
    finally:
        for process in processes:
            process.kill()
    assert all(p.returncode == 0 for p in processes), "\n\n".join(logs)[-4000:]

    # The reference: the same source seen by one process, in plain NumPy.
    single = batching.GroupedBatchSource(synthetic_sequences(200), global_batch=16, max_length=64, seed=3,
                                         process_index=0, process_count=1)
    reports = [json.loads(path.read_text()) for path in outputs]
    assert [r["process_index"] for r in reports] == [0, 1]
    assert all(r["process_count"] == 2 and r["devices"] == 8 for r in reports)
    for report in reports:
        for result in report["results"]:
            expected = single[result["step"]]
            checksums = row_checksums(expected["input_ids"], expected["attention_mask"], expected["lengths"])
            assert result["local_rows"] == 8
            assert result["global_shape"] == list(expected["input_ids"].shape)
            np.testing.assert_array_equal(np.asarray(result["checksums"]), checksums)


# ---------------------------------------------------------------------------------------------------- composition


def test_pack_sequences_best_fit_by_hand():
    lengths = np.array([5, 4, 3, 6, 2, 8, 1])
    # max 10, visiting order 0..6: [5] -> [5,4] (space 1) -> 3 opens [3] -> 6 fits [3] (space 1) -> 2 opens [2]
    # -> 8 fits [2] exactly -> 1 goes to a tightest (space-1) row: the one that reached that space last, [3,6].
    rows = batching.pack_sequences(lengths, np.arange(7), max_length=10)
    assert rows == [[0, 1], [2, 3, 6], [4, 5]]


def test_packed_updates_hold_every_sequence_once_in_full_rows(corpus):
    source = batching.GroupedBatchSource(corpus, global_batch=8, micro_batches=2, max_length=128, seed=4,
                                         composition="packed", pad_to_multiple=128)
    seen = []
    for step in range(source.batches_per_epoch):
        batch = source[step]
        rows = source.global_rows(step)
        for row in range(8):
            indices = [int(i) for i in rows[row] if i >= 0]
            seen += indices
            tokens = np.concatenate([corpus[i] for i in indices])
            n = len(tokens)
            np.testing.assert_array_equal(batch["input_ids"][row, :n], tokens)
            assert batch["lengths"][row] == n <= 128 and not batch["attention_mask"][row, n:].any()
            expected_segments = np.concatenate([np.full(len(corpus[i]), s + 1) for s, i in enumerate(indices)])
            np.testing.assert_array_equal(batch["segment_ids"][row, :n], expected_segments)
            np.testing.assert_array_equal(batch["position_ids"][row, :n],
                                          np.concatenate([np.arange(len(corpus[i])) for i in indices]))
    assert len(seen) == len(set(seen)) > 0.95 * len(corpus)  # only the last partial update's rows are left out
    assert batching.padding_fraction(source[s] for s in range(source.batches_per_epoch)) < 0.05


def test_micro_batch_composition_groups_each_micro_batch(corpus):
    options = dict(global_batch=32, micro_batches=4, max_length=128, seed=9, composition="micro_batch")
    whole = batching.GroupedBatchSource(corpus, **options)
    groups = batching.length_groups(corpus.lengths, 128)
    mixed = 0
    for step in range(whole.batches_per_epoch):
        micro = whole.global_rows(step)[:, 0].reshape(4, 8)
        mixed += sum(len(set(groups[m])) > 1 for m in micro)  # only leftover micro-batches mix bins
        # Every process holds its slice of every micro-batch, so a micro-batch is the same on any process count.
        hosts = [batching.GroupedBatchSource(corpus, process_index=p, process_count=2, **options) for p in range(2)]
        local = [host.local_rows(step)[:, 0].reshape(4, 4) for host in hosts]
        np.testing.assert_array_equal(np.concatenate(local, axis=1), micro)
    assert mixed <= 2 * whole.batches_per_epoch * 4 // 10  # most micro-batches come from one length bin
