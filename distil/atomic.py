"""Atomic file writes: a temporary file beside the target, fsynced, then `os.replace`d over it.

Readers (and a rerun after a crash) see the old file or the new one, never half of one. Temporary names contain
`.tmp-`, so a folder's leftovers from a killed writer can be found with `glob("*.tmp-*")`.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import BinaryIO, Callable


def write_atomically(path: str | os.PathLike, write: Callable[[BinaryIO], object]) -> None:
    """Calls `write(handle)` on a binary temporary file beside `path`, then moves it to `path`."""
    path = Path(path)
    handle = tempfile.NamedTemporaryFile("wb", dir=path.parent, prefix=f".{path.name}.tmp-", delete=False)
    try:
        with handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(handle.name, path)
    except BaseException:
        Path(handle.name).unlink(missing_ok=True)
        raise


def write_text_atomically(path: str | os.PathLike, text: str) -> None:
    """UTF-8 text, newlines written as given."""
    write_atomically(path, lambda handle: handle.write(text.encode("utf-8")))
