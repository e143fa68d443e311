"""The one reader of UTF-8 line files: `vocab.txt`, the NLI tsv/jsonl files and the text corpora.

Each line is decoded on its own, so a corpus of any size streams and a bad byte is reported with its file and 1-based
line number (UTF-8 never uses the byte 0x0A inside a multi-byte character, so decoding line by line is exact). Lines
are split on '\\n' only, never with `str.splitlines`, which also breaks at U+0085, U+2028, ... that may be part of a
sentence or of a vocabulary token; each loses its '\\n' or '\\r\\n', and a byte-order mark at the start of the file
is dropped. What a line means (blank lines, stripping, columns) is the caller's business.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path


def read_utf8_lines(path: str | os.PathLike, *, what: str, error: type[ValueError] = ValueError) -> Iterator[str]:
    """Yields the lines of the UTF-8 file `path` without their line ends.

    what: the kind of file, for messages ('MultiNLI jsonl file' -> "x.jsonl: MultiNLI jsonl file not found").
    error: the exception raised for bytes that are not UTF-8, the caller's own `ValueError` subclass; the message
      names the file, the line and the bytes around the bad one. A missing file raises `FileNotFoundError`.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: {what} not found")
    with path.open("rb") as handle:
        for line_number, raw in enumerate(handle, start=1):
            try:
                line = raw.decode("utf-8-sig" if line_number == 1 else "utf-8")
            except UnicodeDecodeError as err:
                raise error(
                    f"{path}:{line_number}: not valid UTF-8 ({err.reason} at byte {err.start} of the line: "
                    f"{raw[max(0, err.start - 8):err.start + 8]!r}); expected a UTF-8 {what}"
                ) from None
            if line.endswith("\n"):
                line = line[:-1]
                if line.endswith("\r"):
                    line = line[:-1]
            yield line
