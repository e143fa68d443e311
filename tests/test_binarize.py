"""Binarisation against transformers' pure-Python BertTokenizer and the LmSeqsDataset rules, worked independently.

Lines are real: the embedded corpus and embedded Hindi XNLI premises, tokenized with the shipped mBERT vocabulary.
"""

from __future__ import annotations

import itertools
import json
import subprocess
import unicodedata
from pathlib import Path

import numpy as np
import pytest

from distil import atomic, tokenization
from distil.data import binarize, embedded, nli, text

LANGS = ("en", "de", "zh", "ar", "hi", "sw", "th", "ru")
CLS, SEP, UNK = 101, 102, 100


@pytest.fixture(scope="module")
def vocab() -> Path:
    return tokenization.default_vocab_path()


@pytest.fixture(scope="module")
def reference_tokenizer(vocab):
    """transformers' `BertTokenizer` for bert-base-multilingual-cased (cased, Chinese characters split).

    Built from the vocab dict: in transformers 5 `BertTokenizer(vocab_file=...)` silently ignores the file. Not the
    pure-Python `BertTokenizerLegacy`: that one NFC-normalises first (Arabic harakat and Devanagari nukta tokenise
    differently: 42 of the 43,509 lines of the full corpus the embedded one was cut from), which neither Google's
    mBERT nor the fast tokenizer does.
    """
    from transformers import BertTokenizer
    from transformers.models.bert.tokenization_bert import load_vocab

    return BertTokenizer(vocab=load_vocab(str(vocab)), do_lower_case=False)


@pytest.fixture(scope="module")
def corpus_lines(reference_tokenizer) -> list[tuple[str, str]]:
    """40 lines of each of 8 languages, two lines that NFC would change, and two long ones that must be split.

    The embedded corpus has no line that NFC changes; the embedded Hindi XNLI premises do (the precomposed
    letters U+095C and U+095D, which NFC splits into letter + nukta), and NFC changes their mBERT ids, so a
    binariser that normalised would fail here.
    """
    sources = text.language_files(embedded.embedded_corpus_dir())
    lines = [(lang, line) for lang in LANGS for line in itertools.islice(sources[lang], 40)]
    hindi = nli.read_xtreme_xnli(embedded.embedded_xnli_dir(), split="dev", language="hi")
    premises = dict.fromkeys(e.premise for e in hindi if unicodedata.normalize("NFC", e.premise) != e.premise)
    not_nfc = [("hi", premise) for premise in list(premises)[:2]]
    assert len(not_nfc) == 2 and all(reference_tokenizer.encode(line) != reference_tokenizer.encode(
        unicodedata.normalize("NFC", line)) for _, line in not_nfc)
    joined = [" ".join(line for _, line in lines[i:i + 12]) for i in (0, 200)]
    return lines[:100] + [("en", joined[0])] + lines[100:] + not_nfc + [("hi", joined[1])]


def reference_sequences(tokenizer, lines, max_length):
    """HF binarized_data.py + LmSeqsDataset.remove_long/empty/unknown_sequences, written out with lists."""
    kept = []
    for _, line in lines:
        ids = tokenizer.encode(f"{tokenizer.cls_token} {line.strip()} {tokenizer.sep_token}", add_special_tokens=False)
        if len(ids) > max_length:
            step = max_length - 2
            pieces = [ids[i:i + step] for i in range(0, len(ids), step)]
            pieces = [([CLS] if p[0] != CLS else []) + p + ([SEP] if p[-1] != SEP else []) for p in pieces]
        else:
            pieces = [ids]
        kept += [p for p in pieces if len(p) > 11 and sum(t == UNK for t in p) / len(p) < 0.5]
    return kept


def stored(out_dir: Path) -> list[list[int]]:
    seqs = binarize.open_binarized(out_dir)
    return [seqs[i].tolist() for i in range(len(seqs))]


def folder_arrays(out_dir: Path) -> dict[str, np.ndarray]:
    return {p.name: np.load(p) for p in sorted(out_dir.glob("*.npy"))}


