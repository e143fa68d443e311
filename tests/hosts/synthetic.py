"""Deterministic token sequences with the `open_binarized` interface, shared by the two-process test and its
workers (each process rebuilds the same ones from the seed)."""

import numpy as np


class SyntheticSequences:
    def __init__(self, count: int, seed: int = 0):
        rng = np.random.default_rng(seed)
        self.lengths = rng.integers(12, 60, size=count).astype(np.int32)
        self._rows = [np.concatenate([[101], rng.integers(104, 5000, size=n - 2), [102]]).astype(np.int32)
                      for n in self.lengths]

    def __len__(self):
        return len(self._rows)

    def __getitem__(self, index):
        return self._rows[index]


def row_checksums(input_ids, attention_mask, lengths, xp=np):
    """Per row: sum of id * (position + 1), number of real tokens, and length — order- and content-sensitive."""
    positions = xp.arange(input_ids.shape[1])[None, :] + 1
    return xp.stack([(input_ids * positions).sum(1), attention_mask.sum(1), lengths], axis=1)
