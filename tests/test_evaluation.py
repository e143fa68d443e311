"""distil.evaluation against independent computations: the masks by hand-worked rules, the unigram baseline by a
Counter, and the masked-token accuracy of an exported folder by transformers' BertForMaskedLM (torch) on the same
masks."""

from __future__ import annotations

import collections

import numpy as np
import pytest
import torch
import transformers

from distil import evaluation
from distil.data.embedded import embedded_corpus_file, embedded_wordpiece_vocab
from distil.data.masking import IGNORE_INDEX
from distil.tokenization import load_tokenizer, special_token_ids

LANGUAGES = ("en", "fr", "zh")


@pytest.fixture(scope="module")
def tokenizer():
    return load_tokenizer(embedded_wordpiece_vocab())


@pytest.fixture(scope="module")
def lines():
    return {lang: embedded_corpus_file(lang).read_text(encoding="utf-8").splitlines()[:12] for lang in LANGUAGES}


def test_masks_are_uniform_fixed_and_only_on_real_tokens(tokenizer, lines):
    special = special_token_ids(tokenizer)
    masks = evaluation.heldout_masks(tokenizer, lines, seed=3, max_length=32)
    again = evaluation.heldout_masks(tokenizer, lines, seed=3, max_length=32)
    other = evaluation.heldout_masks(tokenizer, lines, seed=4, max_length=32)
    for lang, texts in lines.items():
        batch = masks[lang]
        assert all(np.array_equal(batch[key], again[lang][key]) for key in batch)  # fixed
        assert not np.array_equal(batch["labels"], other[lang]["labels"])  # the seed decides them
        for row, text in enumerate(texts):
            ids = [special.cls, *tokenizer.encode(text, add_special_tokens=False).ids[:30], special.sep]
            assert batch["attention_mask"][row].sum() == len(ids)
            candidates = [i for i, t in enumerate(ids) if t not in (special.cls, special.sep, special.unk)]
            picked = np.flatnonzero(batch["labels"][row] != IGNORE_INDEX)
            assert len(picked) == max(1, round(0.15 * len(candidates)))
            assert set(picked) <= set(candidates)
            assert (batch["labels"][row, picked] == np.array(ids)[picked]).all()
            assert (batch["input_ids"][row, picked] == special.mask).all()  # every target is [MASK]
            rest = [i for i in range(len(ids)) if i not in set(picked)]
            assert (batch["input_ids"][row, rest] == np.array(ids)[rest]).all()


def test_unigram_baseline_against_a_counter(tokenizer, lines):
    masks = evaluation.heldout_masks(tokenizer, lines)
    predictions = evaluation.unigram_predictions(tokenizer, lines)
    correct = total = 0
    for lang, texts in lines.items():
        counts = collections.Counter(t for text in texts for t in tokenizer.encode(text, add_special_tokens=False).ids)
        counts.pop(special_token_ids(tokenizer).unk, None)
        top = max(counts.values())
        assert predictions[lang] == min(t for t, c in counts.items() if c == top)
        labels = masks[lang]["labels"][masks[lang]["labels"] != IGNORE_INDEX]
        correct, total = correct + int((labels == predictions[lang]).sum()), total + labels.size
    result = evaluation.unigram_accuracy(masks, predictions)
    assert result["accuracy"]["overall"] == pytest.approx(correct / total) and result["targets"]["overall"] == total


