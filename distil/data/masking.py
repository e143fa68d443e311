"""MLM masking of a padded batch on the host, in NumPy: HF distillation's `Distiller.prepare_batch_mlm`.

The reference (examples/research_projects/distillation/distiller.py) picks the positions to predict over the
*whole batch* at once: ceil(mlm_mask_prop * real tokens) positions drawn without replacement with probability ∝
token_probs[id] (counts^-0.7, the XLM/word2vec smoothing that favours rare tokens; 0 for special tokens, so [CLS],
[SEP], [PAD], [UNK], [MASK] are never picked), then each picked position independently becomes [MASK] (80%),
stays (10%) or becomes a uniformly random id in [0, vocab_size) (10%). Labels are the original ids at picked
positions and -100 elsewhere. Differences, both deliberate: padding gets probability 0 from `lengths` instead of
being cleared afterwards (same result, and the count is exact), and when fewer tokens than the target have a
non-zero probability all of them are picked (torch.multinomial would raise). The fp16 "multiple of 8" rounding of
the reference is not reproduced: it only served apex kernels.

Randomness comes from NumPy's PCG64 seeded by SeedSequence((seed, step, process_index)), so every host masks its
own rows reproducibly, and resuming at step s masks exactly as the uninterrupted run did.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import numpy as np

IGNORE_INDEX = -100  # label of positions without an MLM target, as torch's CrossEntropyLoss(ignore_index=-100)
# Outcomes of a picked position, in the order of the reference's pred_probs = [word_mask, word_keep, word_rand].
MASK, KEEP, RANDOM = 0, 1, 2


def token_probs_from_counts(counts: np.ndarray, special_ids: Iterable[int], smoothing: float = 0.7) -> np.ndarray:
    """float64 [vocab]: max(count, 1)^-smoothing, 0 for special ids (HF distillation train.py, mlm_smoothing=0.7).

    Unnormalised: `mask_batch` normalises over the real tokens of each batch. Tokens never seen count as 1, so
    they get the largest weight (they may appear in a batch the counts were not taken from).
    """
    counts = np.asarray(counts)
    if counts.ndim != 1 or (counts < 0).any():
        raise ValueError(f"counts must be a 1-D array of non-negative counts, got shape {counts.shape}")
    token_probs = np.maximum(counts, 1).astype(np.float64) ** -float(smoothing)
    special = np.array(list(special_ids), dtype=np.int64)
    if special.size and not (0 <= special.min() and special.max() < len(counts)):
        raise ValueError(f"special ids {special.tolist()} must lie in [0, {len(counts)})")
    token_probs[special] = 0.0
    return token_probs


def mask_rng(seed: int, step: int, process_index: int) -> np.random.Generator:
    """The generator `mask_batch` draws from: one independent stream per (seed, step, process)."""
    return np.random.Generator(np.random.PCG64(np.random.SeedSequence((int(seed), int(step), int(process_index)))))


def mask_batch(
    input_ids: np.ndarray,
    lengths: np.ndarray,
    token_probs: np.ndarray,
    *,
    seed: int,
    step: int,
    process_index: int,
    mask_id: int,
    vocab_size: int,
    mlm_mask_prop: float = 0.15,
    word_mask: float = 0.8,
    word_keep: float = 0.1,
    word_rand: float = 0.1,
) -> tuple[np.ndarray, np.ndarray]:
    """(masked_input_ids, mlm_labels), both int32 [batch, length], from a right-padded batch.

    input_ids: int [batch, length]; row b holds lengths[b] real tokens followed by padding (any id).
    token_probs: float [vocab], e.g. `token_probs_from_counts`; only its ratios matter.
    """
    input_ids = np.asarray(input_ids)
    lengths = np.asarray(lengths)
    token_probs = np.asarray(token_probs, dtype=np.float64)
    if input_ids.ndim != 2:
        raise ValueError(f"input_ids must be [batch, length], got shape {input_ids.shape}")
    batch, length = input_ids.shape
    if lengths.shape != (batch,) or (lengths < 0).any() or (lengths > length).any():
        raise ValueError(f"lengths must be [{batch}] with values in [0, {length}], got {lengths.tolist()}")
    if not 0.0 <= mlm_mask_prop <= 1.0:
        raise ValueError(f"mlm_mask_prop must be in [0, 1], got {mlm_mask_prop}")
    outcome_probs = np.array([word_mask, word_keep, word_rand], dtype=np.float64)
    if (outcome_probs < 0).any() or not math.isclose(outcome_probs.sum(), 1.0, abs_tol=1e-6):
        raise ValueError(f"word_mask + word_keep + word_rand must be 1, got {outcome_probs.tolist()}")
    if token_probs.shape != (vocab_size,):
        raise ValueError(f"token_probs must have shape [{vocab_size}] (vocab_size), got {list(token_probs.shape)}")
    flat_ids = input_ids.reshape(-1)
    real = (np.arange(length)[None, :] < lengths[:, None]).reshape(-1)
    if ((flat_ids[real] < 0) | (flat_ids[real] >= vocab_size)).any():
        raise ValueError(f"input_ids of real tokens must lie in [0, {vocab_size})")
    rng = mask_rng(seed, step, process_index)

    # Positions to predict: a weighted sample without replacement, as torch.multinomial(x_prob, n, False).
    # Exponential keys E_i / w_i (Efraimidis & Spirakis 2006): the smallest key is position i with probability
    # w_i / sum(w), and by memorylessness the next smallest follows the same rule among the rest, so the n smallest
    # keys are a successive weighted draw without replacement, in O(batch * length).
    weights = np.zeros(flat_ids.shape, dtype=np.float64)
    weights[real] = token_probs[flat_ids[real]]
    candidates = np.flatnonzero(weights > 0)
    num_targets = min(math.ceil(mlm_mask_prop * int(lengths.sum())), len(candidates))
    keys = rng.exponential(size=len(candidates)) / weights[candidates]
    picked = candidates[:0]
    if num_targets:
        picked = np.sort(candidates[np.argpartition(keys, num_targets - 1)[:num_targets]])

    # What each picked position becomes: [MASK], itself, or a uniformly random id (may be a special id, as HF).
    outcome = rng.choice(3, size=num_targets, p=outcome_probs / outcome_probs.sum())
    random_ids = rng.integers(0, vocab_size, size=num_targets)
    new_ids = np.where(outcome == MASK, mask_id, np.where(outcome == RANDOM, random_ids, flat_ids[picked]))

    masked_input_ids = flat_ids.astype(np.int32, copy=True)
    masked_input_ids[picked] = new_ids
    mlm_labels = np.full(flat_ids.shape, IGNORE_INDEX, dtype=np.int32)
    mlm_labels[picked] = flat_ids[picked]
    return masked_input_ids.reshape(batch, length), mlm_labels.reshape(batch, length)
