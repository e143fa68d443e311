"""Text -> token-id shards + token counts, once, resumably: the HF distillation example's preprocessing in one step.

It folds together `scripts/binarized_data.py` (`[CLS] line [SEP]` per input line), `scripts/token_counts.py`
(occurrences of every vocabulary id, for the MLM masking probabilities) and the clean-up that `LmSeqsDataset` does
at load time (`remove_long_sequences`: split into chunks of max_length with [CLS]/[SEP] re-added;
`remove_empty_sequences`: drop <= 11 tokens; `remove_unknown_sequences`: drop >= 50% [UNK]), so training reads
finished sequences. Two deliberate differences: counts are taken over the *kept* tokens (the reference counted
before filtering), and sequences keep their input order (the reference shuffled the pickle; batching shuffles).

Layout of `out_dir` (read by `open_binarized`; `distil.data.batching` relies on it):
  tokens-00000.npy    int32 [tokens of the shard]   all kept sequences of the shard, concatenated
  offsets-00000.npy   int64 [sequences + 1]         start of each sequence in tokens-*.npy, last = its length
  token_counts.npy    int64 [vocab_size]            occurrences of every id over all kept tokens
  index.json          format, tokenizer path + sha256, vocab_size, max_length, shard_size, special ids, one entry
                      per finished shard (lines, input sha256, sequences, tokens, filter counts, done) and
                      `complete` once token_counts.npy is written.
Shard k holds the sequences made from input lines [k*shard_size, (k+1)*shard_size). index.json is written before
any shard; each file is written to a temporary name and renamed; a shard enters index.json only after both of its
files are in place. A rerun re-reads the input, checks each finished shard's lines against its recorded sha256 and
skips it, and tokenises the rest; temporaries a killed distil run left (`distil.atomic.remove_stale_temporaries`:
never a user's file) are deleted and unrecorded shard files overwritten. A folder holding other files but no
index.json is refused. An interrupted run (Ctrl-C, SIGKILL) can always be resumed by rerunning it.
"""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
import json
import multiprocessing
import os
import signal
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path

import numpy as np
import tqdm

from distil import storage
from distil.atomic import make_output_folder, remove_stale_temporaries, write_atomically, write_text_atomically
from distil.data import text as text_sources
from distil.tokenization import default_vocab_path, load_tokenizer, special_token_ids

FORMAT = "distil.binarized.v1"
INDEX_FILE = "index.json"
COUNTS_FILE = "token_counts.npy"
DEFAULT_SHARD_SIZE = 100_000  # input lines per shard: ~5M tokens (20 MB) of Wikipedia paragraphs
# LmSeqsDataset.remove_empty_sequences keeps `lengths > 11`; remove_unknown_sequences keeps `unk / length < 0.5`.
MIN_KEPT_LENGTH = 12
MAX_UNK_FRACTION = 0.5
_BLOCK_LINES = 1000  # lines per tokenisation task


class BinarizeError(ValueError):
    """The output folder, its index or the input is inconsistent; the message names the file or field."""


@dataclasses.dataclass
class BinarizeSummary:
    """What a `binarize` run produced (totals over all shards, including ones a previous run finished)."""

    out_dir: str
    shards: int
    lines: int
    sequences: int
    tokens: int
    lines_split: int
    dropped_short: int
    dropped_unk: int
    languages: dict[str, int]
    vocab_size: int
    skipped_shards: int
    encoded_tokens: int  # tokens tokenised by this run (skipped shards excluded)
    encoded_lines: int
    seconds: float

    @property
    def tokens_per_second(self) -> float:
        return self.encoded_tokens / max(self.seconds, 1e-9)

    @property
    def lines_per_second(self) -> float:
        return self.encoded_lines / max(self.seconds, 1e-9)


