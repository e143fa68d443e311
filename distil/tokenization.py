"""Cased multilingual WordPiece: loading, pair encoding, vocabulary training and saving.

Everything runs on the Rust `tokenizers` library. A tokenizer built here is configured exactly like
`transformers.BertTokenizer(vocab_file, do_lower_case=False)` (the tokenizer of `bert-base-multilingual-cased` and
`distilbert-base-multilingual-cased`), so ids agree with the released checkpoints token for token:

* normalizer: `BertNormalizer(clean_text, handle_chinese_chars, strip_accents=False, lowercase=False)`: control
  characters dropped, whitespace unified, a space around every CJK ideograph, accents and case kept;
* pre-tokenizer: `BertPreTokenizer` (split on whitespace and on every punctuation character);
* model: greedy longest-match-first `WordPiece` with `[UNK]`, the `##` continuation prefix and words longer than
  `max_input_chars_per_word` characters (default 100, see `MAX_INPUT_CHARS_PER_WORD`) mapped to `[UNK]`;
* post-processor: `[CLS] A [SEP]` and `[CLS] A [SEP] B [SEP]` with token type ids 0 for the first segment and 1
  for the second, as in BERT's next-sentence input;
* the five special tokens are "added tokens", so a literal `[MASK]` in text becomes the `[MASK]` id as in HF.
"""

from __future__ import annotations

import collections
import dataclasses
import importlib.resources
import itertools
import json
import os
import pathlib
from collections.abc import Iterable, Sequence

import tokenizers
from tokenizers import AddedToken, decoders, normalizers, pre_tokenizers, processors, trainers
from tokenizers.models import WordPiece

from distil.atomic import write_text_atomically
from distil.lines import read_utf8_lines

SPECIAL_TOKENS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")
# mBERT's id layout: [PAD]=0, [unused1..99]=1..99, [UNK]=100, [CLS]=101, [SEP]=102, [MASK]=103. A vocabulary we
# train keeps it, so embedding rows and special ids mean the same thing for mBERT and for a re-trained student.
MBERT_RESERVED_TOKENS = ("[PAD]", *(f"[unused{i}]" for i in range(1, 100)), "[UNK]", "[CLS]", "[SEP]", "[MASK]")
CONTINUING_SUBWORD_PREFIX = "##"
MAX_INPUT_CHARS_PER_WORD = 100
"""Words longer than this many characters become one [UNK]. 100 is transformers' value (BertTokenizer and the
`tokenizer.json` of bert-base-multilingual-cased), so ids agree with transformers; Google's original BERT tokenizer,
the one mBERT was trained with, uses 200. Words of 101-200 characters (long Thai runs without spaces, for one) are
therefore [UNK] here and in transformers but not in mBERT's pre-training data; pass 200 to `load_tokenizer` /
`train_wordpiece` to tokenize as Google did."""
_LINES_PER_CHUNK = 10_000  # lines normalized per call when counting a training corpus' characters


class TokenizerError(ValueError):
    """A vocabulary or tokenizer file (or a tokenizer object) is not a usable cased BERT WordPiece tokenizer."""


@dataclasses.dataclass(frozen=True)
class SpecialTokenIds:
    pad: int
    unk: int
    cls: int
    sep: int
    mask: int


def default_vocab_path() -> pathlib.Path:
    """The mBERT (cased) `vocab.txt` shipped inside the package (see `data/embedded/mbert-cased/README.md`)."""
    resource = importlib.resources.files("distil") / "data" / "embedded" / "mbert-cased" / "vocab.txt"
    path = pathlib.Path(str(resource))
    if not path.is_file():
        raise TokenizerError(f"{path}: the packaged mBERT vocab.txt is missing; reinstall distil")
    return path


# ----------------------------------------------------------------------------------------------------------------
# Building and loading
# ----------------------------------------------------------------------------------------------------------------


def _cased_bert_pipeline(model: WordPiece) -> tokenizers.Tokenizer:
    """`model` wrapped with BERT's cased normalizer, pre-tokenizer and decoder (no post-processor yet)."""
    tokenizer = tokenizers.Tokenizer(model)
    tokenizer.normalizer = normalizers.BertNormalizer(
        clean_text=True, handle_chinese_chars=True, strip_accents=False, lowercase=False
    )
    tokenizer.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tokenizer.decoder = decoders.WordPiece(prefix=CONTINUING_SUBWORD_PREFIX)
    return tokenizer


