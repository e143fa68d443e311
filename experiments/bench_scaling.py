"""Benchmark 4 of issue 13: the trainer's step on 1, 2, 4 and 8 fake CPU devices per mesh layout: step time and
the compiled step's per-device memory, with full logits and with chunked vocabulary losses.

    python experiments/bench_scaling.py [--size runlocal] [--devices 1,2,4,8] [--out scaling.json]
    python experiments/bench_scaling.py --size full --devices 8 --compile-only     # full-size memory per device
    distil bench scaling --out scaling.json

Each (devices, layout, variant) compiles `make_train_step` as the trainer does (`bench_step.build_trainer_step`)
in a fresh process given that many fake devices (`--xla_force_host_platform_device_count`), then times
`--steps` steps. Fake devices share this machine's cores, so step time shows the partitioned program's overhead
(collectives, resharding), not a speed-up; per-device memory is what a real n-device run would need per chip.
Layouts: `data` (n x 1 x 1), `fsdp` (1 x n x 1), `tensor` (1 x 1 x n), and `2x2x2` at 8 devices. A layout that
does not fit the model (e.g. more tensor shards than heads) is reported with its error.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_step  # noqa: E402
import benchlib  # noqa: E402


def layouts(devices: int) -> dict[str, dict]:
    out = {"data": dict(data=devices, fsdp=1, tensor=1)}
    if devices > 1:
        out["fsdp"] = dict(data=1, fsdp=devices, tensor=1)
        out["tensor"] = dict(data=1, fsdp=1, tensor=devices)
    if devices == 8:
        out["2x2x2"] = dict(data=2, fsdp=2, tensor=2)
    return out


def worker(spec: dict) -> dict:
    from distil import sharding

    config = bench_step.trainer_config(spec["size"], vocab_chunk_size=spec["chunk"], mesh=spec["mesh"])
    compiled, state, teacher_params, batch_sharding, mesh, rules, info = bench_step.build_trainer_step(config)
    out = {k: v for k, v in info.items() if k not in ("teacher", "student")}
    if spec["compile_only"]:
        return out
    batch = bench_step.random_batch(info["shape"], info["vocab_size"], names=info["batch_names"])
    with sharding.activation_rules(mesh, rules):
        step = bench_step.step_caller(compiled, state, teacher_params,
                                      sharding.make_global_batch(batch, batch_sharding))
        out.update(benchlib.timed_median(step, steps=spec["steps"], warmup=1))
    return out


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", default="runlocal", choices=list(bench_step.SIZES))
    parser.add_argument("--devices", default="1,2,4,8")
    parser.add_argument("--chunks", default=f"0,{bench_step.DEFAULT_CHUNK}",
                        help="loss.vocab_chunk_size values (0 = full logits)")
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--compile-only", action="store_true", help="per-device memory only, no steps run")
    parser.add_argument("--out")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    benchlib.add_environment_flag(parser)
    args = parser.parse_args(argv)
    if args.worker:
        benchlib.report(worker(json.loads(args.worker)))
        return

    machine = benchlib.machine()
    machine["environment"] = benchlib.use_environment(args)
    chunks = [int(c) for c in args.chunks.split(",")]
    results = {"machine": machine, "size": args.size, "runs": []}
    rows = []
    for devices in (int(d) for d in args.devices.split(",")):
        for layout, mesh in layouts(devices).items():
            cells = [devices, layout, "x".join(str(mesh[a]) for a in ("data", "fsdp", "tensor"))]
            for chunk in chunks:
                spec = {"size": args.size, "mesh": mesh, "chunk": chunk, "steps": args.steps,
                        "compile_only": args.compile_only}
                print(f"{devices} devices, {layout}, chunk {chunk} ...", flush=True)
                try:
                    result = benchlib.run_worker(__file__, spec, num_devices=devices)
                except RuntimeError as err:
                    message = str(err).strip().splitlines()[-1][:160]
                    print(f"  failed: {message}", flush=True)
                    results["runs"].append({**spec, "devices": devices, "layout": layout, "error": message})
                    cells += ["error", "-"] if not args.compile_only else ["error"]
                    continue
                results["runs"].append({**spec, "devices": devices, "layout": layout, **result})
                cells.append(benchlib.gib(result["peak_bytes"]))
                if not args.compile_only:
                    cells.append(f"{result['median_s']:.2f}")
            rows.append(cells)
    headers = ["devices", "layout", "data x fsdp x tensor"]
    for chunk in chunks:
        name = "full logits" if chunk == 0 else f"chunked {chunk}"
        headers.append(f"per-device GiB ({name})")
        if not args.compile_only:
            headers.append(f"s / step ({name})")
    shape = bench_step.SIZES[args.size]
    table = benchlib.markdown_table(headers, rows, align="rll" + "r" * (len(headers) - 3))
    print(f"\n### Scaling, {args.size} size: batch {shape['batch']} x {shape['length']} in {shape['micro_batches']} "
          "micro-batch(es), fake CPU devices\n")
    print(table)
    print(f"\nPer-device GiB: the compiled step's arguments + outputs + temporaries - aliased (donated) bytes. Fake "
          f"devices share {machine['cores']} cores (load {machine['load_average']}). {benchlib.gpu_note()}")
    results["markdown"] = table
    benchlib.write_json(args.out, results)


if __name__ == "__main__":
    main()
