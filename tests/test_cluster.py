"""Process and device discovery (`distil.cluster`, `--distributed`) under each platform's environment, simulated on
127.0.0.1: two processes started with the variables SLURM, an xpk GPU workload on GKE, or a GKE TPU slice sets join
one `jax.distributed` run with the right process count, ids and devices, and a collective between them works."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest

from conftest import REPO, free_port, run_processes
from distil import cluster

WORKER = Path(__file__).parent / "hosts" / "cluster_worker.py"
# Variables of any real cluster this test might run under, which would otherwise leak into the simulated one.
PLATFORM_PREFIXES = ("SLURM_", "TPU_", "MEGASCALE_", "JAX_COORDINATOR", "JAX_LOCAL_DEVICE", "NNODES", "NODE_RANK",
                     "KUBERNETES_", "OMPI_", "PMI_")


def _run_pair(platform: str, per_process: list[dict], coordinator_port: int) -> list[dict]:
    """Starts one worker per entry of `per_process` (its platform variables), 4 fake CPU devices each; returns what
    each printed."""
    base = {key: value for key, value in os.environ.items() if not key.startswith(PLATFORM_PREFIXES)}
    base.update(XLA_FLAGS="--xla_force_host_platform_device_count=4", JAX_PLATFORMS="cpu", PYTHONPATH=str(REPO),
                GCE_METADATA_IP="127.0.0.1:9")  # a stray metadata query stays on this machine and fails at once
    outputs = run_processes([([sys.executable, str(WORKER), platform], {**base, **variables})
                             for variables in per_process], coordinator_port=coordinator_port, timeout=120)
    assert all(code == 0 for code, _ in outputs), "\n\n".join(output[-3000:] for _, output in outputs)
    marker = "distil-cluster-report "  # Gloo prints its own lines on stdout too
    return [json.loads(next(line for line in output.splitlines() if line.startswith(marker))[len(marker):])
            for _, output in outputs]


def _assert_one_run(reports: list[dict], local_devices: int = 4) -> None:
    assert sorted(report["process_index"] for report in reports) == list(range(len(reports)))
    for report in reports:
        assert report["process_count"] == len(reports) and report["local_devices"] == local_devices
        assert report["devices"] == local_devices * len(reports)
        assert report["gathered"] == list(range(len(reports)))


def test_slurm_one_task_per_node_drives_every_gpu_of_its_node():
    """sbatch --nodes=2 --ntasks-per-node=1 --gpus-per-node=8: JAX alone would give each process GPU
    [SLURM_LOCALID] = [0]; distil gives it the node's 8. The coordinator is the first node, on a port JAX derives
    from the job id (so two jobs sharing a node do not collide)."""
    port = free_port(61440, 65536)
    common = dict(SLURM_JOB_ID=str(port - 61440), SLURM_STEP_NODELIST="127.0.0.1", SLURM_NTASKS="2",
                  SLURM_NTASKS_PER_NODE="1", SLURM_GPUS_ON_NODE="8", SLURM_LOCALID="0")  # JAX: job id % 4096 + 61440
    reports = _run_pair("slurm", [{**common, "SLURM_PROCID": str(rank)} for rank in range(2)], port)
    _assert_one_run(reports)
    for report in reports:
        assert report["cuda_visible_devices"] == "0,1,2,3,4,5,6,7"
        assert report["settings"] == {"local_device_ids": list(range(8))}


def test_slurm_one_task_per_gpu_keeps_jax_s_own_assignment():
    port = free_port(61440, 65536)
    common = dict(SLURM_JOB_ID=str(port - 61440), SLURM_STEP_NODELIST="127.0.0.1", SLURM_NTASKS="2",
                  SLURM_NTASKS_PER_NODE="2", SLURM_GPUS_ON_NODE="2")
    reports = _run_pair("slurm", [{**common, "SLURM_PROCID": str(rank), "SLURM_LOCALID": str(rank)}
                                  for rank in range(2)], port)
    _assert_one_run(reports)
    assert sorted(report["cuda_visible_devices"] for report in reports) == ["0", "1"]
    assert all(report["settings"] == {} for report in reports)


def test_xpk_gpu_workload_reads_nnodes_node_rank_and_a_port_less_coordinator():
    """xpk's GPU pods: JAX_COORDINATOR_ADDRESS is a host name without a port, NNODES / NODE_RANK give the processes,
    and JAX's own Kubernetes detection (which needs the `kubernetes` package) is not used."""
    port = free_port()
    common = dict(NNODES="2", JAX_COORDINATOR_ADDRESS="127.0.0.1", JAX_COORDINATOR_PORT=str(port),
                  KUBERNETES_SERVICE_HOST="127.0.0.1")
    reports = _run_pair("xpk-gpu", [{**common, "NODE_RANK": str(rank)} for rank in range(2)], port)
    _assert_one_run(reports)
    assert {report["settings"]["coordinator_address"] for report in reports} == {f"127.0.0.1:{port}"}