# --------------------------------------------------------------------------------------------- sequence rules
def split_long_sequence(token_ids: np.ndarray, max_length: int, cls_id: int, sep_id: int) -> list[np.ndarray]:
    """LmSeqsDataset.remove_long_sequences for one sequence that starts with [CLS] and ends with [SEP].

    Cuts the whole sequence (its [CLS]/[SEP] included) into pieces of max_length - 2 and adds [CLS]/[SEP] where
    a piece lacks them, so the first piece has max_length - 1 tokens, middle ones max_length, the last <= that.
    """
    if len(token_ids) <= max_length:
        return [token_ids]
    pieces = []
    for start in range(0, len(token_ids), max_length - 2):
        piece = token_ids[start:start + max_length - 2]
        if piece[0] != cls_id:
            piece = np.concatenate([[cls_id], piece]).astype(np.int32)
        if piece[-1] != sep_id:
            piece = np.concatenate([piece, [sep_id]]).astype(np.int32)
        pieces.append(piece)
    return pieces


@dataclasses.dataclass
class _EncodedBlock:
    tokens: np.ndarray  # int32 [kept tokens], kept sequences concatenated
    lengths: np.ndarray  # int32 [kept sequences]
    line_index: np.ndarray  # int32 [kept sequences], the block line each sequence came from
    encoded_tokens: int
    lines_split: int
    dropped_short: int
    dropped_unk: int


def _encode_block(tokenizer, lines: Sequence[str], max_length: int, cls_id: int, sep_id: int, unk_id: int):
    """`[CLS] line [SEP]` for each line, then the reference's split / too-short / too-unknown rules, in that order."""
    kept, line_index = [], []
    encoded_tokens = lines_split = dropped_short = dropped_unk = 0
    for line_no, encoding in enumerate(tokenizer.encode_batch_fast([line.strip() for line in lines])):
        token_ids = np.asarray(encoding.ids, dtype=np.int32)
        encoded_tokens += len(token_ids)
        if len(token_ids) < 2 or token_ids[0] != cls_id or token_ids[-1] != sep_id:
            raise BinarizeError(
                f"the tokenizer must add [CLS] ... [SEP] (ids {cls_id} ... {sep_id}); got {token_ids[:3].tolist()}"
                f" ... {token_ids[-3:].tolist()} for line {lines[line_no][:60]!r}"
            )
        pieces = split_long_sequence(token_ids, max_length, cls_id, sep_id)
        lines_split += len(pieces) > 1
        for piece in pieces:
            if len(piece) < MIN_KEPT_LENGTH:
                dropped_short += 1
            elif np.count_nonzero(piece == unk_id) / len(piece) >= MAX_UNK_FRACTION:
                dropped_unk += 1
            else:
                kept.append(piece)
                line_index.append(line_no)
    return _EncodedBlock(
        tokens=np.concatenate(kept).astype(np.int32) if kept else np.zeros(0, np.int32),
        lengths=np.array([len(piece) for piece in kept], dtype=np.int32),
        line_index=np.array(line_index, dtype=np.int32),
        encoded_tokens=encoded_tokens,
        lines_split=lines_split,
        dropped_short=dropped_short,
        dropped_unk=dropped_unk,
    )


# Worker processes: each rebuilds the tokenizer from its JSON (identical to the hashed one) and runs single-threaded,
# so `num_workers` is the real parallelism and the benchmark's 1-vs-2 workers comparison means something.
_WORKER: dict = {}


def _init_worker(parent_pid: int, tokenizer_json: str, max_length: int, cls_id: int, sep_id: int, unk_id: int):
    # Ctrl-C reaches the whole process group: the parent handles it and terminates the pool, workers stay quiet.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    _exit_with_parent(parent_pid)
    os.environ["TOKENIZERS_PARALLELISM"] = "false"
    from tokenizers import Tokenizer

    _WORKER.update(tokenizer=Tokenizer.from_str(tokenizer_json), args=(max_length, cls_id, sep_id, unk_id))


def _encode_in_worker(lines: Sequence[str]) -> _EncodedBlock:
    return _encode_block(_WORKER["tokenizer"], lines, *_WORKER["args"])


