"""Where runs live: local folders, and object stores (`gs://`, `s3://`) through `etils.epath`, the path layer
orbax, tfds and grain already use.

`location(text)` is the one constructor: a `pathlib.Path` for a local path, an `epath.Path` for a URL. Both speak
the same methods (`/`, `exists`, `iterdir`, `read_text`, `open`, `mkdir`, `unlink`), so most code never asks which
one it holds. What differs is what an object store does not have, and each rule of the run scaffold says how it
holds without it:

- **No rename.** A local file is written to a temporary and renamed over its target (`distil.atomic`). An object is
  published whole when its upload closes (GCS and S3 both): a reader sees the old object or the new one, so the
  upload itself is the atomic write. A folder (an export, a prepared corpus) is uploaded file by file with its index
  or manifest last, so a reader that checks it (`MANIFEST`, `index.json`'s `complete`) never takes a half-written
  folder for a whole one.
- **No append.** A growing file (`metrics.jsonl`, TensorBoard events) is rewritten whole at each flush.
- **No flock.** The workdir lock is a lease object renewed by the live run (`distil.train.run`).
- **No memory maps.** Readers that need local files (tokenizers, safetensors, memory-mapped corpus shards) read a
  local copy: `local_copy` downloads a file or folder once into `$DISTIL_CACHE` (default `~/.cache/distil`) and
  copies again only what changed (size or modification time); `staged` writes a folder locally and uploads it.

Nothing here imports JAX.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Iterable, Iterator, Mapping, Union

_URL = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")
# Schemes etils.epath reads and writes (its own list); any other URL is refused by name.
REMOTE_SCHEMES = ("gs", "s3")
CACHE_VARIABLE = "DISTIL_CACHE"
_COPY_RECORD = ".distil-copy.json"  # in a local copy: the objects it was copied from (name -> [size, mtime])
_UPLOAD_RECORD = ".distil-upload.json"  # in a staged folder: the local files last uploaded (name -> [size, mtime_ns])
_RECORDS = (_COPY_RECORD, _UPLOAD_RECORD)  # the cache's own files, never uploaded

if TYPE_CHECKING:
    from etils import epath

Location = Union[Path, "epath.Path"]  # etils itself is imported when a URL is met


class StorageError(ValueError):
    """A path distil cannot read or write where it is; the message names it."""


def is_remote(path: str | os.PathLike) -> bool:
    """True for a URL (`gs://bucket/...`; a scheme distil cannot use is refused by `location`), False for a local
    path (a gcsfuse mount is local)."""
    return bool(_URL.match(os.fspath(path)))


def check_url(text: str, what: str = "path") -> None:
    """A URL must name a scheme distil can use; `what` names the flag or key in the error."""
    scheme = text.split("://", 1)[0].lower()
    if scheme not in REMOTE_SCHEMES:
        raise StorageError(f"{what}={text}: {scheme}:// is not a storage distil can use; expected a local path or "
                           + " / ".join(f"{name}://bucket/path" for name in REMOTE_SCHEMES))
    if not text.split("://", 1)[1].strip("/"):
        raise StorageError(f"{what}={text}: expected {scheme}://BUCKET/PATH")


def location(path: str | os.PathLike) -> Location:
    """The path type for `path`: `pathlib.Path` locally, `etils.epath.Path` on an object store."""
    if isinstance(path, Path) or not is_remote(path):
        return Path(path)
    check_url(os.fspath(path))
    from etils import epath

    return epath.Path(os.fspath(path))


# --------------------------------------------------------------------------------------------------- reading


def read_json(path: str | os.PathLike, what: str = "", *, error: type[Exception] = StorageError) -> dict:
    """The JSON object in `path` (local or on an object store): one reader for every JSON file distil reads. A
    missing file raises `FileNotFoundError` (callers say what it means); anything else wrong raises `error` with
    one line naming the path (and line), what is wrong and, given `what`, what was expected."""
    path = location(path)
    expected = f"; expected the {what}" if what else ""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise
    except UnicodeDecodeError:
        raise error(f"{path}: not UTF-8 text{expected}") from None
    except OSError as err:
        raise error(f"{path}: cannot be read ({err.strerror or err}){expected}") from None
    try:
        value = json.loads(text)
    except json.JSONDecodeError as err:
        raise error(f"{path}:{err.lineno}: not valid JSON ({err.msg}){expected}") from None
    if not isinstance(value, dict):
        raise error(f"{path}: expected a JSON object {{...}}{f' (the {what})' if what else ''}, got "
                    f"{type(value).__name__}")
    return value


def entries(folder: str | os.PathLike) -> list:
    """What `folder` holds (paths), sorted by name; nothing when it does not exist. On an object store a folder is a
    prefix that exists only while an object lies under it, and listing an empty one fails."""
    folder = location(folder)
    try:
        return sorted(folder.iterdir(), key=lambda entry: entry.name)
    except FileNotFoundError:
        return []


# --------------------------------------------------------------------------------------------------- writing


def write_object(path: Location, data: bytes) -> None:
    """One object, published whole when the upload closes (the object-store form of an atomic write)."""
    with path.open("wb") as handle:
        handle.write(data)


def upload_folder(local: str | os.PathLike, remote: Location, *, last: Iterable[str] = (),
                  unchanged: Mapping[str, list] | None = None) -> dict[str, list]:
    """Copies every file under `local` to `remote` (same relative names), the names in `last` after all others:
    the index or manifest that says the folder is complete. Files whose local [size, mtime_ns] equal their entry in
    `unchanged` (what an earlier call returned) are not sent again. Returns name -> [size, mtime_ns] of every file."""
    local = Path(local)
    last = tuple(last)
    files = sorted(path for path in local.rglob("*") if path.is_file() and path.name not in _RECORDS)
    ordered = [path for path in files if path.relative_to(local).as_posix() not in last]
    ordered += [local / name for name in last if (local / name).is_file()]
    sent = {}
    for path in ordered:
        name = path.relative_to(local).as_posix()
        info = path.stat()
        sent[name] = [info.st_size, info.st_mtime_ns]
        if unchanged is not None and unchanged.get(name) == sent[name] and name not in last:
            continue
        target = remote.joinpath(*path.relative_to(local).parts)
        target.parent.mkdir(parents=True, exist_ok=True)
        write_object(target, path.read_bytes())
    return sent


# --------------------------------------------------------------------------------------------------- local copies


def cache_root() -> Path:
    return Path(os.path.expanduser(os.environ.get(CACHE_VARIABLE) or "~/.cache/distil"))


def cache_folder(remote: Location) -> Path:
    """The local folder that mirrors `remote` (readable: scheme/bucket/path, plus a hash against collisions)."""
    text = os.fspath(remote).rstrip("/")
    scheme, rest = text.split("://", 1)
    digest = hashlib.sha256(text.encode("utf-8")).hexdigest()[:8]
    return cache_root() / "remote" / scheme / f"{rest.replace('/', '__')}-{digest}"


def _remote_files(remote: Location) -> dict[str, tuple[int, float]]:
    """Relative name -> (size, mtime) of every object under `remote`."""
    out = {}
    for root, _, names in remote.walk():
        for name in names:
            path = root / name
            stat = path.stat()
            out[path.relative_to(remote).as_posix()] = (int(stat.length), float(stat.mtime))
    return out


def local_copy(path: str | os.PathLike, what: str = "input") -> Path:
    """A local path holding what `path` holds: `path` itself when it is local; else a copy in the cache, brought
    up to date (objects whose size or mtime changed are copied again, removed ones deleted). A file and a folder
    both work; the copy of a file lies in a folder of its own."""
    if not is_remote(path):
        return Path(path)
    remote = location(path)
    try:
        is_file = remote.exists() and not remote.is_dir()
        files = {remote.name: _stat(remote)} if is_file else _remote_files(remote)
    except OSError as err:
        raise StorageError(f"{what} {path}: cannot be read ({err})") from None
    if not files:
        raise StorageError(f"{what} {path}: does not exist (no object under it)")
    folder = cache_folder(remote)
    folder.mkdir(parents=True, exist_ok=True)
    record = _read_record(folder / _COPY_RECORD)
    for name, stat in files.items():
        target = folder / name
        if record.get(name) == list(stat) and target.is_file():
            continue
        target.parent.mkdir(parents=True, exist_ok=True)
        source = remote if is_file else remote.joinpath(*name.split("/"))
        partial = target.with_name(f".{target.name}.partial-{os.getpid()}")
        with source.open("rb") as reader, open(partial, "wb") as writer:
            shutil.copyfileobj(reader, writer, 1 << 22)
        os.replace(partial, target)
        record[name] = list(stat)
    for name in set(record) - set(files):
        (folder / name).unlink(missing_ok=True)
        record.pop(name)
    _write_json(folder / _COPY_RECORD, record)
    return folder / remote.name if is_file else folder


def _stat(path: Location) -> tuple[int, float]:
    stat = path.stat()
    return int(stat.length), float(stat.mtime)


@contextlib.contextmanager
def staged(path: str | os.PathLike, *, last: Iterable[str] = ()) -> Iterator[Path]:
    """A local folder to write `path`'s files into: `path` itself when local; else its cache folder, first brought
    up to date with what `path` already holds (a writer that resumes, or refuses another's files, sees them), then
    uploaded to `path` when the block ends without an error, `last` uploaded last."""
    if not is_remote(path):
        yield Path(path)
        return
    remote = location(path)
    folder = cache_folder(remote)
    if entries(remote):
        local_copy(remote, "the folder")  # what the bucket holds need not be sent back
        _write_json(folder / _UPLOAD_RECORD, _local_files(folder, _read_record(folder / _COPY_RECORD)))
    folder.mkdir(parents=True, exist_ok=True)
    yield folder
    uploaded = _read_record(folder / _UPLOAD_RECORD)
    _write_json(folder / _UPLOAD_RECORD, upload_folder(folder, remote, last=last, unchanged=uploaded))
    # The uploaded objects are now what the copy mirrors: recorded, local_copy does not fetch them again.
    files = _remote_files(remote)
    _write_json(folder / _COPY_RECORD, {name: list(files[name]) for name in files if (folder / name).is_file()})


def _local_files(folder: Path, names) -> dict[str, list]:
    return {name: [(folder / name).stat().st_size, (folder / name).stat().st_mtime_ns] for name in names
            if (folder / name).is_file()}


def _read_record(path: Path) -> dict:
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return value if isinstance(value, dict) else {}


def _write_json(path: Path, value: dict) -> None:
    partial = path.with_name(f"{path.name}.partial-{os.getpid()}")
    partial.write_text(json.dumps(value, indent=1), encoding="utf-8")
    os.replace(partial, path)
