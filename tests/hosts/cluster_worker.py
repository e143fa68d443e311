"""One process of a simulated cluster: joins the run with `distil.cluster.initialize()` under the environment
variables a platform sets (the test sets them, on 127.0.0.1) and prints what JAX made of them as one JSON line.

    python cluster_worker.py PLATFORM       # PLATFORM: slurm, xpk-gpu or gke-tpu
"""

import json
import os
import sys

import jax
import numpy as np

platform = sys.argv[1]
jax.config.update("jax_cpu_collectives_implementation", "gloo")
if platform == "gke-tpu":
    # A TPU VM as JAX sees one when libtpu finds chips; JAX then reads the GKE worker variables (it never reads
    # them elsewhere). Only this flag is simulated: the detection, the coordinator and the ids are JAX's own.
    from jax._src import cloud_tpu_init
    from jax._src.clusters import cloud_tpu_cluster, cluster as cluster_env

    for module in (cloud_tpu_init, cloud_tpu_cluster, cluster_env):  # each holds its own copy of the flag
        module.running_in_cloud_tpu_vm = True

from distil import cluster  # noqa: E402
from jax._src import xla_bridge  # noqa: E402  (where JAX keeps jax_cuda_visible_devices)
from jax.experimental import multihost_utils  # noqa: E402

settings = cluster.initialize()
gathered = multihost_utils.process_allgather(np.asarray([jax.process_index()], np.int32))  # a real collective
print("distil-cluster-report " + json.dumps({
    "process_count": jax.process_count(), "process_index": jax.process_index(),
    "local_devices": jax.local_device_count(), "devices": jax.device_count(),
    "cuda_visible_devices": xla_bridge.CUDA_VISIBLE_DEVICES.value, "settings": settings,
    "gathered": np.asarray(gathered).ravel().tolist(),
}), flush=True)
# Done: the collective above needed every process. Leave without `jax.distributed.shutdown()` (also run at exit),
# whose barrier can wait minutes for a peer that is already gone when the two end within a few milliseconds.
os._exit(0)