def _exit_with_parent(parent_pid: int) -> None:
    """A worker whose parent is killed (SIGKILL) dies with it instead of finishing its block and printing a
    BrokenPipeError traceback on the closed result pipe (Linux: PR_SET_PDEATHSIG; elsewhere a no-op)."""
    try:
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # 1 = PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        return
    if os.getppid() != parent_pid:  # the parent died before prctl
        os._exit(1)


def _start_pool(num_workers: int, initargs: tuple):
    """A spawn pool whose workers start with SIGINT blocked (a Ctrl-C during their start-up would print a traceback
    from each) and then ignore it."""
    mask = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT}) if hasattr(signal, "pthread_sigmask") else None
    try:
        return multiprocessing.get_context("spawn").Pool(
            num_workers, initializer=_init_worker, initargs=(os.getpid(), *initargs)
        )
    finally:
        if mask is not None:
            signal.pthread_sigmask(signal.SIG_SETMASK, mask)


# --------------------------------------------------------------------------------------------- files
def _save_npy(path: Path, array: np.ndarray) -> None:
    write_atomically(path, lambda handle: np.save(handle, array, allow_pickle=False))


def _save_index(out_dir: Path, index: dict) -> None:
    write_text_atomically(out_dir / INDEX_FILE, json.dumps(index, indent=1))


def _read_index(out_dir: Path) -> dict:
    path = out_dir / INDEX_FILE
    try:
        index = storage.read_json(path, "index of a binarized dataset", error=BinarizeError)
    except FileNotFoundError:
        raise FileNotFoundError(f"{path} does not exist: {out_dir} is not a binarized dataset") from None
    if index.get("format") != FORMAT:
        raise BinarizeError(f"{path}: field 'format' must be {FORMAT!r}, got {index.get('format')!r}")
    return index


def _check_shard_files(out_dir: Path, shard: dict) -> None:
    """A recorded shard must still have files of the recorded sizes (np.load only reads the headers here)."""
    for key, expected in (("tokens_file", shard["tokens"]), ("offsets_file", shard["sequences"] + 1)):
        path = out_dir / shard[key]
        try:
            length = len(np.load(path, mmap_mode="r"))
        except (OSError, ValueError) as err:
            raise BinarizeError(f"{path} is listed as done in {out_dir / INDEX_FILE} but unreadable: {err}") from None
        if length != expected:
            raise BinarizeError(f"{path} has {length} entries, {out_dir / INDEX_FILE} records {expected}")


def _resume_index(out_dir: Path, header: dict) -> dict:
    """The index of an earlier run into `out_dir` if its settings equal `header`'s, else a fresh index (written at
    once, so that every shard file ever written sits beside an index.json that proves the folder is distil's)."""
    if not (out_dir / INDEX_FILE).exists():
        others = sorted(entry.name for entry in out_dir.iterdir() if not entry.name.startswith("."))
        if others:
            listed = ", ".join(others[:6]) + (" ..." if len(others) > 6 else "")
            raise BinarizeError(
                f"{out_dir}: holds files but no {INDEX_FILE} ({listed}); distil writes shards into a new or empty "
                "folder, or resumes one it wrote"
            )
        index = {**header, "shards": [], "complete": False}
        _save_index(out_dir, index)
        return index
    index = _read_index(out_dir)
    for key in ("vocab_size", "max_length", "shard_size", "special_ids"):
        if index.get(key) != header[key]:
            raise BinarizeError(
                f"{out_dir / INDEX_FILE} was written with {key}={index.get(key)!r}, this run has {header[key]!r}; "
                "use a fresh out_dir"
            )
    if index["tokenizer"]["sha256"] != header["tokenizer"]["sha256"]:
        raise BinarizeError(
            f"{out_dir / INDEX_FILE} was written with another tokenizer ({index['tokenizer']['path']}, sha256 "
            f"{index['tokenizer']['sha256'][:12]}...) than {header['tokenizer']['path']}; use a fresh out_dir"
        )
    return index


