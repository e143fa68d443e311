"""Length-grouped, per-host, resumable batches of token sequences.

The distillation recipe of HF's DistilBERT (`examples/research_projects/distillation`) draws batches whose
sequences share a length bin (`create_lengths_groups` + `GroupedBatchSampler`), so that little of each batch
is padding. This module keeps those batches but makes them a pure function of the step:

    step -> (epoch, position) -> the epoch's batch plan (from seed, epoch) -> one global batch
         -> this process's rows, padded to the global batch's padded length L.

Because a batch depends on nothing but the step, resuming is exact (the iterator state is the step), and every
process computes the same plan and the same L without talking to the others, so the per-process rows assemble
into one global array of a single shape (`distil.sharding.make_global_batch`). The plan does not depend on the number of
processes either: a run resumed on a different number of hosts sees the same global batches.

`grain` supplies the iterator: a `MapDataset` over steps, read by a thread pool with prefetching, whose
`get_state()` / `set_state()` is `{"next_index": step}` and which `grain.checkpoint.CheckpointSave/Restore`
stores beside an orbax checkpoint.
"""

from __future__ import annotations

import collections
import threading
from typing import Iterable, Mapping, Protocol, Sequence

import grain
import jax
import numpy as np

PAD_ID = 0
"""[PAD] is id 0 in the mBERT vocabulary (vocab.txt line 0)."""

BIN_WIDTH = 4
"""HF `create_lengths_groups(lengths, k)` quantises lengths with bin edges 3, 7, 11, ... < k."""

_UNBOUNDED_STEPS = 2**62
"""Length given to grain for `num_epochs=None`: far more steps than any run takes, still a valid `len()`."""


class GlobalBatchError(ValueError):
    """`global_batch` does not fit the processes or the data; callers that read it from a config name the field."""


class TokenSequencesLike(Protocol):
    """What batching needs of its input: anything shaped like `distil.data.binarize.TokenSequences`.

    `binarize.TokenSequences` (a binarized folder, memory-mapped, from `open_binarized`) is the one class of token
    sequences; this Protocol only states the part of it that batching reads, token ids of one sequence per index and
    their `lengths`, so that batching does not import binarize (and its tokenizer) and in-memory sequences (tests,
    benchmarks) serve as well.
    """

    lengths: np.ndarray  # int32 [num_sequences]

    def __len__(self) -> int: ...

    def __getitem__(self, index: int) -> np.ndarray: ...


# ---------------------------------------------------------------------------------------------------- plan


def length_bin_edges(max_length: int) -> np.ndarray:
    """The bin edges of HF `create_lengths_groups(lengths, k=max_length)`: [3, 7, 11, ...] below k, or [10]."""
    if max_length > 0:
        return np.arange(3, max_length, BIN_WIDTH)
    return np.array([10])


def length_groups(lengths: np.ndarray, max_length: int) -> np.ndarray:
    """Group id of each length: the number of bin edges <= length (HF uses `bisect.bisect_right`)."""
    edges = length_bin_edges(max_length)
    return np.searchsorted(edges, np.asarray(lengths), side="right").astype(np.int32)


def _epoch_rngs(seed: int, epoch: int) -> tuple[np.random.Generator, np.random.Generator]:
    """Two independent streams per (seed, epoch): one orders the sequences, one orders the batches."""
    if seed < 0 or epoch < 0:
        raise ValueError(f"seed and epoch must be >= 0, got seed={seed}, epoch={epoch}")
    order_seed, batch_seed = np.random.SeedSequence([seed, epoch]).spawn(2)
    return np.random.default_rng(order_seed), np.random.default_rng(batch_seed)


def epoch_permutation(num_sequences: int, seed: int, epoch: int) -> np.ndarray:
    """The shuffled order in which an epoch visits the sequences (HF: `RandomSampler`)."""
    order_rng, _ = _epoch_rngs(seed, epoch)
    return order_rng.permutation(num_sequences)


