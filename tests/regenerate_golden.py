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
def out(args):
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        assert cli.main(args) == 0, args
    return buf.getvalue()
for launcher, extra in [("print", []), ("tpu", ["--tpu", "distil-v4-32", "--zone", "us-central2-b"]),
                        ("xpk", ["--cluster", "gke-h100", "--device-type", "h100-80gb-8", "--num-slices", "1",
                                 "--docker-image", "us-docker.pkg.dev/my/distil:latest"])]:
    (G / f"sweep_{launcher}.txt").write_text(out(["sweep", str(SWEEP), "--launcher", launcher, "--workdir", "/mnt/shared/sweeps/t", *extra]))
shutil.rmtree(G / "slurm"); (G / "slurm").mkdir()
out(["sweep", str(SWEEP), "--launcher", "slurm", "--workdir", "/scratch/sweeps/t", "--nodes", "2", "--gpus-per-node", "8",
     "--partition", "gpu", "--repo-dir", "/home/me/distil", "--out", str(G / "slurm")])
for launcher, extra in [("tpu", ["--tpu", "distil-v4-32", "--zone", "us-central2-b", "--workdir", "/mnt/shared/sweeps/o"]),
                        ("xpk", ["--cluster", "gke-v5p", "--device-type", "v5p-128", "--docker-image", "us-docker.pkg.dev/my/distil:latest", "--workdir", "/gcs/sweeps/o"])]:
    (G / f"objectives_{launcher}.txt").write_text(out(["sweep", str(REPO / "experiments" / "objectives_sweep.py"), "--launcher", launcher, *extra,
        "--config", "distilmbert:tpu=v4-32", f"--config.teacher.checkpoint={MBERT}"]))
with tempfile.TemporaryDirectory() as tmp:
    out(["sweep", str(REPO / "experiments" / "objectives_sweep.py"), "--launcher", "slurm", "--workdir", "/scratch/sweeps/o", "--out", tmp,
         "--nodes", "1", "--gpus-per-node", "8", "--repo-dir", "/home/me/distil", "--config", "distilmbert:gpu=8xh100", f"--config.teacher.checkpoint={MBERT}"])
    [script] = Path(tmp).glob("alpha_ce=5.0-alpha_mlm=2.0-alpha_cos=0.0-alpha_minilm=1.0-minilm_teacher_layer=9-*.sbatch")
    (G / "objectives_minilm.sbatch").write_text(script.read_text())
