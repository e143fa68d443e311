"""One of two JAX processes (4 fake CPU devices each) assembling a global batch from per-host rows.

Run by tests/test_batching.py::test_two_processes_assemble_the_global_batch as
    python global_batch_worker.py PORT PROCESS_ID OUT_JSON
Each process draws only its rows of a few steps, places them with `make_global_batch` on an 8-device mesh spanning
both processes, and computes per-row checksums of the global arrays in one jitted function whose result is
replicated, so every process sees the checksums of all rows, its peer's included.
"""

import json
import sys

import jax

port, process_id, out_path = sys.argv[1], int(sys.argv[2]), sys.argv[3]
jax.config.update("jax_cpu_collectives_implementation", "gloo")
jax.distributed.initialize(coordinator_address=f"127.0.0.1:{port}", num_processes=2, process_id=process_id,
                           initialization_timeout=60)

import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from distil.data.batching import GroupedBatchSource  # noqa: E402
from distil.sharding import make_global_batch  # noqa: E402
from synthetic import synthetic_sequences, row_checksums  # noqa: E402


mesh = jax.make_mesh((4, 2, 1), ("data", "fsdp", "tensor"), axis_types=(jax.sharding.AxisType.Auto,) * 3)
source = GroupedBatchSource(synthetic_sequences(200), global_batch=16, max_length=64, seed=3)
replicated = jax.sharding.NamedSharding(mesh, jax.P())


@jax.jit
def global_row_checksums(input_ids, attention_mask, lengths):
    return jax.lax.with_sharding_constraint(row_checksums(input_ids, attention_mask, lengths, xp=jnp), replicated)


results = []
for step in (0, 5, 13):
    local = source[step]
    batch = make_global_batch(local, jax.NamedSharding(mesh, jax.P(("data", "fsdp"))))
    checksums = global_row_checksums(batch["input_ids"], batch["attention_mask"], batch["lengths"])
    results.append({"step": step, "local_rows": int(local["input_ids"].shape[0]),
                    "global_shape": list(batch["input_ids"].shape), "checksums": np.asarray(checksums).tolist()})

with open(out_path, "w") as out:
    json.dump({"process_index": jax.process_index(), "process_count": jax.process_count(),
               "devices": jax.device_count(), "results": results}, out)
jax.distributed.shutdown()