def test_gke_tpu_multislice_is_found_by_jax_from_the_worker_variables():
    """Two one-host TPU slices on GKE (xpk --num-slices=2): GKE's TPU_WORKER_ID / TPU_WORKER_HOSTNAMES within a
    slice, MEGASCALE_* across slices; JAX alone makes them one run of 2 processes, slice 1's host being process 1
    (JAX_COORDINATOR_PORT stands in for TPU's fixed 8476, which a test machine may not have free)."""
    port = free_port()
    common = dict(TPU_WORKER_HOSTNAMES="127.0.0.1", TPU_WORKER_ID="0", TPU_SKIP_MDS_QUERY="1",
                  MEGASCALE_COORDINATOR_ADDRESS="127.0.0.1", MEGASCALE_NUM_SLICES="2", JAX_COORDINATOR_PORT=str(port))
    reports = _run_pair("gke-tpu", [{**common, "MEGASCALE_SLICE_ID": str(slice_id)} for slice_id in range(2)], port)
    _assert_one_run(reports)
    assert all(report["settings"] == {} for report in reports)  # all JAX's own detection
    assert all(report["cuda_visible_devices"] == "all" for report in reports)  # TPUs: never restricted


@pytest.mark.parametrize("environ, expected", [
    ({"NNODES": "2", "NODE_RANK": "1", "JAX_COORDINATOR_ADDRESS": "w-0.svc", "JAX_COORDINATOR_PORT": "1234"},
     {"coordinator_address": "w-0.svc:1234", "num_processes": 2, "process_id": 1}),
    ({"NNODES": "2", "NODE_RANK": "0", "JAX_COORDINATOR_ADDRESS": "w-0.svc"},
     {"coordinator_address": f"w-0.svc:{cluster.DEFAULT_XPK_PORT}", "num_processes": 2, "process_id": 0}),
    ({"SLURM_JOB_ID": "7", "SLURM_NTASKS_PER_NODE": "1", "SLURM_GPUS_ON_NODE": "4"},
     {"local_device_ids": [0, 1, 2, 3]}),
    ({"SLURM_JOB_ID": "7", "SLURM_NTASKS_PER_NODE": "8", "SLURM_GPUS_ON_NODE": "8"}, {}),
    ({}, {}),
])
def test_settings_by_hand(environ, expected):
    assert cluster.distributed_settings(environ) == expected


def test_bad_platform_variables_are_named():
    with pytest.raises(cluster.ClusterError, match=r"NODE_RANK=2 is outside NNODES=2"):
        cluster.distributed_settings({"NNODES": "2", "NODE_RANK": "2", "JAX_COORDINATOR_ADDRESS": "h"})
    with pytest.raises(cluster.ClusterError, match=r"NNODES='two': expected an integer"):
        cluster.distributed_settings({"NNODES": "two", "NODE_RANK": "0", "JAX_COORDINATOR_ADDRESS": "h"})


def test_xnli_runs_on_every_host_as_launchers_start_it(tmp_path):
    """`distil xnli --distributed` as the launchers print it, on 2 hosts (xpk GPU variables, 4 devices each): one
    run whose losses and accuracies equal those of 1 process with the same 8 devices, written once by process 0."""
    from distil.config import load_config
    from distil.train import xnli
    from distil.train.metrics import read_metrics

    overrides = ["num_steps=6", "seeds=(0,)", "train.max_examples=96", "eval.batch_size=256", "log_every_steps=1",
                 "eval_every_steps=3", "eval.languages=('en','de','sw')"]
    port = free_port()
    base = {key: value for key, value in os.environ.items() if not key.startswith(PLATFORM_PREFIXES)}
    base.update(XLA_FLAGS="--xla_force_host_platform_device_count=4", JAX_PLATFORMS="cpu", PYTHONPATH=str(REPO),
                NNODES="2", JAX_COORDINATOR_ADDRESS="127.0.0.1", JAX_COORDINATOR_PORT=str(port))
    command = [sys.executable, "-m", "distil", "xnli", "--config", "distilmbert_xnli:runlocal", "--workdir",
               str(tmp_path / "two"), *(f"--config.{o}" for o in overrides), "--distributed"]
    outputs = run_processes([(command, {**base, "NODE_RANK": str(rank)}) for rank in range(2)], coordinator_port=port)
    assert all(code == 0 for code, _ in outputs), "\n\n".join(output[-3000:] for _, output in outputs)

    one = xnli.train_and_evaluate(load_config("distilmbert_xnli:runlocal", overrides), tmp_path / "one")
    two = json.loads((tmp_path / "two" / "xnli_results.json").read_text())
    for split in ("dev", "test"):
        for language, accuracy in one[split].items():
            assert abs(two[split][language] - accuracy) <= 1 / 150 + 1e-9, (split, language)  # one row at most
    got, want = (read_metrics(tmp_path / name / "xnli_seed0" / "metrics.jsonl") for name in ("two", "one"))
    assert [row["step"] for row in got] == [row["step"] for row in want] == [1, 2, 3, 4, 5, 6]
    for got_row, want_row in zip(got, want):
        assert got_row["loss"] == pytest.approx(want_row["loss"], rel=2e-5), got_row["step"]
    assert json.loads((tmp_path / "two" / "run.json").read_text())["status"] == "finished"
