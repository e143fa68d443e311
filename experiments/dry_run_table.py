"""The memory dry run of the full recipe on several meshes: the largest per-device micro-batch that fits a budget.

    .venv/bin/python experiments/dry_run_table.py [--budgets 16 80] [--out runs/dry_run]

For each mesh (1 device; 8 devices data=8; data 2 x fsdp 2 x tensor 2; a v4-32-like 16-chip data 4 x fsdp 4; an
8-GPU-like node data 8 in bf16 compute) it compiles `distil distill --config distilmbert --dry_run` (mBERT teacher
with the 119,547 vocabulary, 6-layer student, packed rows of 512) for 1, 2, 4, ... rows per device in one
micro-batch, each in its own process with that many fake CPU devices, and keeps the largest whose per-device peak
fits each budget (GiB). Peak = arguments + outputs + temporaries of XLA's CPU compilation: a guide for TPU/GPU,
whose fusion and layouts differ. Writes dry_run.json and dry_run.md to --out.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

# vocab_tile: loss.vocab_tile_size; the accelerator-like meshes take the whole vocabulary per chunk, as the
# `:tpu=...` / `:gpu=...` config variants do.
MESHES = {
    "1 device": dict(data=1, fsdp=1, tensor=1, dtype="float32", vocab_tile=4096),
    "8 devices (data 8)": dict(data=8, fsdp=1, tensor=1, dtype="float32", vocab_tile=4096),
    "data 2 x fsdp 2 x tensor 2": dict(data=2, fsdp=2, tensor=2, dtype="float32", vocab_tile=4096),
    "v4-32-like (data 4 x fsdp 4)": dict(data=4, fsdp=4, tensor=1, dtype="bfloat16", vocab_tile=0),
    "8-GPU-like (data 8, bf16)": dict(data=8, fsdp=1, tensor=1, dtype="bfloat16", vocab_tile=0),
}
SNIPPET = """
import json, sys
from distil.config import load_config
from distil.train.distill import dry_run
print(json.dumps(dry_run(load_config("distilmbert", sys.argv[1:]))))
"""


def measure(mesh: dict, rows: int) -> dict:
    devices = mesh["data"] * mesh["fsdp"] * mesh["tensor"]
    overrides = [f"mesh.{axis}={mesh[axis]}" for axis in ("data", "fsdp", "tensor")] + [
        f"batching.global_batch={rows * mesh['data'] * mesh['fsdp']}", "batching.micro_batches=1",
        f"student.dtype={mesh['dtype']}", f"teacher.dtype={mesh['dtype']}",
        f"loss.vocab_tile_size={mesh['vocab_tile']}"]
    env = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}")
    done = subprocess.run([sys.executable, "-c", SNIPPET, *overrides], env=env, capture_output=True, text=True,
                          check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--budgets", type=float, nargs="+", default=[16, 80], help="GiB per device")
    parser.add_argument("--max-rows", type=int, default=64)
    parser.add_argument("--out", default="runs/dry_run")
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    results = {}
    for name, mesh in MESHES.items():
        tried, rows = [], 1
        while rows <= args.max_rows:
            result = measure(mesh, rows)
            tried.append(result)
            print(f"{name}: {rows} rows/device: {result['peak_bytes'] / 2**30:.1f} GiB peak", flush=True)
            if result["peak_bytes"] > max(args.budgets) * 2**30:
                break
            rows *= 2
        results[name] = {"mesh": mesh, "tried": tried}
        for budget in args.budgets:
            fitting = [r for r in tried if r["peak_bytes"] <= budget * 2**30]
            results[name][f"{budget:g}GiB"] = fitting[-1] if fitting else None
    lines = ["| mesh | compute, vocab tile | " + " | ".join(f"rows/device <= {b:g} GiB (peak GiB, args GiB)" for b in args.budgets)
             + " | GFLOP/step/device at 1 row |", "|---|---|" + "---:|" * (len(args.budgets) + 1)]
    for name, r in results.items():
        cells = []
        for budget in args.budgets:
            best = r[f"{budget:g}GiB"]
            cells.append("none" if best is None else f"{best['rows_per_device']} ({best['peak_bytes'] / 2**30:.1f}, "
                                                     f"{best['argument_bytes'] / 2**30:.1f})")
        compute = f"{r['mesh']['dtype']}, {r['mesh']['vocab_tile'] or 'whole'}"
        lines.append(f"| {name} | {compute} | " + " | ".join(cells)
                     + f" | {r['tried'][0]['flops'] / 1e9:,.0f} |")
    table = "\n".join(lines)
    print(table)
    (out / "dry_run.json").write_text(json.dumps(results, indent=2) + "\n")
    (out / "dry_run.md").write_text(table + "\n")


if __name__ == "__main__":
    main()