def test_masked_accuracy_matches_transformers(tokenizer, lines, tmp_path):
    torch.manual_seed(0)
    config = transformers.BertConfig(vocab_size=tokenizer.get_vocab_size(), hidden_size=32, num_hidden_layers=2,
                                     num_attention_heads=2, intermediate_size=64, max_position_embeddings=64)
    model = transformers.BertForMaskedLM(config).eval()
    model.save_pretrained(tmp_path)
    masks = evaluation.heldout_masks(tokenizer, lines, max_length=64)
    # A random model is never right; relabel every other target with torch's own answer so the expected accuracy
    # is about one half and depends on every position lining up.
    expected_correct, expected_total = 0, 0
    for batch in masks.values():
        with torch.no_grad():
            logits = model(input_ids=torch.tensor(batch["input_ids"], dtype=torch.long),
                           attention_mask=torch.tensor(batch["attention_mask"], dtype=torch.long)).logits
        answers = logits.argmax(-1).numpy()
        rows, cols = np.nonzero(batch["labels"] != IGNORE_INDEX)
        relabel = np.arange(len(rows)) % 2 == 0
        batch["labels"][rows[relabel], cols[relabel]] = answers[rows[relabel], cols[relabel]]
        labels = batch["labels"]
        expected_correct += int((answers[labels != IGNORE_INDEX] == labels[labels != IGNORE_INDEX]).sum())
        expected_total += int((labels != IGNORE_INDEX).sum())
    result = evaluation.masked_accuracy(tmp_path, masks, batch_size=8)  # 12 lines: a padded last batch
    assert result["targets"]["overall"] == expected_total
    assert result["accuracy"]["overall"] == pytest.approx(expected_correct / expected_total)
    assert 0.4 < result["accuracy"]["overall"] < 0.7
    assert evaluation.retention(0.3, 0.4) == pytest.approx(0.75)


def test_paired_comparison_by_hand_and_as_a_standard_error():
    """Two models' answers on the same targets: the targets only one gets right counted by hand, and the two
    standard errors against the spread of the per-target differences computed directly (NumPy's std)."""
    masks = {"en": {"labels": np.array([[5, IGNORE_INDEX, 6, 7], [8, 9, IGNORE_INDEX, IGNORE_INDEX]])},
             "fr": {"labels": np.array([[1, 2, 3, IGNORE_INDEX]])}}
    # Targets in order: en 5 6 7 8 9, fr 1 2 3.
    first = {"en": np.array([5, 6, 0, 8, 0]), "fr": np.array([1, 0, 3])}   # right on 5 6 8 1 3
    second = {"en": np.array([5, 0, 7, 0, 0]), "fr": np.array([1, 2, 0])}  # right on 5 7 1 2
    result = evaluation.paired_comparison(masks, first, second)
    assert (result["first_only"], result["second_only"], result["targets"]) == (3, 2, 8)  # 6 8 3 / 7 2
    assert result["difference"] == pytest.approx(5 / 8 - 4 / 8)
    d = np.array([0, 1, -1, 1, 0, 0, -1, 1])  # right(first) - right(second), target by target
    assert result["two_se"] == pytest.approx(2 * d.std() / np.sqrt(d.size))
    assert evaluation.answers_accuracy(masks, first)["accuracy"] == {"en": 3 / 5, "fr": 2 / 3, "overall": 5 / 8}
    same = evaluation.paired_comparison(masks, first, first)
    assert (same["difference"], same["two_se"]) == (0.0, 0.0)


def test_neighbour_attention_matches_transformers(tokenizer, lines, tmp_path):
    """Each head's mean attention on the tokens at offsets -2..+2, against transformers' attention probabilities
    averaged position by position in Python (a wide initialisation, so the heads differ)."""
    torch.manual_seed(1)
    config = transformers.BertConfig(vocab_size=tokenizer.get_vocab_size(), hidden_size=32, num_hidden_layers=2,
                                     num_attention_heads=2, intermediate_size=64, max_position_embeddings=64,
                                     initializer_range=0.5)
    model = transformers.BertForMaskedLM(config).eval()
    model.save_pretrained(tmp_path)
    model.set_attn_implementation("eager")  # sdpa returns no probabilities
    masks = evaluation.heldout_masks(tokenizer, lines, max_length=40)
    offsets = (-2, -1, 1, 2)
    sums, counts = np.zeros((2, 2, len(offsets))), np.zeros(len(offsets))
    for batch in masks.values():
        with torch.no_grad():
            attentions = model(input_ids=torch.tensor(batch["input_ids"], dtype=torch.long),
                               attention_mask=torch.tensor(batch["attention_mask"], dtype=torch.long),
                               output_attentions=True).attentions
        for row, length in enumerate(batch["attention_mask"].sum(axis=1)):
            for i, offset in enumerate(offsets):
                for query in range(length):
                    if 0 <= query + offset < length:
                        counts[i] += 1
                        for layer in range(2):
                            sums[layer, :, i] += attentions[layer][row, :, query, query + offset].numpy()
    expected = sums / counts
    result = evaluation.neighbour_attention(tmp_path, masks, offsets=offsets, batch_size=8)  # a padded last batch
    assert result["offsets"] == list(offsets)
    # float32 probabilities (at most 1) from two implementations differ by ~1e-7 each; their means by no more.
    np.testing.assert_allclose(result["weights"], expected, atol=1e-5)
    # The entries differ by ~100x the tolerance, so a mix-up of offsets, layers or heads could not pass.
    assert np.ptp(expected) > 100 * 1e-5

    heads = evaluation.reading_heads({"offsets": [-1, 1], "weights": [[[0.9, 0.0], [0.1, 0.2]],
                                                                       [[0.0, 0.6], [0.5, 0.5]]]})
    assert heads == [{"layer": 0, "head": 0, "offset": -1, "weight": 0.9},
                     {"layer": 1, "head": 0, "offset": 1, "weight": 0.6},
                     {"layer": 1, "head": 1, "offset": -1, "weight": 0.5},
                     {"layer": 1, "head": 1, "offset": 1, "weight": 0.5}]


