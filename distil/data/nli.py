"""NLI readers (XNLI, MultiNLI and their derived formats) in one label order, and pair encoding.

Every reader returns a list of `NliExample` whose `label` follows `NLI_LABELS`
(entailment 0, neutral 1, contradiction 2), the order of MultiNLI's and XNLI's own label
columns and of tfds' `xnli`/`multi_nli` ClassLabels. Each source gets its own explicit
string -> id table instead of a shared guess, because the sources disagree:

* XNLI-MT (`multinli.train.{lang}.tsv`) spells the third class `contradictory`;
* transformers' `XnliProcessor.get_labels()` orders the classes
  `[contradiction, entailment, neutral]`, so a classifier head trained through it has
  rows in another order than ours: map by name, never by index, when comparing;
* tfds stores ClassLabel ids; we take the names from the builder's `label` feature and map
  them by name, so a future reordering of the builder's names cannot silently flip labels.

MultiNLI marks pairs without a 3-of-5 annotator consensus with gold label `-`; the official
readers (and tfds' builder) drop them, and so do the MultiNLI readers here. XNLI has no `-`.

Files are decoded as strict UTF-8; tab-separated files are split on tabs with no quoting
(as `csv.QUOTE_NONE`: XNLI and MultiNLI sentences contain bare `"`). Every format error
names the file, the 1-based line and what was expected.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import tokenizers

from distil import tokenization
from distil.data import tfds_io
from distil.data.batching import pad_batch
from distil.lines import read_utf8_lines

NLI_LABELS: tuple[str, ...] = ("entailment", "neutral", "contradiction")

# The 15 XNLI languages in the order of the XNLI paper's result tables.
_XNLI_LANGUAGES = ("en", "fr", "es", "de", "el", "bg", "ru", "tr", "ar", "vi", "th", "zh", "hi", "sw", "ur")

XNLI_LABEL_IDS: Mapping[str, int] = {"entailment": 0, "neutral": 1, "contradiction": 2}
MULTINLI_LABEL_IDS: Mapping[str, int] = {"entailment": 0, "neutral": 1, "contradiction": 2}
XNLI_MT_LABEL_IDS: Mapping[str, int] = {"entailment": 0, "neutral": 1, "contradictory": 2}
MULTINLI_NO_CONSENSUS = "-"

XNLI_ORIGINAL_COLUMNS = 19  # language, gold_label, 4 parses, sentence1/2, ids, genre, label1-5, ...
GLUE_MNLI_TRAIN_COLUMNS = 12  # dev_matched/mismatched have 16 (label1-5); read by header names


class NliFormatError(ValueError):
    """A file or dataset does not have the expected NLI layout; the message says where and what."""


@dataclasses.dataclass(frozen=True, slots=True)
class NliExample:
    premise: str
    hypothesis: str
    label: int  # index into NLI_LABELS
    language: str


def xnli_languages() -> tuple[str, ...]:
    """The 15 XNLI languages: en fr es de el bg ru tr ar vi th zh hi sw ur."""
    return _XNLI_LANGUAGES


# ---------------------------------------------------------------------------------------------
# Low-level file reading shared by the readers.


def _read_text_lines(path: str | os.PathLike, what: str) -> list[str]:
    """All lines of a UTF-8 file (`distil.lines.read_utf8_lines`); an empty file is an error naming it."""
    lines = list(read_utf8_lines(path, what=what, error=NliFormatError))
    if not lines:
        raise NliFormatError(f"{path}: file is empty; expected a {what}")
    return lines


def _split_row(path: Path, line_number: int, line: str, columns: int, layout: str) -> list[str]:
    if not line.strip():
        raise NliFormatError(f"{path}:{line_number}: empty line; expected {columns} tab-separated columns ({layout})")
    fields = line.split("\t")
    if len(fields) != columns:
        raise NliFormatError(
            f"{path}:{line_number}: expected {columns} tab-separated columns ({layout}), got {len(fields)}"
        )
    return fields


def _label_id(label: str, label_ids: Mapping[str, int], path: Path, line_number: int, source: str) -> int:
    if label not in label_ids:
        raise NliFormatError(
            f"{path}:{line_number}: unknown {source} label {label!r}; expected one of {sorted(label_ids)}"
        )
    return label_ids[label]


def _header_index(path: Path, header: list[str], required: Sequence[str], layout: str) -> dict[str, int]:
    missing = [name for name in required if name not in header]
    if missing:
        raise NliFormatError(f"{path}:1: header lacks column(s) {missing}; expected the {layout} header, got {header}")
    return {name: header.index(name) for name in required}


# ---------------------------------------------------------------------------------------------
# XNLI: the original release and XTREME's per-language files.


def read_xnli_original(path: str | os.PathLike, *, language: str | None = None) -> list[NliExample]:
    """Rows of the original `XNLI-1.0/xnli.{dev,test}.tsv` (19 columns, header, all languages in one file).

    `language=None` keeps every language in file order; otherwise only that language's rows,
    and a language with no rows is an error (a truncated file should not read as an empty split).
    """
    path = Path(path)
    lines = _read_text_lines(path, "XNLI-1.0 tsv file")
    header = lines[0].split("\t")
    layout = "the XNLI-1.0 xnli.{dev,test}.tsv layout"
    if len(header) != XNLI_ORIGINAL_COLUMNS:
        raise NliFormatError(
            f"{path}:1: expected the {XNLI_ORIGINAL_COLUMNS}-column XNLI-1.0 header, got {len(header)} columns"
        )
    columns = _header_index(path, header, ("language", "gold_label", "sentence1", "sentence2"), layout)
    if language is not None and language not in _XNLI_LANGUAGES:
        raise ValueError(f"language must be one of the XNLI languages {list(_XNLI_LANGUAGES)}, got {language!r}")
    examples, seen_languages = [], set()
    for line_number, line in enumerate(lines[1:], start=2):
        fields = _split_row(path, line_number, line, XNLI_ORIGINAL_COLUMNS, layout)
        row_language = fields[columns["language"]]
        seen_languages.add(row_language)
        if language is not None and row_language != language:
            continue
        label = _label_id(fields[columns["gold_label"]], XNLI_LABEL_IDS, path, line_number, "XNLI")
        examples.append(NliExample(fields[columns["sentence1"]], fields[columns["sentence2"]], label, row_language))
    if not examples and language is None:
        raise NliFormatError(f"{path}: no data rows after the header")
    if not examples:
        raise NliFormatError(
            f"{path}: no rows for language {language!r}; languages present: {sorted(seen_languages)}"
        )
    return examples


def _read_xtreme_index(path: Path) -> list[tuple[int, int]]:
    """`{split}-index.tsv` -> [(line number, label id)], one per sample row, in sample-row order."""
    lines = _read_text_lines(path, "XNLI sample index (sample_row, source_row, genre, gold_label)")
    expected_header = ["sample_row", "source_row", "genre", "gold_label"]
    if lines[0].split("\t") != expected_header:
        raise NliFormatError(f"{path}:1: expected header {'<TAB>'.join(expected_header)}, got {lines[0]!r}")
    labels = []
    for line_number, line in enumerate(lines[1:], start=2):
        fields = _split_row(path, line_number, line, 4, "sample_row, source_row, genre, gold_label")
        sample_row, gold_label = fields[0], fields[3]
        if sample_row != str(len(labels)):
            raise NliFormatError(
                f"{path}:{line_number}: expected sample_row {len(labels)} (rows in sample order), got {sample_row!r}"
            )
        labels.append((line_number, _label_id(gold_label, XNLI_LABEL_IDS, path, line_number, "XNLI")))
    return labels


def read_xtreme_xnli(data_dir: str | os.PathLike, *, split: str, language: str) -> list[NliExample]:
    """XTREME-style per-language `{data_dir}/{split}-{language}.tsv` (no header).

    XTREME writes dev rows as `premise<TAB>hypothesis<TAB>label` but strips the label from
    test rows (`premise<TAB>hypothesis`). Unlabeled rows take their label from
    `{split}-index.tsv` beside them: header `sample_row source_row genre gold_label`, line
    i+2 holding the label of row i (0-based) of every language's file, which is how the XNLI
    rows are aligned across languages. When a row has its own label and an index exists too,
    both must agree. The project's shared/data/README.md §2b tells how the sample index was built.
    """
    data_dir = Path(data_dir)
    path = data_dir / f"{split}-{language}.tsv"
    index_path = data_dir / f"{split}-index.tsv"
    lines = _read_text_lines(path, f"XTREME XNLI {split} file")
    index = _read_xtreme_index(index_path) if index_path.is_file() else None
    if index is not None and len(index) != len(lines):
        raise NliFormatError(f"{index_path}: has {len(index)} sample rows but {path} has {len(lines)} rows")
    examples = []
    # A file is labelled or not as a whole (its first row says which): a 2-column row among labelled ones is a row
    # that lost a column, never a premise and a label.
    columns = len(lines[0].split("\t")) if lines else 0
    for row, line in enumerate(lines):
        line_number = row + 1
        fields = line.split("\t")
        if len(fields) not in (2, 3) or not line.strip():
            raise NliFormatError(
                f"{path}:{line_number}: expected 2 (premise, hypothesis) or 3 (premise, hypothesis, label) "
                f"tab-separated columns, got {len(fields)}"
            )
        if len(fields) != columns:
            raise NliFormatError(
                f"{path}:{line_number}: expected {columns} tab-separated columns like line 1 ("
                + ("premise, hypothesis, label" if columns == 3 else "premise, hypothesis") + f"), got {len(fields)}"
            )
        if len(fields) == 3:
            label = _label_id(fields[2], XNLI_LABEL_IDS, path, line_number, "XNLI")
            if index is not None and index[row][1] != label:
                raise NliFormatError(
                    f"{path}:{line_number}: label {fields[2]!r} disagrees with {index_path}:{index[row][0]} "
                    f"({NLI_LABELS[index[row][1]]!r})"
                )
        elif index is None:
            raise NliFormatError(
                f"{path}:{line_number}: row has no label column and there is no {index_path} to supply it "
                "(XTREME strips test labels; use the original XNLI-1.0 xnli.test.tsv or a sample index)"
            )
        else:
            label = index[row][1]
        examples.append(NliExample(fields[0], fields[1], label, language))
    return examples


# ---------------------------------------------------------------------------------------------
# MultiNLI (English training data) and XNLI-MT (its machine translations).


def read_multinli_jsonl(path: str | os.PathLike, *, language: str = "en") -> list[NliExample]:
    """MultiNLI JSON lines: official `multinli_1.0_*.jsonl` or the simplified text_a/text_b/label form.

    The official keys are `sentence1`, `sentence2`, `gold_label`; the simplified sample shipped in
    data/embedded/nli/ uses `text_a`, `text_b`, `label` with the same label strings.
    Gold label `-` (no annotator consensus) is skipped in both.
    """
    path = Path(path)
    lines = _read_text_lines(path, "MultiNLI jsonl file")
    examples = []
    for line_number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as err:
            raise NliFormatError(
                f"{path}:{line_number}: not valid JSON ({err.msg}); expected one object per line"
            ) from None
        if isinstance(record, dict) and {"sentence1", "sentence2", "gold_label"} <= record.keys():
            premise, hypothesis, label = record["sentence1"], record["sentence2"], record["gold_label"]
        elif isinstance(record, dict) and {"text_a", "text_b", "label"} <= record.keys():
            premise, hypothesis, label = record["text_a"], record["text_b"], record["label"]
        else:
            keys = sorted(record) if isinstance(record, dict) else type(record).__name__
            raise NliFormatError(
                f"{path}:{line_number}: expected keys sentence1/sentence2/gold_label (official MultiNLI) or "
                f"text_a/text_b/label, got {keys}"
            )
        if label == MULTINLI_NO_CONSENSUS:
            continue
        if not isinstance(label, str) or not isinstance(premise, str) or not isinstance(hypothesis, str):
            raise NliFormatError(f"{path}:{line_number}: expected string premise, hypothesis and label")
        label_id = _label_id(label, MULTINLI_LABEL_IDS, path, line_number, "MultiNLI")
        examples.append(NliExample(premise, hypothesis, label_id, language))
    if not examples:
        raise NliFormatError(f"{path}: no labeled MultiNLI rows")
    return examples


def read_glue_mnli(path: str | os.PathLike) -> list[NliExample]:
    """GLUE `MNLI/{train,dev_matched,dev_mismatched}.tsv` (header; 12 columns in train, 16 in dev).

    Columns are found by header name (`sentence1`, `sentence2`, `gold_label`), and every row
    must have as many columns as the header. Gold label `-` is skipped as in MultiNLI.
    """
    path = Path(path)
    lines = _read_text_lines(path, "GLUE MNLI tsv file")
    header = lines[0].split("\t")
    layout = "GLUE MNLI: index, promptID, pairID, genre, 4 parses, sentence1, sentence2, label1.., gold_label"
    if header[0] != "index":
        raise NliFormatError(f"{path}:1: expected a header starting with 'index' ({layout}), got {lines[0][:80]!r}")
    columns = _header_index(path, header, ("sentence1", "sentence2", "gold_label"), layout)
    examples = []
    for line_number, line in enumerate(lines[1:], start=2):
        fields = _split_row(path, line_number, line, len(header), layout)
        label = fields[columns["gold_label"]]
        if label == MULTINLI_NO_CONSENSUS:
            continue
        label_id = _label_id(label, MULTINLI_LABEL_IDS, path, line_number, "MultiNLI")
        examples.append(NliExample(fields[columns["sentence1"]], fields[columns["sentence2"]], label_id, "en"))
    return examples


def read_xnli_mt(path: str | os.PathLike, *, language: str) -> list[NliExample]:
    """XNLI-MT-1.0 `multinli/multinli.train.{lang}.tsv`: header line, then premise, hypo, label.

    Labels are `entailment`, `neutral`, `contradictory` (sic), the latter mapped to 2.
    """
    path = Path(path)
    lines = _read_text_lines(path, "XNLI-MT tsv file")
    layout = "premise, hypo, label"
    header = _split_row(path, 1, lines[0], 3, f"header {layout}")
    if header[2] != "label":
        raise NliFormatError(f"{path}:1: expected the XNLI-MT header premise<TAB>hypo<TAB>label, got {lines[0][:80]!r}")
    examples = []
    for line_number, line in enumerate(lines[1:], start=2):
        premise, hypothesis, label = _split_row(path, line_number, line, 3, layout)
        label_id = _label_id(label, XNLI_MT_LABEL_IDS, path, line_number, "XNLI-MT")
        examples.append(NliExample(premise, hypothesis, label_id, language))
    return examples


# ---------------------------------------------------------------------------------------------
# tensorflow-datasets `xnli` and `multi_nli`, prepared as array_record in a data_dir.


def read_tfds_nli(
    name: str, *, data_dir: str | os.PathLike, split: str, language: str | None = None
) -> list[NliExample]:
    """Rows of a tfds `xnli` or `multi_nli` already prepared in `data_dir` (see `distil.data.tfds_io`).

    array_record is read through `tfds.data_source` (no TensorFlow needed), tfrecord through `tfds.load`
    (the `tf` extra); nothing is downloaded here. tfds' `multi_nli` builder itself needs TensorFlow to *prepare*
    (it reads with `tf.io.gfile`), so prepare it once where the `tf` extra is installed.
    Splits: xnli `validation`/`test`; multi_nli `train`/`validation_matched`/`validation_mismatched`.
    For xnli, `language=None` returns every language, language-major in `xnli_languages()` order.
    Row order is tfds' (shuffled at preparation), not the source file's.
    """
    if name not in ("xnli", "multi_nli"):
        raise ValueError(f"tfds NLI dataset must be 'xnli' or 'multi_nli', got {name!r}")
    if name == "multi_nli" and language not in (None, "en"):
        raise ValueError(f"tfds multi_nli is English only, got language={language!r}")
    if language is not None and language not in _XNLI_LANGUAGES:
        raise ValueError(f"language must be one of the XNLI languages {list(_XNLI_LANGUAGES)}, got {language!r}")
    builder = tfds_io.prepared_builder(name, data_dir)
    records = list(tfds_io.iter_examples(builder, split))
    label_names = builder.info.features["label"].names
    unknown = [label for label in label_names if label not in XNLI_LABEL_IDS]
    if unknown:
        raise NliFormatError(f"tfds dataset {name!r} in {builder.data_path}: unknown ClassLabel names {unknown}")
    tfds_to_ours = [XNLI_LABEL_IDS[label] for label in label_names]

    if name == "multi_nli":
        return [
            NliExample(tfds_io.text(r["premise"]), tfds_io.text(r["hypothesis"]), tfds_to_ours[int(r["label"])],
                       "en")
            for r in records
        ]
    examples = []
    for lang in _XNLI_LANGUAGES if language is None else (language,):
        for record in records:
            # premise is a tfds Translation {lang: text}; hypothesis a TranslationVariableLanguages
            # {"language": [..], "translation": [..]}.
            hypothesis_languages = map(tfds_io.text, record["hypothesis"]["language"])
            hypotheses = dict(zip(hypothesis_languages, record["hypothesis"]["translation"]))
            label = tfds_to_ours[int(record["label"])]
            premise, hypothesis = tfds_io.text(record["premise"][lang]), tfds_io.text(hypotheses[lang])
            examples.append(NliExample(premise, hypothesis, label, lang))
    return examples




# ---------------------------------------------------------------------------------------------
# Encoding for the classifier.


def encode_nli(
    examples: Sequence[NliExample], tokenizer: tokenizers.Tokenizer, *, max_length: int, with_token_types: bool
) -> dict[str, np.ndarray]:
    """`[CLS] premise [SEP] hypothesis [SEP]`, longest-first truncated to `max_length`, padded with [PAD].

    Returns int32 arrays: `input_ids`, `attention_mask` [n, max_length] (padding: [PAD] id and 0),
    `token_type_ids` [n, max_length] (0 for `[CLS] premise [SEP]` and padding, 1 for
    `hypothesis [SEP]`) only when `with_token_types` (BERT; DistilBERT has no segment
    embeddings), and `labels` [n]. This matches transformers' BertTokenizer called with
    `truncation='longest_first', padding='max_length'`.
    """
    pad_id = tokenization.special_token_ids(tokenizer).pad
    encoded = tokenization.encode_batch_pairs(
        tokenizer, [e.premise for e in examples], [e.hypothesis for e in examples], max_length=max_length
    )
    padded = pad_batch(
        [ids for ids, _ in encoded],
        max_length,
        pad_id=pad_id,
        token_type_ids=[type_ids for _, type_ids in encoded] if with_token_types else None,
    )
    batch = {
        "input_ids": padded["input_ids"],
        "attention_mask": padded["attention_mask"],
        "labels": np.asarray([e.label for e in examples], dtype=np.int32).reshape(len(examples)),
    }
    if with_token_types:
        batch["token_type_ids"] = padded["token_type_ids"]
    return batch
