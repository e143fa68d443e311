"""Where a full-size distillation step's time and memory go: the compiled step's HLO cost and memory analysis, its
largest matmuls, and the step's parts timed alone.

    python experiments/profile_step.py [--size full] [--chunk 512] [--tile 4096] [--steps 2] [--out profile.json]

Parts (each jitted alone on the step's shapes, float32 unless `--teacher-dtype`): the teacher forward to its MLM
head's hidden states, the same with full logits; the student forward + backward without the vocabulary (cos loss
on the last hidden states); the vocabulary terms (5·ce + 2·mlm) forward + backward from the heads' hidden states,
on full logits, chunked with the whole vocabulary at once and chunked in vocabulary tiles; the AdamW + clipping
update; and the whole step (`make_train_step` as the trainer builds it) in the same three ways. The sum of the
parts against the whole shows what the step adds (accumulation scan, dropout RNG, the embedding scatter-add).
"""

from __future__ import annotations

import argparse
import re
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import benchlib  # noqa: E402
import bench_step  # noqa: E402

_DOT = re.compile(r"= (\w+)\[([\d,]*)\][^=]*? (?:dot|convolution)\((.*)$")


def largest_dots(hlo_text: str, top: int = 8) -> list[dict]:
    """The compiled HLO's dot ops by FLOPs (2 · output size · contracted size), from their operand shapes."""
    shapes = {}
    for line in hlo_text.splitlines():
        match = re.match(r"\s*(?:ROOT )?%?([\w.\-]+) = (\w+)\[([\d,]*)\]", line)
        if match:
            shapes[match.group(1)] = [int(d) for d in match.group(3).split(",") if d]
    dots = []
    for line in hlo_text.splitlines():
        if " dot(" not in line:
            continue
        match = re.match(r"\s*(?:ROOT )?%?([\w.\-]+) = (\w+)\[([\d,]*)\]", line)
        operands = re.search(r" dot\(%?([\w.\-]+)[^,]*, %?([\w.\-]+)", line)
        contracting = re.search(r"lhs_contracting_dims=\{([\d,]*)\}", line)
        if not (match and operands and contracting):
            continue
        out = [int(d) for d in match.group(3).split(",") if d]
        lhs = shapes.get(operands.group(1), [])
        contracted = 1
        for axis in (int(a) for a in contracting.group(1).split(",") if a):
            contracted *= lhs[axis] if axis < len(lhs) else 1
        size = 1
        for d in out:
            size *= d
        dots.append({"name": match.group(1), "dtype": match.group(2), "out": out, "lhs": lhs,
                     "flops": 2.0 * size * contracted})
    dots.sort(key=lambda d: -d["flops"])
    return dots[:top]


def traced_ops(run_once, hlo_text: str, workdir: str, top: int = 15) -> dict:
    """Runs `run_once` under `jax.profiler.trace` and sums the XLA CPU runtime's per-op events (thunks, every
    thread) by op name, each with the JAX operation it came from (the HLO's op_name metadata)."""
    import collections
    import glob

    import jax

    op_names = {}
    for line in hlo_text.splitlines():
        match = re.match(r"\s*(?:ROOT )?%?([\w.\-]+) = .*?metadata=\{[^}]*op_name=\"([^\"]*)\"", line)
        if match:
            op_names[match.group(1)] = match.group(2).replace("jit(train_step)/", "")
    with jax.profiler.trace(workdir):
        run_once()
    path = sorted(glob.glob(f"{workdir}/**/*.xplane.pb", recursive=True))[-1]
    totals = collections.Counter()
    for plane in jax.profiler.ProfileData.from_file(path).planes:
        for line in plane.lines:
            if not line.name.startswith(("tf_XLAEigen", "tf_XLAPjRtCpuClient")):
                continue
            for event in line.events:
                if not event.name.startswith(("ThunkExecutor", "while")):  # containers of the ops below
                    totals[event.name] += event.duration_ns
    total = sum(totals.values())
    return {"total_op_s": total / 1e9,
            "top": [{"op": name, "s": ns / 1e9, "share": ns / total, "source": op_names.get(name, "")}
                    for name, ns in totals.most_common(top)]}


