"""MLM masking against the rules of HF's prepare_batch_mlm, hand-worked counts and exact sampling probabilities."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
from scipy import stats

from distil.data import masking

PAD, UNK, CLS, SEP, MASK = 0, 1, 2, 3, 4
SPECIAL = (PAD, UNK, CLS, SEP, MASK)


def padded_rows(rows: list[list[int]], length: int) -> tuple[np.ndarray, np.ndarray]:
    input_ids = np.full((len(rows), length), PAD, dtype=np.int32)
    for b, row in enumerate(rows):
        input_ids[b, : len(row)] = row
    return input_ids, np.array([len(row) for row in rows], dtype=np.int32)


def random_batch(lengths: list[int], length: int, vocab_size: int, seed: int):
    rng = np.random.default_rng(seed)
    rows = [[CLS, *rng.integers(len(SPECIAL), vocab_size, size=n - 2).tolist(), SEP] for n in lengths]
    return padded_rows(rows, length)


def test_token_probs_from_counts_hand_worked():
    counts = np.array([7, 0, 1, 8, 1000, 5, 3])
    token_probs = masking.token_probs_from_counts(counts, special_ids=[0, 3], smoothing=0.7)
    expected = [0.0, 1.0, 1.0, 0.0, 1000 ** -0.7, 5 ** -0.7, 3 ** -0.7]
    np.testing.assert_allclose(token_probs, expected, rtol=1e-12)
    assert math.isclose(1000 ** -0.7, 0.007943282347242814, rel_tol=1e-12)  # 10^-2.1


def test_exact_rules_on_a_padded_batch():
    vocab_size = 500
    lengths = [20, 7, 13, 2, 5]  # 47 real tokens -> ceil(0.15 * 47) = ceil(7.05) = 8 targets
    input_ids, lengths_arr = random_batch(lengths, 24, vocab_size, seed=0)
    counts = np.random.default_rng(1).integers(0, 50, size=vocab_size)
    token_probs = masking.token_probs_from_counts(counts, SPECIAL)
    real = np.arange(24)[None, :] < lengths_arr[:, None]
    special = np.isin(input_ids, SPECIAL)
    for step in range(30):
        masked, labels = masking.mask_batch(
            input_ids, lengths_arr, token_probs, seed=5, step=step, process_index=0, mask_id=MASK,
            vocab_size=vocab_size,
        )
        assert masked.dtype == labels.dtype == np.int32 and masked.shape == labels.shape == input_ids.shape
        picked = labels != -100
        assert picked.sum() == 8
        assert not (picked & ~real).any() and not (picked & special).any()  # never padding, never special
        np.testing.assert_array_equal(labels[picked], input_ids[picked])
        np.testing.assert_array_equal(masked[~picked], input_ids[~picked])  # only picked positions change
        assert masked.min() >= 0 and masked.max() < vocab_size


def test_all_special_batch_has_no_targets():
    input_ids, lengths = padded_rows([[CLS, SEP], [CLS, SEP]], 4)
    token_probs = masking.token_probs_from_counts(np.ones(10), SPECIAL)
    masked, labels = masking.mask_batch(
        input_ids, lengths, token_probs, seed=0, step=0, process_index=0, mask_id=MASK, vocab_size=10
    )
    np.testing.assert_array_equal(masked, input_ids)
    assert (labels == -100).all()


def test_deterministic_in_seed_step_and_process():
    input_ids, lengths = random_batch([30, 17, 25], 32, 1000, seed=2)
    token_probs = masking.token_probs_from_counts(np.arange(1000), SPECIAL)

    def run(**overrides):
        keys = {"seed": 1, "step": 3, "process_index": 0, **overrides}
        return masking.mask_batch(input_ids, lengths, token_probs, mask_id=MASK, vocab_size=1000, **keys)

    first, again = run(), run()
    np.testing.assert_array_equal(first[0], again[0])
    np.testing.assert_array_equal(first[1], again[1])
    for other in (run(step=4), run(process_index=1), run(seed=2)):
        assert not np.array_equal(first[1], other[1])


def test_single_target_frequency_is_proportional_to_token_probs():
    """One target (ceil(0.15 * 6) = 1): position j must be picked with probability w_j / sum(w)."""
    counts = np.ones(20, dtype=np.int64)
    counts[[10, 11, 12, 13]] = [1, 10, 100, 1000]
    token_probs = masking.token_probs_from_counts(counts, SPECIAL)
    input_ids, lengths = padded_rows([[CLS, 10, 11, 12, 13, SEP]], 8)
    draws = 4000
    picks = np.zeros(8, dtype=np.int64)
    for step in range(draws):
        _, labels = masking.mask_batch(
            input_ids, lengths, token_probs, seed=11, step=step, process_index=0, mask_id=MASK, vocab_size=20
        )
        picks += labels[0] != -100
    weights = np.array([1.0, 10 ** -0.7, 100 ** -0.7, 1000 ** -0.7])
    expected = draws * weights / weights.sum()
    assert picks[[0, 5, 6, 7]].sum() == 0 and picks.sum() == draws
    chi2 = ((picks[1:5] - expected) ** 2 / expected).sum()
    assert stats.chi2.sf(chi2, df=3) > 1e-3, (picks[1:5], expected)


def successive_sampling_inclusion(weights: np.ndarray, k: int) -> np.ndarray:
    """P(item i among k drawn one by one without replacement, each ∝ weight), by enumerating ordered draws."""
    inclusion = np.zeros(len(weights))
    for order in itertools.permutations(range(len(weights)), k):
        prob, left = 1.0, weights.sum()
        for item in order:
            prob *= weights[item] / left
            left -= weights[item]
        inclusion[list(order)] += prob
    return inclusion


def test_multi_target_inclusion_matches_sampling_without_replacement():
    """ceil(0.15 * 14) = 3 targets among 12 tokens: inclusion probabilities of torch.multinomial(replacement=False)."""
    vocab_size = 40
    content = list(range(10, 22))
    counts = np.ones(vocab_size, dtype=np.int64)
    counts[content] = np.geomspace(1, 3000, num=12).astype(np.int64)
    token_probs = masking.token_probs_from_counts(counts, SPECIAL)
    input_ids, lengths = padded_rows([[CLS, *content, SEP]], 16)
    draws = 3000
    picks = np.zeros(16, dtype=np.int64)
    for step in range(draws):
        _, labels = masking.mask_batch(
            input_ids, lengths, token_probs, seed=3, step=step, process_index=2, mask_id=MASK, vocab_size=vocab_size
        )
        picks += labels[0] != -100
    assert picks.sum() == 3 * draws and picks[[0, 13, 14, 15]].sum() == 0
    inclusion = successive_sampling_inclusion(token_probs[content], 3)
    assert math.isclose(inclusion.sum(), 3.0, rel_tol=1e-12)
    sigma = np.sqrt(draws * inclusion * (1 - inclusion))
    z = (picks[1:13] - draws * inclusion) / sigma
    assert np.abs(z).max() < 4.5, z
    # The test has power: "3 * w / sum(w)" (no without-replacement correction) is off by far more than 4.5 sigma.
    naive = 3 * token_probs[content] / token_probs[content].sum()
    assert (np.abs(draws * naive - draws * inclusion) / sigma).max() > 10


def test_80_10_10_split_and_uniform_random_ids():
    vocab_size = 60
    input_ids, lengths = random_batch([64] * 48, 64, vocab_size, seed=4)
    token_probs = masking.token_probs_from_counts(np.arange(vocab_size) + 1, SPECIAL)
    outcomes = np.zeros(3, dtype=np.int64)  # [became MASK, kept, other id]
    random_values, random_originals = [], []
    for step in range(20):
        masked, labels = masking.mask_batch(
            input_ids, lengths, token_probs, seed=9, step=step, process_index=0, mask_id=MASK, vocab_size=vocab_size
        )
        picked = labels != -100
        new, old = masked[picked], input_ids[picked]
        outcomes += [(new == MASK).sum(), (new == old).sum(), ((new != MASK) & (new != old)).sum()]
        other = (new != MASK) & (new != old)
        random_values.append(new[other])
        random_originals.append(old[other])
    n = outcomes.sum()
    # 10% draw a uniform id in [0, V): it equals the original or [MASK] with probability 1/V each.
    expected = n * np.array([0.8 + 0.1 / vocab_size, 0.1 + 0.1 / vocab_size, 0.1 * (vocab_size - 2) / vocab_size])
    chi2 = ((outcomes - expected) ** 2 / expected).sum()
    assert stats.chi2.sf(chi2, df=2) > 1e-3, (outcomes, expected)

    # Given "other", the id is uniform over the V - 2 ids that are neither [MASK] nor the original.
    values, originals = np.concatenate(random_values), np.concatenate(random_originals)
    observed = np.bincount(values, minlength=vocab_size)
    expected_ids = (len(values) - np.bincount(originals, minlength=vocab_size)) / (vocab_size - 2)
    expected_ids[MASK] = 0
    assert observed[MASK] == 0
    keep = expected_ids > 0
    chi2 = ((observed[keep] - expected_ids[keep]) ** 2 / expected_ids[keep]).sum()
    assert stats.chi2.sf(chi2, df=keep.sum() - 1) > 1e-3


def test_invalid_arguments_name_the_field():
    input_ids, lengths = padded_rows([[CLS, 10, SEP]], 4)
    token_probs = np.ones(20)
    kwargs = dict(seed=0, step=0, process_index=0, mask_id=MASK, vocab_size=20)
    with pytest.raises(ValueError, match="lengths"):
        masking.mask_batch(input_ids, np.array([5]), token_probs, **kwargs)
    with pytest.raises(ValueError, match="word_mask"):
        masking.mask_batch(input_ids, lengths, token_probs, word_mask=0.5, **kwargs)
    with pytest.raises(ValueError, match="token_probs"):
        masking.mask_batch(input_ids, lengths, np.ones(7), **kwargs)
