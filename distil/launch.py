"""Sweeps: a Python file of config overrides, run one point after another here or launched on TPU pods, SLURM GPU
clusters or GKE (big_vision's sweep files, with launchers that print or write what to run).

A sweep file defines

    CONFIG = "distilmbert:runlocal"                         # the config every point starts from
    def get_sweep():
        return product([{"loss.temperature": t} for t in (1.0, 2.0, 4.0)],
                       zip_([{"loss.alpha_ce": 5.0, "loss.alpha_mlm": 2.0}, {"loss.alpha_ce": 2.0, "loss.alpha_mlm": 5.0}]))

and each point is a dict of `--config.KEY=VALUE` overrides; `distil sweep ... --config.KEY=VALUE` adds settings to
every point (a teacher checkpoint, a data dir, a mesh). Every launcher first resolves every point (base config +
the command line's overrides + the point's) and checks its values; one bad point stops the sweep before anything
runs or is printed, naming the point and the key.

A point's identity is its fully resolved config (and the XNLI config it is fine-tuned with, and the library
versions): its workdir is `ROOT/<name>-<fingerprint>`, the name built from its overrides. A rerun finds the same
folders; a point whose config changed (in the sweep file, the base config or the command line) is a new point in a
new folder, never "finished earlier". `local` skips points whose runs are finished, resumes interrupted ones (the
trainer resumes from the workdir's checkpoint), and records the current points' status in `ROOT/sweep.json` (points
no longer in the sweep are left out of it, their folders untouched). The other launchers run nothing: they print
(or, for SLURM, write) the commands that start each point on every host of a slice or cluster;
`jax.distributed.initialize()` (`distil distill --distributed`) finds the topology there.

A sweep file may also set `XNLI = "distilmbert_xnli[:variant]"`: each point's student is then fine-tuned on English
NLI and evaluated zero-shot (`distil xnli --workdir ROOT/<name>/xnli --config.init=ROOT/<name>`) once its
distillation has finished, on one host (fine-tuning a student is small next to distilling it). `distil report ROOT`
gathers the points' config differences, final losses and XNLI accuracies into one table.
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib.metadata
import inspect
import itertools
import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path
from typing import Callable, Mapping, Sequence

from distil import storage
from distil.atomic import OutputError, is_temporary, make_output_folder, write_text_atomically
from distil.config import OVERRIDE_PREFIX, ConfigError, import_file, load_config
from distil.train import run as run_scaffold
from distil.train.run import LOCK_FILE, SWEEP_RECORD, XNLI_DIR

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


@dataclasses.dataclass(frozen=True)
class ResolvedPoint:
    """One point: its folder name (readable name + fingerprint), its overrides, and its fingerprint."""

    name: str
    overrides: Point
    fingerprint: str


@dataclasses.dataclass(frozen=True)
class Sweep:
    """A sweep file: the config every point starts from, the command line's overrides for every point, the points
    (resolved and checked), and the XNLI config that fine-tunes each point's student afterwards (None: distillation
    only)."""

    config: str
    points: list[ResolvedPoint]
    xnli: str | None = None
    overrides: tuple[str, ...] = ()


def load_sweep(path: str | os.PathLike, config: str | None = None, xnli: str | None = None,
               overrides: Sequence[str] = ()) -> Sweep:
    """The sweep file at `path`, every point resolved and checked; `config` and `xnli` replace its CONFIG and XNLI
    (e.g. the same ablation at `distilmbert:runlocal` here and at `distilmbert:tpu=v4-32` on a pod), `overrides`
    (`--config.KEY=VALUE`) apply to every point. `get_sweep(config)` may take the resolved base config, so that
    points can follow its shape (layer maps from `config.student.teacher_layers`)."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: sweep file not found")
    module = import_file(path, "sweep")
    if not isinstance(getattr(module, "CONFIG", None), str) or not callable(getattr(module, "get_sweep", None)):
        raise ConfigError(f"{path}: a sweep file defines CONFIG = 'name[:variant]' and get_sweep() -> list of dicts")
    xnli = xnli or getattr(module, "XNLI", None)
    if xnli is not None and not isinstance(xnli, str):
        raise ConfigError(f"{path}: XNLI must be an XNLI config 'name[:variant]' (e.g. 'distilmbert_xnli:runlocal'), "
                          f"got {xnli!r}")
    config = config or module.CONFIG
    overrides = tuple(override if override.startswith(OVERRIDE_PREFIX) else OVERRIDE_PREFIX + override
                      for override in overrides)
    takes_config = len(inspect.signature(module.get_sweep).parameters) > 0
    try:
        points = module.get_sweep(load_config(config, overrides)) if takes_config else module.get_sweep()
    except ConfigError:
        raise
    except Exception as err:  # the sweep file's own code
        raise ConfigError(f"{path}: get_sweep() failed: {type(err).__name__}: {err}") from None
    if not isinstance(points, Sequence) or not points or not all(isinstance(point, Mapping) for point in points):
        raise ConfigError(f"{path}: get_sweep() must return a non-empty list of {{'KEY': value}} dicts")
    names = [point_name(point) for point in points]
    duplicated = sorted({name for name in names if names.count(name) > 1})
    if duplicated:
        raise ConfigError(f"{path}: points repeat: {', '.join(duplicated)}")
    resolved = [resolve_point(config, dict(point), overrides, xnli, where=f"{path}: point {point_name(point)}")
                for point in points]
    return Sweep(config, resolved, xnli, overrides)


