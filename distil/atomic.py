"""Atomic writes of files and whole folders, with temporaries a later run can prove are distil's own.

A file is written to a temporary sibling, fsynced, then `os.replace`d over the target: readers (and a rerun after a
crash) see the old file or the new one, never half of one. A folder (an exported model) is written into a staging
sibling and renamed into place as a whole, so it never mixes old files with new ones; an existing folder is
replaced only when distil wrote every file in it (listed in its `MANIFEST`), and kept until the new one is in place.

Temporaries are named `.NAME.tmp-distil-<host>-<pid>-XXXXXXXX` (the displaced old folder `.NAME.old-distil-...`).
The marker, the host and the writer's process id let `remove_stale_temporaries` delete what a killed distil run
left behind, and nothing else: not a user's `backup.tmp-2024.txt`, not a temporary of a writer still running, not
one written from another host sharing the file system. A staging folder must also hold a manifest to count as ours.

Files and folders get the user's umask (`tempfile` alone creates them 0600 / 0700).

On an object store (`gs://`, see `distil.storage`) there is no rename and no temporary: a file is one object,
published whole when its upload closes, and a folder is written locally, then uploaded file by file with its
`MANIFEST` last (files of the old folder that the new one lacks are deleted after it).
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
import secrets
import shutil
import socket
import tempfile
from pathlib import Path
from typing import BinaryIO, Callable, Iterable

from distil import storage

# Lists the files distil wrote into a folder; an export replaces a folder only when it lists everything in it.
MANIFEST = ".distil-files.json"
_HOST = hashlib.sha256(socket.gethostname().encode()).hexdigest()[:8]
_TEMPORARY = re.compile(r"^\.(?P<name>.+)\.(?P<kind>tmp|old)-distil-(?P<host>[0-9a-f]{8})-(?P<pid>\d+)-[a-z0-9_]+$")


class OutputError(ValueError):
    """An output path distil cannot or must not write; the message names the path and what was expected."""


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _temporary_prefix(name: str, kind: str = "tmp") -> str:
    return f".{name}.{kind}-distil-{_HOST}-{os.getpid()}-"


def write_atomically(path: str | os.PathLike, write: Callable[[BinaryIO], object]) -> None:
    """Calls `write(handle)` on a binary temporary file beside `path`, then moves it to `path` (on an object
    store: uploads what it wrote as one object)."""
    if storage.is_remote(path):
        buffer = io.BytesIO()
        write(buffer)
        storage.write_object(storage.location(path), buffer.getvalue())
        return
    path = Path(path)
    handle = tempfile.NamedTemporaryFile("wb", dir=path.parent, prefix=_temporary_prefix(path.name), delete=False)
    try:
        with handle:
            os.chmod(handle.name, 0o666 & ~_umask())
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


# --------------------------------------------------------------------------------------------------------------
# Leftovers of killed writers.


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, another user's
        return True
    return True


def _is_stale(entry: Path, name: str | None, kinds: Iterable[str]) -> bool:
    match = _TEMPORARY.match(entry.name)
    if not match or match["kind"] not in kinds or (name is not None and match["name"] != name):
        return False
    if match["host"] != _HOST or _process_alive(int(match["pid"])):
        return False
    if entry.is_symlink():
        return False
    if entry.is_dir():
        if match["kind"] == "tmp":  # a staging folder: distil wrote its manifest first
            return _read_manifest(entry) is not None
        return not foreign_files(entry)  # a displaced folder passed the same check before it was moved
    return entry.is_file()


def is_temporary(name: str) -> bool:
    """Whether `name` is a temporary of distil's atomic writes (a live writer's or a stale one)."""
    return _TEMPORARY.match(name) is not None


def stale_temporaries(folder: str | os.PathLike, name: str | None = None, kinds=("tmp", "old")) -> list[Path]:
    """Temporaries in `folder` (of target `name`, or of any) that a distil process on this host left behind and
    that no running process owns (an object store has none: nothing is written under a temporary name there)."""
    if storage.is_remote(folder):
        return []
    folder = Path(folder)
    if not folder.is_dir():
        return []
    return sorted(entry for entry in folder.iterdir() if _is_stale(entry, name, kinds))


def remove_stale_temporaries(folder: str | os.PathLike, name: str | None = None, kinds=("tmp", "old")) -> list[Path]:
    """Deletes `stale_temporaries(folder, name, kinds)`; returns what it deleted."""
    removed = []
    for entry in stale_temporaries(folder, name, kinds):
        if entry.is_dir():
            shutil.rmtree(entry, ignore_errors=True)
        else:
            entry.unlink(missing_ok=True)
        removed.append(entry)
    return removed


# --------------------------------------------------------------------------------------------------------------
# Output folders.


def _nearest_existing(path: Path) -> Path:
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def make_output_folder(path: str | os.PathLike, what: str = "output folder") -> Path:
    """Creates `path` (and its parents) unless it exists, with errors that say what is in the way."""
    if storage.is_remote(path):
        return _make_remote_folder(storage.location(path), what)
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise OutputError(f"{path}: exists and is a file, so it cannot be the {what}")
    blocking = _nearest_existing(path)
    if not blocking.is_dir():
        raise OutputError(f"{path}: {blocking} is a file, so no {what} can be created under it")
    if blocking != path and not os.access(blocking, os.W_OK | os.X_OK):
        raise OutputError(f"{path}: cannot create the {what}, the folder {blocking} is not writable")
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise OutputError(f"{path}: cannot create the {what} ({err.strerror}; is {blocking} writable?)") from None
    if not os.access(path, os.W_OK | os.X_OK):
        raise OutputError(f"{path}: the {what} is not writable")
    return path


def _make_remote_folder(path, what: str):
    """An object store has no folders, only prefixes; a prefix that is an object already cannot be one."""
    try:
        if path.exists() and not path.is_dir():
            raise OutputError(f"{path}: exists and is an object (a file), so it cannot be the {what}")
        path.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise OutputError(f"{path}: cannot create the {what} ({err})") from None
    return path


def refuse_overlap(source: str | os.PathLike, destination: str | os.PathLike) -> None:
    """A command never writes into what it reads: `destination` may not be `source`, lie inside it, or contain it
    (replacing it as a whole would delete the source)."""
    source_path, destination_path = Path(source).resolve(), Path(destination).resolve()
    if destination_path == source_path:
        raise OutputError(f"{destination}: is the source folder; write to another folder")
    if source_path in destination_path.parents:
        raise OutputError(f"{destination}: lies inside the source folder {source}; write to a folder outside it")
    if destination_path in source_path.parents:
        raise OutputError(f"{destination}: contains the source folder {source}, which replacing it would delete")


def manifest_text(files: Iterable[str]) -> str:
    """The `MANIFEST` of a folder whose files (`files`) distil wrote."""
    return json.dumps({"written_by": "distil", "files": list(files)}, indent=1) + "\n"


def _read_manifest(folder: Path) -> list[str] | None:
    try:
        manifest = json.loads((folder / MANIFEST).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(manifest, dict) or manifest.get("written_by") != "distil":
        return None
    files = manifest.get("files")
    return [str(name) for name in files] if isinstance(files, list) else None


def _names(names: list[str], limit: int = 6) -> str:
    shown = ", ".join(names[:limit])
    return shown + (f" and {len(names) - limit} more" if len(names) > limit else "")


def foreign_files(folder: str | os.PathLike) -> list[str]:
    """Entries of an existing `folder` that distil did not write (all of them when it has no manifest)."""
    folder = storage.location(folder)
    entries = [entry.name for entry in storage.entries(folder)]
    listed = _read_manifest(folder)
    owned = set() if listed is None else {MANIFEST, *listed}
    return [name for name in entries if name not in owned]


def _fsync(path: Path) -> None:
    """Flushes a file, or a folder's entries, to disk (best effort: some file systems refuse folders)."""
    try:
        descriptor = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(descriptor)
    except OSError:
        pass
    finally:
        os.close(descriptor)