def test_sequences_and_counts_match_the_reference(tmp_path, vocab, reference_tokenizer, corpus_lines):
    summary = binarize.binarize(corpus_lines, vocab, tmp_path, max_length=64, num_workers=0, shard_size=90,
                                progress=False)
    expected = reference_sequences(reference_tokenizer, corpus_lines, max_length=64)
    assert stored(tmp_path) == expected
    assert summary.lines == len(corpus_lines) == 324 and summary.shards == 4  # ceil(324 / 90)
    assert summary.sequences == len(expected) and summary.lines_split >= 2
    seqs = binarize.open_binarized(tmp_path)
    assert seqs.lengths.dtype == np.int32 and seqs.lengths.tolist() == [len(s) for s in expected]
    assert seqs[0].dtype == np.int32 and seqs[-1].tolist() == expected[-1]
    counts = binarize.load_token_counts(tmp_path)
    assert counts.shape == (119_547,) and counts.dtype == np.int64
    np.testing.assert_array_equal(counts, np.bincount(np.concatenate(expected), minlength=119_547))
    index = json.loads((tmp_path / "index.json").read_text())
    assert index["vocab_size"] == 119_547 and index["max_length"] == 64 and index["complete"]
    assert [s["sequences"] for s in index["shards"]] == [
        len(np.load(tmp_path / f"offsets-{k:05d}.npy")) - 1 for k in range(4)]
    assert sum(index["shards"][k]["languages"].get("zh", 0) for k in range(4)) == len(
        reference_sequences(reference_tokenizer, [x for x in corpus_lines if x[0] == "zh"], 64))


def test_two_worker_processes_write_identical_files(tmp_path, vocab, corpus_lines):
    lines = corpus_lines[:150]
    binarize.binarize(lines, vocab, tmp_path / "serial", max_length=64, num_workers=0, shard_size=70, progress=False)
    binarize.binarize(lines, vocab, tmp_path / "pool", max_length=64, num_workers=2, shard_size=70, progress=False)
    serial, pool = folder_arrays(tmp_path / "serial"), folder_arrays(tmp_path / "pool")
    assert list(serial) == list(pool) and all(np.array_equal(serial[k], pool[k]) for k in serial)


def test_short_unknown_and_long_rules_on_hand_made_lines(tmp_path, vocab, reference_tokenizer):
    letters = "a b c d e f g h i j k l m n o p q r s t u v w x y z a b c d".split()
    assert reference_tokenizer.convert_tokens_to_ids(["a", "b"]) != [UNK, UNK]
    assert reference_tokenizer.encode("\U0001f600", add_special_tokens=False) == [UNK]  # an emoji mBERT lacks
    smiley = "\U0001f600"
    lines = [
        ("xx", " ".join(letters[:10])),  # 10 + [CLS] [SEP] = 12 tokens: kept (> 11)
        ("xx", " ".join(letters[:9])),  # 11 tokens: dropped as short
        ("xx", " ".join([smiley] * 6 + letters[:4])),  # 6 [UNK] of 12 = 50%: dropped
        ("xx", " ".join([smiley] * 5 + letters[:5])),  # 5 of 12 < 50%: kept
        ("xx", " ".join(letters[:30])),  # 32 tokens, max_length 16: pieces of 14 -> 15, 16, 5 (dropped) tokens
    ]
    summary = binarize.binarize(lines, vocab, tmp_path, max_length=16, num_workers=0, progress=False)
    ids = dict(zip(letters[:26], reference_tokenizer.convert_tokens_to_ids(letters[:26])))
    word = lambda i: ids[letters[i]]  # noqa: E731
    expected = [
        [CLS, *map(word, range(10)), SEP],
        [CLS, *[UNK] * 5, *map(word, range(5)), SEP],
        [CLS, *map(word, range(13)), SEP],  # the first piece keeps its own [CLS]: 13 letters
        [CLS, *map(word, range(13, 27)), SEP],  # a middle piece: 14 letters
    ]
    assert stored(tmp_path) == expected
    assert (summary.dropped_short, summary.dropped_unk, summary.lines_split) == (2, 1, 1)
    assert summary.languages == {"xx": 4}


class Interrupted(Exception):
    pass


def interrupted_after(lines, n):
    yield from lines[:n]
    raise Interrupted(f"killed after {n} lines")