# --------------------------------------------------------------------------------------------- binarize
def _tagged_lines(texts) -> Iterator[tuple[str, str]]:
    if isinstance(texts, Mapping):
        sources = {
            lang: text_sources.TextFile(source) if isinstance(source, (str, os.PathLike)) else source
            for lang, source in texts.items()
        }
        yield from text_sources.tag_languages(sources)
        return
    for item_no, item in enumerate(texts):
        if not (isinstance(item, tuple) and len(item) == 2 and isinstance(item[0], str) and isinstance(item[1], str)):
            raise BinarizeError(f"texts item {item_no} must be a (lang, line) pair of str, got {item!r:.80}")
        yield item


def binarize(
    texts: Iterable[tuple[str, str]] | Mapping[str, Iterable[str] | str | os.PathLike],
    tokenizer_path: str | os.PathLike,
    out_dir: str | os.PathLike,
    *,
    max_length: int = 512,
    num_workers: int = 2,
    shard_size: int = DEFAULT_SHARD_SIZE,
    progress: bool = True,
) -> BinarizeSummary:
    """Tokenises `texts` into `out_dir` (layout in the module docstring), resuming a run that was interrupted.

    texts: (lang, line) pairs, or {lang: file path or iterable of lines} read one language after the other.
    tokenizer_path: anything `distil.tokenization.load_tokenizer` reads (vocab.txt, tokenizer.json, a folder).
    num_workers: processes tokenising in parallel (each single-threaded); 0 tokenises in this process with the
      tokenizers library's own threads.
    shard_size: input lines per shard, the unit of resumption.
    """
    if max_length < MIN_KEPT_LENGTH:
        raise BinarizeError(f"max_length must be >= {MIN_KEPT_LENGTH} (shorter sequences are dropped), got "
                            f"{max_length}")
    if shard_size < 1 or num_workers < 0:
        raise BinarizeError(f"shard_size must be >= 1 and num_workers >= 0, got {shard_size} and {num_workers}")
    started = time.perf_counter()
    out_dir = make_output_folder(out_dir)
    remove_stale_temporaries(out_dir)  # half-written files of a killed run are never trusted

    tokenizer = _untruncated(tokenizer_path)
    special = special_token_ids(tokenizer)
    tokenizer_json = tokenizer.to_str()
    tokenizer_sha256 = hashlib.sha256(tokenizer_json.encode()).hexdigest()
    header = {
        "format": FORMAT,
        "tokenizer": {"path": os.fspath(tokenizer_path), "sha256": tokenizer_sha256},
        "vocab_size": tokenizer.get_vocab_size(with_added_tokens=True),
        "max_length": max_length,
        "shard_size": shard_size,
        "special_ids": {name: int(getattr(special, name)) for name in ("pad", "unk", "cls", "sep", "mask")},
    }
    index = _resume_index(out_dir, header)
    done = {shard["shard"]: shard for shard in index["shards"] if shard.get("done")}
    index["shards"] = [done[k] for k in sorted(done)]
    block_args = (max_length, special.cls, special.sep, special.unk)

    pool = _start_pool(num_workers, (tokenizer_json, *block_args)) if num_workers > 0 else None
    lines_iter = _tagged_lines(texts)
    bar = tqdm.tqdm(desc=f"binarize {out_dir.name}", unit="tok", unit_scale=True, disable=not progress)
    encoded_tokens = encoded_lines = skipped = 0
    try:
        for shard_id in itertools.count():
            shard_lines = list(itertools.islice(lines_iter, shard_size))
            input_sha256 = hashlib.sha256()
            for lang, line in shard_lines:
                input_sha256.update(f"{lang}\t{line}\n".encode("utf-8", "surrogatepass"))
            if shard_id in done:
                recorded = done[shard_id]
                if recorded["lines"] != len(shard_lines) or recorded["input_sha256"] != input_sha256.hexdigest():
                    raise BinarizeError(
                        f"the input of shard {shard_id} ({len(shard_lines)} lines) differs from the one recorded in "
                        f"{out_dir / INDEX_FILE} ({recorded['lines']} lines); the input changed, use a fresh out_dir"
                    )
                _check_shard_files(out_dir, recorded)
                skipped += 1
                continue
            if not shard_lines:
                break
            blocks = [shard_lines[i:i + _BLOCK_LINES] for i in range(0, len(shard_lines), _BLOCK_LINES)]
            block_texts = [[line for _, line in block] for block in blocks]
            if pool is None:
                results = (_encode_block(tokenizer, texts, *block_args) for texts in block_texts)
            else:
                results = pool.imap(_encode_in_worker, block_texts)
            encoded = []
            for block, result in zip(blocks, results):
                encoded.append(result)
                encoded_tokens += result.encoded_tokens
                encoded_lines += len(block)
                bar.update(result.encoded_tokens)
                bar.set_postfix(shard=shard_id, lines=encoded_lines, refresh=False)
            index["shards"].append(_write_shard(out_dir, shard_id, blocks, encoded, input_sha256.hexdigest()))
            index["complete"] = False  # token_counts.npy no longer covers every shard
            _save_index(out_dir, index)
            if len(shard_lines) < shard_size:
                break
    finally:
        bar.close()
        if pool is not None:
            pool.terminate()

    if not index["shards"]:
        raise BinarizeError(f"no input lines to binarize into {out_dir}")
    counts = np.zeros(header["vocab_size"], dtype=np.int64)
    for shard in index["shards"]:
        counts += np.bincount(np.load(out_dir / shard["tokens_file"], mmap_mode="r"), minlength=len(counts))
    _save_npy(out_dir / COUNTS_FILE, counts)
    index.update(
        sequences=sum(shard["sequences"] for shard in index["shards"]),
        tokens=sum(shard["tokens"] for shard in index["shards"]),
        token_counts_file=COUNTS_FILE,
        complete=True,
    )
    _save_index(out_dir, index)
    return _summary(out_dir, index, skipped, encoded_tokens, encoded_lines, time.perf_counter() - started)


