"""Paths to the small default data shipped inside the package (distil/data/embedded/).

A fresh clone or an installed wheel has no ../shared data folder, so the demo and the
default configs read these files; distil/data/embedded/README.md gives the source, rows,
transformation and license of each. Several are non-commercial (XNLI: CC BY-NC 4.0).
"""

from __future__ import annotations

from pathlib import Path

from distil.data.nli import xnli_languages

# Every one of the 15 XNLI languages has a corpus file and XNLI samples.
EMBEDDED_LANGUAGES: tuple[str, ...] = xnli_languages()

_EMBEDDED_DIR = Path(__file__).resolve().parent / "embedded"


def embedded_dir() -> Path:
    """The folder holding every embedded file and its README.md."""
    return _EMBEDDED_DIR


def embedded_corpus_dir() -> Path:
    """`corpus/<lang>.txt`: one sentence per line, UTF-8, 250 lines per language."""
    return _EMBEDDED_DIR / "corpus"


def embedded_corpus_file(language: str) -> Path:
    """The corpus file of one of `EMBEDDED_LANGUAGES`."""
    if language not in EMBEDDED_LANGUAGES:
        raise ValueError(f"no embedded corpus for language {language!r}; languages: {list(EMBEDDED_LANGUAGES)}")
    return embedded_corpus_dir() / f"{language}.txt"


def embedded_wordpiece_vocab() -> Path:
    """`wordpiece-8k/vocab.txt`: an 8,000-token cased WordPiece learned from the embedded corpus, for laptop-sized
    runs (`distilmbert:runlocal`, tests) where mBERT's 119,547 rows would dominate the model."""
    return _EMBEDDED_DIR / "wordpiece-8k" / "vocab.txt"


def embedded_nli_train() -> Path:
    """English MultiNLI training sample, 3000 rows (1000 per label), text_a/text_b/label jsonl.

    Read it with `distil.data.nli.read_multinli_jsonl`.
    """
    return _EMBEDDED_DIR / "nli" / "mnli_train_sample_3000.jsonl"


def embedded_xnli_dir() -> Path:
    """XTREME-format XNLI samples: `dev-<lang>.tsv` (150 labeled rows), `test-<lang>.tsv` (300 rows).

    Test rows carry no label column (as in XTREME); `test-index.tsv` supplies it, and
    `distil.data.nli.read_xtreme_xnli(embedded_xnli_dir(), split=..., language=...)` joins them.
    """
    return _EMBEDDED_DIR / "xnli"
