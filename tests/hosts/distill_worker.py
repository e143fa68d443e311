"""One of two JAX processes (4 fake CPU devices each) running `distil distill` together on one 8-device mesh.

Run by tests/test_distill.py::test_two_processes_equal_one_and_resume_in_one as
    python distill_worker.py PORT PROCESS_ID WORKDIR OVERRIDE...
Each process reads and masks only its own rows; process 0 writes the shared files (metrics, student, summary).
"""

import sys

import jax

port, process_id, workdir, overrides = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4:]
jax.config.update("jax_cpu_collectives_implementation", "gloo")
jax.distributed.initialize(coordinator_address=f"127.0.0.1:{port}", num_processes=2, process_id=process_id,
                           initialization_timeout=60)

from distil.config import load_config  # noqa: E402
from distil.train.distill import train_and_evaluate  # noqa: E402

train_and_evaluate(load_config("distilmbert:runlocal", overrides), workdir)
jax.distributed.shutdown()