def _tokenizer_from_tokens(
    tokens: Sequence[str], source: str, max_input_chars_per_word: int = MAX_INPUT_CHARS_PER_WORD
) -> tokenizers.Tokenizer:
    """The cased BERT tokenizer whose WordPiece vocabulary is `tokens` (id = position)."""
    vocab = {token: token_id for token_id, token in enumerate(tokens)}
    missing = [token for token in SPECIAL_TOKENS if token not in vocab]
    if missing:
        raise TokenizerError(
            f"{source}: vocabulary lacks special token(s) {', '.join(missing)}; "
            f"expected all of {', '.join(SPECIAL_TOKENS)}"
        )
    model = WordPiece(
        vocab,
        unk_token="[UNK]",
        continuing_subword_prefix=CONTINUING_SUBWORD_PREFIX,
        max_input_chars_per_word=max_input_chars_per_word,
    )
    tokenizer = _cased_bert_pipeline(model)
    tokenizer.add_special_tokens(
        [AddedToken(token, single_word=False, lstrip=False, rstrip=False, normalized=False, special=True)
         for token in SPECIAL_TOKENS]
    )
    tokenizer.post_processor = processors.TemplateProcessing(
        single="[CLS]:0 $A:0 [SEP]:0",
        pair="[CLS]:0 $A:0 [SEP]:0 $B:1 [SEP]:1",
        special_tokens=[("[CLS]", vocab["[CLS]"]), ("[SEP]", vocab["[SEP]"])],
    )
    return tokenizer


def _read_vocab_tokens(path: pathlib.Path) -> list[str]:
    """Tokens of a `vocab.txt`, one per line (read by `distil.lines.read_utf8_lines`: split on '\\n' only, since a
    token may contain U+0085, U+2028, ...), each token once and none empty."""
    try:
        tokens = list(read_utf8_lines(path, what="WordPiece vocab.txt", error=TokenizerError))
    except FileNotFoundError as error:
        raise TokenizerError(str(error)) from None
    if not tokens:
        raise TokenizerError(f"{path}: vocabulary file is empty; expected one WordPiece token per line")
    first_line: dict[str, int] = {}
    for line_number, token in enumerate(tokens, start=1):
        if token == "":
            raise TokenizerError(f"{path}:{line_number}: empty line; expected one WordPiece token per line")
        if token in first_line:
            raise TokenizerError(
                f"{path}:{line_number}: token {token!r} repeats line {first_line[token]}; "
                "expected each token once (line number = token id)"
            )
        first_line[token] = line_number
    return tokens


def _check_tokenizer_file(tokenizer: tokenizers.Tokenizer, path: pathlib.Path) -> None:
    if not isinstance(tokenizer.model, WordPiece):
        raise TokenizerError(f"{path}: model is {type(tokenizer.model).__name__}; expected a WordPiece model")
    missing = [token for token in SPECIAL_TOKENS if tokenizer.token_to_id(token) is None]
    if missing:
        raise TokenizerError(
            f"{path}: vocabulary lacks special token(s) {', '.join(missing)}; "
            f"expected all of {', '.join(SPECIAL_TOKENS)}"
        )


def load_tokenizer(
    path: str | os.PathLike[str], *, max_input_chars_per_word: int | None = None
) -> tokenizers.Tokenizer:
    """The cased BERT WordPiece tokenizer stored at `path`.

    `path` is a `vocab.txt`, a `tokenizer.json`, or a folder holding one of them (`tokenizer.json` preferred, as
    transformers does). A `vocab.txt` is wrapped in the cased BERT pipeline of this module's docstring; a
    `tokenizer.json` is taken as written, after checking it is WordPiece and knows every special token.
    `max_input_chars_per_word` (see `MAX_INPUT_CHARS_PER_WORD`) overrides the longest word kept; None keeps
    what a `tokenizer.json` says, and transformers' 100 for a `vocab.txt`.
    """
    if max_input_chars_per_word is not None:
        _check_max_input_chars_per_word(max_input_chars_per_word)
    path = pathlib.Path(path)
    if path.is_dir():
        if (path / "tokenizer.json").is_file():
            path = path / "tokenizer.json"
        elif (path / "vocab.txt").is_file():
            path = path / "vocab.txt"
        else:
            raise TokenizerError(f"{path}: folder holds neither tokenizer.json nor vocab.txt")
    elif not path.exists():
        raise TokenizerError(f"{path}: not found; expected a vocab.txt, a tokenizer.json or a folder with one")
    if path.suffix == ".json":
        try:
            tokenizer = tokenizers.Tokenizer.from_file(str(path))
        except Exception as error:  # tokenizers raises a bare Exception carrying serde's message
            raise TokenizerError(f"{path}: not a readable tokenizer.json ({error})") from None
        _check_tokenizer_file(tokenizer, path)
        if max_input_chars_per_word is not None:
            tokenizer.model.max_input_chars_per_word = max_input_chars_per_word
        return tokenizer
    return _tokenizer_from_tokens(_read_vocab_tokens(path), source=str(path),
                                  max_input_chars_per_word=max_input_chars_per_word or MAX_INPUT_CHARS_PER_WORD)


