"""Benchmark 2 of issue 13: inference, the student's forward next to the teacher's, at lengths 128 and 512, in
distil (jitted) and in transformers (PyTorch, eval, no grad).

    python experiments/bench_inference.py [--size full] [--lengths 128,512] [--tokens 1024] [--out inference.json]
    distil bench inference --out inference.json

Models: mBERT (`BertModel`, 12 layers) and DistilmBERT (`DistilBertModel`, 6 layers) at full size with random
weights, encoders only (the last hidden state, as an embedding or classification user runs them), float32 (and
`--dtypes float32,bfloat16` adds distil in bfloat16 compute). Each length gets `--tokens` tokens per batch
(8 x 128, 2 x 512), so tokens/s compare across lengths and attention's share grows with the length. Each
framework runs in a fresh process, compile apart; median of `--steps` timed batches after a warm-up one.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import benchlib  # noqa: E402

SIZES = {
    "full": dict(vocab_size=119_547, hidden_size=768, num_hidden_layers=12, num_attention_heads=12,
                 intermediate_size=3072, student_layers=6),
    "small": dict(vocab_size=8000, hidden_size=256, num_hidden_layers=4, num_attention_heads=4,
                  intermediate_size=1024, student_layers=2),
}


def _batch(vocab_size: int, rows: int, length: int):
    import numpy as np

    rng = np.random.default_rng(0)
    return rng.integers(104, vocab_size, size=(rows, length)).astype(np.int32), np.ones((rows, length), np.int32)


def jax_worker(spec: dict) -> dict:
    import time

    import jax
    import jax.numpy as jnp
    from flax import nnx

    from distil.models import create_model, distilmbert_base, mbert_base

    shape = dict(SIZES[spec["size"]])
    student_layers = shape.pop("student_layers")
    out = {}
    for dtype in spec["dtypes"]:
        models = {"teacher": mbert_base(**shape, add_pooler=False, dtype=dtype),
                  "student": distilmbert_base(**{**shape, "num_hidden_layers": student_layers}, dtype=dtype)}
        for name, config in models.items():
            graphdef, params = nnx.split(create_model(config, seed=0))
            forward = jax.jit(lambda p, ids, mask: nnx.merge(graphdef, p)(ids, mask).last_hidden_state)
            for length in spec["lengths"]:
                ids, mask = (jnp.asarray(x) for x in _batch(config.vocab_size, spec["tokens"] // length, length))
                started = time.perf_counter()
                compiled = forward.lower(params, ids, mask).compile()
                compile_s = time.perf_counter() - started
                timing = benchlib.timed_median(lambda: compiled(params, ids, mask).block_until_ready(),
                                               steps=spec["steps"], warmup=1)
                out[f"{name}/{length}/{dtype}"] = {**timing, "compile_s": compile_s}
            del params
    return out


def torch_worker(spec: dict) -> dict:
    import torch
    import transformers

    shape = dict(SIZES[spec["size"]])
    student_layers = shape.pop("student_layers")
    torch.manual_seed(0)
    models = {
        "teacher": transformers.BertModel(transformers.BertConfig(max_position_embeddings=512, **shape),
                                          add_pooling_layer=False).eval(),
        "student": transformers.DistilBertModel(transformers.DistilBertConfig(
            vocab_size=shape["vocab_size"], dim=shape["hidden_size"], n_layers=student_layers,
            n_heads=shape["num_attention_heads"], hidden_dim=shape["intermediate_size"],
            max_position_embeddings=512)).eval(),
    }
    out = {}
    for name, model in models.items():
        for length in spec["lengths"]:
            ids, mask = (torch.as_tensor(x, dtype=torch.long) for x in _batch(shape["vocab_size"],
                                                                               spec["tokens"] // length, length))

            def forward():
                with torch.inference_mode():
                    model(input_ids=ids, attention_mask=mask).last_hidden_state.sum().item()

            out[f"{name}/{length}/float32"] = benchlib.timed_median(forward, steps=spec["steps"], warmup=1)
    out["attn_implementation"] = models["teacher"].config._attn_implementation
    return out


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", default="full", choices=list(SIZES))
    parser.add_argument("--lengths", default="128,512")
    parser.add_argument("--tokens", type=int, default=1024, help="tokens per batch at every length")
    parser.add_argument("--dtypes", default="float32", help="distil's compute dtypes, e.g. float32,bfloat16")
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--rounds", type=int, default=1, help="interleaved rounds; each entry keeps its fastest")
    parser.add_argument("--out")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    benchlib.add_environment_flag(parser)
    args = parser.parse_args(argv)
    if args.worker:
        spec = json.loads(args.worker)
        benchlib.report(torch_worker(spec) if spec["framework"] == "torch" else jax_worker(spec))
        return

    lengths = [int(x) for x in args.lengths.split(",")]
    dtypes = args.dtypes.split(",")
    for length in lengths:
        if args.tokens % length:
            parser.error(f"--tokens {args.tokens} must be a multiple of every length ({length})")
    machine = benchlib.machine()
    machine["environment"] = benchlib.use_environment(args)
    results = {"machine": machine, "size": args.size, "tokens_per_batch": args.tokens, "runs": {}}
    best: dict[str, dict] = {}
    for round_index in range(args.rounds):
        for framework in ("distil", "torch"):
            spec = {"framework": framework, "size": args.size, "lengths": lengths, "tokens": args.tokens,
                    "steps": args.steps, "dtypes": dtypes}
            print(f"round {round_index + 1}: {framework} ...", flush=True)
            result = benchlib.run_worker(__file__, spec)
            results["runs"].setdefault(framework, []).append(result)
            for key, value in result.items():
                if isinstance(value, dict) and "median_s" in value:
                    name = f"{framework}/{key}"
                    if name not in best or value["median_s"] < best[name]["median_s"]:
                        best[name] = value
    rows = []
    for length in lengths:
        for dtype in dtypes:
            teacher, student = best[f"distil/teacher/{length}/{dtype}"], best[f"distil/student/{length}/{dtype}"]
            hf_teacher = best.get(f"torch/teacher/{length}/float32")
            hf_student = best.get(f"torch/student/{length}/float32")
            shape = SIZES[args.size]
            for name, ours, theirs in ((f"teacher (BERT, {shape['num_hidden_layers']} layers)", teacher, hf_teacher),
                                       (f"student (DistilBERT, {shape['student_layers']})", student, hf_student)):
                rows.append([length, f"{args.tokens // length} x {length}", name, dtype,
                             f"{1000 * ours['median_s']:,.0f}", f"{args.tokens / ours['median_s']:,.0f}",
                             f"{1000 * theirs['median_s']:,.0f}" if theirs and dtype == "float32" else "-",
                             f"{theirs['median_s'] / ours['median_s']:.2f}x" if theirs else "-",
                             f"{teacher['median_s'] / student['median_s']:.2f}x" if ours is student else ""])
            if hf_teacher and hf_student and dtype == dtypes[0]:
                rows.append([length, "", "transformers: student vs teacher", "float32", "", "", "", "",
                             f"{hf_teacher['median_s'] / hf_student['median_s']:.2f}x"])
    table = benchlib.markdown_table(
        ["length", "batch", "model", "distil compute", "distil ms", "distil tokens/s", "transformers ms",
         "distil x transformers", "student x teacher"], rows, align="rllrrrrrr")
    print(f"\n### Inference, {args.size} size, encoders to the last hidden state, {args.tokens} tokens per batch\n")
    print(table)
    print(f"\nMedian of {args.steps} batches after a warm-up, fastest of {args.rounds} round(s); machine: "
          f"{machine['cpu']}, {machine['cores']} cores (load {machine['load_average']}). {benchlib.gpu_note()}")
    results.update(best=best, markdown=table, gpu=benchlib.gpu_note())
    benchlib.write_json(args.out, results)


if __name__ == "__main__":
    main()