def parts(size: str, chunk: int, tile: int, steps: int, teacher_dtype: str) -> dict:
    import jax
    import jax.numpy as jnp
    import optax
    from flax import nnx

    from distil import losses, vocabulary_losses
    from distil.models import ModelConfig, create_model, student_config_for
    from distil.train.state import OptimizerSettings, make_optimizer
    from distil.tokenization import default_vocab_path, load_tokenizer

    shape = bench_step.SIZES[size]
    config = bench_step.trainer_config(size)
    vocab_size = load_tokenizer(config.tokenizer or default_vocab_path()).get_vocab_size()
    teacher_config = ModelConfig(vocab_size=vocab_size, head="mlm", add_pooler=False, dtype=teacher_dtype,
                                 **shape["teacher"])
    student_config = student_config_for(teacher_config, len(shape["teacher_layers"]), head="mlm", dtype="float32")
    teacher_graph, teacher_params = nnx.split(create_model(teacher_config, seed=0))
    student_graph, student_params = nnx.split(create_model(student_config, seed=1))
    rows, length = shape["batch"] // shape["micro_batches"], shape["length"]
    batch = bench_step.random_batch((rows, length), vocab_size)
    input_ids, mask, labels = (jnp.asarray(batch[k]) for k in ("input_ids", "attention_mask", "mlm_labels"))
    temperature = 2.0
    coefficients = {"ce": 5.0 / mask.sum(), "mlm": 2.0 / (labels != -100).sum()}
    rngs_key = jax.random.key(0)

    def teacher_hidden(params):
        return nnx.merge(teacher_graph, params)(input_ids, mask, output_mlm_hidden=True)

    def teacher_logits(params):
        return nnx.merge(teacher_graph, params)(input_ids, mask).logits

    fixed_teacher = jax.jit(teacher_hidden)(teacher_params)

    def student_no_vocab(params):
        def loss(params):
            out = nnx.merge(student_graph, params)(input_ids, mask, dropout_rngs=nnx.Rngs(dropout=rngs_key),
                                                   output_mlm_hidden=True)
            cos_sum, cos_count = losses.hidden_cosine(out.last_hidden_state, fixed_teacher.last_hidden_state, mask)
            return cos_sum / cos_count + out.mlm_hidden.astype(jnp.float32).mean()
        return jax.grad(loss)(params)

    student_out = jax.jit(lambda p: nnx.merge(student_graph, p)(input_ids, mask, output_mlm_hidden=True))(
        student_params)
    hidden, (embedding, bias) = student_out.mlm_hidden, student_out.mlm_decoder
    teacher_embedding, teacher_bias = fixed_teacher.mlm_decoder

    def vocab_plain(hidden, embedding, bias):
        def loss(hidden, embedding, bias):
            student_logits = hidden @ embedding.T + bias
            t_logits = fixed_teacher.mlm_hidden @ teacher_embedding.astype(fixed_teacher.mlm_hidden.dtype).T \
                + teacher_bias.astype(fixed_teacher.mlm_hidden.dtype)
            ce, _ = losses.soft_cross_entropy(student_logits, t_logits, mask, temperature)
            mlm, _ = losses.masked_lm(student_logits, labels)
            return coefficients["ce"] * ce + coefficients["mlm"] * mlm
        return jax.grad(loss, argnums=(0, 1, 2))(hidden, embedding, bias)

    def vocab_chunked(hidden, embedding, bias, tile_size=0):
        def loss(hidden, embedding, bias):
            return vocabulary_losses.vocabulary_losses(
                hidden, (embedding, bias), coefficients=coefficients, chunk_size=chunk, tile_size=tile_size,
                mlm_labels=labels,
                teacher_hidden=fixed_teacher.mlm_hidden, teacher_decoder=fixed_teacher.mlm_decoder, ce_weights=mask,
                temperature=temperature)[0]
        return jax.grad(loss, argnums=(0, 1, 2))(hidden, embedding, bias)

    tx = make_optimizer(OptimizerSettings(learning_rate=5e-4, num_steps=1000, warmup_steps=50))
    opt_state = tx.init(student_params)

    def update(params, opt_state):
        grads = jax.tree.map(lambda p: p * 1e-3, params)
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state

    cases = {
        "teacher forward (to the MLM head's hidden states)": (teacher_hidden, (teacher_params,)),
        "teacher forward with full logits": (teacher_logits, (teacher_params,)),
        "student forward + backward, no vocabulary (cos)": (student_no_vocab, (student_params,)),
        "vocabulary terms fwd + bwd, full logits": (vocab_plain, (hidden, embedding, bias)),
        f"vocabulary terms fwd + bwd, chunked ({chunk}), whole vocabulary": (vocab_chunked, (hidden, embedding, bias)),
        f"vocabulary terms fwd + bwd, chunked ({chunk}), tiles ({tile})": (
            lambda *a: vocab_chunked(*a, tile_size=tile), (hidden, embedding, bias)),
        "AdamW + clip update": (update, (student_params, opt_state)),
    }
    out = {}
    for name, (function, args) in cases.items():
        compiled = jax.jit(function).lower(*args).compile()
        analysis = compiled.cost_analysis()
        analysis = analysis[0] if isinstance(analysis, (list, tuple)) else analysis
        memory = compiled.memory_analysis()
        timing = benchlib.timed_median(lambda: jax.block_until_ready(compiled(*args)), steps=steps, warmup=1)
        out[name] = {**timing, "flops": float(analysis.get("flops", 0)),
                     "bytes_accessed": float(analysis.get("bytes accessed", 0)),
                     "temp_bytes": int(getattr(memory, "temp_size_in_bytes", 0) or 0)}
        print(f"  {name}: {timing['median_s']:.2f} s", flush=True)
    return out