def _check_max_input_chars_per_word(value: int) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ValueError(f"max_input_chars_per_word must be an int >= 1, got {value!r}")


def special_token_ids(tokenizer: tokenizers.Tokenizer) -> SpecialTokenIds:
    """Ids of [PAD], [UNK], [CLS], [SEP], [MASK] in `tokenizer` (0, 100, 101, 102, 103 for mBERT)."""
    ids = {token: tokenizer.token_to_id(token) for token in SPECIAL_TOKENS}
    missing = [token for token, token_id in ids.items() if token_id is None]
    if missing:
        raise TokenizerError(
            f"tokenizer vocabulary (size {tokenizer.get_vocab_size()}) lacks special token(s) "
            f"{', '.join(missing)}; expected all of {', '.join(SPECIAL_TOKENS)}"
        )
    return SpecialTokenIds(
        pad=ids["[PAD]"], unk=ids["[UNK]"], cls=ids["[CLS]"], sep=ids["[SEP]"], mask=ids["[MASK]"]
    )


# ----------------------------------------------------------------------------------------------------------------
# Encoding
# ----------------------------------------------------------------------------------------------------------------


def _truncating_view(tokenizer: tokenizers.Tokenizer, max_length: int) -> tokenizers.Tokenizer:
    """A private tokenizer that shares `tokenizer`'s components and truncates longest-first to `max_length`.

    The caller's tokenizer is left untouched (its truncation or padding settings stay what they were). The model
    object is shared, not copied: a full copy of the 119,547-token vocabulary costs ~0.15 s, the view microseconds.
    """
    view = tokenizers.Tokenizer(tokenizer.model)
    view.normalizer = tokenizer.normalizer  # set before the added tokens: normalized ones are matched through it
    view.pre_tokenizer = tokenizer.pre_tokenizer
    view.post_processor = tokenizer.post_processor
    view.decoder = tokenizer.decoder
    for token_id, added in sorted(tokenizer.get_added_tokens_decoder().items()):
        if added.special:
            view.add_special_tokens([added])
        else:
            view.add_tokens([added])
        if view.token_to_id(added.content) != token_id:  # unusual added-token ids: fall back to a full copy
            view = tokenizers.Tokenizer.from_str(tokenizer.to_str())
            view.no_padding()
            break
    view.encode_special_tokens = tokenizer.encode_special_tokens
    view.enable_truncation(max_length, stride=0, strategy="longest_first", direction="right")
    return view


def _check_max_length(tokenizer: tokenizers.Tokenizer, max_length: int, is_pair: bool) -> None:
    post_processor = tokenizer.post_processor
    num_special = post_processor.num_special_tokens_to_add(is_pair) if post_processor is not None else 0
    if not isinstance(max_length, int) or max_length < max(num_special, 1):
        raise ValueError(
            f"max_length must be an int >= {max(num_special, 1)} (the special tokens of a "
            f"{'pair' if is_pair else 'single'} input), got {max_length!r}"
        )


def encode_pair(
    tokenizer: tokenizers.Tokenizer, premise: str, hypothesis: str | None = None, *, max_length: int
) -> tuple[list[int], list[int]]:
    """(input ids, token type ids) of `[CLS] premise [SEP] hypothesis [SEP]` (or `[CLS] premise [SEP]`).

    Truncation is longest-first, one token at a time from the end of the longer segment, exactly what
    `BertTokenizer(...)(premise, hypothesis, truncation='longest_first', max_length=max_length)` does.
    """
    _check_max_length(tokenizer, max_length, is_pair=hypothesis is not None)
    encoding = _truncating_view(tokenizer, max_length).encode(premise, hypothesis)
    return list(encoding.ids), list(encoding.type_ids)


