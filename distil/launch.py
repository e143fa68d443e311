"""Sweeps: a Python file of config overrides, run one point after another here or launched on TPU pods, SLURM GPU
clusters or GKE (big_vision's sweep files, with launchers that print or write what to run).

A sweep file defines

    CONFIG = "distilmbert:runlocal"                         # the config every point starts from
    def get_sweep():
        return product([{"loss.temperature": t} for t in (1.0, 2.0, 4.0)],
                       zip_([{"loss.alpha_ce": 5.0, "loss.alpha_mlm": 2.0}, {"loss.alpha_ce": 2.0, "loss.alpha_mlm": 5.0}]))

and each point is a dict of `--config.KEY=VALUE` overrides. A point's workdir is `ROOT/<name>`, its name built from
its overrides, so a rerun finds the same folders: `local` skips points whose `summary.json` exists, resumes
interrupted ones (the trainer resumes from the workdir's checkpoint), records failures in `ROOT/sweep.json` and goes
on. The other launchers run nothing: they print (or, for SLURM, write) the commands that start each point on every
host of a slice or cluster; `jax.distributed.initialize()` (`distil distill --distributed`) finds the topology there.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path
from typing import Callable, Iterable, Mapping, Sequence

from distil.atomic import write_text_atomically
from distil.config import ConfigError, import_file

LAUNCHERS = ("local", "print", "tpu", "slurm", "xpk")
Point = dict[str, object]


def product(*axes: Sequence[Point]) -> list[Point]:
    """Every combination of one point from each axis, later axes varying fastest."""
    return [{key: value for point in combination for key, value in point.items()}
            for combination in itertools.product(*axes)]


def zip_(*axes: Sequence[Point]) -> list[Point]:
    """The i-th points of every axis together (the axes must be equally long)."""
    lengths = {len(axis) for axis in axes}
    if len(lengths) > 1:
        raise ConfigError(f"zip_ needs axes of one length, got lengths {sorted(lengths)}")
    return [{key: value for point in combination for key, value in point.items()} for combination in zip(*axes)]


def load_sweep(path: str | os.PathLike) -> tuple[str, list[Point]]:
    """(config spec, points) of a sweep file."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: sweep file not found")
    module = import_file(path, "sweep")
    if not isinstance(getattr(module, "CONFIG", None), str) or not callable(getattr(module, "get_sweep", None)):
        raise ConfigError(f"{path}: a sweep file defines CONFIG = 'name[:variant]' and get_sweep() -> list of dicts")
    points = module.get_sweep()
    if not points or not all(isinstance(point, Mapping) for point in points):
        raise ConfigError(f"{path}: get_sweep() must return a non-empty list of {{'KEY': value}} dicts")
    names = [point_name(point) for point in points]
    duplicated = sorted({name for name in names if names.count(name) > 1})
    if duplicated:
        raise ConfigError(f"{path}: points repeat: {', '.join(duplicated)}")
    return module.CONFIG, [dict(point) for point in points]


def point_name(point: Mapping[str, object]) -> str:
    """'loss.temperature=2.0,student.teacher_layers=(0, 3)' -> 'temperature=2.0-teacher_layers=0_3' (a folder name)."""
    if not point:
        return "base"
    parts = []
    for key, value in point.items():
        text = ",".join(map(str, value)) if isinstance(value, (tuple, list)) else str(value)
        parts.append(f"{key.rsplit('.', 1)[-1]}={re.sub(r'[^A-Za-z0-9.+=-]+', '_', text).strip('_')}")
    return "-".join(parts)


def override_args(point: Mapping[str, object]) -> list[str]:
    return [f"--config.{key}={value!r}" if isinstance(value, str) else f"--config.{key}={value}"
            for key, value in point.items()]


def distill_args(config: str, workdir: str, point: Mapping[str, object], *, distributed: bool) -> list[str]:
    args = ["python", "-m", "distil", "distill", "--config", config, "--workdir", workdir, *override_args(point)]
    return args + ["--distributed"] if distributed else args


# ---------------------------------------------------------------------------------------------------- launchers