def whole_step(size: str, chunk: int, tile: int, steps: int, teacher_dtype: str, trace_dir: str | None = None) -> dict:
    from distil import sharding

    out = {}
    for name, vocab_chunk_size, vocab_tile_size in (
            ("whole step, full logits", 0, 0), (f"whole step, chunked ({chunk}), whole vocabulary", chunk, 0),
            (f"whole step, chunked ({chunk}), tiles ({tile})", chunk, tile)):
        config = bench_step.trainer_config(size, vocab_chunk_size=vocab_chunk_size, vocab_tile_size=vocab_tile_size,
                                           teacher_dtype=teacher_dtype)
        compiled, state, teacher_params, batch_sharding, mesh, rules, info = bench_step.build_trainer_step(config)
        batch = bench_step.random_batch(info["shape"], info["vocab_size"], names=info["batch_names"])
        hlo = compiled.as_text()
        with sharding.activation_rules(mesh, rules):
            step = bench_step.step_caller(compiled, state, teacher_params,
                                          sharding.make_global_batch(batch, batch_sharding))
            timing = benchlib.timed_median(step, steps=steps, warmup=1)
            trace = traced_ops(step, hlo, f"{trace_dir}/{vocab_chunk_size}-{vocab_tile_size}") if trace_dir else None
        cost = compiled.cost_analysis()
        cost = cost[0] if isinstance(cost, (list, tuple)) else cost
        out[name] = {**timing, "flops": info["xla_flops"], "bytes_accessed": float(cost.get("bytes accessed", 0)),
                     "transcendentals": float(cost.get("transcendentals", 0)), "temp_bytes": info["temp_bytes"],
                     "argument_bytes": info["argument_bytes"], "compile_s": info["compile_s"],
                     "largest_dots": largest_dots(hlo), "trace": trace}
        print(f"  {name}: {timing['median_s']:.2f} s", flush=True)
        del step, state, compiled
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", default="full", choices=list(bench_step.SIZES))
    parser.add_argument("--chunk", type=int, default=bench_step.DEFAULT_CHUNK)
    parser.add_argument("--tile", type=int, default=4096, help="loss.vocab_tile_size of the tiled rows")
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--teacher-dtype", default="float32")
    parser.add_argument("--skip-parts", action="store_true")
    parser.add_argument("--no-trace", action="store_true", help="skip the jax.profiler trace of each step")
    parser.add_argument("--out")
    args = parser.parse_args()

    machine = benchlib.machine()
    peak = benchlib.matmul_peak()
    print(f"matmul peak float32 {peak['float32'] / 1e9:,.0f} GFLOP/s; load {machine['load_average']}", flush=True)
    results = {"machine": machine, "matmul_peak_flops": peak}
    if not args.skip_parts:
        results["parts"] = parts(args.size, args.chunk, args.tile, args.steps, args.teacher_dtype)
    with tempfile.TemporaryDirectory(prefix="profile_step-") as trace_dir:
        results["steps"] = whole_step(args.size, args.chunk, args.tile, args.steps, args.teacher_dtype,
                                      None if args.no_trace else trace_dir)
    rows = []
    for name, row in {**results.get("parts", {}), **results["steps"]}.items():
        rows.append([name, f"{row['median_s']:.2f}", f"{row['flops'] / 1e9:,.0f}",
                     f"{row['flops'] / row['median_s'] / 1e9:,.0f}", f"{row['bytes_accessed'] / 2**30:,.1f}",
                     benchlib.gib(row["temp_bytes"])])
    table = benchlib.markdown_table(["part", "s", "XLA GFLOP", "GFLOP/s", "XLA GiB accessed", "temp GiB"], rows)
    print("\n" + table)
    for name, row in results["steps"].items():
        print(f"\n{name}: largest matmuls")
        print(benchlib.markdown_table(["op", "dtype", "lhs", "out", "GFLOP"], [
            [d["name"], d["dtype"], "x".join(map(str, d["lhs"])), "x".join(map(str, d["out"])),
             f"{d['flops'] / 1e9:,.1f}"] for d in row["largest_dots"]]))
    for name, row in results["steps"].items():
        if row["trace"]:
            print(f"\n{name}: the XLA CPU runtime's ops by time (jax.profiler, one step, all threads: "
                  f"{row['trace']['total_op_s']:.1f} op-seconds)")
            print(benchlib.markdown_table(["op", "s", "share", "from"], [
                [op["op"], f"{op['s']:.2f}", f"{100 * op['share']:.1f}%", op["source"][-100:]]
                for op in row["trace"]["top"]], align="lrrl"))
    results["markdown"] = table
    benchlib.write_json(args.out, results)


if __name__ == "__main__":
    main()
