"""distil.atomic: leftovers of killed writers are cleaned up and nothing else, folders are replaced as a whole or
refused, and outputs get the user's umask."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from distil import atomic

REPO = Path(__file__).resolve().parents[1]


def dead_pid() -> int:
    """The id of a process that has exited (and been reaped)."""
    process = subprocess.Popen(["true"])
    process.wait()
    return process.pid


def kill_writers_midway(folder: Path) -> None:
    """A real process that is SIGKILLed while writing a file and while staging a folder, both in `folder`."""
    script = textwrap.dedent("""
        import sys, time
        from pathlib import Path
        from distil import atomic
        folder = Path(sys.argv[1])

        def write_file(handle):
            handle.write(b"half a shard")
            handle.flush()
            stage_folder()

        def stage_folder():
            def write(staging):
                (staging / "model.safetensors").write_bytes(b"half a model")
                print("ready", flush=True)
                time.sleep(60)
            atomic.write_folder_atomically(folder / "model", write)

        atomic.write_atomically(folder / "tokens-00003.npy", write_file)
    """)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    process = subprocess.Popen([sys.executable, "-c", script, str(folder)], stdout=subprocess.PIPE, env=env)
    assert process.stdout.readline() == b"ready\n"
    process.send_signal(signal.SIGKILL)
    process.wait()


def test_only_provably_own_leftovers_are_removed(tmp_path):
    kill_writers_midway(tmp_path)
    leftovers = sorted(p.name for p in tmp_path.iterdir())
    assert len(leftovers) == 2 and leftovers[0].startswith(".model.tmp-distil-")
    assert leftovers[1].startswith(".tokens-00003.npy.tmp-distil-")
    # What distil must never delete: a user's files and folders that merely look temporary, a temporary of a
    # running distil process, one from another host, a staging-like folder without distil's manifest.
    (tmp_path / "backup.tmp-2024.txt").write_text("a user's backup")
    (tmp_path / "notes.tmp-1").mkdir()
    (tmp_path / ".tokens-00007.npy.tmp-12345").write_text("an older naming, or someone else's")
    running = atomic._temporary_prefix("tokens-00004.npy") + "abcd1234"
    (tmp_path / running).write_text("still being written")
    other_host = f".tokens-00005.npy.tmp-distil-00000000-{dead_pid()}-abcd1234"
    (tmp_path / other_host).write_text("written from another machine")
    no_manifest = tmp_path / f".export.tmp-distil-{atomic._HOST}-{dead_pid()}-abcd1234"
    no_manifest.mkdir()
    kept = sorted(p.name for p in tmp_path.iterdir() if p.name not in leftovers)

    assert sorted(p.name for p in atomic.remove_stale_temporaries(tmp_path)) == leftovers
    assert sorted(p.name for p in tmp_path.iterdir()) == kept
    assert (tmp_path / "backup.tmp-2024.txt").read_text() == "a user's backup"


@pytest.mark.parametrize("target", ["model", "another-model"])
def test_a_killed_export_is_cleaned_up_by_the_next_one(target, tmp_path):
    kill_writers_midway(tmp_path)
    atomic.write_folder_atomically(tmp_path / target, lambda staging: (staging / "config.json").write_text("{}"))
    assert sorted(p.name for p in (tmp_path / target).iterdir()) == [atomic.MANIFEST, "config.json"]
    assert sorted(p.name for p in tmp_path.iterdir()) == [target]


def _write(files: dict[str, str]):
    def write(staging: Path) -> None:
        for name, content in files.items():
            (staging / name).write_text(content)

    return write


def test_a_folder_is_replaced_as_a_whole_or_refused(tmp_path):
    folder = tmp_path / "student"
    atomic.write_folder_atomically(folder, _write({"config.json": "old", "vocab.txt": "old vocab"}))
    atomic.write_folder_atomically(folder, _write({"config.json": "new"}))
    assert {p.name: p.read_text() for p in folder.iterdir() if p.name != atomic.MANIFEST} == {"config.json": "new"}
    assert json.loads((folder / atomic.MANIFEST).read_text())["files"] == ["config.json"]

    def broken(staging: Path) -> None:
        (staging / "config.json").write_text("half")
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        atomic.write_folder_atomically(folder, broken)
    assert (folder / "config.json").read_text() == "new"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["student"]

    (folder / "notes.txt").write_text("mine")
    with pytest.raises(atomic.OutputError, match=r"student: holds files distil did not write \(notes\.txt\)"):
        atomic.write_folder_atomically(folder, _write({"config.json": "newer"}))
    assert (folder / "config.json").read_text() == "new" and (folder / "notes.txt").read_text() == "mine"

    downloaded = tmp_path / "downloaded"
    downloaded.mkdir()
    (downloaded / "config.json").write_text("someone else's model")
    with pytest.raises(atomic.OutputError, match=r"downloaded: holds files distil did not write \(config\.json\)"):
        atomic.write_folder_atomically(downloaded, _write({"config.json": "ours"}))
    atomic.write_folder_atomically(tmp_path / "empty", _write({"a": "1"}))  # an empty folder is fine


def test_a_kill_between_the_two_renames_puts_the_old_folder_back(tmp_path):
    folder = tmp_path / "student"
    atomic.write_folder_atomically(folder, _write({"config.json": "old"}))
    displaced = tmp_path / f".student.old-distil-{atomic._HOST}-{dead_pid()}-abcd1234"
    folder.rename(displaced)  # the state after the first rename, the new folder never arrived
    def fails(staging: Path) -> None:
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        atomic.write_folder_atomically(folder, fails)
    assert (folder / "config.json").read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["student"]


def test_outputs_get_the_umask(tmp_path):
    previous = os.umask(0o027)
    try:
        atomic.write_text_atomically(tmp_path / "index.json", "{}")

        def write(staging: Path) -> None:
            os.close(os.open(staging / "model.safetensors", os.O_CREAT | os.O_WRONLY, 0o600))  # as safetensors does

        atomic.write_folder_atomically(tmp_path / "model", write)
        atomic.make_output_folder(tmp_path / "data" / "shards")
    finally:
        os.umask(previous)
    mode = lambda path: path.stat().st_mode & 0o777  # noqa: E731
    assert mode(tmp_path / "index.json") == 0o640
    assert mode(tmp_path / "model") == 0o750 and mode(tmp_path / "model" / "model.safetensors") == 0o640
    assert mode(tmp_path / "data" / "shards") == 0o750


def test_output_paths_in_the_way_are_named(tmp_path):
    (tmp_path / "file").write_text("")
    with pytest.raises(atomic.OutputError, match=r"file: exists and is a file, so it cannot be the output folder"):
        atomic.make_output_folder(tmp_path / "file")
    with pytest.raises(atomic.OutputError, match=r"file/out: .*file is a file, so no model folder can be created"):
        atomic.make_output_folder(tmp_path / "file" / "out", "model folder")
    source = tmp_path / "model"
    with pytest.raises(atomic.OutputError, match="is the source folder"):
        atomic.refuse_overlap(source, tmp_path / "." / "model")
    with pytest.raises(atomic.OutputError, match="lies inside the source folder"):
        atomic.refuse_overlap(source, source / "bf16")
    with pytest.raises(atomic.OutputError, match="contains the source folder"):
        atomic.refuse_overlap(source, tmp_path)
    atomic.refuse_overlap(source, tmp_path / "model-bf16")
