"""Tests for distil/data/nli.py and the embedded default data (distil/data/embedded.py).

Readers are checked on real rows, the embedded samples and the fixtures of tests/data (README.md there), against
the same files read another way (csv / json modules), the XTREME test labels against the original-format
XNLI rows that hold the same sentence pairs, and pair encoding against transformers' BertTokenizer.
"""

from __future__ import annotations

import collections
import csv
import hashlib
import importlib.util
import json
import shutil
import types
from pathlib import Path

import numpy as np
import pytest

from conftest import TEST_DATA
from distil import tokenization
from distil.data import embedded, nli, tfds_io

# The embedded XTREME-format samples: 150 dev and 300 test rows per language, aligned across the 15 languages.
XTREME = embedded.embedded_xnli_dir()
# The 600-row Swahili test sample (and its index) that the embedded test rows were cut from, every other premise.
XTREME_SW_600 = TEST_DATA / "xnli_xtreme"
# The 42 original-format (19-column) XNLI-1.0 rows that tfds ships as its xnli fixture: ar, fr and sw only.
ORIGINAL = TEST_DATA / "xnli_original"
# Header + the first 48 real MultiNLI train rows in GLUE's MNLI/train.tsv format (16 per label).
GLUE_MNLI = TEST_DATA / "multinli" / "mnli_train_glue_format_kshot_48.tsv"
LABEL_NAMES = {"entailment": 0, "neutral": 1, "contradiction": 2}


def _csv_rows(path: Path, header: bool) -> list:
    with open(path, encoding="utf-8", newline="") as f:
        if header:
            return list(csv.DictReader(f, delimiter="\t", quoting=csv.QUOTE_NONE))
        return list(csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE))


def _as_tuples(examples) -> list[tuple]:
    return [(e.premise, e.hypothesis, e.label, e.language) for e in examples]


def test_label_order_and_languages():
    assert nli.NLI_LABELS == ("entailment", "neutral", "contradiction")
    assert nli.xnli_languages() == tuple("en fr es de el bg ru tr ar vi th zh hi sw ur".split())
    assert embedded.EMBEDDED_LANGUAGES == nli.xnli_languages()
    assert nli.XNLI_MT_LABEL_IDS["contradictory"] == 2 and "contradiction" not in nli.XNLI_MT_LABEL_IDS


# ------------------------------------------------------------------------------------------------
# Original XNLI-1.0 format


def test_read_xnli_original_real_rows():
    for split, counts in (("dev", {"ar": 6, "fr": 7, "sw": 3}), ("test", {"ar": 7, "sw": 16, "fr": 3})):
        path = ORIGINAL / f"xnli.{split}.tsv"
        reference = _csv_rows(path, header=True)
        examples = nli.read_xnli_original(path)
        assert _as_tuples(examples) == [
            (r["sentence1"], r["sentence2"], LABEL_NAMES[r["gold_label"]], r["language"]) for r in reference
        ]
        assert collections.Counter(e.language for e in examples) == counts
        for language, count in counts.items():
            only = nli.read_xnli_original(path, language=language)
            assert len(only) == count and {e.language for e in only} == {language}
    first = nli.read_xnli_original(ORIGINAL / "xnli.dev.tsv", language="ar")[0]
    assert (first.premise, first.hypothesis, first.label) == (
        "وقال، ماما، لقد عدت للمنزل.", "اتصل بأمه حالما أوصلته حافلة المدرسية.", 1)
    labels = collections.Counter(e.label for e in nli.read_xnli_original(ORIGINAL / "xnli.test.tsv"))
    assert labels == {2: 10, 0: 8, 1: 8}
    with pytest.raises(nli.NliFormatError, match=r"xnli\.dev\.tsv: no rows for language 'en'.*'ar', 'fr', 'sw'"):
        nli.read_xnli_original(ORIGINAL / "xnli.dev.tsv", language="en")


# ------------------------------------------------------------------------------------------------
# XTREME per-language format


