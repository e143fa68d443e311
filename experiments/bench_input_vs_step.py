"""Does the input pipeline keep up with training? Batches/s of the host pipeline next to a distillation step's.

Pipeline: binarised embedded corpus -> length-grouped per-host batches -> frequency-smoothed MLM masking, the
per-step host work of the distillation trainer. Step: a frozen teacher forward plus a student forward and backward
of the MLM loss plus the soft cross-entropy to the teacher at T=2, at the same batch shape, jitted once (the
compute a distillation step cannot avoid; the optimizer update and the cosine loss add a little more). Both run in
this process on whatever backend JAX picks.

    JAX_PLATFORMS=cpu python experiments/bench_input_vs_step.py --batch 32 --length 128 --size base
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from distil.data.batching import GroupedBatchSource
from distil.data.binarize import load_token_counts, open_binarized, prepare
from distil.data.embedded import embedded_corpus_dir
from distil.data.masking import mask_batch, token_probs_from_counts
from distil.models import ModelConfig, create_model, distilmbert_base, mbert_base
from distil.tokenization import SPECIAL_TOKENS, default_vocab_path, load_tokenizer


def pipeline_rate(out_dir: Path, batch: int, length: int, steps: int) -> tuple[float, float]:
    tokenizer = load_tokenizer(default_vocab_path())
    sequences = open_binarized(out_dir)
    special_ids = [tokenizer.token_to_id(token) for token in SPECIAL_TOKENS]
    token_probs = token_probs_from_counts(load_token_counts(out_dir), special_ids)
    source = GroupedBatchSource(sequences, global_batch=batch, max_length=length, seed=0, fixed_length=True,
                                process_index=0, process_count=1)
    start = time.perf_counter()
    real_tokens = 0
    for step in range(steps):
        rows = source[step % len(source)]
        mask_batch(rows["input_ids"], rows["lengths"], token_probs, seed=0, step=step, process_index=0,
                   mask_id=tokenizer.token_to_id("[MASK]"), vocab_size=tokenizer.get_vocab_size())
        real_tokens += int(rows["lengths"].sum())
    seconds = time.perf_counter() - start
    return steps / seconds, real_tokens / seconds


def step_rate(teacher_config: ModelConfig, student_config: ModelConfig, batch: int, length: int, steps: int):
    teacher, student = create_model(teacher_config, seed=0), create_model(student_config, seed=1)
    teacher_graph, teacher_params = nnx.split(teacher)
    student_graph, student_params = nnx.split(student)
    rng = np.random.default_rng(0)
    input_ids = jnp.asarray(rng.integers(104, student_config.vocab_size, (batch, length)), jnp.int32)
    labels = jnp.where(jnp.asarray(rng.random((batch, length)) < 0.15), input_ids, -100)
    attention_mask = jnp.ones_like(input_ids)

    @jax.jit
    def step(student_params, teacher_params, input_ids, labels):
        teacher = nnx.merge(teacher_graph, teacher_params)
        teacher_probs = jax.nn.softmax(jax.lax.stop_gradient(teacher(input_ids, attention_mask).logits) / 2.0)

        def loss_fn(params):
            logits = nnx.merge(student_graph, params)(input_ids, attention_mask).logits.astype(jnp.float32)
            weights = (labels >= 0).astype(jnp.float32)
            mlm = optax.softmax_cross_entropy_with_integer_labels(logits, jnp.maximum(labels, 0))
            soft = optax.softmax_cross_entropy(logits / 2.0, teacher_probs)  # KL(T=2) up to a constant
            return (mlm * weights).sum() / weights.sum() + soft.mean()

        return jax.value_and_grad(loss_fn)(student_params)

    compile_start = time.perf_counter()
    jax.block_until_ready(step(student_params, teacher_params, input_ids, labels))
    compile_seconds = time.perf_counter() - compile_start
    start = time.perf_counter()
    for _ in range(steps):
        jax.block_until_ready(step(student_params, teacher_params, input_ids, labels))
    return steps / (time.perf_counter() - start), compile_seconds


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--length", type=int, default=128)
    parser.add_argument("--size", choices=("base", "small"), default="base",
                        help="base: mBERT teacher + DistilmBERT student; small: 4/2 layers of width 256")
    parser.add_argument("--pipeline-steps", type=int, default=300)
    parser.add_argument("--train-steps", type=int, default=3)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        summary = prepare(embedded_corpus_dir(), Path(tmp) / "bin", max_length=args.length, num_workers=2,
                          progress=False)
        print(f"binarised the embedded corpus in {time.perf_counter() - start:.1f}s: {summary}")
        pipe_batches, pipe_tokens = pipeline_rate(Path(tmp) / "bin", args.batch, args.length, args.pipeline_steps)

    if args.size == "base":
        teacher_config, student_config = mbert_base(head="mlm", add_pooler=False), distilmbert_base(head="mlm")
    else:
        small = dict(hidden_size=256, num_attention_heads=4, intermediate_size=1024)
        teacher_config = mbert_base(head="mlm", add_pooler=False, num_hidden_layers=4, **small)
        student_config = distilmbert_base(head="mlm", num_hidden_layers=2, **small)
    train_steps, compile_seconds = step_rate(teacher_config, student_config, args.batch, args.length,
                                             args.train_steps)

    device = jax.devices()[0].device_kind
    print(f"\nbatch {args.batch} x {args.length}, {args.size} models, device {device} "
          f"(step compiled in {compile_seconds:.1f}s)\n")
    print("| what | batches/s | x step |")
    print("|---|---:|---:|")
    print(f"| input pipeline (grouped batches + MLM masking), 1 host thread | {pipe_batches:,.1f} "
          f"| {pipe_batches / train_steps:,.1f} |")
    print(f"| teacher fwd + student fwd/bwd step | {train_steps:,.3f} | 1.0 |")
    print(f"\npipeline real tokens/s: {pipe_tokens:,.0f}")


if __name__ == "__main__":
    main()
