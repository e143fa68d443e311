"""Token sequences with the `open_binarized` interface for the batching tests, and the deterministic ones the
two-process test and its workers share (each process rebuilds the same ones from the seed)."""

import numpy as np


class InMemorySequences:
    """The interface of `open_binarized(...)`, held in a Python list."""

    def __init__(self, sequences: list[np.ndarray]):
        self._sequences = sequences
        self.lengths = np.array([len(s) for s in sequences], dtype=np.int32)

    def __len__(self) -> int:
        return len(self._sequences)

    def __getitem__(self, index: int) -> np.ndarray:
        return self._sequences[index]


def synthetic_sequences(count: int, seed: int = 0) -> InMemorySequences:
    """`count` sequences of 12-59 tokens, [CLS] random ids [SEP], the same for the same seed."""
    rng = np.random.default_rng(seed)
    lengths = rng.integers(12, 60, size=count)
    return InMemorySequences([np.concatenate([[101], rng.integers(104, 5000, size=n - 2), [102]]).astype(np.int32)
                              for n in lengths])


def row_checksums(input_ids, attention_mask, lengths, xp=np):
    """Per row: sum of id * (position + 1), number of real tokens, and length — order- and content-sensitive."""
    positions = xp.arange(input_ids.shape[1])[None, :] + 1
    return xp.stack([(input_ids * positions).sum(1), attention_mask.sum(1), lengths], axis=1)