def encode_batch_pairs(
    tokenizer: tokenizers.Tokenizer,
    premises: Sequence[str],
    hypotheses: Sequence[str] | None,
    *,
    max_length: int,
) -> list[tuple[list[int], list[int]]]:
    """`encode_pair` over many examples at once (one Rust call, parallel over examples); `hypotheses` may be None
    for single-segment inputs."""
    premises = list(premises)
    if hypotheses is None:
        inputs: list[str | tuple[str, str]] = premises
    else:
        hypotheses = list(hypotheses)
        if len(hypotheses) != len(premises):
            raise ValueError(f"got {len(premises)} premises but {len(hypotheses)} hypotheses; expected equal counts")
        inputs = list(zip(premises, hypotheses))
    _check_max_length(tokenizer, max_length, is_pair=hypotheses is not None)
    if not inputs:
        return []
    encodings = _truncating_view(tokenizer, max_length).encode_batch_fast(inputs)
    return [(list(encoding.ids), list(encoding.type_ids)) for encoding in encodings]


# ----------------------------------------------------------------------------------------------------------------
# Training a vocabulary
# ----------------------------------------------------------------------------------------------------------------


def _count_characters(
    files: Sequence[pathlib.Path], pipeline: tokenizers.Tokenizer
) -> tuple[collections.Counter[str], set[str]]:
    """Character counts of the words the trainer will see, and the characters that occur inside a word (those
    need a `##c` piece). Lines are normalized in chunks: the normalizer turns '\\n' into a space and the
    pre-tokenizer splits there, so a chunk yields the same words as its lines one by one."""
    counts: collections.Counter[str] = collections.Counter()
    word_inner: set[str] = set()
    for path in files:
        lines = read_utf8_lines(path, what="text file", error=TokenizerError)
        for chunk in iter(lambda: list(itertools.islice(lines, _LINES_PER_CHUNK)), []):
            normalized = pipeline.normalizer.normalize_str("\n".join(chunk))
            words = [word for word, _ in pipeline.pre_tokenizer.pre_tokenize_str(normalized)]
            counts.update("".join(words))
            word_inner.update("".join(word[1:] for word in words))
    return counts, word_inner


def train_wordpiece(
    files: Iterable[str | os.PathLike[str]],
    vocab_size: int,
    *,
    min_frequency: int = 2,
    limit_alphabet: int = 1000,
    max_input_chars_per_word: int = MAX_INPUT_CHARS_PER_WORD,
) -> tokenizers.Tokenizer:
    """A new cased WordPiece tokenizer trained on text files with `tokenizers.trainers.WordPieceTrainer`.

    Ids follow mBERT: [PAD]=0, [unused1..99]=1..99, [UNK]=100, [CLS]=101, [SEP]=102, [MASK]=103; then the
    alphabet (the `limit_alphabet` most frequent characters, ties to the lower code point, in code point order),
    then `##c` for each alphabet character seen inside a word, then the learned merges. The vocabulary ends up
    larger than `vocab_size` only when those fixed entries alone exceed it (as with the plain trainer). The returned
    tokenizer encodes words longer than `max_input_chars_per_word` as [UNK] (`MAX_INPUT_CHARS_PER_WORD`); the
    merges are learned from every word.

    Why the alphabet is computed here: the trainer picks the alphabet and numbers the `##c` pieces while walking
    Rust hash maps, whose order changes from run to run; that changes ids, the tie-breaks between equally frequent
    merges and so even the learned tokens (two runs on the same files differed in 16 of 2000 tokens). Handing it
    the alphabet and all `##c` pieces up front, in a fixed order, makes the result the same on every run.
    """
    paths = [pathlib.Path(f) for f in ([files] if isinstance(files, (str, os.PathLike)) else files)]
    if not paths:
        raise TokenizerError("train_wordpiece: no training files given; expected at least one text file")
    for path in paths:
        if not path.is_file():
            raise TokenizerError(f"{path}: training file not found; expected a UTF-8 text file")
    if vocab_size <= len(MBERT_RESERVED_TOKENS):
        raise ValueError(f"vocab_size must be > {len(MBERT_RESERVED_TOKENS)} (the reserved ids), got {vocab_size}")
    if limit_alphabet < 1 or min_frequency < 0:
        raise ValueError(f"need limit_alphabet >= 1 and min_frequency >= 0, got {limit_alphabet}, {min_frequency}")
    _check_max_input_chars_per_word(max_input_chars_per_word)

    pipeline = _cased_bert_pipeline(
        WordPiece(
            unk_token="[UNK]",
            continuing_subword_prefix=CONTINUING_SUBWORD_PREFIX,
            max_input_chars_per_word=max_input_chars_per_word,
        )
    )
    counts, word_inner = _count_characters(paths, pipeline)
    if not counts:
        raise TokenizerError(f"{', '.join(map(str, paths))}: no text to train on; expected non-empty text files")
    by_frequency = sorted(counts, key=lambda char: (-counts[char], char))
    alphabet = sorted(by_frequency[:limit_alphabet])
    pieces = [CONTINUING_SUBWORD_PREFIX + char for char in alphabet if char in word_inner]
    fixed_tokens = [*MBERT_RESERVED_TOKENS, *alphabet, *pieces]

    trainer = trainers.WordPieceTrainer(
        vocab_size=vocab_size,
        min_frequency=min_frequency,
        show_progress=False,
        special_tokens=fixed_tokens,  # numbered in list order before anything else
        initial_alphabet=alphabet,
        limit_alphabet=len(alphabet),  # keeps exactly `alphabet`: it is already numbered, nothing new is added
        continuing_subword_prefix=CONTINUING_SUBWORD_PREFIX,
    )
    pipeline.train([str(path) for path in paths], trainer)
    vocab = pipeline.get_vocab(with_added_tokens=False)
    tokens = sorted(vocab, key=vocab.__getitem__)
    if tokens[: len(fixed_tokens)] != fixed_tokens or [vocab[t] for t in tokens] != list(range(len(tokens))):
        raise TokenizerError("train_wordpiece: the trainer did not keep the fixed ids 0..N-1 in the given order")
    return _tokenizer_from_tokens(tokens, source="train_wordpiece", max_input_chars_per_word=max_input_chars_per_word)


