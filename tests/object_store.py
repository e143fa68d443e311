"""A local fake of an object store (`gs://`), with its semantics, so the suite exercises distil's rules without a
bucket.

`install(root)` routes every `gs://BUCKET/KEY` of `etils.epath` (and orbax's TensorStore arrays) to files under
`root/BUCKET/KEY`, with what an object store does and does not do:
- an object is published whole when its upload closes (a reader sees the old or the new object, never a part);
- no append (`open(..., "a")` fails);
- no atomic rename: `rename`/`replace` copy and delete, as `tf.io.gfile` and gcsfs do on GCS, and each call is
  recorded in `RENAMES` so a test can show distil's own files never need one;
- no locks (nothing to call);
- no folders: a "folder" is a prefix that exists while an object lies under it; `mkdir` does nothing (as gcsfs),
  and listing a prefix that holds nothing fails with FileNotFoundError.
Operating-system calls on a `gs://` string are not routed: a code path that took the URL for a local path would
create a folder named `gs:` in the working directory, which the tests check for.

`python tests/object_store.py ROOT -- distil ARGS...` runs the command with the fake installed (for tests that
run `distil` in a fresh process).
"""

from __future__ import annotations

import io
import os
import secrets
import shutil
import sys
from pathlib import Path

from etils.epath import backend as epath_backend
from etils.epath import gpath, stat_utils

RENAMES: list[tuple[str, str]] = []
PUBLISHED: list[str] = []  # every object published, in order
SCHEMES = ("gs", "s3")


class _Upload(io.BytesIO):
    """A write handle whose bytes become the object only at close."""

    def __init__(self, target: Path, text: bool):
        super().__init__()
        self._target, self._text = target, text

    def close(self):
        if not self.closed:
            self._target.parent.mkdir(parents=True, exist_ok=True)
            partial = self._target.with_name(f".{self._target.name}.upload-{os.getpid()}-{secrets.token_hex(4)}")
            partial.write_bytes(self.getvalue())
            os.replace(partial, self._target)
            PUBLISHED.append(self._target.as_posix())
        super().close()


class _TextUpload(io.TextIOWrapper):
    def __init__(self, target: Path):
        super().__init__(_Upload(target, True), encoding="utf-8", newline="")


class FakeObjectStore(epath_backend.Backend):
    def __init__(self, root: str | os.PathLike):
        self.root = Path(root)

    def local(self, path) -> Path:
        text = os.fspath(path)
        scheme, rest = text.split("://", 1)
        assert scheme in SCHEMES, text
        return self.root / rest.strip("/")

    def remote(self, local: Path, like) -> str:
        scheme = os.fspath(like).split("://", 1)[0]
        return f"{scheme}://" + local.relative_to(self.root).as_posix()

    def open(self, path, mode):
        if "a" in mode or "+" in mode:
            raise OSError(f"{path}: an object store cannot append or update in place (mode {mode!r})")
        target = self.local(path)
        if "w" in mode or "x" in mode:
            return _Upload(target, False) if "b" in mode else _TextUpload(target)
        return open(target, mode)

    def _holds_objects(self, local: Path) -> bool:
        return local.is_dir() and any(entry.is_file() for entry in local.rglob("*"))

    def exists(self, path):
        local = self.local(path)
        return local.is_file() or self._holds_objects(local)

    def isdir(self, path):
        return self._holds_objects(self.local(path))

    def listdir(self, path):
        local = self.local(path)
        if not self._holds_objects(local):
            raise FileNotFoundError(f"{path}: no object under this prefix")
        return sorted(entry.name for entry in local.iterdir() if entry.is_file() or self._holds_objects(entry))

    def glob(self, path):
        local = self.local(path)
        return [self.remote(found, path) for found in sorted(Path(local.anchor).glob(str(local)[1:]))]

    def walk(self, top, *, top_down=True, on_error=None):
        for root, dirs, files in os.walk(self.local(top), topdown=top_down, onerror=on_error):
            dirs[:] = [name for name in dirs if self._holds_objects(Path(root, name))]
            yield self.remote(Path(root), top), dirs, files

    def makedirs(self, path, *, exist_ok=False, mode=None):
        """Nothing: a prefix needs no creating."""

    def mkdir(self, path, *, exist_ok=False, mode=None):
        """Nothing: a prefix needs no creating."""

    def rmtree(self, path):
        shutil.rmtree(self.local(path))

    def remove(self, path):
        self.local(path).unlink()

    def rename(self, path, dst):
        self.replace(path, dst)

    def replace(self, path, dst):
        RENAMES.append((os.fspath(path), os.fspath(dst)))
        source, target = self.local(path), self.local(dst)
        if source.is_dir():
            shutil.copytree(source, target, dirs_exist_ok=True)
            shutil.rmtree(source)
        else:
            shutil.copyfile(source, target)
            source.unlink()

    def copy(self, path, dst, overwrite):
        target = self.local(dst)
        if target.exists() and not overwrite:
            raise FileExistsError(os.fspath(dst))
        shutil.copyfile(self.local(path), target)

    def stat(self, path):
        info = self.local(path).stat()
        return stat_utils.StatResult(is_directory=self.local(path).is_dir(), length=info.st_size,
                                     mtime=int(info.st_mtime), owner="", group="", mode=info.st_mode)


def install(root: str | os.PathLike, setattr=setattr) -> FakeObjectStore:  # pylint: disable=redefined-builtin
    """Routes `gs://` and `s3://` of epath and orbax to `root` for the rest of the process (or, given pytest's
    `monkeypatch.setattr`, for one test)."""
    store = FakeObjectStore(root)
    original = gpath._GPath._backend  # pylint: disable=protected-access

    def backend(self):
        return store if self._uri_scheme in SCHEMES else original.fget(self)  # pylint: disable=protected-access

    setattr(gpath._GPath, "_backend", property(backend))  # pylint: disable=protected-access
    from orbax.checkpoint._src.path import gcs_utils

    setattr(gcs_utils, "get_kvstore_for_gcs",
            lambda path, *args, **kwargs: {"driver": "file", "path": str(store.local(path))})
    setattr(gcs_utils, "is_hierarchical_namespace_enabled", lambda path: False)  # a flat bucket, GCS's default
    return store


if __name__ == "__main__":
    root, separator, command, *argv = sys.argv[1:]
    assert separator == "--" and command == "distil", "usage: object_store.py ROOT -- distil ARGS..."
    install(root)
    import atexit
    import json

    # What was renamed, for the test to read after the process ends.
    atexit.register(lambda: (Path(root).mkdir(parents=True, exist_ok=True),
                             Path(root, f"renames-{os.getpid()}.json").write_text(json.dumps(RENAMES))))
    from distil.cli import main

    sys.argv = ["distil", *argv]
    sys.exit(main())
