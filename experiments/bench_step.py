"""Benchmark 1 of issue 13: the distillation step of `distil distill` next to the same recipe in PyTorch.

    python experiments/bench_step.py [--sizes full,runlocal] [--variants plain,chunked,...] [--out step.json]
    distil bench step --sizes full --out step.json          # the same, through the `distil` command

distil: the step `distil distill` compiles, from the trainer's own builder (`distil.train.assembly.build_step`: the
config's teacher, student initialised from its layers, remat and packed-row inputs as configured, AdamW + clipping,
`jax.jit` with the state's shardings and donation, compiled ahead). PyTorch: transformers' `BertForMaskedLM` (teacher, eval, no grad) and
`DistilBertForMaskedLM` (student, train mode: dropout), the loss as HF's `distiller.py` computes it (masked_select
of logits and hidden states, `KLDivLoss(batchmean)·T²`, `CrossEntropyLoss`, `CosineEmbeddingLoss`),
5·ce + 2·mlm + 1·cos at T = 2, `torch.optim.AdamW` (0.9, 0.98, eps 1e-6), `clip_grad_norm_(5.0)`, linear schedule.

Sizes: `full` = mBERT (12 x 768, vocab 119,547) -> DistilmBERT (6 layers), 8 sequences of 128 tokens in one
micro-batch; `runlocal` = the `distilmbert:runlocal` config (4 x 64 teacher, 2-layer student, 8,000-token
vocabulary), 32 x 128 in 2 micro-batches. Same shapes, float32 and loss terms on both sides; every real token
counts (no padding). Each implementation runs in a fresh process: compile (JAX) apart, `--warmup` steps, then the
median of `--steps` timed steps; peak memory is that process's max RSS. MFU = the recipe's model FLOPs (matmuls of
teacher forward + student forward and backward, counted analytically) / step time / this CPU's measured float32
matmul peak (the best of XLA and PyTorch on a 2048³ GEMM, measured first in this command).

Variants (distil): `plain` (full logits), `untiled` (`loss.vocab_chunk_size` positions at a time, the whole
vocabulary at once), `chunked` (the config's default: chunks of positions and `loss.vocab_tile_size` tiles of the
vocabulary; runlocal's config takes its small vocabulary whole), `teacher-bf16` (chunked, teacher forward in
bfloat16), `all-bf16` (chunked, teacher and student compute in bfloat16, float32 parameters); `trainer` (`distil
distill` itself in a fresh process: its input pipeline on the embedded corpus, metrics and checkpoints, the step
time from its own log, its whole process's peak RSS: the row the README's headline figures come from); `torch`.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import benchlib  # noqa: E402

SIZES = {
    "full": dict(batch=8, micro_batches=1, length=128, teacher=dict(hidden_size=768, num_hidden_layers=12,
                                                                    num_attention_heads=12, intermediate_size=3072),
                 teacher_layers=(0, 2, 4, 7, 9, 11)),
    "runlocal": dict(batch=32, micro_batches=2, length=128, teacher=dict(hidden_size=64, num_hidden_layers=4,
                                                                         num_attention_heads=4, intermediate_size=256),
                     teacher_layers=(0, 3)),
}
VARIANTS = {
    "plain": dict(vocab_chunk_size=0, vocab_tile_size=0, teacher_dtype="float32", student_dtype="float32"),
    "untiled": dict(vocab_chunk_size=None, vocab_tile_size=0, teacher_dtype="float32", student_dtype="float32"),
    "chunked": dict(vocab_chunk_size=None, vocab_tile_size=None, teacher_dtype="float32", student_dtype="float32"),
    "teacher-bf16": dict(vocab_chunk_size=None, vocab_tile_size=None, teacher_dtype="bfloat16",
                         student_dtype="float32"),
    "all-bf16": dict(vocab_chunk_size=None, vocab_tile_size=None, teacher_dtype="bfloat16", student_dtype="bfloat16"),
    "torch": dict(),
    # `distil distill` itself (the config's chunked vocabulary terms): the trainer's input pipeline, metrics,
    # checkpoints and process, on the embedded corpus with the size's vocabulary.
    "trainer": dict(vocab_chunk_size=None, vocab_tile_size=None, teacher_dtype="float32", student_dtype="float32"),
}
DEFAULT_CHUNK = 512


# --------------------------------------------------------------------------------------------- distil's step


def trainer_config(size: str, *, vocab_chunk_size: int = DEFAULT_CHUNK, vocab_tile_size: int | None = None,
                   teacher_dtype: str = "float32", student_dtype: str = "float32", mesh: dict | None = None,
                   batch: int | None = None):
    """The `distilmbert` config of a size: the full recipe with a random full-size teacher (no checkpoint needed:
    the step's cost does not depend on the weights), or `:runlocal`; one compiled length."""
    from distil.config import load_config

    shape = SIZES[size]
    config = load_config("distilmbert:runlocal" if size == "runlocal" else "distilmbert", [])
    config.teacher.source = "random"
    for key, value in shape["teacher"].items():
        config.teacher[key] = value
    config.student.teacher_layers = shape["teacher_layers"]
    config.data.max_length = shape["length"]
    config.batching.global_batch = batch or shape["batch"]
    config.batching.micro_batches = shape["micro_batches"]
    config.batching.pad_to_multiple = shape["length"]
    config.teacher.dtype, config.student.dtype = teacher_dtype, student_dtype
    config.loss.vocab_chunk_size = vocab_chunk_size
    if vocab_tile_size is not None:  # else the config's own
        config.loss.vocab_tile_size = vocab_tile_size
    config.num_steps = 1000
    for axis, value in (mesh or {"data": 1, "fsdp": 1, "tensor": 1}).items():
        config.mesh[axis] = value
    return config


def build_trainer_step(config, devices=None):
    """The step `distil distill` runs, from its own builder (`distil.train.assembly`: remat, packed-row inputs and
    all): returns (compiled step, state, teacher_params, batch sharding, mesh, rules, info). `devices`: the mesh's
    devices (default: the first data x fsdp x tensor of `jax.devices()`)."""
    import math

    import jax

    from distil import sharding
    from distil.tokenization import default_vocab_path, load_tokenizer
    from distil.train import assembly, distill
    from distil.train.state import create_train_state

    objective = assembly.make_objective(config)
    rules = tuple(tuple(rule) for rule in config.sharding.logical_axis_rules)
    num_devices = math.prod(config.mesh[axis] for axis in sharding.MESH_AXES)
    mesh = sharding.make_mesh({axis: config.mesh[axis] for axis in sharding.MESH_AXES},
                              devices or jax.devices()[:num_devices])
    distill.check_config(config, num_devices=num_devices, process_count=1)
    vocab_size = load_tokenizer(config.tokenizer or default_vocab_path()).get_vocab_size()
    teacher_config = assembly.teacher_model_config(config, vocab_size)
    student_config = assembly.student_model_config(config, teacher_config, vocab_size)
    batching = config.batching
    with sharding.activation_rules(mesh, rules):
        teacher_graphdef, teacher_params = assembly.load_teacher(config, teacher_config, mesh, rules)
        parts = assembly.build_step(config, objective, student_config, teacher_config, teacher_graphdef,
                                    teacher_params, config.num_steps, mesh, rules)
        state, _ = create_train_state(parts.init_params, (teacher_params,), parts.tx, seed=config.seed, mesh=mesh,
                                      rules=rules)
        steps = assembly.compiled_steps(config, parts, state, teacher_params, teacher_config, student_config,
                                        lambda message: None)
        compiled = steps.get(config.data.max_length)
        info = dict(steps.analysis[config.data.max_length])
    info["compile_s"] = info.pop("compile_seconds")
    shape = (batching.micro_batches, batching.global_batch // batching.micro_batches, config.data.max_length)
    info.update(teacher=teacher_config, student=student_config, shape=shape, vocab_size=vocab_size,
                batch_names=parts.batch_names)
    return compiled, state, teacher_params, parts.batch_sharding, mesh, rules, info


def step_caller(compiled, state, teacher_params, batch):
    """One training step as a call without arguments, for timing: the donated state is carried from call to call;
    returns the step's metrics once computed."""
    import jax

    holder = {"state": state}

    def step():
        holder["state"], metrics = compiled(holder["state"], teacher_params, batch)
        return jax.block_until_ready(metrics)

    return step


def random_batch(shape, vocab_size: int, seed: int = 0, names=("input_ids", "attention_mask", "mlm_labels")) -> dict:
    """[micro_batches, rows, length] real tokens (no padding), 15% of them MLM targets (the ids as labels); with
    packed-row `names` (the recipe's composition), each row one sequence (segment 1, positions from 0)."""
    import numpy as np

    rng = np.random.default_rng(seed)
    input_ids = rng.integers(104, vocab_size, size=shape).astype(np.int32)
    targets = rng.random(shape) < 0.15
    batch = {"input_ids": np.where(targets, 103 % vocab_size, input_ids).astype(np.int32),
             "attention_mask": np.ones(shape, np.int32),
             "mlm_labels": np.where(targets, input_ids, -100).astype(np.int32),
             "segment_ids": np.ones(shape, np.int32),
             "position_ids": np.broadcast_to(np.arange(shape[-1], dtype=np.int32), shape).copy()}
    return {name: batch[name] for name in names}


def jax_worker(spec: dict) -> dict:
    from distil import sharding

    config = trainer_config(spec["size"], vocab_chunk_size=spec["vocab_chunk_size"],
                            vocab_tile_size=spec["vocab_tile_size"], teacher_dtype=spec["teacher_dtype"],
                            student_dtype=spec["student_dtype"])
    compiled, state, teacher_params, batch_sharding, mesh, rules, info = build_trainer_step(config)
    batch = random_batch(info["shape"], info["vocab_size"], names=info["batch_names"])
    with sharding.activation_rules(mesh, rules):
        step = step_caller(compiled, state, teacher_params, sharding.make_global_batch(batch, batch_sharding))
        first = {key: float(value) for key, value in step().items()}  # also the first warm-up step
        timing = benchlib.timed_median(step, steps=spec["steps"], warmup=max(spec["warmup"] - 1, 0))
    analysis = {k: v for k, v in info.items() if k not in ("teacher", "student")}
    return {**timing, "first_step": first, "analysis": analysis}


def trainer_worker(spec: dict) -> dict:
    """`distil distill` in this fresh process (`train_and_evaluate`, as the command runs it): the size's config with
    its random teacher, on the embedded corpus tokenised with the size's vocabulary, every step logged. The step
    time is the median of the logged steps after the warm-up ones (the trainer's own clock: data, the step,
    metrics and checkpoint cadence included); tokens are the real tokens it logged; the peak RSS is the whole
    process's (corpus, teacher, compile, checkpoints)."""
    import statistics
    import tempfile

    from distil.train import distill
    from distil.train.metrics import read_metrics

    config = trainer_config(spec["size"], vocab_chunk_size=spec["vocab_chunk_size"],
                            vocab_tile_size=spec["vocab_tile_size"], teacher_dtype=spec["teacher_dtype"],
                            student_dtype=spec["student_dtype"])
    config.data.corpus = "embedded"
    config.mesh.num_devices = config.mesh.data * config.mesh.fsdp * config.mesh.tensor  # the first ones
    config.num_steps = spec["warmup"] + spec["steps"]
    config.log_every_steps = 1
    config.checkpoint.every_steps = 10 * config.num_steps  # the final save only, after the timed steps
    with tempfile.TemporaryDirectory() as workdir:
        distill.train_and_evaluate(config, workdir)
        rows = read_metrics(f"{workdir}/metrics.jsonl")[spec["warmup"]:]
    times = [1 / row["steps_per_sec"] for row in rows]
    return {"median_s": statistics.median(times), "times_s": times, "cpu_s": None,
            "real_tokens_per_step": statistics.median(row["real_tokens"] for row in rows),
            "first_step": {"loss": rows[0]["loss"] if rows else float("nan")}}


# ------------------------------------------------------------------------------------------ the PyTorch recipe


def torch_worker(spec: dict) -> dict:
    """distiller.py's step on transformers' models (float32, the machine's default torch threads)."""
    import numpy as np
    import torch
    import transformers
    from torch import nn

    shape = SIZES[spec["size"]]
    vocab_size = spec["vocab_size"]
    teacher_shape = shape["teacher"]
    torch.manual_seed(0)
    teacher = transformers.BertForMaskedLM(transformers.BertConfig(
        vocab_size=vocab_size, max_position_embeddings=512, **teacher_shape)).eval()
    student = transformers.DistilBertForMaskedLM(transformers.DistilBertConfig(
        vocab_size=vocab_size, max_position_embeddings=512, dim=teacher_shape["hidden_size"],
        n_layers=len(shape["teacher_layers"]), n_heads=teacher_shape["num_attention_heads"],
        hidden_dim=teacher_shape["intermediate_size"])).train()
    optimizer = torch.optim.AdamW(student.parameters(), lr=5e-4, betas=(0.9, 0.98), eps=1e-6, weight_decay=0.0)
    scheduler = transformers.get_linear_schedule_with_warmup(optimizer, num_warmup_steps=50, num_training_steps=1000)
    batch = {key: torch.as_tensor(value, dtype=torch.long) for key, value in random_batch(
        (shape["micro_batches"], shape["batch"] // shape["micro_batches"], shape["length"]), vocab_size).items()}
    temperature, alpha = 2.0, {"ce": 5.0, "mlm": 2.0, "cos": 1.0}
    kl_loss, mlm_loss = nn.KLDivLoss(reduction="batchmean"), nn.CrossEntropyLoss(ignore_index=-100)
    cosine_loss = nn.CosineEmbeddingLoss(reduction="mean")
    last = {}

    def step():
        for micro in range(shape["micro_batches"]):
            input_ids, attention_mask = batch["input_ids"][micro], batch["attention_mask"][micro]
            lm_labels = batch["mlm_labels"][micro]
            student_out = student(input_ids=input_ids, attention_mask=attention_mask, output_hidden_states=True)
            with torch.no_grad():
                teacher_out = teacher(input_ids=input_ids, attention_mask=attention_mask, output_hidden_states=True)
            s_logits, t_logits = student_out.logits, teacher_out.logits
            mask = attention_mask.unsqueeze(-1).expand_as(s_logits).bool()
            s_logits_slct = torch.masked_select(s_logits, mask).view(-1, s_logits.size(-1))
            t_logits_slct = torch.masked_select(t_logits, mask).view(-1, s_logits.size(-1))
            loss_ce = kl_loss(nn.functional.log_softmax(s_logits_slct / temperature, dim=-1),
                              nn.functional.softmax(t_logits_slct / temperature, dim=-1)) * temperature**2
            loss_mlm = mlm_loss(s_logits.view(-1, s_logits.size(-1)), lm_labels.view(-1))
            s_hidden, t_hidden = student_out.hidden_states[-1], teacher_out.hidden_states[-1]
            hidden_mask = attention_mask.unsqueeze(-1).expand_as(s_hidden).bool()
            s_hidden_slct = torch.masked_select(s_hidden, hidden_mask).view(-1, s_hidden.size(-1))
            t_hidden_slct = torch.masked_select(t_hidden, hidden_mask).view(-1, s_hidden.size(-1))
            target = s_hidden_slct.new(s_hidden_slct.size(0)).fill_(1)
            loss_cos = cosine_loss(s_hidden_slct, t_hidden_slct, target)
            loss = alpha["ce"] * loss_ce + alpha["mlm"] * loss_mlm + alpha["cos"] * loss_cos
            (loss / shape["micro_batches"]).backward()
            last.update({name: float(value.detach()) for name, value in
                         (("loss", loss), ("ce", loss_ce), ("mlm", loss_mlm), ("cos", loss_cos))})
        torch.nn.utils.clip_grad_norm_(student.parameters(), 5.0)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad()

    step()
    first = dict(last)
    timing = benchlib.timed_median(step, steps=spec["steps"], warmup=max(spec["warmup"] - 1, 0))
    del np
    return {**timing, "first_step": first, "attn_implementation": student.config._attn_implementation,
            "torch_threads": torch.get_num_threads()}


# ---------------------------------------------------------------------------------------------------- the table


def recipe_flops(teacher, student, tokens: int, length: int) -> float:
    """Model FLOPs of one step: teacher forward + student forward and backward (2x the forward), matmuls only."""
    return tokens * (teacher.forward_flops_per_token(length) + 3 * student.forward_flops_per_token(length))


def size_table(result: dict, peak: dict) -> str:
    """One size's Markdown table: every implementation against the PyTorch reference (when it ran)."""
    rows = result["rows"]
    reference = rows.get("torch")
    table_rows = []
    for variant, row in rows.items():
        spec = row["spec"]
        row["mfu"] = result["flops_per_step"] / row["median_s"] / peak["float32"]
        dtype = "float32" if variant == "torch" else f"{spec['teacher_dtype']} / {spec['student_dtype']}"
        chunk = ("-" if variant == "torch" else "off" if not spec["vocab_chunk_size"]
                 else f"{spec['vocab_chunk_size']} / {spec['vocab_tile_size'] or 'all'}")
        speed = f"{row['tokens_per_s'] / reference['tokens_per_s']:.2f}x" if reference else "-"
        cpu_speed = f"{reference['cpu_s'] / row['cpu_s']:.2f}x" if reference and row["cpu_s"] else "-"
        memory = f"{row['peak_rss_bytes'] / reference['peak_rss_bytes']:.2f}x" if reference else "-"
        compile_s = f"{row['analysis']['compile_s']:.0f}" if "analysis" in row else "-"
        table_rows.append([f"{'PyTorch (transformers)' if variant == 'torch' else 'distil ' + variant}", dtype,
                           chunk, f"{row['median_s']:.2f}", f"{row['cpu_s']:.1f}" if row["cpu_s"] else "-",
                           f"{row['tokens_per_s']:,.0f}",
                           speed, cpu_speed, benchlib.gib(row["peak_rss_bytes"]), memory, f"{100 * row['mfu']:.1f}%",
                           compile_s, f"{row['first_step']['loss']:.4f}"])
    return benchlib.markdown_table(
        ["implementation", "teacher / student compute", "vocab chunk / tile", "s / step", "CPU s / step", "tokens/s",
         "x PyTorch", "x PyTorch (CPU s)", "peak RSS GiB", "memory x PyTorch", "MFU (fp32 peak)", "compile s",
         "step-1 loss"], table_rows, align="lllrrrrrrrrrr")


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="full,runlocal")
    parser.add_argument("--variants", default="plain,chunked,teacher-bf16,all-bf16,torch")
    parser.add_argument("--chunk", type=int, default=DEFAULT_CHUNK, help="loss.vocab_chunk_size of the chunked "
                        "variants (positions per chunk and device)")
    parser.add_argument("--tile", type=int, help="loss.vocab_tile_size of the chunked variants (vocabulary "
                        "entries per tile; 0 = all; default: the size's config)")
    parser.add_argument("--steps", type=int, default=3, help="timed steps per implementation (median)")
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=1, help="run every implementation this many times, "
                        "interleaved, and keep each one's fastest round (the least disturbed by other load)")
    parser.add_argument("--out", help="write the results as JSON here")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    benchlib.add_environment_flag(parser)
    args = parser.parse_args(argv)
    if args.worker:
        spec = json.loads(args.worker)
        worker = {"torch": torch_worker, "trainer": trainer_worker}.get(spec["variant"], jax_worker)
        result = worker(spec)
        benchlib.report({**result, "spec": spec})
        return

    from distil.models import ModelConfig
    from distil.tokenization import default_vocab_path, load_tokenizer

    sizes = [s for s in args.sizes.split(",") if s]
    variants = [v for v in args.variants.split(",") if v]
    for name in sizes + variants:
        if name not in SIZES and name not in VARIANTS:
            parser.error(f"unknown size or variant {name!r}; sizes {list(SIZES)}, variants {list(VARIANTS)}")
    machine = benchlib.machine()
    machine["environment"] = benchlib.use_environment(args)
    peak = benchlib.matmul_peak()  # measured again at the end; the better of the two is the MFU denominator
    print(f"machine: {machine['cpu']}, {machine['cores']} cores, load {machine['load_average']}; jax "
          f"{machine['jax']}, torch {machine.get('torch')}; matmul peak float32 {peak['float32'] / 1e9:,.0f} GFLOP/s, "
          f"bfloat16 {peak['bfloat16'] / 1e9:,.0f} GFLOP/s")
    results = {"machine": machine, "matmul_peak_flops": peak, "chunk": args.chunk, "tile": args.tile,
               "steps": args.steps, "sizes": {}}
    for size in sizes:
        shape = SIZES[size]
        config = trainer_config(size)
        vocab_size = load_tokenizer(config.tokenizer or default_vocab_path()).get_vocab_size()
        teacher = ModelConfig(vocab_size=vocab_size, head="mlm", **shape["teacher"])
        student = teacher.replace(num_hidden_layers=len(shape["teacher_layers"]))
        tokens = shape["batch"] * shape["length"]
        flops = recipe_flops(teacher, student, tokens, shape["length"])
        rows = {}
        for round_index in range(args.rounds):  # interleaved, so a burst of load hits every implementation
            for variant in variants:
                spec = {"size": size, "variant": variant, "steps": args.steps, "warmup": args.warmup,
                        "vocab_size": vocab_size, **VARIANTS[variant]}
                if spec.get("vocab_chunk_size", 0) is None:
                    spec["vocab_chunk_size"] = args.chunk
                if spec.get("vocab_tile_size", 0) is None:
                    spec["vocab_tile_size"] = (config.loss.vocab_tile_size if args.tile is None else args.tile)
                print(f"[{size}] round {round_index + 1}: {variant} ...", flush=True)
                result = benchlib.run_worker(__file__, spec)
                cpu = f"{result['cpu_s']:.2f} CPU s" if result["cpu_s"] else "CPU s not measured"
                print(f"  {result['median_s']:.2f} s/step ({cpu}), "
                      f"{benchlib.gib(result['peak_rss_bytes'])} GiB", flush=True)
                rounds = rows[variant]["rounds"] if variant in rows else []
                rounds.append({k: result[k] for k in ("median_s", "cpu_s", "times_s", "peak_rss_bytes")})
                if variant not in rows or result["median_s"] < rows[variant]["median_s"]:
                    rows[variant] = result
                rows[variant]["rounds"] = rounds
        for variant, row in rows.items():
            row.update(tokens_per_s=row.get("real_tokens_per_step", tokens) / row["median_s"],
                       peak_rss_bytes=max(r["peak_rss_bytes"] for r in row["rounds"]))
        results["sizes"][size] = {"flops_per_step": flops, "tokens_per_step": tokens, "rows": rows,
                                  "title": (f"### {size}: batch {shape['batch']} x {shape['length']} "
                                            f"({shape['micro_batches']} micro-batch"
                                            f"{'es' if shape['micro_batches'] > 1 else ''}), teacher "
                                            f"{teacher.num_hidden_layers} x {teacher.hidden_size}, student "
                                            f"{student.num_hidden_layers} layers, vocab {vocab_size:,}; "
                                            f"{flops / tokens / 1e9:.3g} GFLOP/token")}
    again = benchlib.matmul_peak()  # the better of the two measurements: load only ever lowers it
    for key, value in again.items():
        peak[key] = max(peak[key], value)
    tables = [result["title"] + "\n\n" + size_table(result, peak) for result in results["sizes"].values()]
    print(f"\nmatmul peak (best of the start and end of this command): float32 {peak['float32'] / 1e9:,.0f} GFLOP/s, "
          f"bfloat16 {peak['bfloat16'] / 1e9:,.0f} GFLOP/s")
    print("\n" + "\n\n".join(tables))
    print(f"\nMedian of {args.steps} timed steps after {args.warmup} warm-up, the fastest of {args.rounds} "
          "interleaved round(s); each implementation in a fresh process. CPU s: this process's CPU time per step "
          f"(all threads; robust to other load, inflated by spinning threads). {benchlib.gpu_note()}")
    results["markdown"] = "\n\n".join(tables)
    results["gpu"] = benchlib.gpu_note()
    benchlib.write_json(args.out, results)


if __name__ == "__main__":
    main()