def _write_shard(out_dir: Path, shard_id: int, blocks: list, encoded: list[_EncodedBlock], input_sha256: str) -> dict:
    lengths = np.concatenate([result.lengths for result in encoded]).astype(np.int64)
    offsets = np.zeros(len(lengths) + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    languages: dict[str, int] = {}
    for block, result in zip(blocks, encoded):
        for line_no in result.line_index:
            languages[block[line_no][0]] = languages.get(block[line_no][0], 0) + 1
    shard = {
        "shard": shard_id,
        "tokens_file": f"tokens-{shard_id:05d}.npy",
        "offsets_file": f"offsets-{shard_id:05d}.npy",
        "lines": sum(len(block) for block in blocks),
        "input_sha256": input_sha256,
        "sequences": len(lengths),
        "tokens": int(offsets[-1]),
        "lines_split": sum(result.lines_split for result in encoded),
        "dropped_short": sum(result.dropped_short for result in encoded),
        "dropped_unk": sum(result.dropped_unk for result in encoded),
        "languages": dict(sorted(languages.items())),
    }
    _save_npy(out_dir / shard["tokens_file"], np.concatenate([result.tokens for result in encoded]).astype(np.int32))
    _save_npy(out_dir / shard["offsets_file"], offsets)
    return {**shard, "done": True}


def _summary(out_dir: Path, index: dict, skipped: int, encoded_tokens: int, encoded_lines: int, seconds: float):
    shards = index["shards"]
    languages: dict[str, int] = {}
    for shard in shards:
        for lang, count in shard["languages"].items():
            languages[lang] = languages.get(lang, 0) + count
    total = lambda key: sum(shard[key] for shard in shards)  # noqa: E731
    return BinarizeSummary(
        out_dir=os.fspath(out_dir), shards=len(shards), lines=total("lines"), sequences=total("sequences"),
        tokens=total("tokens"), lines_split=total("lines_split"), dropped_short=total("dropped_short"),
        dropped_unk=total("dropped_unk"), languages=dict(sorted(languages.items())),
        vocab_size=index["vocab_size"], skipped_shards=skipped, encoded_tokens=encoded_tokens,
        encoded_lines=encoded_lines, seconds=seconds,
    )


# --------------------------------------------------------------------------------------------- reading
class TokenSequences:
    """The kept sequences of a binarized folder, memory-mapped: `seqs[i]` is an int32 view, `seqs.lengths` int32.

    Pickling keeps only the folder (workers reopen the memory maps) so grain/multiprocessing can ship it cheaply.
    """

    def __init__(self, out_dir: str | os.PathLike):
        self.out_dir = Path(out_dir)
        self.index = _read_index(self.out_dir)
        if not self.index.get("complete"):
            raise BinarizeError(
                f"{self.out_dir / INDEX_FILE}: binarization is not complete ({len(self.index['shards'])} shards "
                "done); rerun binarize with the same arguments to finish it"
            )
        self._tokens, self._offsets = [], []
        for shard in self.index["shards"]:
            _check_shard_files(self.out_dir, shard)
            self._tokens.append(np.load(self.out_dir / shard["tokens_file"], mmap_mode="r"))
            self._offsets.append(np.load(self.out_dir / shard["offsets_file"], mmap_mode="r"))
        shard_sizes = [len(offsets) - 1 for offsets in self._offsets]
        self._shard_starts = np.concatenate([[0], np.cumsum(shard_sizes)]).astype(np.int64)
        self.lengths = np.concatenate([np.diff(offsets) for offsets in self._offsets] or [[]]).astype(np.int32)

    @property
    def vocab_size(self) -> int:
        return int(self.index["vocab_size"])

    @property
    def max_length(self) -> int:
        return int(self.index["max_length"])

    def __len__(self) -> int:
        return int(self._shard_starts[-1])

    def __getitem__(self, i: int) -> np.ndarray:
        n = len(self)
        if not -n <= i < n:
            raise IndexError(f"sequence {i} out of range for {n} sequences in {self.out_dir}")
        i = int(i) % n
        shard = int(np.searchsorted(self._shard_starts, i, side="right")) - 1
        local = i - int(self._shard_starts[shard])
        offsets = self._offsets[shard]
        return self._tokens[shard][int(offsets[local]):int(offsets[local + 1])]

    def __getstate__(self):
        return {"out_dir": self.out_dir}

    def __setstate__(self, state):
        self.__init__(state["out_dir"])


def _untruncated(tokenizer_path):
    """The tokenizer as binarize uses it (whole lines, no padding); its JSON identifies it in index.json."""
    tokenizer = load_tokenizer(tokenizer_path)
    tokenizer.no_truncation()
    tokenizer.no_padding()
    return tokenizer


def is_prepared(folder: str | os.PathLike) -> bool:
    """Whether `folder` is an output folder of `binarize` / `distil prepare` (finished or not)."""
    return (Path(folder) / INDEX_FILE).is_file()


def check_prepared(folder: str | os.PathLike, tokenizer_path: str | os.PathLike, max_length: int) -> None:
    """A folder `distil prepare` wrote, usable as it is by a run with this tokenizer and max_length: complete,
    tokenised by the same tokenizer (its sha256), split at the same length. Errors name the field."""
    folder = Path(folder)
    index = _read_index(folder)
    if not index.get("complete"):
        raise BinarizeError(f"{folder / INDEX_FILE}: the preparation has not finished; rerun the same `distil "
                            "prepare` command to complete it")
    sha256 = hashlib.sha256(_untruncated(tokenizer_path).to_str().encode()).hexdigest()
    if index["tokenizer"]["sha256"] != sha256:
        raise BinarizeError(f"{folder / INDEX_FILE}: tokenised with {index['tokenizer']['path']} (sha256 "
                            f"{index['tokenizer']['sha256'][:12]}...), the run uses {tokenizer_path} (sha256 "
                            f"{sha256[:12]}...); prepare the corpus with the run's tokenizer")
    if index["max_length"] != max_length:
        raise BinarizeError(f"{folder / INDEX_FILE}: sequences split at max_length={index['max_length']}, the run "
                            f"has config.data.max_length={max_length}; prepare with --max-length {max_length}")


def open_binarized(out_dir: str | os.PathLike) -> TokenSequences:
    """The sequences `binarize` wrote to `out_dir` (which must be complete)."""
    return TokenSequences(out_dir)


def load_token_counts(out_dir: str | os.PathLike) -> np.ndarray:
    """int64 [vocab_size]: occurrences of every token id over all kept tokens (input of masking's token_probs)."""
    out_dir = Path(out_dir)
    index = _read_index(out_dir)
    if not index.get("complete"):
        raise BinarizeError(f"{out_dir / INDEX_FILE}: binarization is not complete, {COUNTS_FILE} is not final")
    counts = np.load(out_dir / COUNTS_FILE)
    if counts.shape != (index["vocab_size"],) or counts.dtype != np.int64:
        raise BinarizeError(
            f"{out_dir / COUNTS_FILE} must be int64 [{index['vocab_size']}], got {counts.dtype} {list(counts.shape)}"
        )
    return counts


# --------------------------------------------------------------------------------------------- CLI entry
def prepare(
    source: str | os.PathLike,
    out_dir: str | os.PathLike,
    *,
    tokenizer_path: str | os.PathLike | None = None,
    languages: Sequence[str] | None = None,
    data_dir: str | os.PathLike | None = None,
    wikipedia_date: str = "20230601",
    sampling_alpha: float | None = None,
    num_lines: int | None = None,
    seed: int = 0,
    max_length: int = 512,
    num_workers: int = 2,
    shard_size: int = DEFAULT_SHARD_SIZE,
    progress: bool = True,
) -> BinarizeSummary:
    """What `distil binarize` runs: pick the text source, optionally mix languages, then `binarize`.

    source: a `<lang>.txt` file, a folder of `<lang>.txt` files, or `"wikipedia"` for tensorflow-datasets'
      `wikipedia/<wikipedia_date>.<lang>` prepared under `data_dir` (then `languages` is required).
    tokenizer_path: vocab.txt / tokenizer.json / folder; default the real mBERT vocabulary.
    languages: keep only these languages (all files of the folder when None).
    sampling_alpha: None reads the languages one after the other; a number mixes lines by language with
      p ∝ (line count)^alpha (`text.language_sampling_probs`), drawing `num_lines` lines (default: as many as the
      sources hold) deterministically from `seed`. Counting lines is one extra pass over the input.
    max_length, num_workers, shard_size, progress: as in `binarize`.
    """
    if num_lines is not None and num_lines < 1:
        raise BinarizeError(f"num_lines must be >= 1 (or None for all lines), got {num_lines}")
    if seed < 0:
        raise BinarizeError(f"seed must be >= 0, got {seed}")
    if sampling_alpha is not None and not 0 <= sampling_alpha < float("inf"):
        raise BinarizeError(f"sampling_alpha must be a finite number >= 0 (or None), got {sampling_alpha}")
    if os.fspath(source) == "wikipedia":
        if data_dir is None or not languages:
            raise BinarizeError("source='wikipedia' needs data_dir and languages (e.g. ['en', 'sw'])")
        sources = {lang: text_sources.WikipediaSource(lang, data_dir, date=wikipedia_date) for lang in languages}
    else:
        sources = text_sources.language_files(source)
        if languages:
            missing = sorted(set(languages) - set(sources))
            if missing:
                raise BinarizeError(f"{source} has no <lang>.txt for languages {missing}; it has {sorted(sources)}")
            sources = {lang: sources[lang] for lang in languages}
    texts: Iterable[tuple[str, str]] | Mapping = sources
    if sampling_alpha is not None:
        counts = {lang: text_sources.count_lines(lines) for lang, lines in sources.items()}
        probs = text_sources.language_sampling_probs(counts, alpha=sampling_alpha)
        total = sum(counts.values()) if num_lines is None else num_lines
        texts = text_sources.mix_languages(sources, probs, seed=seed, num_lines=total)
    elif num_lines is not None:
        texts = itertools.islice(text_sources.tag_languages(sources), num_lines)
    return binarize(
        texts,
        default_vocab_path() if tokenizer_path is None else tokenizer_path,
        out_dir,
        max_length=max_length,
        num_workers=num_workers,
        shard_size=shard_size,
        progress=progress,
    )