def test_resume_after_interruption_gives_identical_output(tmp_path, vocab, corpus_lines):
    lines = corpus_lines[:200]
    fresh = binarize.binarize(lines, vocab, tmp_path / "fresh", max_length=64, num_workers=0, shard_size=50,
                              progress=False)
    out = tmp_path / "resumed"
    with pytest.raises(Interrupted):
        binarize.binarize(interrupted_after(lines, 120), vocab, out, max_length=64, num_workers=0, shard_size=50,
                          progress=False)
    index = json.loads((out / "index.json").read_text())
    assert [s["shard"] for s in index["shards"]] == [0, 1] and not index["complete"]
    with pytest.raises(binarize.BinarizeError, match="not complete"):
        binarize.open_binarized(out)
    # What a kill in the middle of writing shard 2 leaves: a temp file and an unrecorded, truncated shard file.
    # Beside them, a user's file and folder whose names merely look temporary: never deleted, never a crash.
    killed = subprocess.Popen(["true"])
    killed.wait()
    (out / f".tokens-00002.npy.tmp-distil-{atomic._HOST}-{killed.pid}-k3j2h1x0").write_bytes(b"\x93NUMPY half")
    (out / "tokens-00002.npy").write_bytes((tmp_path / "fresh" / "tokens-00002.npy").read_bytes()[:100])
    (out / "backup.tmp-2024.txt").write_text("a user's file")
    (out / "old.tmp-1").mkdir()
    resumed = binarize.binarize(lines, vocab, out, max_length=64, num_workers=0, shard_size=50, progress=False)
    assert resumed.skipped_shards == 2 and resumed.encoded_lines == 100 and fresh.encoded_lines == 200
    assert sorted(p.name for p in out.glob("*.tmp-*")) == ["backup.tmp-2024.txt", "old.tmp-1"]
    (out / "backup.tmp-2024.txt").unlink()
    (out / "old.tmp-1").rmdir()
    fresh_files, resumed_files = folder_arrays(tmp_path / "fresh"), folder_arrays(out)
    assert list(fresh_files) == list(resumed_files)
    assert all(np.array_equal(fresh_files[k], resumed_files[k]) for k in fresh_files)
    assert json.loads((out / "index.json").read_text()) == json.loads((tmp_path / "fresh" / "index.json").read_text())
    assert (resumed.sequences, resumed.tokens) == (fresh.sequences, fresh.tokens)


def test_rerun_with_changed_input_or_settings_is_refused(tmp_path, vocab, corpus_lines):
    lines = corpus_lines[:60]
    binarize.binarize(lines, vocab, tmp_path, max_length=64, num_workers=0, shard_size=25, progress=False)
    changed = list(lines)
    changed[30] = ("de", "eine andere Zeile als vorher, mit genug Wörtern um zu zählen")
    with pytest.raises(binarize.BinarizeError, match="input of shard 1"):
        binarize.binarize(changed, vocab, tmp_path, max_length=64, num_workers=0, shard_size=25, progress=False)
    with pytest.raises(binarize.BinarizeError, match="max_length=64"):
        binarize.binarize(lines, vocab, tmp_path, max_length=128, num_workers=0, shard_size=25, progress=False)
    (tmp_path / "index.json").write_text('{"format": "distil.binarized.v1",\n "shards": [,]}')
    with pytest.raises(binarize.BinarizeError, match=r"index\.json:2: not valid JSON"):
        binarize.open_binarized(tmp_path)


def test_corrupt_input_files_are_named_with_their_line(tmp_path, vocab):
    (tmp_path / "en.txt").write_text("A first English line that is long enough to be kept by the filter.\n")
    (tmp_path / "sw.txt").write_bytes(b"Mstari wa kwanza.\nMstari wa pili.\nMbaya \xc3\x28 hapa.\n")
    with pytest.raises(text.TextSourceError, match=r"sw\.txt:3: not valid UTF-8"):
        binarize.binarize({"en": tmp_path / "en.txt", "sw": tmp_path / "sw.txt"}, vocab, tmp_path / "out",
                          num_workers=0, progress=False)
    with pytest.raises(FileNotFoundError, match="fr.txt"):
        binarize.binarize({"fr": tmp_path / "fr.txt"}, vocab, tmp_path / "out2", num_workers=0, progress=False)
    with pytest.raises(binarize.BinarizeError, match="texts item 1"):
        binarize.binarize([("en", "ok"), ("en", 3)], vocab, tmp_path / "out3", num_workers=0, progress=False)


def test_prepare_mixes_languages_from_a_folder(tmp_path, vocab, reference_tokenizer):
    folder = tmp_path / "corpus"
    folder.mkdir()
    sources = text.language_files(embedded.embedded_corpus_dir())
    for lang, n in (("en", 60), ("sw", 15)):
        (folder / f"{lang}.txt").write_text("\n".join(itertools.islice(sources[lang], n)) + "\n", encoding="utf-8")
    summary = binarize.prepare(folder, tmp_path / "out", tokenizer_path=vocab, sampling_alpha=0.5, seed=1,
                               num_lines=100, max_length=128, num_workers=0, shard_size=40, progress=False)
    probs = text.language_sampling_probs({"en": 60, "sw": 15}, alpha=0.5)
    mixed = list(text.mix_languages(text.language_files(folder), probs, seed=1, num_lines=100))
    assert summary.lines == 100 and summary.shards == 3
    assert stored(tmp_path / "out") == reference_sequences(reference_tokenizer, mixed, max_length=128)
    assert summary.languages == {lang: sum(1 for s_lang, line in mixed if s_lang == lang and len(
        reference_sequences(reference_tokenizer, [(s_lang, line)], 128))) for lang in ("en", "sw")}