def run_local(config: str, points: Sequence[Point], root: Path, *, python: str = sys.executable,
              log: Callable[[str], None] = print) -> dict:
    """Runs the points one after another, each in its own process and workdir; returns (and writes) the record."""
    record_path = root / "sweep.json"
    record = json.loads(record_path.read_text()) if record_path.exists() else {}
    root.mkdir(parents=True, exist_ok=True)
    for index, point in enumerate(points, 1):
        name = point_name(point)
        workdir = root / name
        if (workdir / "summary.json").exists():
            log(f"[{index}/{len(points)}] {name}: finished earlier, skipped")
            record[name] = {"status": "finished", "overrides": point}
            continue
        log(f"[{index}/{len(points)}] {name}: running in {workdir}")
        command = [python, *distill_args(config, str(workdir), point, distributed=False)[1:]]
        done = subprocess.run(command)
        status = "finished" if done.returncode == 0 else f"failed (exit {done.returncode})"
        record[name] = {"status": status, "overrides": point}
        write_text_atomically(record_path, json.dumps(record, indent=2, default=str) + "\n")
        log(f"[{index}/{len(points)}] {name}: {status}")
    write_text_atomically(record_path, json.dumps(record, indent=2, default=str) + "\n")
    return record


def print_points(config: str, points: Sequence[Point], root: str) -> str:
    lines = [f"{len(points)} point(s) of {config}:"]
    for point in points:
        lines.append(f"  {root}/{point_name(point)}  {' '.join(override_args(point)) or '(the config as it is)'}")
    return "\n".join(lines)


def tpu_commands(config: str, points: Sequence[Point], root: str, *, tpu: str, zone: str, repo_dir: str) -> str:
    """One `gcloud ... ssh --worker=all` line per point: every host of the slice runs the same command."""
    lines = []
    for point in points:
        inner = f"cd {repo_dir} && " + shlex.join(distill_args(config, f"{root}/{point_name(point)}", point,
                                                               distributed=True))
        lines.append(shlex.join(["gcloud", "compute", "tpus", "tpu-vm", "ssh", tpu, f"--zone={zone}", "--worker=all",
                                 f"--command={inner}"]))
    return "\n".join(lines)


def slurm_scripts(config: str, points: Sequence[Point], root: str, *, nodes: int, gpus_per_node: int,
                  repo_dir: str, partition: str | None) -> dict[str, str]:
    """{file name: sbatch script} per point: one process per node driving its GPUs, the first node coordinating."""
    scripts = {}
    for point in points:
        name = point_name(point)
        command = shlex.join(distill_args(config, f"{root}/{name}", point, distributed=True))
        scripts[f"{name}.sbatch"] = "\n".join([
            "#!/bin/bash",
            f"#SBATCH --job-name=distil-{name}"[:80],
            f"#SBATCH --nodes={nodes}",
            "#SBATCH --ntasks-per-node=1",
            f"#SBATCH --gpus-per-node={gpus_per_node}",
            *([f"#SBATCH --partition={partition}"] if partition else []),
            f"#SBATCH --output={root}/{name}/slurm-%j.out",
            "set -euo pipefail",
            f"cd {repo_dir}",
            f"mkdir -p {root}/{name}",
            "# jax.distributed.initialize() reads SLURM's variables; the coordinator is the first node.",
            "export COORDINATOR_ADDRESS=$(scontrol show hostnames \"$SLURM_JOB_NODELIST\" | head -n 1):12355",
            "export XLA_PYTHON_CLIENT_MEM_FRACTION=0.95",
            f"srun --ntasks={nodes} --ntasks-per-node=1 {command} --coordinator=\"$COORDINATOR_ADDRESS\"",
            "",
        ])
    return scripts


def xpk_commands(config: str, points: Sequence[Point], root: str, *, cluster: str, device_type: str,
                 num_slices: int, docker_image: str) -> str:
    lines = []
    for point in points:
        name = point_name(point)
        command = shlex.join(distill_args(config, f"{root}/{name}", point, distributed=True))
        device_flag = "--tpu-type" if device_type.startswith("v") else "--device-type"
        # GKE names: lowercase, at most 40 characters; the hash keeps truncated names of different points apart.
        slug = re.sub(r"[^a-z0-9-]+", "-", f"distil-{name}".lower())[:32].strip("-")
        workload = f"{slug}-{hashlib.sha1(name.encode()).hexdigest()[:6]}"
        lines.append(shlex.join(["xpk", "workload", "create", f"--cluster={cluster}", f"--workload={workload}",
                                 f"{device_flag}={device_type}", f"--num-slices={num_slices}",
                                 f"--docker-image={docker_image}", f"--command={command}"]))
    return "\n".join(lines)
