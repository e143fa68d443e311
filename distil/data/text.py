"""Raw pre-training text: UTF-8 line files, tensorflow-datasets Wikipedia, and a language mixture of them.

Every source is a *re-iterable* of stripped, non-blank lines (one document or sentence per line, the layout of the
`dump.txt` that HF's distillation example binarises), so `binarize` can read it once and a mixture can restart a
language that runs out. Lines are tagged with their language as `(lang, line)` pairs by `tag_languages` (plain
concatenation) or `mix_languages` (XLM-style sampling, p ∝ n^alpha, Lample & Conneau 2019 §3.1).
"""

from __future__ import annotations

import dataclasses
import logging
import os
import re
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path

import numpy as np

from distil.data import tfds_io
from distil.lines import read_utf8_lines

_log = logging.getLogger(__name__)

# Lines drawn per language choice in `mix_languages`; only a speed knob, the drawn stream does not depend on it.
_MIX_BLOCK = 4096


class TextSourceError(ValueError):
    """A text source is missing, empty, undecodable or not prepared; the message names the file/dataset."""


def read_lines(path: str | os.PathLike) -> Iterator[str]:
    """Yields the stripped, non-blank lines of a UTF-8 file (a leading byte-order mark is dropped).

    Lines are decoded one at a time so a bad byte is reported with its file and 1-based line number instead of a
    bare `UnicodeDecodeError` from deep inside a worker. A file without any non-blank line is an error: an empty
    language file is almost always a failed download, and silently training without that language is worse.
    """
    yielded = 0
    for line in read_utf8_lines(path, what="text file", error=TextSourceError):
        line = line.strip()
        if line:
            yielded += 1
            yield line
    if yielded == 0:
        raise TextSourceError(f"text file {path} is empty (no non-blank line)")


@dataclasses.dataclass(frozen=True)
class TextFile:
    """A UTF-8 file read with `read_lines`; iterating it again re-reads it from the start."""

    path: Path

    def __post_init__(self):
        object.__setattr__(self, "path", Path(self.path))
        if not self.path.is_file():
            raise FileNotFoundError(f"text file {self.path} does not exist (or is not a regular file)")

    def __iter__(self) -> Iterator[str]:
        return read_lines(self.path)


# A language code as corpus file names carry it: ISO 639-1 / 639-3 (`en`, `sw`, `ceb`), optionally with BCP 47
# script or region subtags (`zh-Hans`, `pt_BR`) or tfds Wikipedia's variants (`zh-min-nan`, `be-tarask`).
_LANGUAGE_CODE = re.compile(r"[a-z]{2,3}(?:[-_][A-Za-z0-9]{2,8})*")


def is_language_code(name: str) -> bool:
    return _LANGUAGE_CODE.fullmatch(name) is not None


def language_files(path: str | os.PathLike) -> dict[str, TextFile]:
    """A folder of `<lang>.txt` files (sorted by language), or one `<lang>.txt` file, as {lang: TextFile}.

    Only files named by a language code are languages: a `README.txt` or `notes.txt` beside them is skipped and
    named in a warning (logger `distil.data.text`), never trained on as a language. To read files of other names,
    pass a {lang: path} mapping to `binarize`.
    """
    path = Path(path)
    if path.is_file():
        if not is_language_code(path.stem):
            raise TextSourceError(
                f"{path}: the file name must be a language code, <lang>.txt (e.g. en.txt, zh-Hans.txt); rename it"
            )
        return {path.stem: TextFile(path)}
    if not path.is_dir():
        raise FileNotFoundError(f"text source {path} is neither a file nor a folder of <lang>.txt files")
    entries = sorted(entry for entry in path.iterdir() if not entry.name.startswith("."))
    files = [entry for entry in entries if entry.suffix == ".txt" and entry.is_file() and is_language_code(entry.stem)]
    skipped = [entry.name for entry in entries if entry not in files]
    if not files:
        also = f" (it holds {', '.join(skipped[:6])}{' ...' if len(skipped) > 6 else ''})" if skipped else ""
        raise TextSourceError(f"folder {path} holds no <lang>.txt file (e.g. en.txt){also}")
    if skipped:
        _log.warning("%s: skipped %d file(s) not named <lang>.txt with a language code: %s", path, len(skipped),
                     ", ".join(skipped[:10]) + (" ..." if len(skipped) > 10 else ""))
    return {file.stem: TextFile(file) for file in files}


