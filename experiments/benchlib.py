"""What the bench_*.py scripts share: fresh-process workers with their peak memory, medians of timed steps, the
machine's measured matmul peak, Markdown tables, and the JSON each writes to `--out`.

Every benchmark runs its references in the same command, so ratios hold on a shared, noisy machine. Memory is a
worker's peak resident set (`getrusage` max RSS), each implementation measured in a fresh process of its own.
"""

from __future__ import annotations

import json
import os
import platform
import re
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable, Sequence

REPO = Path(__file__).resolve().parents[1]
RESULT_PREFIX = "BENCH-RESULT "


# ------------------------------------------------------------------------------------------------------ timing


def timed_median(step: Callable[[], object], *, steps: int, warmup: int) -> dict:
    """Runs `step` (which must block until its work is done) `warmup` times untimed, then `steps` times; returns
    the median and every timing in seconds (wall clock), and the median CPU seconds of this process (all its
    threads) per step: on a shared machine, waiting for a core inflates the wall clock but not the CPU time."""
    for _ in range(warmup):
        step()
    times, cpu_times = [], []
    for _ in range(steps):
        start, cpu_start = time.perf_counter(), time.process_time()
        step()
        times.append(time.perf_counter() - start)
        cpu_times.append(time.process_time() - cpu_start)
    return {"median_s": statistics.median(times), "times_s": times, "cpu_s": statistics.median(cpu_times)}


def peak_rss_bytes() -> int:
    """This process's peak resident set so far (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


# ----------------------------------------------------------------------------------------------------- workers


HUGEPAGES = True  # the bench scripts' --no-hugepages turns it off


def worker_env(num_devices: int | None = 1) -> dict:
    """The environment of a worker: this checkout first on PYTHONPATH, the CPU backend, offline hubs,
    `num_devices` fake CPU devices (None keeps the caller's XLA_FLAGS), and (`HUGEPAGES`) glibc's malloc asked for
    transparent huge pages (`GLIBC_TUNABLES=glibc.malloc.hugetlb=1`): a step's gigabytes of fresh temporaries
    otherwise cost ~1M page faults (~1.5 CPU s per full-size step, in JAX and PyTorch alike). Every worker of a
    benchmark, reference included, gets the same environment."""
    env = dict(os.environ)
    if HUGEPAGES and "glibc.malloc.hugetlb" not in env.get("GLIBC_TUNABLES", ""):
        env["GLIBC_TUNABLES"] = ":".join(filter(None, [env.get("GLIBC_TUNABLES"), "glibc.malloc.hugetlb=1"]))
    env["PYTHONPATH"] = os.pathsep.join([str(REPO)] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p])
    env.setdefault("JAX_PLATFORMS", "cpu")
    env["HF_HUB_OFFLINE"] = env["TRANSFORMERS_OFFLINE"] = "1"
    if num_devices is not None:
        flags = re.sub(r"--xla_force_host_platform_device_count=\d+", "", env.get("XLA_FLAGS", "")).strip()
        env["XLA_FLAGS"] = f"{flags} --xla_force_host_platform_device_count={num_devices}".strip()
    return env


def add_environment_flag(parser) -> None:
    parser.add_argument("--no-hugepages", action="store_true",
                        help="run the workers without GLIBC_TUNABLES=glibc.malloc.hugetlb=1")


def use_environment(args) -> dict:
    """Applies --no-hugepages; returns the setting for the results file."""
    global HUGEPAGES
    HUGEPAGES = not args.no_hugepages
    return {"glibc_malloc_hugetlb": HUGEPAGES}


def run_worker(script: str | Path, spec: dict, *, num_devices: int | None = 1, timeout: float = 1800) -> dict:
    """Runs `python script --worker JSON(spec)` in a fresh process and returns the dict it printed with
    `report(...)`; a failed worker is an error carrying its output's tail."""
    command = [sys.executable, str(script), "--worker", json.dumps(spec)]
    done = subprocess.run(command, env=worker_env(num_devices), capture_output=True, text=True, timeout=timeout)
    for line in reversed(done.stdout.splitlines()):
        if line.startswith(RESULT_PREFIX):
            return json.loads(line[len(RESULT_PREFIX):])
    tail = (done.stdout + done.stderr)[-3000:]
    raise RuntimeError(f"worker {spec} failed (exit {done.returncode}):\n{tail}")


def report(result: dict) -> None:
    """A worker's last line: its result and its peak RSS."""
    print(RESULT_PREFIX + json.dumps({**result, "peak_rss_bytes": peak_rss_bytes()}), flush=True)


# ----------------------------------------------------------------------------------------------------- machine


def matmul_peak(size: int = 2048, repeats: int = 5) -> dict:
    """The best sustained float32 and bfloat16 GEMM rate (FLOP/s) of this machine, by JAX (XLA) and PyTorch: the
    MFU denominator. Measured in the calling process, so call it where nothing else runs."""
    import jax
    import jax.numpy as jnp
    import numpy as np

    flops = 2 * size**3
    out = {}
    for dtype_name in ("float32", "bfloat16"):
        a = jnp.asarray(np.random.default_rng(0).normal(size=(size, size)), dtype_name)
        matmul = jax.jit(lambda x, y: x @ y)
        best = timed_median(lambda: matmul(a, a).block_until_ready(), steps=repeats, warmup=1)
        out[f"jax_{dtype_name}"] = flops / min(best["times_s"])
        try:
            import torch

            t = torch.randn(size, size, dtype=getattr(torch, dtype_name))
            best = timed_median(lambda: t @ t, steps=repeats, warmup=1)
            out[f"torch_{dtype_name}"] = flops / min(best["times_s"])
        except ImportError:
            pass
    out["float32"] = max(v for k, v in out.items() if k.endswith("float32"))
    out["bfloat16"] = max(v for k, v in out.items() if k.endswith("bfloat16"))
    return out


def machine() -> dict:
    import jax

    cpu = platform.processor()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    info = {"cpu": cpu, "cores": os.cpu_count(), "jax": jax.__version__, "backend": jax.default_backend(),
            "device": jax.devices()[0].device_kind, "python": platform.python_version(),
            "load_average": os.getloadavg()}
    try:
        import torch
        import transformers

        info.update(torch=torch.__version__, transformers=transformers.__version__, torch_threads=torch.get_num_threads())
    except ImportError:
        pass
    return info


def gpu_note() -> str:
    """Benchmark 5 of issue 13: a GPU run where one is visible, else the line that says so."""
    import jax

    gpus = [d for d in jax.devices() if d.platform in ("gpu", "cuda", "rocm")] if jax.default_backend() != "cpu" \
        else []
    if gpus:
        return f"GPU: {gpus[0].device_kind} visible; rerun this command with JAX_PLATFORMS unset to measure it."
    return ("GPU: none visible to this run (CPU backend; no accelerator was lent to this machine), so no GPU "
            "figures; on a GPU host the same command with JAX_PLATFORMS=cuda measures it (bench_step: add the "
            "all-bf16 variant for bfloat16 tokens/s and MFU).")


# ------------------------------------------------------------------------------------------------------ output


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[object]], align: str | None = None) -> str:
    align = align or "l" + "r" * (len(headers) - 1)
    marks = {"l": "---", "r": "---:", "c": ":---:"}
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join(marks[a] for a in align) + "|"]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return "\n".join(lines)


def write_json(path: str | os.PathLike | None, payload: dict) -> None:
    if path:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(path).write_text(json.dumps(payload, indent=2, default=float) + "\n")
        print(f"\nwrote {path}")


def gib(num_bytes: float) -> str:
    return f"{num_bytes / 2**30:.2f}"