def test_mask_one_word_masks_a_single_token_word(tokenizer):
    text, word = evaluation.mask_one_word(tokenizer, "Paris is the capital of France .", seed=1)
    assert text.count("[MASK]") == 1 and word.isalpha()
    assert text.replace("[MASK]", word) == "Paris is the capital of France ."
    assert len(tokenizer.encode(word, add_special_tokens=False).ids) == 1


def test_bigram_counts_by_hand(tokenizer):
    """Counts of 6 training lines, answers worked out by hand: both neighbours multiply, one side alone when the
    other is masked, a line's start and end count as neighbours, the fallback when nothing was seen."""
    special = special_token_ids(tokenizer)
    words = ("the", "man", "was", "new", "a", "is", "of", "in")
    ids = {word: tokenizer.encode(word, add_special_tokens=False).ids for word in words}
    assert all(len(piece) == 1 for piece in ids.values())  # each a single token of the vocabulary
    token = {word: piece[0] for word, piece in ids.items()}
    train = {"en": ["the man was"] * 3 + ["the new was", "a man is", "the new of"]}
    # (line, masked positions (1 = the first word), the answer by hand)
    cases = [
        ("the man was", [2], ["man"]),  # the _ was: man 3x3 against new 2x1
        ("the new of", [2], ["new"]),  # the _ of: new 2x1 against man 3x0 (the left side alone would say man)
        ("the new was", [1], ["the"]),  # <s> _ new: only 'the' both starts a line and comes before 'new'
        ("a man is", [3], ["was"]),  # man _ </s>: was 3x4 against is 1x1 (wrong here: the gold is 'is')
        ("the man was", [2, 3], ["man", "was"]),  # the _ _: 'the' alone, then the line's end alone
        ("in in in", [2], ["a"]),  # 'in' never seen: the fallback
    ]
    length = 8
    batch = {key: np.zeros((len(cases), length), np.int32) for key in ("input_ids", "attention_mask")}
    batch["labels"] = np.full((len(cases), length), IGNORE_INDEX, np.int32)
    expected_hits = 0
    for row, (text, positions, answers) in enumerate(cases):
        line = [special.cls, *[token[word] for word in text.split()], special.sep]
        batch["attention_mask"][row, :len(line)] = 1
        batch["input_ids"][row, :len(line)] = line
        for position, answer in zip(positions, answers):
            batch["labels"][row, position] = line[position]
            batch["input_ids"][row, position] = special.mask
            expected_hits += token[answer] == line[position]
    result = evaluation.bigram_accuracy(tokenizer, {"en": batch}, train, fallback={"en": token["a"]})
    assert result["targets"]["overall"] == 7
    assert expected_hits == 5  # man, new, the, man, was right; was-for-is and a-for-in wrong
    assert result["accuracy"]["en"] == pytest.approx(expected_hits / 7)