@dataclasses.dataclass(frozen=True)
class WikipediaSource:
    """The paragraphs of tensorflow-datasets' `wikipedia/<date>.<language>` already prepared under `data_dir`.

    TFDS stores one cleaned article per example; its text separates paragraphs with newlines, and each paragraph
    becomes one line here (titles are dropped), matching the one-paragraph-per-line dumps the HF example
    binarised. `backend="data_source"` reads array_record/parquet files through `tfds.data_source` (no
    TensorFlow needed); `"tf"` uses `tfds.load` (needs the optional `tf` extra); `"auto"` picks the first that
    can read the prepared file format. Nothing is ever downloaded: an unprepared dataset is an error.
    """

    language: str
    data_dir: str | os.PathLike
    date: str = "20230601"
    split: str = "train"
    backend: tfds_io.Backend = "auto"

    @property
    def dataset_name(self) -> str:
        return f"wikipedia/{self.date}.{self.language}"

    def __iter__(self) -> Iterator[str]:
        for article in _iter_wikipedia_texts(self):
            for paragraph in article.split("\n"):
                paragraph = paragraph.strip()
                if paragraph:
                    yield paragraph


def _iter_wikipedia_texts(source: WikipediaSource) -> Iterator[str]:
    builder = tfds_io.prepared_builder(source.dataset_name, source.data_dir)
    for example in tfds_io.iter_examples(builder, source.split, backend=source.backend):
        yield tfds_io.text(example["text"])


def count_lines(source: Iterable[str]) -> int:
    """Number of lines a source yields (one full pass; the counts `language_sampling_probs` expects)."""
    return sum(1 for _ in source)


def language_sampling_probs(counts: Mapping[str, int], alpha: float = 0.7) -> dict[str, float]:
    """Sampling probability per language, p_i = n_i^alpha / sum_j n_j^alpha (XLM, Lample & Conneau 2019).

    alpha < 1 up-samples small languages (alpha=0: uniform over languages, alpha=1: proportional to size);
    mBERT itself used exponential smoothing of this kind when building its pre-training mixture.
    """
    if not counts:
        raise ValueError("language_sampling_probs needs at least one language, got no counts")
    if not 0 <= alpha < float("inf"):
        raise ValueError(f"alpha must be a finite number >= 0, got {alpha}")
    for lang, count in counts.items():
        if count < 0:
            raise ValueError(f"count of language {lang!r} must be >= 0, got {count}")
    sizes = np.array([float(counts[lang]) for lang in counts])
    weights = np.where(sizes > 0, sizes ** alpha, 0.0)  # 0**0 would be 1: an empty language gets nothing
    if weights.sum() <= 0:
        raise ValueError(f"all language counts are zero: {dict(counts)}")
    probs = weights / weights.sum()
    return {lang: float(p) for lang, p in zip(counts, probs)}


def tag_languages(sources: Mapping[str, Iterable[str]]) -> Iterator[tuple[str, str]]:
    """All lines of every language, one language after the other (mapping order), as (lang, line)."""
    for lang, source in sources.items():
        for line in source:
            yield lang, line


def mix_languages(
    sources: Mapping[str, Iterable[str]],
    probs: Mapping[str, float],
    *,
    seed: int,
    num_lines: int,
) -> Iterator[tuple[str, str]]:
    """`num_lines` (lang, line) pairs, the language of each drawn i.i.d. from `probs`, deterministic from `seed`.

    Each language is read in its own order; one that runs out starts again from its first line (so up-sampled
    small languages repeat, as in XLM). The sources must therefore be re-iterable (`TextFile`, `WikipediaSource`,
    lists), not one-shot generators.
    """
    langs = list(sources)
    if set(probs) != set(langs):
        raise ValueError(f"probs has languages {sorted(probs)}, sources have {sorted(langs)}")
    p = np.array([float(probs[lang]) for lang in langs])
    if (p < 0).any() or not np.isclose(p.sum(), 1.0):
        raise ValueError(f"probs must be >= 0 and sum to 1, got {dict(probs)}")
    if num_lines < 0:
        raise ValueError(f"num_lines must be >= 0, got {num_lines}")
    rng = np.random.Generator(np.random.PCG64(np.random.SeedSequence(seed)))
    iterators = {lang: iter(sources[lang]) for lang in langs}
    remaining = num_lines
    while remaining > 0:
        block = rng.choice(len(langs), size=min(_MIX_BLOCK, remaining), p=p / p.sum())
        remaining -= len(block)
        for lang_index in block:
            lang = langs[lang_index]
            line = next(iterators[lang], None)
            if line is None:  # exhausted: start the language again
                iterators[lang] = iter(sources[lang])
                line = next(iterators[lang], None)
                if line is None:
                    raise TextSourceError(f"language {lang!r} has no lines to sample from")
            yield lang, line
