"""Rewrites tests/data/golden/ from the commands tests/test_launch.py checks against them.

    JAX_PLATFORMS=cpu .venv/bin/python tests/regenerate_golden.py && git diff tests/data/golden

A point's folder name carries the fingerprint of its resolved config, so changing a shipped config's default changes
every golden file: read the diff, then commit it with the change that caused it.
"""

import contextlib
import io
import shutil
import tempfile
from pathlib import Path

from conftest import REPO
from distil import cli
G = REPO / "tests" / "data" / "golden"
SWEEP = REPO / "experiments" / "temperature_sweep.py"
MBERT = "/mnt/models/bert-base-multilingual-cased"
XPK_IMAGE = "us-docker.pkg.dev/my/distil:0.1.0"
OBJECTIVES = str(REPO / "experiments" / "objectives_sweep.py")


def out(args):
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        assert cli.main(args) == 0, args
    return buf.getvalue()


def slurm(args, folder: Path) -> list[Path]:
    """The scripts of `distil sweep ... --launcher slurm`, with their --out folder as `<out>`."""
    with tempfile.TemporaryDirectory() as tmp:
        out(["sweep", *args, "--launcher", "slurm", "--out", tmp])
        folder.mkdir(parents=True, exist_ok=True)
        written = []
        for script in sorted(Path(tmp).glob("*.sbatch")):
            (folder / script.name).write_text(script.read_text().replace(tmp, "<out>"))
            written.append(folder / script.name)
        return written


for launcher, extra in [("print", []), ("tpu", ["--tpu", "distil-v4-32", "--zone", "us-central2-b"]),
                        ("xpk", ["--cluster", "gke-h100", "--device-type", "h100-80gb-8", "--num-nodes", "2",
                                 "--docker-image", XPK_IMAGE])]:
    (G / f"sweep_{launcher}.txt").write_text(out(["sweep", str(SWEEP), "--launcher", launcher, "--workdir",
                                                  "/mnt/shared/sweeps/t", *extra]))
shutil.rmtree(G / "slurm")
slurm([str(SWEEP), "--workdir", "/scratch/sweeps/t", "--nodes", "2", "--gpus-per-node", "8", "--partition", "gpu",
       "--venv", "/home/me/venvs/distil"], G / "slurm")
for launcher, extra in [("tpu", ["--tpu", "distil-v4-32", "--zone", "us-central2-b", "--workdir", "/mnt/shared/sweeps/o"]),
                        ("xpk", ["--cluster", "gke-v5p", "--device-type", "v5p-128", "--num-slices", "2",
                                 "--docker-image", XPK_IMAGE, "--storage", "sweeps-bucket", "--workdir", "/gcs/sweeps/o"])]:
    (G / f"objectives_{launcher}.txt").write_text(out(["sweep", OBJECTIVES, "--launcher", launcher, *extra, "--config",
                                                       "distilmbert:tpu=v4-32", f"--config.teacher.checkpoint={MBERT}"]))
with tempfile.TemporaryDirectory() as tmp:
    scripts = slurm([OBJECTIVES, "--workdir", "/scratch/sweeps/o", "--nodes", "1", "--gpus-per-node", "8",
                     "--container", "/scratch/images/distil.sqsh", "--config", "distilmbert:gpu=8xh100",
                     f"--config.teacher.checkpoint={MBERT}"], Path(tmp))
    [script] = [path for path in scripts if "minilm_teacher_layer=9-" in path.name]
    (G / "objectives_minilm.sbatch").write_text(script.read_text())