def check_replaceable_folder(folder: str | os.PathLike, what: str = "folder") -> Path:
    """Raises an `OutputError` saying what is in the way unless `write_folder_atomically` may write `folder`; a
    command calls it before any long work. Returns the folder (a symbolic link resolved to its target)."""
    if storage.is_remote(folder):
        folder = _make_remote_folder(storage.location(folder).parent, "parent folder") / storage.location(folder).name
        foreign = foreign_files(folder)
        if foreign:
            raise OutputError(f"{folder}: holds files distil did not write ({_names(foreign)}); choose a new or empty "
                              f"{what}, or remove them (distil replaces a folder as a whole)")
        return folder
    folder = Path(folder)
    if folder.is_symlink():
        folder = folder.resolve()
    if folder.exists() and not folder.is_dir():
        raise OutputError(f"{folder}: exists and is a file, so it cannot be the {what}")
    blocking = _nearest_existing(folder.parent)
    if not blocking.is_dir():
        raise OutputError(f"{folder}: {blocking} is a file, so no {what} can be created under it")
    if not os.access(blocking, os.W_OK | os.X_OK):
        raise OutputError(f"{folder}: the folder {blocking} is not writable")
    if folder.is_dir():
        foreign = foreign_files(folder)
        if foreign:
            raise OutputError(
                f"{folder}: holds files distil did not write ({_names(foreign)}); choose a new or empty {what}, or "
                "remove them (distil replaces a folder as a whole)"
            )
    return folder