def resolve_point(config: str, point: Point, overrides: Sequence[str], xnli: str | None, *,
                  where: str) -> ResolvedPoint:
    """The point's configs resolved and checked as its commands will read them (any error names the point), and
    its fingerprint: the distillation's, and the XNLI run's when there is one (without config.init, which is the
    point's own folder)."""
    from distil.train import distill, xnli as xnli_trainer

    keys = {override[len(OVERRIDE_PREFIX):].partition("=")[0] for override in overrides}
    clash = sorted(keys & set(point))
    if clash:
        raise ConfigError(f"{where}: sets {', '.join(clash)}, which the command line's --config.{clash[0]} sets for "
                          "every point; drop one of them")
    try:
        distill_config = load_config(config, [*overrides, *override_args(point)])
        run_scaffold.resolve_config("distill", distill_config)
        distill.check_config(distill_config, num_devices=None, process_count=1)
        identity = [run_scaffold.fingerprint("distill", run_scaffold.config_data(distill_config))]
        if xnli:
            xnli_config = load_config(xnli, ["init="])
            run_scaffold.resolve_config("xnli", xnli_config)
            xnli_trainer.check_config(xnli_config, num_devices=None, process_count=1)
            identity.append(run_scaffold.fingerprint("xnli", run_scaffold.config_data(xnli_config)))
    except ConfigError as err:
        raise ConfigError(f"{where}: {err}") from None
    digest = hashlib.sha256(" ".join(identity).encode()).hexdigest()[:8]
    return ResolvedPoint(f"{point_name(point)}-{digest}", point, digest)


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


def distill_args(sweep: Sweep, workdir: str, point: ResolvedPoint, *, distributed: bool) -> list[str]:
    args = ["python", "-m", "distil", "distill", "--config", sweep.config, "--workdir", workdir, *sweep.overrides,
            *override_args(point.overrides)]
    return args + ["--distributed"] if distributed else args


def xnli_args(xnli_config: str, workdir: str) -> list[str]:
    """Fine-tunes the student that `distil distill` exported in `workdir`, into `workdir/xnli`."""
    return ["python", "-m", "distil", "xnli", "--config", xnli_config, "--workdir", f"{workdir}/{XNLI_DIR}",
            f"--config.init={workdir}"]


# ---------------------------------------------------------------------------------------------------- launchers


def _open_root(root: Path) -> run_scaffold.WorkdirLock:
    """The sweep root, locked for this sweep: new, empty, or a sweep root already (its sweep.json)."""
    make_output_folder(root, "sweep root")
    if not (root / SWEEP_RECORD).exists():
        names = [entry.name for entry in storage.entries(root)]
        foreign = [name for name in names if name != LOCK_FILE and not is_temporary(name)]
        if foreign:
            raise OutputError(f"{root}: holds files distil did not write for a sweep ({', '.join(foreign[:6])}; no "
                              f"{SWEEP_RECORD}); choose a new or empty --workdir")
    lock = run_scaffold.workdir_lock(root, "sweep")
    lock.acquire()
    lock.announce()
    return lock