def test_read_xtreme_dev_real_rows():
    index = _csv_rows(XTREME / "dev-index.tsv", header=True)
    for language in nli.xnli_languages():
        reference = _csv_rows(XTREME / f"dev-{language}.tsv", header=False)
        examples = nli.read_xtreme_xnli(XTREME, split="dev", language=language)
        assert _as_tuples(examples) == [(p, h, LABEL_NAMES[lab], language) for p, h, lab in reference]
        assert collections.Counter(e.label for e in examples) == {0: 50, 1: 50, 2: 50}
        assert [e.label for e in examples] == [LABEL_NAMES[r["gold_label"]] for r in index]
    english = nli.read_xtreme_xnli(XTREME, split="dev", language="en")
    assert (english[0].premise, english[0].hypothesis, english[0].label) == (
        "And he said, Mama, I'm home.", "He called his mom as soon as the school bus dropped him off.", 1)
    # The same pairs in the original 19-column dev file: ar and sw pairID 1-3 are dev rows 0-2.
    original = nli.read_xnli_original(ORIGINAL / "xnli.dev.tsv")
    by_pair = {(e.language, e.premise, e.hypothesis): e.label for e in original}
    for language in ("ar", "sw"):
        examples = nli.read_xtreme_xnli(XTREME, split="dev", language=language)[:3]
        assert [by_pair[(language, e.premise, e.hypothesis)] for e in examples] == [e.label for e in examples] == [
            1, 2, 0]