def write_folder_atomically(folder: str | os.PathLike, write: Callable[[Path], object], what: str = "folder") -> Path:
    """Calls `write(staging)` on an empty staging folder beside `folder`, then puts it in place of `folder`.

    `folder` ends up holding exactly what `write` wrote (plus `MANIFEST`), or, when anything fails or is
    interrupted, what it held before. An existing `folder` is replaced only when it is empty or distil wrote every
    file in it; otherwise it is refused with an `OutputError` naming the other files. Leftovers of a killed earlier
    call are cleaned up first (a displaced old folder is put back if the new one never arrived).
    """
    folder = check_replaceable_folder(folder, what)
    if storage.is_remote(folder):
        return _write_remote_folder(folder, write)
    parent = folder.parent
    parent.mkdir(parents=True, exist_ok=True)
    if not folder.exists():  # a kill between the two renames below: the old folder is the consistent state
        displaced = stale_temporaries(parent, folder.name, kinds=("old",))
        if displaced:
            os.rename(displaced[-1], folder)
    remove_stale_temporaries(parent, folder.name)
    remove_stale_temporaries(parent, kinds=("tmp",))  # staging of other targets too (never their displaced folders)
    check_replaceable_folder(folder, what)

    staging = Path(tempfile.mkdtemp(prefix=_temporary_prefix(folder.name), dir=parent))
    try:
        os.chmod(staging, 0o777 & ~_umask())
        # The manifest comes first: it proves a leftover staging folder is ours.
        write_text_atomically(staging / MANIFEST, manifest_text([]))
        write(staging)
        files = sorted(entry.name for entry in staging.iterdir() if entry.name != MANIFEST)
        write_text_atomically(staging / MANIFEST, manifest_text(files))
        for entry in staging.iterdir():  # some writers (safetensors) create files 0600
            os.chmod(entry, (0o777 if entry.is_dir() else 0o666) & ~_umask())
            _fsync(entry)
        _fsync(staging)
        if folder.exists():
            old = parent / (_temporary_prefix(folder.name, "old") + secrets.token_hex(4))
            os.rename(folder, old)
            try:
                os.rename(staging, folder)
            except BaseException:
                os.rename(old, folder)
                raise
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.rename(staging, folder)
        _fsync(parent)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return folder


def _write_remote_folder(folder, write: Callable[[Path], object]):
    """The object-store form: `write` fills a local staging folder, whose files are uploaded with `MANIFEST` last
    (a reader that checks the manifest never takes a half-uploaded folder for a whole one); then files the old
    manifest listed and the new one does not are deleted."""
    old_files = set(_read_manifest(folder) or ()) if folder.is_dir() else set()
    with tempfile.TemporaryDirectory(prefix=_temporary_prefix(folder.name)) as staging_name:
        staging = Path(staging_name)
        write(staging)
        files = sorted(entry.name for entry in staging.iterdir() if entry.name != MANIFEST)
        (staging / MANIFEST).write_text(manifest_text(files), encoding="utf-8")
        storage.upload_folder(staging, folder, last=(MANIFEST,))
    for name in sorted(old_files - set(files)):
        stale = folder / name
        if stale.is_dir():
            stale.rmtree()
        elif stale.exists():
            stale.unlink()
    return folder