def run_local(sweep: Sweep, root: Path, *, python: str = sys.executable, log: Callable[[str], None] = print) -> dict:
    """Runs the points one after another, each stage in its own process, each point in its own workdir; returns
    (and writes, after every point) the record `ROOT/sweep.json`: {name: {"status", "overrides", "fingerprint"}}
    of this sweep's points."""
    record_path = root / SWEEP_RECORD
    lock = _open_root(root)
    try:
        record = {}
        points = sweep.points
        for index, point in enumerate(points, 1):
            workdir = root / point.name
            stages = [("distill", workdir, distill_args(sweep, str(workdir), point, distributed=False))]
            if sweep.xnli:
                stages.append(("xnli", workdir / XNLI_DIR, xnli_args(sweep.xnli, str(workdir))))
            status = "finished"
            for stage, folder, args in stages:
                if run_scaffold.is_finished(folder):
                    log(f"[{index}/{len(points)}] {point.name}: {stage} finished earlier, skipped")
                    continue
                log(f"[{index}/{len(points)}] {point.name}: {stage} running in {folder}")
                returncode = subprocess.run([python, *args[1:]]).returncode
                if returncode != 0:
                    status = f"failed in {stage} (exit {returncode})"
                    break
            record[point.name] = {"status": status, "overrides": point.overrides, "fingerprint": point.fingerprint}
            write_text_atomically(record_path, json.dumps(record, indent=2, default=str) + "\n")
            log(f"[{index}/{len(points)}] {point.name}: {status}")
        return record
    finally:
        lock.release()


def print_points(sweep: Sweep, root: str) -> str:
    then = f", then XNLI ({sweep.xnli}) in <workdir>/{XNLI_DIR}" if sweep.xnli else ""
    lines = [f"{len(sweep.points)} point(s) of {sweep.config}{then}:"]
    if sweep.overrides:
        lines.append(f"  every point: {' '.join(sweep.overrides)}")
    for point in sweep.points:
        lines.append(f"  {root}/{point.name}  {' '.join(override_args(point.overrides)) or '(the config as it is)'}")
    return "\n".join(lines)


def _stages(sweep: Sweep, root: str, point: ResolvedPoint) -> list[list[str]]:
    """The point's commands, each run by every host: distillation, then XNLI of its student (multi-host too)."""
    workdir = f"{root}/{point.name}"
    stages = [distill_args(sweep, workdir, point, distributed=True)]
    if sweep.xnli:
        stages.append([*xnli_args(sweep.xnli, workdir), "--distributed"])
    return stages


def wheel_name() -> str:
    """The file name of this distil's wheel (`pip wheel .` in a checkout)."""
    return f"distil-{importlib.metadata.version('distil')}-py3-none-any.whl"


TPU_VENV = "~/distil-venv"  # on every TPU worker: the virtual environment the tpu launcher installs distil into


def tpu_commands(sweep: Sweep, root: str, *, tpu: str, zone: str) -> str:
    """What to run for a sweep on a TPU VM slice, as big_vision's launch does it: a wheel of this checkout copied
    to every worker and installed there (with JAX's `tpu` extra) into `~/distil-venv`, then per point one
    `gcloud ... ssh --worker=all` line per stage. Every worker runs the same command; `--distributed` joins them
    (JAX reads the slice from the TPU metadata); each line returns when the stage ends on every worker."""
    ssh = ["gcloud", "compute", "tpus", "tpu-vm", "ssh", tpu, f"--zone={zone}", "--worker=all"]
    wheel = wheel_name()
    lines = [
        "# 1. distil and its pinned packages on every worker (once per slice; again after a code change), from this "
        "checkout:",
        shlex.join(["python", "-m", "pip", "wheel", "--no-deps", "--wheel-dir", "dist", "."]),
        shlex.join(["gcloud", "compute", "tpus", "tpu-vm", "scp", f"dist/{wheel}", f"{tpu}:{wheel}", f"--zone={zone}",
                    "--worker=all"]),
        shlex.join([*ssh, f"--command=python3 -m venv {TPU_VENV} && {TPU_VENV}/bin/pip install -q '{wheel}[tpu,gcs]'"]),
        f"# 2. each point, on every worker ({'distillation, then XNLI' if sweep.xnli else 'distillation'}):",
    ]
    for point in sweep.points:
        for args in _stages(sweep, root, point):  # the venv's python, its `~` left to the worker's shell to expand
            lines.append(shlex.join([*ssh, f"--command={TPU_VENV}/bin/python {shlex.join(args[1:])}"]))
    return "\n".join(lines)


