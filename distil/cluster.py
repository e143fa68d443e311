"""Joining a multi-host run: `jax.distributed.initialize` with what each platform provides (`--distributed`).

JAX finds the processes itself (`jax/_src/clusters/`) on
- Cloud TPU VMs: the GCE metadata server, or on GKE the `TPU_WORKER_ID` / `TPU_WORKER_HOSTNAMES` variables
  (`MEGASCALE_*` across slices); the coordinator is worker 0 on port 8476;
- SLURM: `SLURM_JOB_ID`, `SLURM_STEP_NODELIST`, `SLURM_NTASKS`, `SLURM_PROCID`, `SLURM_LOCALID`; the coordinator is
  the step's first node on a port derived from the job id (so two jobs on one node do not collide);
- Open MPI, and Kubernetes JobSets when the `kubernetes` package can read the pod's API.

Two platforms need more, read here from the variables they set (what MaxText's launchers do):
- **SLURM with one task per node** driving all its GPUs: JAX gives process k only GPU `[SLURM_LOCALID]` = GPU 0.
  With `SLURM_NTASKS_PER_NODE=1` every process is given its node's `SLURM_GPUS_ON_NODE` GPUs instead.
- **xpk GPU workloads on GKE** export `NNODES`, `NODE_RANK` and `JAX_COORDINATOR_ADDRESS` (a host name, no port)
  with `JAX_COORDINATOR_PORT`; JAX's Kubernetes detection would need the `kubernetes` package and API access.

`--coordinator HOST:PORT` overrides the coordinator everywhere (a bare cluster of hosts started by hand).
"""

from __future__ import annotations

import os
from typing import Mapping

DEFAULT_XPK_PORT = "6002"  # used when an xpk GPU pod sets no JAX_COORDINATOR_PORT


class ClusterError(ValueError):
    """A platform variable that cannot be read; names it."""


def _integer(environ: Mapping[str, str], name: str) -> int:
    try:
        return int(environ[name])
    except ValueError:
        raise ClusterError(f"{name}={environ[name]!r}: expected an integer") from None


def distributed_settings(environ: Mapping[str, str] = os.environ, coordinator: str | None = None) -> dict:
    """The keyword arguments of `jax.distributed.initialize` for this platform: only what JAX would not find
    (or would get wrong) by itself; {} leaves everything to its detection."""
    settings: dict = {}
    if coordinator:
        settings["coordinator_address"] = coordinator
    if {"NNODES", "NODE_RANK", "JAX_COORDINATOR_ADDRESS"} <= set(environ) and "SLURM_JOB_ID" not in environ:
        host = environ["JAX_COORDINATOR_ADDRESS"]
        port = environ.get("JAX_COORDINATOR_PORT") or DEFAULT_XPK_PORT
        settings.setdefault("coordinator_address", host if ":" in host.rsplit("]", 1)[-1] else f"{host}:{port}")
        settings["num_processes"] = _integer(environ, "NNODES")
        settings["process_id"] = _integer(environ, "NODE_RANK")
        if not 0 <= settings["process_id"] < settings["num_processes"]:
            raise ClusterError(f"NODE_RANK={settings['process_id']} is outside NNODES={settings['num_processes']}")
    elif "SLURM_JOB_ID" in environ and environ.get("SLURM_NTASKS_PER_NODE") == "1" and "SLURM_GPUS_ON_NODE" in environ:
        settings["local_device_ids"] = list(range(_integer(environ, "SLURM_GPUS_ON_NODE")))
    return settings


def initialize(coordinator: str | None = None) -> dict:
    """`jax.distributed.initialize(**distributed_settings())`, before anything else touches JAX's backends;
    returns the settings it passed."""
    import jax

    settings = distributed_settings(os.environ, coordinator)
    jax.distributed.initialize(**settings)
    return settings
