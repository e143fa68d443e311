"""Sweeps and launchers: points from product/zip, the generated commands and scripts checked literally against
golden files, and a two-point local sweep of distilmbert:runlocal run end to end, then rerun (both skipped)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from conftest import REPO
from distil import cli, launch
from distil.config import ConfigError

GOLDEN = Path(__file__).parent / "data" / "golden"
SWEEP = REPO / "experiments" / "temperature_sweep.py"


def test_product_and_zip():
    temperatures = [{"loss.temperature": 1.0}, {"loss.temperature": 2.0}]
    balance = launch.zip_([{"loss.alpha_ce": 5.0}, {"loss.alpha_ce": 2.0}], [{"loss.alpha_mlm": 2.0},
                                                                               {"loss.alpha_mlm": 5.0}])
    assert balance == [{"loss.alpha_ce": 5.0, "loss.alpha_mlm": 2.0}, {"loss.alpha_ce": 2.0, "loss.alpha_mlm": 5.0}]
    points = launch.product(temperatures, balance)
    assert points[1] == {"loss.temperature": 1.0, "loss.alpha_ce": 2.0, "loss.alpha_mlm": 5.0} and len(points) == 4
    assert launch.point_name({"student.teacher_layers": (0, 3), "data.corpus": "/x/y z"}) == \
        "teacher_layers=0_3-corpus=x_y_z"
    with pytest.raises(ConfigError, match=r"zip_ needs axes of one length, got lengths \[1, 2\]"):
        launch.zip_([{}], [{}, {}])


@pytest.mark.parametrize("launcher, extra", [
    ("print", []),
    ("tpu", ["--tpu", "distil-v4-32", "--zone", "us-central2-b"]),
    ("xpk", ["--cluster", "gke-h100", "--device-type", "h100-80gb-8", "--num-slices", "1",
             "--docker-image", "us-docker.pkg.dev/my/distil:latest"]),
])
def test_launcher_commands_match_the_golden_files(launcher, extra, capsys):
    assert cli.main(["sweep", str(SWEEP), "--launcher", launcher, "--workdir", "/mnt/shared/sweeps/t", *extra]) == 0
    assert capsys.readouterr().out == (GOLDEN / f"sweep_{launcher}.txt").read_text()


def test_slurm_scripts_match_the_golden_files(tmp_path, capsys):
    assert cli.main(["sweep", str(SWEEP), "--launcher", "slurm", "--workdir", "/scratch/sweeps/t", "--nodes", "2",
                     "--gpus-per-node", "8", "--partition", "gpu", "--repo-dir", "/home/me/distil",
                     "--out", str(tmp_path)]) == 0
    written = sorted(tmp_path.glob("*.sbatch"))
    assert [path.name for path in written] == sorted(path.name for path in GOLDEN.glob("slurm/*.sbatch"))
    for path in written:
        assert path.read_text() == (GOLDEN / "slurm" / path.name).read_text(), path.name
    assert capsys.readouterr().out.count("sbatch ") == 4


def test_bad_sweep_files_name_the_file(tmp_path):
    bad = tmp_path / "bad.py"
    bad.write_text("CONFIG = 'distilmbert'\ndef get_sweep():\n    return [{'a': 1}, {'a': 1}]\n")
    with pytest.raises(ConfigError, match=r"bad.py: points repeat: a=1"):
        launch.load_sweep(bad)
    bad.write_text("def get_sweep():\n    return []\n")
    with pytest.raises(ConfigError, match=r"bad.py: a sweep file defines CONFIG"):
        launch.load_sweep(bad)


def test_two_point_local_sweep_runs_then_skips(tmp_path, capsys):
    sweep = tmp_path / "two.py"
    sweep.write_text(
        "CONFIG = 'distilmbert:runlocal'\n"
        "FAST = {'num_steps': 2, 'data.max_length': 64, 'batching.pad_to_multiple': 64, 'batching.global_batch': 16,\n"
        "        'teacher.max_position_embeddings': 64, 'student.max_position_embeddings': 64}\n"
        "def get_sweep():\n"
        "    return [{**FAST, 'loss.temperature': t} for t in (1.0, 2.0)] + [{**FAST, 'loss.temperature': 0.0}]\n"
    )
    root = tmp_path / "runs"
    os.environ["PYTHONPATH"] = str(REPO)  # the points run in subprocesses of this checkout
    assert cli.main(["sweep", str(sweep), "--launcher", "local", "--workdir", str(root)]) == 1  # one point fails
    record = json.loads((root / "sweep.json").read_text())
    statuses = {name.split("temperature=")[1]: entry["status"] for name, entry in record.items()}
    assert statuses == {"1.0": "finished", "2.0": "finished", "0.0": "failed (exit 2)"}
    for name, entry in record.items():
        if entry["status"] == "finished":
            assert (root / name / "student" / "model.safetensors").exists()
            assert json.loads((root / name / "summary.json").read_text())["steps"] == 2
    capsys.readouterr()
    assert cli.main(["sweep", str(sweep), "--launcher", "local", "--workdir", str(root)]) == 1
    out = capsys.readouterr().out
    assert out.count("finished earlier, skipped") == 2 and "2 of 3 point(s) finished" in out