def batches_per_epoch(num_sequences: int, global_batch: int, drop_remainder: bool) -> int:
    """Every batch of an epoch is full but possibly the last, so the count depends on the sizes only."""
    if drop_remainder:
        return num_sequences // global_batch
    return -(-num_sequences // global_batch)


def epoch_batches(
    lengths: np.ndarray,
    *,
    global_batch: int,
    seed: int,
    epoch: int,
    max_length: int,
    group_by_length: bool = True,
    drop_remainder: bool = True,
) -> np.ndarray:
    """The batch plan of one epoch: int64 [batches_per_epoch, global_batch] sequence indices, -1 = fill row.

    With `group_by_length` this yields the same batches as HF's `GroupedBatchSampler` walking
    `epoch_permutation(...)`: per length group, consecutive runs of `global_batch` sequences in visiting order;
    the leftovers of all groups, concatenated in ascending group order, are cut into further (mixed-group)
    batches. HF yields the last partial batch as is; here it is either completed with fill rows (-1, padded
    to all-[PAD] rows with attention_mask 0) so that every sequence appears exactly once, or, with
    `drop_remainder` (one array shape for the whole run), its `num_sequences % global_batch` sequences are
    dropped, drawn at random from all leftovers: dropping the tail would always drop the longest leftovers.
    Unlike HF, the batch order is then shuffled, so long and short batches alternate instead of the mixed
    leftovers all coming at the end of the epoch.
    """
    lengths = np.asarray(lengths)
    num_sequences = len(lengths)
    order_rng, batch_rng = _epoch_rngs(seed, epoch)
    order = order_rng.permutation(num_sequences)
    if group_by_length:
        visit_groups = length_groups(lengths, max_length)[order]
        by_group = np.argsort(visit_groups, kind="stable")  # stable: visiting order kept inside a group
        grouped_order, grouped_ids = order[by_group], visit_groups[by_group]
        _, starts, counts = np.unique(grouped_ids, return_index=True, return_counts=True)
        full_runs, leftovers = [], []
        for start, count in zip(starts, counts):
            num_full = (count // global_batch) * global_batch
            full_runs.append(grouped_order[start : start + num_full])
            leftovers.append(grouped_order[start + num_full : start + count])
        leftover = np.concatenate(leftovers) if leftovers else order
        num_dropped = num_sequences % global_batch if drop_remainder else 0
        if num_dropped:  # len(leftover) is num_sequences mod global_batch plus whole batches
            kept = np.sort(batch_rng.choice(len(leftover), len(leftover) - num_dropped, replace=False))
            leftover = leftover[kept]
        order = np.concatenate(full_runs + [leftover])

    num_batches = batches_per_epoch(num_sequences, global_batch, drop_remainder)
    rows = np.full(num_batches * global_batch, -1, dtype=np.int64)
    num_kept = min(len(order), len(rows))
    rows[:num_kept] = order[:num_kept]
    plan = rows.reshape(num_batches, global_batch)
    return plan[batch_rng.permutation(num_batches)]


def pack_sequences(lengths: np.ndarray, order: np.ndarray, max_length: int) -> list[list[int]]:
    """Rows of at most `max_length` tokens, each a list of sequence indices (T5X / MaxText-style packing).

    Best fit in visiting order: each sequence goes to the open row whose free space fits it most tightly, or opens a
    new row. Rows keep the visiting order inside them; a row is a pure function of (lengths, order), so every
    process computes the same rows.
    """
    rows: list[list[int]] = []
    by_space: list[list[int]] = [[] for _ in range(max_length + 1)]  # free space -> rows with that much free
    has_space = np.zeros(max_length + 1, dtype=bool)
    for index in order:
        length = int(lengths[index])
        fitting = np.flatnonzero(has_space[length:])
        if fitting.size:
            space = length + int(fitting[0])
            row = by_space[space].pop()
            has_space[space] = bool(by_space[space])
        else:
            row, space = len(rows), max_length
            rows.append([])
        rows[row].append(int(index))
        left = space - length
        if left:
            by_space[left].append(row)
            has_space[left] = True
    return rows


def epoch_rows(
    lengths: np.ndarray,
    *,
    composition: str,
    global_batch: int,
    micro_batches: int,
    seed: int,
    epoch: int,
    max_length: int,
    drop_remainder: bool,
) -> np.ndarray:
    """The update plan of one epoch: int64 [updates, global_batch, segments] sequence indices, -1 = none.

    Row r of an update is micro-batch r // (global_batch / micro_batches). `composition` says how rows are made:
      "update":      one sequence per row, the whole update length-grouped (`epoch_batches` of global_batch);
      "micro_batch": one sequence per row, each micro-batch length-grouped and an update `micro_batches` micro-batches
                     from different bins, as the reference's gradient accumulation over per-GPU grouped batches;
      "packed":      several sequences per row (`pack_sequences` in the epoch's visiting order), segments > 1.
    """
    micro_rows = global_batch // micro_batches
    if composition == "update":
        return epoch_batches(lengths, global_batch=global_batch, seed=seed, epoch=epoch, max_length=max_length,
                             drop_remainder=drop_remainder)[:, :, None]
    if composition == "micro_batch":
        micro = epoch_batches(lengths, global_batch=micro_rows, seed=seed, epoch=epoch, max_length=max_length,
                              drop_remainder=drop_remainder)
        updates = len(micro) // micro_batches
        return micro[: updates * micro_batches].reshape(updates, global_batch)[:, :, None]
    if composition == "packed":
        rows = pack_sequences(lengths, epoch_permutation(len(lengths), seed, epoch), max_length)
        segments = max(len(row) for row in rows)
        table = np.full((len(rows), segments), -1, dtype=np.int64)
        for r, row in enumerate(rows):
            table[r, : len(row)] = row
        updates = len(rows) // global_batch
        return table[: updates * global_batch].reshape(updates, global_batch, segments)
    raise ValueError(f"composition must be 'update', 'micro_batch' or 'packed', got {composition!r}")


# ---------------------------------------------------------------------------------------------------- padding


def padded_length(longest: int, *, pad_to_multiple: int, max_length: int, fixed_length: bool) -> int:
    """L of a batch: its longest sequence rounded up to `pad_to_multiple`, never above `max_length`.

    Rounding up bounds the number of distinct shapes (and so of XLA recompiles) to max_length / multiple;
    `fixed_length` pads everything to `max_length` to compile once.
    """
    if fixed_length:
        return max_length
    rounded = -(-max(int(longest), 1) // pad_to_multiple) * pad_to_multiple
    return min(rounded, max_length)


def pad_batch(
    sequences: Sequence[Sequence[int]],
    length: int,
    *,
    pad_id: int = PAD_ID,
    token_type_ids: Sequence[Sequence[int]] | None = None,
) -> dict[str, np.ndarray]:
    """Right-pads token id sequences to `length` with `pad_id`; the attention mask marks the real tokens.

    Returns int32 `input_ids`, `attention_mask` [n, length] and `lengths` [n]; with `token_type_ids` (one per
    sequence, as long as it) also `token_type_ids` [n, length], padded with 0 as transformers pads them.
    The one padder of distil: the pre-training batches and the NLI classifier inputs (`nli.encode_nli`) use it.
    """
    input_ids = np.full((len(sequences), length), pad_id, dtype=np.int32)
    lengths = np.zeros(len(sequences), dtype=np.int32)
    for row, token_ids in enumerate(sequences):
        if len(token_ids) > length:
            raise ValueError(f"sequence {row} has {len(token_ids)} tokens, more than the padded length {length}")
        input_ids[row, : len(token_ids)] = token_ids
        lengths[row] = len(token_ids)
    attention_mask = (np.arange(length)[None, :] < lengths[:, None]).astype(np.int32)
    batch = {"input_ids": input_ids, "attention_mask": attention_mask, "lengths": lengths}
    if token_type_ids is not None:
        if len(token_type_ids) != len(sequences):
            raise ValueError(f"got {len(token_type_ids)} token_type_ids rows for {len(sequences)} sequences")
        batch["token_type_ids"] = np.zeros((len(sequences), length), dtype=np.int32)
        for row, (type_ids, token_ids) in enumerate(zip(token_type_ids, sequences)):
            if len(type_ids) != len(token_ids):
                raise ValueError(f"sequence {row}: {len(type_ids)} token type ids for {len(token_ids)} tokens")
            batch["token_type_ids"][row, : len(type_ids)] = type_ids
    return batch


def padding_fraction(batches: Iterable[Mapping[str, np.ndarray]]) -> float:
    """Share of all token positions in `batches` that are padding (attention_mask == 0)."""
    real, total = 0, 0
    for batch in batches:
        mask = np.asarray(batch["attention_mask"])
        real += int(mask.sum())
        total += mask.size
    return 1.0 - real / total if total else 0.0


# ---------------------------------------------------------------------------------------------------- source


class GroupedBatchSource:
    """Random access from step to this process's rows of that step's global batch (a grain data source).

    Args:
      sequences: token ids per index with `.lengths` (e.g. `open_binarized(dir)`).
      global_batch: rows per step (one optimizer update) summed over all processes.
      max_length: the longest sequence (or packed row) allowed; also HF's `k` of the length bins.
      seed: with the epoch, fixes every epoch's order.
      pad_to_multiple, fixed_length: see `padded_length`.
      group_by_length: False gives plain shuffled batches (the baseline for `padding_fraction`).
      drop_remainder: see `epoch_batches`.
      num_epochs: steps run out after this many epochs; None never runs out.
      micro_batches: an update's rows are this many micro-batches of global_batch / micro_batches rows.
      composition: "update", "micro_batch" or "packed" (`epoch_rows`).
      process_index, process_count: this process's share; default `jax.process_index()/process_count()`.

    Process p yields its slice of every micro-batch (rows [p * m, (p + 1) * m) of each, m = micro rows / processes),
    micro-batch after micro-batch, so a micro-batch is the same set of sequences whatever the number of processes.
    A `global_batch` that does not fit (not a multiple of `process_count` x micro_batches, larger than an epoch)
    raises `GlobalBatchError`, so a caller that read it from a config can name the config field.
    """

    def __init__(
        self,
        sequences: TokenSequencesLike,
        *,
        global_batch: int,
        max_length: int,
        seed: int,
        pad_to_multiple: int = 8,
        fixed_length: bool = False,
        group_by_length: bool = True,
        drop_remainder: bool = True,
        num_epochs: int | None = None,
        micro_batches: int = 1,
        composition: str = "update",
        process_index: int | None = None,
        process_count: int | None = None,
    ):
        self.sequences = sequences
        self.lengths = np.asarray(sequences.lengths)
        self.global_batch = global_batch
        self.max_length = max_length
        self.seed = seed
        self.pad_to_multiple = pad_to_multiple
        self.fixed_length = fixed_length
        self.group_by_length = group_by_length
        self.drop_remainder = drop_remainder
        self.num_epochs = num_epochs
        self.micro_batches = micro_batches
        self.composition = composition
        self.process_index = jax.process_index() if process_index is None else process_index
        self.process_count = jax.process_count() if process_count is None else process_count

        if composition not in ("update", "micro_batch", "packed"):
            raise ValueError(f"composition must be 'update', 'micro_batch' or 'packed', got {composition!r}")
        if micro_batches <= 0 or global_batch <= 0 or global_batch % (micro_batches * self.process_count):
            raise GlobalBatchError(
                f"global_batch={global_batch} must be a positive multiple of micro_batches ({micro_batches}) x the "
                f"number of processes ({self.process_count}): each process yields its share of every micro-batch"
            )
        if not 0 <= self.process_index < self.process_count:
            raise ValueError(f"process_index={self.process_index} is outside [0, {self.process_count})")
        if pad_to_multiple <= 0:
            raise ValueError(f"pad_to_multiple must be > 0, got {pad_to_multiple}")
        if len(self.lengths) != len(sequences):
            raise ValueError(f"sequences.lengths has {len(self.lengths)} entries for {len(sequences)} sequences")
        if len(self.lengths) and self.lengths.max() > max_length:
            index = int(self.lengths.argmax())
            raise ValueError(
                f"sequence {index} has {self.lengths[index]} tokens, more than max_length={max_length}; "
                "split or truncate sequences when binarizing"
            )
        self.micro_rows = global_batch // micro_batches
        self._plans: collections.OrderedDict[int, np.ndarray] = collections.OrderedDict()
        self._plans_lock = threading.Lock()  # grain reads steps from several threads
        if composition == "update":
            self.batches_per_epoch = batches_per_epoch(len(self.lengths), global_batch, drop_remainder)
        elif composition == "micro_batch":
            self.batches_per_epoch = batches_per_epoch(len(self.lengths), self.micro_rows, True) // micro_batches
        else:  # packing: the number of rows depends on the order; every epoch gets epoch 0's number of updates
            self.batches_per_epoch = len(self._make_plan(0))
        if self.batches_per_epoch == 0:
            raise GlobalBatchError(
                f"{len(self.lengths)} sequences do not fill one batch of global_batch={global_batch}"
            )
        self.local_batch = global_batch // self.process_count
        self.local_micro_rows = self.micro_rows // self.process_count

    def __len__(self) -> int:
        if self.num_epochs is None:
            return _UNBOUNDED_STEPS
        return self.num_epochs * self.batches_per_epoch

    def _make_plan(self, epoch: int) -> np.ndarray:
        if not self.group_by_length:
            plan = epoch_batches(self.lengths, global_batch=self.global_batch, seed=self.seed, epoch=epoch,
                                 max_length=self.max_length, group_by_length=False,
                                 drop_remainder=self.drop_remainder)[:, :, None]
        else:
            plan = epoch_rows(self.lengths, composition=self.composition, global_batch=self.global_batch,
                              micro_batches=self.micro_batches, seed=self.seed, epoch=epoch,
                              max_length=self.max_length, drop_remainder=self.drop_remainder)
        if self.composition == "packed" and epoch and len(plan) != self.batches_per_epoch:
            fill = np.full((max(self.batches_per_epoch - len(plan), 0),) + plan.shape[1:], -1, dtype=np.int64)
            plan = np.concatenate([plan, fill])[: self.batches_per_epoch]
        return plan

    def epoch_plan(self, epoch: int) -> np.ndarray:
        """int64 [updates, global_batch, segments] (`epoch_rows`), kept for the two most recent epochs (prefetch
        crosses epochs)."""
        with self._plans_lock:
            if epoch not in self._plans:
                self._plans[epoch] = self._make_plan(epoch)
                while len(self._plans) > 2:
                    self._plans.popitem(last=False)
            return self._plans[epoch]

    def global_rows(self, step: int) -> np.ndarray:
        """int64 [global_batch, segments] sequence indices of the step's global batch (-1 = none)."""
        if not 0 <= step < len(self):
            raise IndexError(f"step {step} is outside [0, {len(self)}) ({self.num_epochs} epochs)")
        epoch, position = divmod(step, self.batches_per_epoch)
        return self.epoch_plan(epoch)[position]

    def local_rows(self, step: int) -> np.ndarray:
        """This process's rows of the step: [local_batch, segments], its slice of each micro-batch in turn."""
        by_micro = self.global_rows(step).reshape(self.micro_batches, self.micro_rows, -1)
        start = self.process_index * self.local_micro_rows
        return by_micro[:, start : start + self.local_micro_rows].reshape(self.local_batch, -1)

    def _sequence(self, index: int) -> np.ndarray:
        token_ids = self.sequences[int(index)]
        if len(token_ids) != self.lengths[index]:
            raise ValueError(
                f"sequence {index} has {len(token_ids)} tokens but sequences.lengths[{index}] = {self.lengths[index]}"
            )
        return np.asarray(token_ids)

    def __getitem__(self, step: int) -> dict[str, np.ndarray]:
        """`{'input_ids', 'attention_mask': int32 [local_batch, L], 'lengths': int32 [local_batch]}`; packed rows also
        carry `segment_ids` (1, 2, ... per sequence, 0 = padding) and `position_ids` (restarting per sequence)."""
        rows = self.global_rows(step)
        # L comes from the lengths of the whole global batch, known to every process without reading tokens.
        row_lengths = np.where(rows >= 0, self.lengths[np.maximum(rows, 0)], 0).sum(-1)
        length = padded_length(
            row_lengths.max(initial=0), pad_to_multiple=self.pad_to_multiple, max_length=self.max_length,
            fixed_length=self.fixed_length,
        )
        local = self.local_rows(step)
        if self.composition != "packed":
            sequences = [self._sequence(index) if index >= 0 else np.zeros(0, np.int32) for index in local[:, 0]]
            return pad_batch(sequences, length)
        tokens, segment_ids, position_ids = [], [], []
        for row in local:
            parts = [self._sequence(index) for index in row if index >= 0]
            tokens.append(np.concatenate(parts) if parts else np.zeros(0, np.int32))
            segment_ids.append(np.concatenate([np.full(len(p), i + 1) for i, p in enumerate(parts)] or [[]]))
            position_ids.append(np.concatenate([np.arange(len(p)) for p in parts] or [[]]))
        batch = pad_batch(tokens, length)
        for name, values in (("segment_ids", segment_ids), ("position_ids", position_ids)):
            batch[name] = np.zeros((len(local), length), dtype=np.int32)
            for r, row_values in enumerate(values):
                batch[name][r, : len(row_values)] = row_values
        return batch


# ---------------------------------------------------------------------------------------------------- iteration


def batch_dataset(
    source: GroupedBatchSource, *, num_threads: int = 2, prefetch_buffer_size: int = 8
) -> grain.IterDataset:
    """The steps of `source` as a grain dataset read by `num_threads` threads, `prefetch_buffer_size` ahead."""
    read_options = grain.ReadOptions(num_threads=num_threads, prefetch_buffer_size=prefetch_buffer_size)
    return grain.MapDataset.source(source).to_iter_dataset(read_options)


def iter_from_step(
    source: GroupedBatchSource, step: int = 0, *, num_threads: int = 2, prefetch_buffer_size: int = 8
) -> grain.DatasetIterator:
    """An iterator whose next batch is that of `step`; its state (`get_state`) is `{'next_index': step}`.

    Restoring a saved state with `iterator.set_state(state)` (or `grain.checkpoint.CheckpointRestore`) is the
    same as `iter_from_step(source, state['next_index'])`.
    """
    iterator = iter(batch_dataset(source, num_threads=num_threads, prefetch_buffer_size=prefetch_buffer_size))
    if step:
        iterator.set_state({"next_index": step})
    return iterator