# ----------------------------------------------------------------------------------------------------------------
# Saving a transformers-compatible folder
# ----------------------------------------------------------------------------------------------------------------


def _json_text(value: object) -> str:
    return json.dumps(value, ensure_ascii=False, indent=2) + "\n"


def save_tokenizer(
    tokenizer: tokenizers.Tokenizer, folder: str | os.PathLike[str], *, model_max_length: int = 512
) -> None:
    """Write `vocab.txt`, `tokenizer.json`, `tokenizer_config.json` and `special_tokens_map.json` to `folder`.

    The folder loads with `transformers.AutoTokenizer.from_pretrained(folder)` (a `BertTokenizer`) and with
    `load_tokenizer(folder)`. Truncation and padding set on `tokenizer` are not saved: they belong to a call.
    """
    folder = pathlib.Path(folder)
    state = json.loads(tokenizer.to_str())
    normalizer = state.get("normalizer") or {}
    if state["model"].get("type") != "WordPiece" or normalizer.get("type") != "BertNormalizer":
        raise TokenizerError(
            f"save_tokenizer({folder}): expected a WordPiece model with a BertNormalizer, got model "
            f"{state['model'].get('type')} and normalizer {normalizer.get('type')}"
        )
    special_token_ids(tokenizer)  # every special token present
    vocab = tokenizer.get_vocab(with_added_tokens=True)
    tokens = sorted(vocab, key=vocab.__getitem__)
    if [vocab[token] for token in tokens] != list(range(len(tokens))):
        raise TokenizerError(f"save_tokenizer({folder}): token ids are not 0..{len(tokens) - 1} without gaps")
    for token in tokens:
        if "\n" in token or token.endswith("\r") or token == "":
            raise TokenizerError(f"save_tokenizer({folder}): token {token!r} cannot be one line of vocab.txt")

    state["truncation"] = None
    state["padding"] = None
    special_map = {
        "unk_token": "[UNK]", "sep_token": "[SEP]", "pad_token": "[PAD]", "cls_token": "[CLS]", "mask_token": "[MASK]"
    }
    added_tokens_decoder = {
        str(token_id): {
            "content": added.content,
            "lstrip": added.lstrip,
            "normalized": added.normalized,
            "rstrip": added.rstrip,
            "single_word": added.single_word,
            "special": added.special,
        }
        for token_id, added in sorted(tokenizer.get_added_tokens_decoder().items())
    }
    config = {
        "tokenizer_class": "BertTokenizer",
        "do_lower_case": bool(normalizer.get("lowercase")),
        "strip_accents": normalizer.get("strip_accents"),
        "tokenize_chinese_chars": bool(normalizer.get("handle_chinese_chars")),
        "clean_up_tokenization_spaces": True,
        "model_max_length": model_max_length,
        **special_map,
        "added_tokens_decoder": added_tokens_decoder,
    }
    folder.mkdir(parents=True, exist_ok=True)
    write_text_atomically(folder / "vocab.txt", "".join(token + "\n" for token in tokens))
    write_text_atomically(folder / "tokenizer.json", _json_text(state))
    write_text_atomically(folder / "tokenizer_config.json", _json_text(config))
    write_text_atomically(folder / "special_tokens_map.json", _json_text(special_map))