def slurm_scripts(sweep: Sweep, root: str, *, nodes: int, gpus_per_node: int, partition: str | None,
                  logs: str, venv: str | None = None, container: str | None = None) -> dict[str, str]:
    """{file name: sbatch script} per point: one process per node driving all its GPUs (distil gives it the node's
    GPUs; JAX finds the processes and puts the coordinator on the first node, on a port derived from the job id),
    inside the virtual environment `venv` or the container image `container` (pyxis' `srun --container-image`,
    the workdir root mounted at the same path). Each stage is one `srun` over every node: distillation, then XNLI.
    Logs go to `logs/` (%x: the job name, %j: its id), which must exist when the script is submitted."""
    if (venv is None) == (container is None):
        raise ConfigError("--launcher slurm needs where distil is installed on the nodes: --venv DIR (a virtual "
                          "environment with distil installed) or --container IMAGE (an image built from the "
                          "Dockerfile)")
    environment = [f"source {shlex.quote(venv)}/bin/activate"] if venv else []
    srun = ["srun", f"--nodes={nodes}", "--ntasks-per-node=1"]
    if container:
        mounts = [] if storage.is_remote(root) else [f"--container-mounts={root}:{root}"]  # a bucket needs none
        srun += [f"--container-image={container}", *mounts, "--container-workdir=/tmp"]
    scripts = {}
    for point in sweep.points:
        scripts[f"{point.name}.sbatch"] = "\n".join([
            "#!/bin/bash",
            f"#SBATCH --job-name=distil-{point.name}"[:80],
            f"#SBATCH --nodes={nodes}",
            "#SBATCH --ntasks-per-node=1",
            f"#SBATCH --gpus-per-node={gpus_per_node}",
            *([f"#SBATCH --partition={partition}"] if partition else []),
            f"#SBATCH --output={logs}/%x-%j.out",
            "set -euo pipefail",
            *environment,
            "export XLA_PYTHON_CLIENT_MEM_FRACTION=0.95",
            *(shlex.join([*srun, *args]) for args in _stages(sweep, root, point)),
            "",
        ])
    return scripts


# What xpk's JobSet YAML cannot carry in `--command` (it pastes the text into a YAML block scalar, and for GPU
# workloads into a double-quoted YAML string too): newlines everywhere; double quotes and backslashes for GPUs.
_XPK_UNSAFE = {"\n": "a newline", '"': "a double quote", "\\": "a backslash"}


def xpk_commands(sweep: Sweep, root: str, *, cluster: str, device_type: str, num_slices: int, num_nodes: int,
                 docker_image: str | None, storage: Sequence[str] = ()) -> str:
    """One `xpk workload create` per point, every pod running the same command: distillation, then XNLI of its
    student, both `--distributed` (TPU: JAX reads GKE's TPU_WORKER_* variables, across slices MEGASCALE_*; GPU:
    distil reads xpk's NNODES / NODE_RANK / JAX_COORDINATOR_*). TPU types count slices (`--num-slices`), GPU types
    nodes (`--num-nodes`). `docker_image` must hold distil (the repository's Dockerfile); `storage` names
    `xpk storage attach` volumes (a gcsfuse bucket mounted where the workdirs are)."""
    if not docker_image:
        raise ConfigError("--launcher xpk needs --docker-image: an image with distil installed (docker build the "
                          "repository's Dockerfile with --build-arg ACCELERATOR=tpu or cuda12, and push it)")
    tpu = device_type.startswith(("v", "tpu"))
    lines = []
    for point in sweep.points:
        command = " && ".join(shlex.join(args) for args in _stages(sweep, root, point))
        unsafe = [what for char, what in _XPK_UNSAFE.items() if char in command and (char == "\n" or not tpu)]
        if unsafe:
            raise ConfigError(f"point {point.name}: its command holds {', '.join(unsafe)}, which xpk's YAML cannot "
                              "carry; use values without them")
        # GKE names: lowercase, at most 40 characters; the hash keeps truncated names of different points apart.
        slug = re.sub(r"[^a-z0-9-]+", "-", f"distil-{point.name}".lower())[:32].strip("-")
        workload = f"{slug}-{hashlib.sha1(point.name.encode()).hexdigest()[:6]}"
        size = [f"--tpu-type={device_type}", f"--num-slices={num_slices}"] if tpu else \
            [f"--device-type={device_type}", f"--num-nodes={num_nodes}"]
        lines.append(shlex.join(["xpk", "workload", "create", f"--cluster={cluster}", f"--workload={workload}", *size,
                                 f"--docker-image={docker_image}", *(f"--storage={name}" for name in storage),
                                 f"--command={command}"]))
    return "\n".join(lines)