def test_xtreme_test_labels_come_from_the_index():
    index = _csv_rows(XTREME / "test-index.tsv", header=True)
    for language in nli.xnli_languages():
        reference = _csv_rows(XTREME / f"test-{language}.tsv", header=False)
        examples = nli.read_xtreme_xnli(XTREME, split="test", language=language)
        assert [(e.premise, e.hypothesis) for e in examples] == [tuple(r) for r in reference]
        assert [e.label for e in examples] == [LABEL_NAMES[r["gold_label"]] for r in index]
        assert collections.Counter(e.label for e in examples) == {0: 100, 1: 100, 2: 100}
    # The 600-row Swahili sample the embedded rows come from: read the same way, and cut to every other premise.
    index_600 = _csv_rows(XTREME_SW_600 / "test-index.tsv", header=True)
    swahili_600 = nli.read_xtreme_xnli(XTREME_SW_600, split="test", language="sw")
    reference = _csv_rows(XTREME_SW_600 / "test-sw.tsv", header=False)
    assert [(e.premise, e.hypothesis) for e in swahili_600] == [tuple(r) for r in reference]
    assert [e.label for e in swahili_600] == [LABEL_NAMES[r["gold_label"]] for r in index_600]
    assert collections.Counter(e.label for e in swahili_600) == {0: 200, 1: 200, 2: 200}
    kept = [row for row in range(600) if (row // 3) % 2 == 0]
    assert nli.read_xtreme_xnli(XTREME, split="test", language="sw") == [swahili_600[row] for row in kept]
    # The same pairs in the original 19-column file (found by hand): ar and fr pairID 4-6 are embedded
    # sample rows 0-2; sw pairID 7069-7071 are rows 567-569 of the 600-row sample (source rows 4734-4736).
    original = nli.read_xnli_original(ORIGINAL / "xnli.test.tsv")
    by_pair = {(e.language, e.premise, e.hypothesis): e.label for e in original}
    for examples, language, rows, labels in (
            (nli.read_xtreme_xnli(XTREME, split="test", language="ar"), "ar", range(0, 3), (2, 0, 1)),
            (nli.read_xtreme_xnli(XTREME, split="test", language="fr"), "fr", range(0, 3), (2, 0, 1)),
            (swahili_600, "sw", range(567, 570), (1, 0, 2))):
        for row, label in zip(rows, labels):
            e = examples[row]
            assert e.label == label == by_pair[(language, e.premise, e.hypothesis)]
    assert index_600[567]["source_row"] == "4734"


# ------------------------------------------------------------------------------------------------
# MultiNLI, GLUE and XNLI-MT


def test_read_multinli_simplified_jsonl_real_rows():
    path = embedded.embedded_nli_train()
    reference = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]
    examples = nli.read_multinli_jsonl(path)
    assert _as_tuples(examples) == [(r["text_a"], r["text_b"], LABEL_NAMES[r["label"]], "en") for r in reference]
    assert collections.Counter(e.label for e in examples) == {0: 1000, 1: 1000, 2: 1000}
    assert examples[1].premise == "yeah or working in the system" and examples[1].label == 0


def test_read_multinli_official_jsonl_skips_no_consensus(tmp_path):
    # Official multinli_1.0_*.jsonl records, built from real GLUE-format rows; '-' has no gold label.
    glue = _csv_rows(GLUE_MNLI, header=True)[:4]
    gold = ["neutral", "-", "contradiction", "entailment"]
    lines = [
        json.dumps({"annotator_labels": [g], "genre": r["genre"], "gold_label": g, "pairID": r["pairID"],
                    "promptID": r["promptID"], "sentence1": r["sentence1"], "sentence2": r["sentence2"],
                    "sentence1_parse": r["sentence1_parse"]}, ensure_ascii=False)
        for r, g in zip(glue, gold)
    ]
    path = tmp_path / "multinli_1.0_train.jsonl"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    examples = nli.read_multinli_jsonl(path)
    assert _as_tuples(examples) == [
        (glue[0]["sentence1"], glue[0]["sentence2"], 1, "en"),
        (glue[2]["sentence1"], glue[2]["sentence2"], 2, "en"),
        (glue[3]["sentence1"], glue[3]["sentence2"], 0, "en"),
    ]


def test_read_glue_mnli_real_rows():
    reference = _csv_rows(GLUE_MNLI, header=True)
    examples = nli.read_glue_mnli(GLUE_MNLI)
    assert len(reference) == 48 and len(next(iter(reference))) == nli.GLUE_MNLI_TRAIN_COLUMNS
    assert _as_tuples(examples) == [
        (r["sentence1"], r["sentence2"], LABEL_NAMES[r["gold_label"]], "en") for r in reference
    ]
    assert collections.Counter(e.label for e in examples) == {0: 16, 1: 16, 2: 16}
    assert examples[0].premise == "Price caps may sound more attractive with every passing rate case."
    assert examples[0].label == 0


def test_glue_and_xnli_mt_label_mapping(tmp_path):
    header = ("index\tpromptID\tpairID\tgenre\tsentence1_binary_parse\tsentence2_binary_parse\t"
              "sentence1_parse\tsentence2_parse\tsentence1\tsentence2\tlabel1\tgold_label\n")
    rows = [("0", "c"), ("1", "n"), ("2", "-"), ("3", "e")]
    labels = {"c": "contradiction", "n": "neutral", "-": "-", "e": "entailment"}
    glue = tmp_path / "train.tsv"
    glue.write_text(header + "".join(
        f"{i}\t1\t1{x}\tfiction\t( a )\t( b )\t(ROOT a)\t(ROOT b)\tP{i} \"q\"\tH{i}\t{labels[x]}\t{labels[x]}\n"
        for i, x in rows), encoding="utf-8")
    assert _as_tuples(nli.read_glue_mnli(glue)) == [
        ('P0 "q"', "H0", 2, "en"), ('P1 "q"', "H1", 1, "en"), ('P3 "q"', "H3", 0, "en")]

    xnli_mt = tmp_path / "multinli.train.de.tsv"
    xnli_mt.write_text("premise\thypo\tlabel\nA\tB\tcontradictory\nC\tD\tentailment\nE\tF\tneutral\n", encoding="utf-8")
    assert _as_tuples(nli.read_xnli_mt(xnli_mt, language="de")) == [
        ("A", "B", 2, "de"), ("C", "D", 0, "de"), ("E", "F", 1, "de")]
    xnli_mt.write_text("premise\thypo\tlabel\nA\tB\tcontradiction\n", encoding="utf-8")
    with pytest.raises(nli.NliFormatError, match=r"multinli\.train\.de\.tsv:2: unknown XNLI-MT label 'contradiction'"):
        nli.read_xnli_mt(xnli_mt, language="de")


# ------------------------------------------------------------------------------------------------
# Bad input: every error names the file (and the line where there is one).


def _xnli_mt(path: Path):
    return nli.read_xnli_mt(path, language="fr")


def _xtreme_dev(path: Path):
    return nli.read_xtreme_xnli(path.parent, split="dev", language="en")


def _xtreme_test(path: Path):
    return nli.read_xtreme_xnli(path.parent, split="test", language="en")


_MT_HEADER = b"premise\thypo\tlabel\n"
_SIMPLE_ROW = b'{"text_a": "a", "text_b": "b", "label": "neutral"}\n'


@pytest.mark.parametrize(
    "reader, name, content, message",
    [
        (_xnli_mt, "mt.tsv", b"", r"mt\.tsv: file is empty"),
        (_xnli_mt, "mt.tsv", _MT_HEADER + b"A\tB\n", r"mt\.tsv:2: expected 3 tab-separated columns .*got 2"),
        (_xnli_mt, "mt.tsv", _MT_HEADER + b"A\tB\tneutral\n\xff\tC\tneutral\n", r"mt\.tsv:3: not valid UTF-8"),
        (_xnli_mt, "mt.tsv", b"A\tB\tneutral\n", r"mt\.tsv:1: expected the XNLI-MT header"),
        (_xtreme_dev, "dev-en.tsv", b"A\tB\tneutral\nC\tD\tmaybe\n", r"dev-en\.tsv:2: unknown XNLI label 'maybe'"),
        (_xtreme_dev, "dev-en.tsv", b"A\tB\tneutral\nC\n", r"dev-en\.tsv:2: expected 2 .* or 3 .* columns, got 1"),
        (_xtreme_test, "test-en.tsv", b"A\tB\n", r"test-en\.tsv:1: row has no label column and there is no .*index"),
        (nli.read_multinli_jsonl, "m.jsonl", _SIMPLE_ROW + b'{"x": 1}\n', r"m\.jsonl:2: expected keys sentence1/"),
        (nli.read_multinli_jsonl, "m.jsonl", _SIMPLE_ROW + b"{oops\n", r"m\.jsonl:2: not valid JSON"),
        (nli.read_multinli_jsonl, "m.jsonl", b'{"sentence1": "a", "sentence2": "b", "gold_label": "yes"}\n',
         r"m\.jsonl:1: unknown MultiNLI label 'yes'"),
        (nli.read_glue_mnli, "train.tsv", b"index\tsentence1\tsentence2\n0\ta\tb\n",
         r"train\.tsv:1: header lacks column\(s\) \['gold_label'\]"),
        (nli.read_glue_mnli, "train.tsv", b"index\tsentence1\tsentence2\tgold_label\n0\ta\tb\tneutral\textra\n",
         r"train\.tsv:2: expected 4 tab-separated columns"),
        (nli.read_xnli_original, "xnli.dev.tsv", b"language\tgold_label\tsentence1\tsentence2\n",
         r"xnli\.dev\.tsv:1: expected the 19-column XNLI-1.0 header, got 4"),
    ],
)
def test_bad_input_names_file_and_line(tmp_path, reader, name, content, message):
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(nli.NliFormatError, match=message):
        reader(path)


def test_missing_file_and_index_problems(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"nowhere\.jsonl: MultiNLI jsonl file not found"):
        nli.read_multinli_jsonl(tmp_path / "nowhere.jsonl")
    with pytest.raises(FileNotFoundError, match=r"test-xx\.tsv: XTREME XNLI test file not found"):
        nli.read_xtreme_xnli(tmp_path, split="test", language="xx")
    # A wrong column count in the 19-column file, on a real row with one field removed.
    lines = (ORIGINAL / "xnli.dev.tsv").read_text(encoding="utf-8").split("\n")
    lines[3] = "\t".join(lines[3].split("\t")[:-1])
    bad = tmp_path / "xnli.dev.tsv"
    bad.write_text("\n".join(lines), encoding="utf-8")
    with pytest.raises(nli.NliFormatError, match=r"xnli\.dev\.tsv:4: expected 19 tab-separated columns .*got 18"):
        nli.read_xnli_original(bad)
    # Index shorter than the sample, and a dev label that disagrees with its index row.
    for name in ("test-en.tsv", "test-index.tsv", "dev-en.tsv", "dev-index.tsv"):
        shutil.copy(XTREME / name, tmp_path / name)
    index_lines = (tmp_path / "test-index.tsv").read_text(encoding="utf-8").splitlines()
    (tmp_path / "test-index.tsv").write_text("\n".join(index_lines[:-1]) + "\n", encoding="utf-8")
    with pytest.raises(nli.NliFormatError, match=r"test-index\.tsv: has 299 sample rows but .*test-en\.tsv has 300"):
        nli.read_xtreme_xnli(tmp_path, split="test", language="en")
    dev_lines = (tmp_path / "dev-en.tsv").read_text(encoding="utf-8").splitlines()
    premise, hypothesis, _ = dev_lines[4].split("\t")
    dev_lines[4] = f"{premise}\t{hypothesis}\tneutral" if _ != "neutral" else f"{premise}\t{hypothesis}\tentailment"
    (tmp_path / "dev-en.tsv").write_text("\n".join(dev_lines) + "\n", encoding="utf-8")
    with pytest.raises(nli.NliFormatError, match=r"dev-en\.tsv:5: label .* disagrees with .*dev-index\.tsv:6"):
        nli.read_xtreme_xnli(tmp_path, split="dev", language="en")


# ------------------------------------------------------------------------------------------------
# The embedded default data


def test_embedded_files_are_the_documented_copies():
    # tests/data/embedded.sha256 holds the sha256 of every embedded data file, recorded after each was checked
    # against the larger file its README names (the 250-line corpus prefixes, the 3000-row jsonl byte for byte,
    # every other premise group of the XNLI samples with the index renumbered); tests/data/README.md says more.
    recorded = {name: digest for digest, name in
                (line.split("  ") for line in (TEST_DATA / "embedded.sha256").read_text(encoding="utf-8").splitlines())}
    present = {path.relative_to(embedded.embedded_dir()).as_posix(): path for path in embedded.embedded_dir().rglob("*")
               if path.is_file() and path.suffix != ".md" and "mbert-cased" not in path.parts}
    assert sorted(present) == sorted(recorded)
    for name, path in present.items():
        assert hashlib.sha256(path.read_bytes()).hexdigest() == recorded[name], name

    for language in embedded.EMBEDDED_LANGUAGES:
        lines = embedded.embedded_corpus_file(language).read_text(encoding="utf-8").split("\n")
        assert lines[-1] == "" and len(lines) - 1 == 250 and all(lines[:-1])
    train = nli.read_multinli_jsonl(embedded.embedded_nli_train())
    assert collections.Counter(e.label for e in train) == {0: 1000, 1: 1000, 2: 1000}

    for split, rows in (("dev", 150), ("test", 300)):
        index = _csv_rows(embedded.embedded_xnli_dir() / f"{split}-index.tsv", header=True)
        assert [int(r["sample_row"]) for r in index] == list(range(rows))
        # Whole premise groups: three consecutive source rows, one premise with its three hypotheses,
        # and the same number of groups from each of the 10 genres.
        source_rows = [int(r["source_row"]) for r in index]
        assert all(source_rows[i:i + 3] == list(range(source_rows[i], source_rows[i] + 3)) for i in range(0, rows, 3))
        genres = collections.Counter(r["genre"] for r in index)
        assert len(genres) == 10 and set(genres.values()) == {rows // 10}
        for language in embedded.EMBEDDED_LANGUAGES:
            small = nli.read_xtreme_xnli(embedded.embedded_xnli_dir(), split=split, language=language)
            assert collections.Counter(e.label for e in small) == {0: rows // 3, 1: rows // 3, 2: rows // 3}
            assert all(len({e.premise for e in small[i:i + 3]}) == 1 for i in range(0, rows, 3))
    # Hand check against the original-format file: ar test pairID 4-6 (contradiction, entailment, neutral).
    ar_test = nli.read_xtreme_xnli(embedded.embedded_xnli_dir(), split="test", language="ar")
    original_rows = nli.read_xnli_original(ORIGINAL / "xnli.test.tsv", language="ar")
    original = {(e.premise, e.hypothesis): e.label for e in original_rows}
    assert [original[(e.premise, e.hypothesis)] for e in ar_test[:3]] == [e.label for e in ar_test[:3]] == [2, 0, 1]


def test_embedded_folder_holds_exactly_the_documented_files():
    readme = (embedded.embedded_dir() / "README.md").read_text(encoding="utf-8")
    assert "NON-COMMERCIAL" in readme and "CC BY-NC 4.0" in readme and "mbert-cased/README.md" in readme
    languages = embedded.EMBEDDED_LANGUAGES
    documented = {"README.md", "nli/mnli_train_sample_3000.jsonl", "xnli/dev-index.tsv", "xnli/test-index.tsv",
                  "wordpiece-8k/README.md", "wordpiece-8k/vocab.txt"}
    documented |= {f"corpus/{lang}.txt" for lang in languages}
    documented |= {f"xnli/{split}-{lang}.tsv" for split in ("dev", "test") for lang in languages}
    demo = {f"demo-corpus/{part}/{lang}.txt" for part in ("train", "heldout") for lang in languages}
    documented |= demo
    present = {path.relative_to(embedded.embedded_dir()).as_posix()
               for path in embedded.embedded_dir().rglob("*") if path.is_file() and "mbert-cased" not in path.parts}
    assert present == documented
    for name in documented - {f"xnli/{split}-{lang}.tsv" for split in ("dev", "test") for lang in languages} - {
            "wordpiece-8k/vocab.txt"} - demo:
        assert name in readme, name
    assert "xnli/dev-{en,fr,es,de,el,bg,ru,tr,ar,vi,th,zh,hi,sw,ur}.tsv" in readme
    assert "`train/<lang>.txt`: lines **1–250 and 311–1000**" in readme and "`heldout/<lang>.txt`: lines **251–310**" \
        in readme
    # 3.1 MB of tests' and the default run's data, 2.6 MB of the demo's corpus (its README section).
    assert sum(path.stat().st_size for path in embedded.embedded_dir().rglob("*")
               if path.is_file() and "mbert-cased" not in path.parts) < 5_800_000


# ------------------------------------------------------------------------------------------------
# Pair encoding against transformers


def test_encode_nli_matches_transformers_bert_tokenizer():
    transformers = pytest.importorskip("transformers")
    vocab = tokenization.default_vocab_path()
    reference_tokenizer = transformers.BertTokenizer(str(vocab), do_lower_case=False)
    tokenizer = tokenization.load_tokenizer(vocab)
    examples = []
    for language in ("en", "zh", "ar", "th", "hi", "ru", "sw"):
        rows = nli.read_xtreme_xnli(XTREME, split="dev", language=language)
        examples += rows[:3] + rows[75:77]
    for max_length in (24, 64):
        batch = nli.encode_nli(examples, tokenizer, max_length=max_length, with_token_types=True)
        reference = reference_tokenizer(
            [e.premise for e in examples], [e.hypothesis for e in examples],
            truncation="longest_first", max_length=max_length, padding="max_length")
        for key in ("input_ids", "token_type_ids", "attention_mask"):
            assert batch[key].dtype == np.int32
            np.testing.assert_array_equal(batch[key], np.asarray(reference[key]), err_msg=f"{key} {max_length}")
        np.testing.assert_array_equal(batch["labels"], [e.label for e in examples])
        untruncated = reference_tokenizer([e.premise for e in examples], [e.hypothesis for e in examples])
        lengths = [len(ids) for ids in untruncated["input_ids"]]
        if max_length == 24:
            assert sum(length > 24 for length in lengths) >= 20  # truncation really exercised
        else:
            assert (batch["attention_mask"] == 0).any()  # padding really exercised
    no_types = nli.encode_nli(examples[:2], tokenizer, max_length=16, with_token_types=False)
    assert sorted(no_types) == ["attention_mask", "input_ids", "labels"]
    assert no_types["input_ids"][0, 0] == 101


# ------------------------------------------------------------------------------------------------
# tensorflow-datasets xnli / multi_nli through a data_dir, offline


def _prepare_offline(monkeypatch, name: str, data_dir: Path, extracted: Path, file_format: str = "array_record"):
    """Run the real tfds builder with download_and_extract pointed at local files, as array_record.

    One shim, test-only: the `multi_nli` builder reads its files with `tf.io.gfile` though TensorFlow is
    not installed (given `open`). Reading a prepared dataset does not need it.
    """
    import tensorflow_datasets as tfds
    from tensorflow_datasets.core.download import download_manager
    from tensorflow_datasets.text import multi_nli

    fake_tf = types.SimpleNamespace(
        io=types.SimpleNamespace(gfile=types.SimpleNamespace(GFile=open)),
        compat=types.SimpleNamespace(as_text=lambda b: b.decode("utf-8")),
    )
    monkeypatch.setattr(multi_nli, "tf", fake_tf)
    monkeypatch.setattr(download_manager.DownloadManager, "download_and_extract", lambda self, url: str(extracted))
    tfds.builder(name, data_dir=str(data_dir), file_format=file_format).download_and_prepare()


_XNLI_HEADER = ("language gold_label sentence1_binary_parse sentence2_binary_parse sentence1_parse sentence2_parse "
                "sentence1 sentence2 promptID pairID genre label1 label2 label3 label4 label5 "
                "sentence1_tokenized sentence2_tokenized match").split()


@pytest.mark.parametrize("file_format", [
    "array_record",
    pytest.param("tfrecord", marks=pytest.mark.skipif(importlib.util.find_spec("tensorflow") is None,
                                                      reason="tfrecord needs TensorFlow (the optional `tf` extra)")),
])
def test_tfds_xnli_from_data_dir(tmp_path, monkeypatch, file_format):
    # tfds' own xnli fixture files (the two in tests/data/xnli_original) hold only ar/fr/sw rows, but the current
    # builder's Translation feature needs all 15 languages per pairID; so the XNLI-1.0 files are
    # written here in the original 19-column layout from the first 6 real rows of each XTREME sample.
    extracted = tmp_path / "extracted"
    (extracted / "XNLI-1.0").mkdir(parents=True)
    expected = {}
    for split in ("dev", "test"):
        index = _csv_rows(XTREME / f"{split}-index.tsv", header=True)[:6]
        lines = ["\t".join(_XNLI_HEADER)]
        for language in nli.xnli_languages():
            rows = nli.read_xtreme_xnli(XTREME, split=split, language=language)[:6]
            expected[(split, language)] = sorted(_as_tuples(rows))
            for e, r in zip(rows, index):
                gold = nli.NLI_LABELS[e.label]
                lines.append("\t".join([language, gold, "", "", "", "", e.premise, e.hypothesis, r["source_row"],
                                        f"{split}{r['source_row']}", r["genre"], *[gold] * 5, e.premise, e.hypothesis,
                                        "True"]))
        (extracted / "XNLI-1.0" / f"xnli.{split}.tsv").write_text("\n".join(lines) + "\n", encoding="utf-8")
    data_dir = tmp_path / "tfds"
    _prepare_offline(monkeypatch, "xnli", data_dir, extracted, file_format)

    for split, tfds_split in (("dev", "validation"), ("test", "test")):
        for language in ("en", "zh", "sw"):
            rows = nli.read_tfds_nli("xnli", data_dir=data_dir, split=tfds_split, language=language)
            assert sorted(_as_tuples(rows)) == expected[(split, language)]
    every = nli.read_tfds_nli("xnli", data_dir=data_dir, split="test")
    assert len(every) == 90 and [e.language for e in every[::6]] == list(nli.xnli_languages())
    with pytest.raises(tfds_io.TfdsDataError, match=r"xnli.* in .*tfds.* has no split 'train'"):
        nli.read_tfds_nli("xnli", data_dir=data_dir, split="train")


def test_tfds_multi_nli_from_data_dir(tmp_path, monkeypatch):
    # tfds' fixture rows (synthetic placeholders); its validation_mismatched fixture was not found and is written here.
    extracted = tmp_path / "extracted"
    shutil.copytree(TEST_DATA / "tfds_dummy" / "multi_nli", extracted)
    (extracted / "multinli_1.0" / "multinli_1.0_dev_mismatched.txt").write_text(
        "skip header\n-\t1\t2\t3\t4\tup\tdown\t7\ncontradiction\t1\t2\t3\t4\tup\tdown\t7\n", encoding="utf-8")
    data_dir = tmp_path / "tfds"
    _prepare_offline(monkeypatch, "multi_nli", data_dir, extracted)

    train = nli.read_tfds_nli("multi_nli", data_dir=data_dir, split="train")
    assert sorted(_as_tuples(train)) == [("correlation", "causation", 1, "en"),
                                         ("correlation", "correlation", 0, "en"),
                                         ("correlation", "independence", 2, "en")]
    matched = nli.read_tfds_nli("multi_nli", data_dir=data_dir, split="validation_matched")
    # The builder takes columns 5 and 6; tfds' second dev fixture row has an extra column, hence '5'/'legal'.
    assert sorted(_as_tuples(matched)) == [("5", "legal", 1, "en"), ("inflammable", "flammable", 0, "en")]
    mismatched = nli.read_tfds_nli("multi_nli", data_dir=data_dir, split="validation_mismatched")
    assert _as_tuples(mismatched) == [("up", "down", 2, "en")]


def test_tfds_missing_dataset_names_data_dir_and_dataset(tmp_path):
    with pytest.raises(tfds_io.TfdsDataError, match=rf"data_dir {tmp_path} holds no prepared dataset 'multi_nli'"):
        nli.read_tfds_nli("multi_nli", data_dir=tmp_path, split="train")
    with pytest.raises(ValueError, match="'xnli' or 'multi_nli'"):
        nli.read_tfds_nli("snli", data_dir=tmp_path, split="train")


def test_a_labelled_xtreme_file_needs_every_column_on_every_row(tmp_path):
    """A 2-column row among 3-column ones lost a column: never read as premise + label (with the label's text as
    the hypothesis and the index's label)."""
    rows = ["A man sleeps.\tA person rests.\tentailment", "A dog runs.\tcontradiction",
            "Kids play.\tNobody plays.\tcontradiction"]
    (tmp_path / "dev-en.tsv").write_text("\n".join(rows) + "\n", encoding="utf-8")
    with pytest.raises(nli.NliFormatError, match=r"dev-en.tsv:2: expected 3 tab-separated columns like line 1 "
                                                 r"\(premise, hypothesis, label\), got 2"):
        nli.read_xtreme_xnli(tmp_path, split="dev", language="en")
