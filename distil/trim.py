"""Vocabulary trimming: a model and its tokenizer reduced to the tokens a corpus of the target languages uses.

In mBERT and DistilmBERT most parameters are the 119,547 word embeddings (92M of DistilmBERT's 135M); a user who
serves five languages needs a fraction of them. Load What You Need (Abdaoui et al., 2020) keeps the tokens a
language's Wikipedia uses and drops the other rows, with the same representations and the same XNLI accuracy.

What is kept (`select_vocabulary`), always in the original relative order, so [PAD] stays 0 and the special tokens
keep their order (mBERT's [UNK]=100, [CLS]=101, [SEP]=102, [MASK]=103 become 1, 2, 3, 4 once the never-used
[unusedN] rows go):
  * the tokenizer's special (added) tokens;
  * every token the corpus' tokenization uses at least `min_count` times (the chosen languages counted together);
  * unless `single_chars=False`, every single-character piece `c` and `##c` of the vocabulary whose character is of
    a script the kept tokens use, or of no script (digits, punctuation, symbols), so that an unseen word of those
    scripts still tokenizes into pieces instead of becoming [UNK];
  * the tokens of a `keep_vocab` file.

Why the corpus tokenizes to the same pieces: WordPiece takes, at each position of a word, the longest vocabulary
entry that matches. When every piece the full vocabulary V chose is kept in T ⊂ V, no longer match exists in T (it
would be one in V), so T chooses the same pieces, now numbered by their new ids. A word with a dropped piece is
re-segmented into kept pieces, or becomes one [UNK] when no kept piece covers one of its characters, exactly as
plain mBERT does for a character outside its vocabulary.

Why the model is unchanged on kept ids: the word embeddings and the MLM bias are the only tensors with a vocabulary
axis (the MLM decoder is tied to the embeddings), so keeping rows `kept_ids` of both gives, for the new ids, the
hidden states of the old ids and MLM logits equal to the old logits at `kept_ids`. Their softmax is the original
distribution restricted to the kept tokens and renormalised: what the distillation KL between a trimmed teacher and
student compares (`distil distill --config distilmbert:languages=en,fr`, which trims in memory before training).

`kept_ids.json` (written beside a trimmed model) maps new ids to old ones: `kept_ids[new_id] = old_id`.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import os
import unicodedata
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path

import jax.numpy as jnp
import numpy as np
import tokenizers
from flax import nnx

from distil import storage
from distil.atomic import check_replaceable_folder, refuse_overlap, write_text_atomically
from distil.lines import read_utf8_lines
from distil.models import Model, ModelConfig, abstract_model, parameter_count

KEPT_IDS_FILE = "kept_ids.json"
FORMAT = "distil.kept_ids.v1"
# The only parameters with a vocabulary axis (rows); everything else is copied as it is.
VOCABULARY_PARAMETERS = ("encoder.embeddings.word_embeddings.embedding", "mlm_head.bias")
COMMON_SCRIPT = "COMMON"
# First words of Unicode character names that are not a script: letters and marks named so belong to no script
# ("MODIFIER LETTER SMALL H", "COMBINING ACUTE ACCENT", "FULLWIDTH LATIN ...") and are kept like punctuation.
_NOT_SCRIPTS = frozenset({
    "MODIFIER", "COMBINING", "FULLWIDTH", "HALFWIDTH", "SUPERSCRIPT", "SUBSCRIPT", "DOUBLE", "FEMININE", "MASCULINE",
    "MICRO", "SCRIPT", "SMALL", "CIRCLED", "PARENTHESIZED", "MATHEMATICAL",
})
_LINES_PER_CHUNK = 10_000


class TrimError(ValueError):
    """A corpus, vocabulary or option that trimming cannot use; the message names the file, flag or language."""


# --------------------------------------------------------------------------------------------------------------
# Token counts of a corpus.


@dataclasses.dataclass(frozen=True)
class CorpusCounts:
    """How often the source tokenizer's corpus tokenization uses each id, per language.

    counts: language -> int64 [vocab] (a binarised corpus has one entry for all its languages, named by them).
    sequences: language -> a fresh iterator over the corpus' token-id sequences (lists of int32 arrays), for the
      [UNK] report after trimming.
    """

    description: str
    counts: dict[str, np.ndarray]
    sequences: Callable[[str], Iterator[list[np.ndarray]]]

    @property
    def total(self) -> np.ndarray:
        return np.sum(list(self.counts.values()), axis=0)


def _plain_copy(tokenizer: tokenizers.Tokenizer) -> tokenizers.Tokenizer:
    """A copy without truncation and padding: counts cover every token of every line."""
    copy = tokenizers.Tokenizer.from_str(tokenizer.to_str())
    copy.no_truncation()
    copy.no_padding()
    return copy


def _encoded_chunks(tokenizer: tokenizers.Tokenizer, lines: Iterable[str]) -> Iterator[list[np.ndarray]]:
    """Token ids of each line without [CLS]/[SEP], `_LINES_PER_CHUNK` lines per call into the Rust tokenizer."""
    lines = iter(lines)
    for chunk in iter(lambda: list(itertools.islice(lines, _LINES_PER_CHUNK)), []):
        encodings = tokenizer.encode_batch_fast(chunk, add_special_tokens=False)
        yield [np.asarray(encoding.ids, np.int32) for encoding in encodings]


def _count(chunks: Iterable[list[np.ndarray]], vocab_size: int) -> np.ndarray:
    counts = np.zeros(vocab_size, np.int64)
    for chunk in chunks:
        if chunk:
            counts += np.bincount(np.concatenate(chunk), minlength=vocab_size)
    return counts


def corpus_token_counts(
    corpus: str | os.PathLike,
    tokenizer: tokenizers.Tokenizer,
    *,
    languages: Sequence[str] | None = None,
    data_dir: str | os.PathLike | None = None,
    wikipedia_date: str = "20230601",
) -> CorpusCounts:
    """Token counts of `corpus` under `tokenizer`, per language.

    corpus: a folder of `<lang>.txt` files (or one such file), `"wikipedia"` (tensorflow-datasets'
      `wikipedia/<date>.<lang>` prepared under `data_dir`; `languages` required), or a folder written by
      `distil prepare` (its `token_counts.npy`, which must be of this tokenizer's vocabulary).
    languages: the languages to count (default: all of the corpus).
    """
    from distil.data import binarize
    from distil.data import text as text_sources

    vocab_size = tokenizer.get_vocab_size(with_added_tokens=True)
    languages = list(languages) if languages else None
    path = Path(corpus)
    if os.fspath(corpus) != "wikipedia" and (path / binarize.INDEX_FILE).is_file():
        index = storage.read_json(path / binarize.INDEX_FILE, "index distil prepare writes", error=TrimError)
        corpus_languages = sorted({lang for shard in index.get("shards", []) for lang in shard.get("languages", {})})
        if index.get("vocab_size") != vocab_size:
            raise TrimError(f"{path / binarize.INDEX_FILE}: the corpus was binarised with a vocabulary of "
                            f"{index.get('vocab_size')} tokens, the model's tokenizer has {vocab_size:,}; use a corpus "
                            "prepared with the model's own tokenizer")
        if languages and sorted(set(languages)) != corpus_languages:
            raise TrimError(f"--languages {','.join(languages)}: {path} is a binarised corpus whose token counts "
                            f"cover its languages ({', '.join(corpus_languages)}) together; prepare one with only "
                            "the languages to keep")
        counts = binarize.load_token_counts(path)
        name = "+".join(corpus_languages) or "all"

        def binarised_sequences(_language: str) -> Iterator[list[np.ndarray]]:
            sequences = binarize.open_binarized(path)
            for start in range(0, len(sequences), _LINES_PER_CHUNK):
                yield [np.asarray(sequences[i]) for i in range(start, min(start + _LINES_PER_CHUNK, len(sequences)))]

        return CorpusCounts(f"binarised corpus {path} ({', '.join(corpus_languages)})", {name: counts},
                            binarised_sequences)

    if os.fspath(corpus) == "wikipedia":
        if data_dir is None or not languages:
            raise TrimError("--corpus wikipedia needs --data-dir (a tensorflow-datasets data_dir) and --languages")
        sources = {lang: text_sources.WikipediaSource(lang, data_dir, date=wikipedia_date) for lang in languages}
        description = f"tfds wikipedia/{wikipedia_date} in {data_dir} ({', '.join(languages)})"
    else:
        sources = text_sources.language_files(corpus)
        if languages:
            missing = [lang for lang in languages if lang not in sources]
            if missing:
                raise TrimError(f"--languages: {corpus} has no <lang>.txt for {', '.join(missing)}; it has "
                                f"{', '.join(sorted(sources))}")
            sources = {lang: sources[lang] for lang in languages}
        description = f"{corpus} ({', '.join(sources)})"
    tokenizer = _plain_copy(tokenizer)

    def text_sequences(language: str) -> Iterator[list[np.ndarray]]:
        return _encoded_chunks(tokenizer, sources[language])

    counts = {lang: _count(text_sequences(lang), vocab_size) for lang in sources}
    return CorpusCounts(description, counts, text_sequences)


# --------------------------------------------------------------------------------------------------------------
# Choosing the vocabulary.


def character_script(char: str) -> str:
    """The script of a letter or mark, as the first word of its Unicode name (LATIN, CYRILLIC, ARABIC, DEVANAGARI,
    CJK, THAI, ...; ARABIC-INDIC counts as ARABIC), or `COMMON_SCRIPT` for digits, punctuation, symbols and letters
    of no script. The standard library has no script property; the name's first word is what Unicode names use."""
    if unicodedata.category(char)[0] not in "LM":
        return COMMON_SCRIPT
    name = unicodedata.name(char, "")
    first = name.split(" ")[0].split("-")[0]
    if not first or first in _NOT_SCRIPTS:
        return COMMON_SCRIPT
    return first


def _single_character(token: str) -> str | None:
    if len(token) == 1:
        return token
    if len(token) == 3 and token.startswith("##"):
        return token[2]
    return None


def _tokens_by_id(tokenizer: tokenizers.Tokenizer) -> list[str]:
    vocab = tokenizer.get_vocab(with_added_tokens=True)
    tokens = sorted(vocab, key=vocab.__getitem__)
    if [vocab[token] for token in tokens] != list(range(len(tokens))):
        raise TrimError(f"the tokenizer's ids are not 0..{len(tokens) - 1} without gaps; cannot trim it")
    return tokens


@dataclasses.dataclass(frozen=True)
class VocabularyTrim:
    """The kept vocabulary: `kept_ids[new_id] = old_id` (increasing) and the trimmed tokenizer."""

    kept_ids: np.ndarray  # int64 [new_vocab]
    source_vocab_size: int
    tokenizer: tokenizers.Tokenizer
    kept_by_reason: dict[str, int]  # special, corpus, single_chars, keep_vocab (each token counted once, in order)
    scripts: tuple[str, ...]  # scripts of the kept corpus tokens (single characters of these were kept)
    min_count: int

    @property
    def vocab_size(self) -> int:
        return len(self.kept_ids)

    @property
    def old_to_new(self) -> np.ndarray:
        """int64 [source_vocab]: the new id of each old id, -1 where dropped."""
        mapping = np.full(self.source_vocab_size, -1, np.int64)
        mapping[self.kept_ids] = np.arange(len(self.kept_ids))
        return mapping

    def to_json(self, **extra) -> str:
        return json.dumps({
            "format": FORMAT, "source_vocab_size": self.source_vocab_size, "vocab_size": self.vocab_size,
            "min_count": self.min_count, "kept_by_reason": self.kept_by_reason, "scripts": list(self.scripts),
            **extra, "kept_ids": [int(i) for i in self.kept_ids],
        }, ensure_ascii=False) + "\n"


def read_keep_vocab(path: str | os.PathLike, tokenizer: tokenizers.Tokenizer, source: str = "the tokenizer"
                    ) -> list[str]:
    """Tokens of a `--keep-vocab` file, one per line (blank lines skipped); each must be in the vocabulary."""
    try:
        lines = list(read_utf8_lines(path, what="--keep-vocab token file", error=TrimError))
    except FileNotFoundError as err:
        raise TrimError(str(err)) from None
    vocab = tokenizer.get_vocab(with_added_tokens=True)
    tokens = []
    for line_number, token in enumerate(lines, start=1):
        if not token.strip():
            continue
        if token not in vocab:
            raise TrimError(f"{path}:{line_number}: token {token!r} is not in the vocabulary of {source}; expected "
                            "one token of it per line")
        tokens.append(token)
    return tokens


def select_vocabulary(
    tokenizer: tokenizers.Tokenizer,
    counts: np.ndarray,
    *,
    min_count: int = 1,
    single_chars: bool = True,
    keep_tokens: Sequence[str] = (),
) -> VocabularyTrim:
    """The kept vocabulary of `tokenizer` given corpus `counts` (int [vocab]); see the module docstring."""
    if not isinstance(min_count, int) or isinstance(min_count, bool) or min_count < 1:
        raise TrimError(f"--min-count must be an integer >= 1, got {min_count!r}")
    tokens = _tokens_by_id(tokenizer)
    counts = np.asarray(counts)
    if counts.shape != (len(tokens),):
        raise TrimError(f"token counts have shape {list(counts.shape)}, the tokenizer has {len(tokens):,} tokens")
    vocab = {token: token_id for token_id, token in enumerate(tokens)}
    special = np.zeros(len(tokens), bool)
    special[list(tokenizer.get_added_tokens_decoder())] = True
    reasons: dict[str, np.ndarray] = {"special": special}
    reasons["corpus"] = (counts >= min_count) & ~special
    scripts = sorted({character_script(char) for token_id in np.flatnonzero(reasons["corpus"])
                      for char in tokens[token_id].removeprefix("##")} - {COMMON_SCRIPT})
    chars = np.zeros(len(tokens), bool)
    if single_chars:
        wanted = {*scripts, COMMON_SCRIPT}
        for token_id, token in enumerate(tokens):
            char = _single_character(token)
            if char is not None and character_script(char) in wanted:
                chars[token_id] = True
    reasons["single_chars"] = chars & ~reasons["corpus"] & ~special
    keep = np.zeros(len(tokens), bool)
    keep[[vocab[token] for token in keep_tokens]] = True
    reasons["keep_vocab"] = keep & ~chars & ~reasons["corpus"] & ~special
    kept = np.logical_or.reduce(list(reasons.values()))
    kept_ids = np.flatnonzero(kept).astype(np.int64)
    return VocabularyTrim(
        kept_ids=kept_ids, source_vocab_size=len(tokens), tokenizer=trim_tokenizer(tokenizer, kept_ids),
        kept_by_reason={reason: int(mask.sum()) for reason, mask in reasons.items()}, scripts=tuple(scripts),
        min_count=min_count,
    )


def trim_tokenizer(tokenizer: tokenizers.Tokenizer, kept_ids: Sequence[int]) -> tokenizers.Tokenizer:
    """`tokenizer` with only the tokens `kept_ids` (in that order: new id = position), every other setting (the
    normalizer, pre-tokenizer, WordPiece options, post-processor, decoder) unchanged."""
    tokens = _tokens_by_id(tokenizer)
    kept_tokens = [tokens[i] for i in kept_ids]
    new_id = {token: i for i, token in enumerate(kept_tokens)}
    state = json.loads(tokenizer.to_str())
    model = state["model"]
    if model.get("type") != "WordPiece":
        raise TrimError(f"the tokenizer's model is {model.get('type')}; distil trims WordPiece tokenizers")
    if model.get("unk_token") not in new_id:
        raise TrimError(f"the unknown token {model.get('unk_token')!r} must be kept")
    model["vocab"] = {token: new_id[token] for token in kept_tokens if token in model["vocab"]}
    for added in state.get("added_tokens") or []:
        if added["content"] not in new_id:
            raise TrimError(f"special token {added['content']!r} must be kept")
        added["id"] = new_id[added["content"]]

    def renumber(processor):
        if not processor:
            return
        if processor.get("type") == "TemplateProcessing":
            for special in processor["special_tokens"].values():
                special["ids"] = [new_id[token] for token in special["tokens"]]
        elif processor.get("type") in ("BertProcessing", "RobertaProcessing"):
            for key in ("sep", "cls"):
                processor[key] = [processor[key][0], new_id[processor[key][0]]]
        elif processor.get("type") == "Sequence":
            for inner in processor["processors"]:
                renumber(inner)

    renumber(state.get("post_processor"))
    state["truncation"] = None
    state["padding"] = None
    return tokenizers.Tokenizer.from_str(json.dumps(state, ensure_ascii=False))


# --------------------------------------------------------------------------------------------------------------
# The model.


def _check_kept_ids(kept_ids: np.ndarray, vocab_size: int) -> None:
    if kept_ids.ndim != 1 or not len(kept_ids):
        raise TrimError(f"kept_ids must be a non-empty list of ids, got shape {list(kept_ids.shape)}")
    if kept_ids[0] < 0 or kept_ids[-1] >= vocab_size or (np.diff(kept_ids) <= 0).any():
        raise TrimError(f"kept_ids must be increasing ids in [0, {vocab_size}) (the original order)")


def trimmed_model_config(config: ModelConfig, kept_ids: Sequence[int]) -> ModelConfig:
    """`config` with the vocabulary `kept_ids`: `vocab_size` and the renumbered `pad_token_id`."""
    kept_ids = np.asarray(kept_ids, np.int64)
    _check_kept_ids(kept_ids, config.vocab_size)
    pad = int(np.searchsorted(kept_ids, config.pad_token_id))
    if pad >= len(kept_ids) or kept_ids[pad] != config.pad_token_id:
        raise TrimError(f"the padding id {config.pad_token_id} must be kept")
    return config.replace(vocab_size=len(kept_ids), pad_token_id=pad)


def trim_model(model: Model, kept_ids: Sequence[int]) -> Model:
    """A copy of `model` (BERT or DistilBERT, any head) whose vocabulary is `kept_ids`: word-embedding and MLM-bias
    rows `kept_ids` (new id i is old id kept_ids[i]), every other parameter as it is, `vocab_size` and
    `pad_token_id` renumbered. Parameters come back on the host's default device; the caller places them."""
    kept_ids = np.asarray(kept_ids, np.int64)
    trimmed_config = trimmed_model_config(model.config, kept_ids)
    graphdef, abstract_state = nnx.split(abstract_model(trimmed_config))
    values = {".".join(str(part) for part in path): leaf.get_value()
              for path, leaf in nnx.to_flat_state(nnx.state(model))}
    flat = []
    for path, leaf in nnx.to_flat_state(abstract_state):
        name = ".".join(str(part) for part in path)
        value = np.asarray(values[name])
        if name in VOCABULARY_PARAMETERS:
            value = value[kept_ids]
        if value.shape != leaf.shape:  # a vocabulary axis this module does not know of: a bug, not bad input
            raise AssertionError(f"{name}: shape {value.shape} after trimming, the model expects {leaf.shape}")
        flat.append((path, leaf.replace(jnp.asarray(value))))
    return nnx.merge(graphdef, nnx.from_flat_state(flat))


# --------------------------------------------------------------------------------------------------------------
# What trimming did to the corpus.


def unk_report(corpus: CorpusCounts, vocabulary: VocabularyTrim, source_tokenizer: tokenizers.Tokenizer
               ) -> dict[str, dict]:
    """Per language: the corpus' tokens (as the source tokenizer splits it), how many were [UNK] already, and how
    many are in words that become [UNK] (`became_unk`) or other kept pieces (`resegmented`) with the trimmed
    tokenizer. Both are 0 on the corpus the vocabulary was chosen from with min_count 1; the corpus is re-read only
    for languages that use a dropped token."""
    tokens = _tokens_by_id(source_tokenizer)
    unk_token = vocabulary.tokenizer.model.unk_token
    unk_id = tokens.index(unk_token)
    kept = np.zeros(len(tokens), bool)
    kept[vocabulary.kept_ids] = True
    continuation = np.array([token.startswith("##") for token in tokens])
    special = np.zeros(len(tokens), bool)
    special[list(source_tokenizer.get_added_tokens_decoder())] = True
    trimmed_model = vocabulary.tokenizer.model
    report = {}
    for language, counts in corpus.counts.items():
        row = {"tokens": int(counts.sum()), "unk_before": int(counts[unk_id]), "became_unk": 0, "resegmented": 0}
        if (counts[~kept] > 0).any():
            for chunk in corpus.sequences(language):
                for ids in chunk:
                    if kept[ids].all():
                        continue
                    starts = ~continuation[ids]
                    starts[1:] |= special[ids[:-1]]
                    starts[0] = True
                    bounds = [*np.flatnonzero(starts), len(ids)]
                    for begin, end in zip(bounds[:-1], bounds[1:]):
                        word_ids = ids[begin:end]
                        if kept[word_ids].all():
                            continue
                        pieces = [tokens[i] for i in word_ids]
                        word = pieces[0].removeprefix("##") + "".join(piece[2:] for piece in pieces[1:])
                        pieces_after = [token.value for token in trimmed_model.tokenize(word)]
                        row["became_unk" if pieces_after == [unk_token] else "resegmented"] += len(pieces)
        report[language] = row
    return report


# --------------------------------------------------------------------------------------------------------------
# `distil trim`.


@dataclasses.dataclass(frozen=True)
class TrimSummary:
    folder: Path
    architecture: str
    corpus: str
    vocabulary: VocabularyTrim
    parameters_before: int
    parameters_after: int
    weight_bytes_before: int
    weight_bytes_after: int
    languages: dict[str, dict]


def trim_folder(
    source: str | os.PathLike,
    destination: str | os.PathLike,
    corpus: str | os.PathLike,
    *,
    languages: Sequence[str] | None = None,
    min_count: int = 1,
    keep_vocab: str | os.PathLike | None = None,
    single_chars: bool = True,
    data_dir: str | os.PathLike | None = None,
    wikipedia_date: str = "20230601",
    allow_unused: bool = False,
) -> TrimSummary:
    """`distil trim`: reads the model folder `source` with its tokenizer, chooses the vocabulary of `corpus`, and
    writes `destination` as a whole (atomically): the trimmed model, its tokenizer and `kept_ids.json`."""
    from distil import hf
    from distil.tokenization import TokenizerError, load_tokenizer

    refuse_overlap(source, destination)
    checkpoint = hf.read_checkpoint(source, allow_unused=allow_unused)
    check_replaceable_folder(destination, "model folder")
    try:
        tokenizer = load_tokenizer(source)
    except TokenizerError as err:
        raise TrimError(f"{err}; distil trim needs the model's tokenizer in its folder (write it there with "
                        "distil export SRC DST --tokenizer VOCAB)") from None
    hf.check_tokenizer(checkpoint.config, tokenizer, model=f"{source} ({hf.MODEL_CONFIG_FILE})",
                       tokenizer_name=f"its tokenizer ({source})")
    keep_tokens = read_keep_vocab(keep_vocab, tokenizer, str(source)) if keep_vocab else []
    if not isinstance(min_count, int) or isinstance(min_count, bool) or min_count < 1:
        raise TrimError(f"--min-count must be an integer >= 1, got {min_count!r}")
    counts = corpus_token_counts(corpus, tokenizer, languages=languages, data_dir=data_dir,
                                 wikipedia_date=wikipedia_date)
    vocabulary = select_vocabulary(tokenizer, counts.total, min_count=min_count, single_chars=single_chars,
                                   keep_tokens=keep_tokens)
    report = unk_report(counts, vocabulary, tokenizer)

    model = hf.load_pretrained(source, allow_unused=allow_unused)
    trimmed = trim_model(model, vocabulary.kept_ids)
    del model
    kept_ids_text = vocabulary.to_json(source=os.fspath(source), corpus=counts.description, languages=report)
    folder = hf.save_pretrained(trimmed, destination, tokenizer=vocabulary.tokenizer,
                                extra_files={KEPT_IDS_FILE: kept_ids_text})
    weight_files = {tensor.file for tensor in checkpoint.stored.values()}
    return TrimSummary(
        folder=folder, architecture=hf.architecture_name(trimmed.config), corpus=counts.description,
        vocabulary=vocabulary, parameters_before=parameter_count(checkpoint.config),
        parameters_after=parameter_count(trimmed.config),
        weight_bytes_before=sum(os.path.getsize(file) for file in weight_files),
        weight_bytes_after=os.path.getsize(folder / hf.WEIGHTS_FILE), languages=report,
    )


# --------------------------------------------------------------------------------------------------------------
# Distilling into a trimmed student.


def trim_for_training(
    tokenizer: tokenizers.Tokenizer,
    corpus: str | os.PathLike,
    *,
    languages: Sequence[str] | None,
    data_dir: str | os.PathLike | None,
    min_count: int = 1,
    single_chars: bool = True,
    out_dir: str | os.PathLike | None = None,
) -> VocabularyTrim:
    """The vocabulary of `corpus` (the training text), and, given `out_dir`, its tokenizer files and
    `kept_ids.json` written there (the trainer binarises the corpus with that tokenizer)."""
    counts = corpus_token_counts(corpus, tokenizer, languages=languages, data_dir=data_dir)
    vocabulary = select_vocabulary(tokenizer, counts.total, min_count=min_count, single_chars=single_chars)
    if out_dir is not None:
        from distil.tokenization import save_tokenizer

        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        save_tokenizer(vocabulary.tokenizer, out_dir)
        write_text_atomically(out_dir / KEPT_IDS_FILE, vocabulary.to_json(corpus=counts.description))
    return vocabulary


def read_kept_ids(path: str | os.PathLike) -> np.ndarray:
    """`kept_ids[new_id] = old_id` from a `kept_ids.json` (or the folder holding one)."""
    path = Path(path)
    if path.is_dir():
        path = path / KEPT_IDS_FILE
    try:
        data = storage.read_json(path, f"{KEPT_IDS_FILE} of a trimmed model", error=TrimError)
    except FileNotFoundError:
        raise TrimError(f"{path}: not found; expected the {KEPT_IDS_FILE} of a trimmed model") from None
    if data.get("format") != FORMAT or not isinstance(data.get("kept_ids"), list):
        raise TrimError(f"{path}: expected a {FORMAT} object with a 'kept_ids' list")
    return np.asarray(data["kept_ids"], np.int64)
