"""Batches of encoded NLI pairs for fine-tuning and evaluation, every example counted exactly once.

Training (`NliBatches`): a grain data source from step to this process's rows; each epoch is a new shuffle of all
pairs, its last partial batch completed with fill rows of weight 0, so every step has one shape and a resumed run
(whose iterator state is the step) sees the same batches. Inputs stay padded to `max_length`, as the reference
fine-tuning pads them.

Evaluation (`EvalSet`): all languages of a split in one pass, ordered by length so that each batch is cut to its
longest row (rounded up, to bound the compiled shapes); a row's `language` lets the eval step sum (correct, count)
per language, and the last batch is completed with fill rows of weight 0.
"""

from __future__ import annotations

import dataclasses

import jax
import numpy as np

from distil.data.batching import batches_per_epoch, epoch_batches


def take_rows(encoded: dict[str, np.ndarray], rows: np.ndarray) -> dict[str, np.ndarray]:
    """The encoded rows `rows` (int [n], -1 = a fill row: all [PAD] id 0, attention 0, label 0) with `weights`
    (int32 [n]: 1 for a real row, 0 for a fill row)."""
    real = rows >= 0
    index = np.where(real, rows, 0)
    batch = {name: np.where(real.reshape(-1, *[1] * (array.ndim - 1)), array[index], 0).astype(np.int32)
             for name, array in encoded.items()}
    batch["weights"] = real.astype(np.int32)
    return batch


class NliBatches:
    """Random access from step to this process's rows of that step's training batch (a grain data source): the
    epoch's order is `batching.epoch_batches` without length grouping, whose fill rows (-1) get weight 0."""

    def __init__(self, encoded: dict[str, np.ndarray], *, global_batch: int, seed: int, num_epochs: int,
                 process_index: int | None = None, process_count: int | None = None):
        self.encoded, self.global_batch, self.seed, self.num_epochs = encoded, global_batch, seed, num_epochs
        self.num_examples = len(encoded["labels"])
        self.batches_per_epoch = batches_per_epoch(self.num_examples, global_batch, drop_remainder=False)
        process_index = jax.process_index() if process_index is None else process_index
        process_count = jax.process_count() if process_count is None else process_count
        local = global_batch // process_count
        self._local_rows = slice(process_index * local, (process_index + 1) * local)
        self._plan: tuple[int, np.ndarray] | None = None

    def __len__(self) -> int:
        return self.num_epochs * self.batches_per_epoch

    def __getitem__(self, step: int) -> dict[str, np.ndarray]:
        epoch, position = divmod(step, self.batches_per_epoch)
        plan = self._plan
        if plan is None or plan[0] != epoch:
            plan = self._plan = (epoch, epoch_batches(np.zeros(self.num_examples, np.int32),
                                                      global_batch=self.global_batch, seed=self.seed, epoch=epoch,
                                                      max_length=1, group_by_length=False, drop_remainder=False))
        return take_rows(self.encoded, plan[1][position][self._local_rows])


@dataclasses.dataclass(frozen=True)
class EvalSet:
    """The rows of one split, every language together, ordered by length so that a batch is padded only to its
    longest row: `encoded` arrays [n, max_length], `language` int32 [n] (index into `languages`)."""

    encoded: dict[str, np.ndarray]
    languages: tuple[str, ...]

    @classmethod
    def pool(cls, by_language: dict[str, dict[str, np.ndarray]], languages: tuple[str, ...]) -> "EvalSet":
        names = next(iter(by_language.values())).keys()
        encoded = {name: np.concatenate([by_language[language][name] for language in by_language]) for name in names}
        encoded["language"] = np.concatenate([np.full(len(rows["labels"]), languages.index(language), np.int32)
                                              for language, rows in by_language.items()])
        order = np.argsort(encoded["attention_mask"].sum(1), kind="stable")
        return cls({name: array[order] for name, array in encoded.items()}, languages)

    def batches(self, global_batch: int, pad_to_multiple: int):
        """This process's rows of each global batch, in order, cut to the batch's longest row rounded up to
        `pad_to_multiple` (so at most max_length / pad_to_multiple shapes compile); the last batch completed with
        fill rows of weight 0."""
        count, max_length = len(self.encoded["labels"]), self.encoded["input_ids"].shape[1]
        lengths = self.encoded["attention_mask"].sum(1)
        local = global_batch // jax.process_count()
        for start in range(0, count, global_batch):
            rows = np.arange(start, start + global_batch)
            rows = np.where(rows < count, rows, -1)
            length = min(-(-int(lengths[rows[rows >= 0]].max()) // pad_to_multiple) * pad_to_multiple, max_length)
            batch = take_rows(self.encoded, rows[jax.process_index() * local:(jax.process_index() + 1) * local])
            yield {name: array[:, :length] if array.ndim > 1 else array for name, array in batch.items()}
