"""The distillation step: one pure function `(state, teacher_params, batch) -> (state, metrics)`, jitted once.

An update's batch is `[accum, micro, length]` (input_ids already masked on the host, attention_mask, mlm_labels;
packed rows add segment_ids and position_ids).
A `lax.scan` runs the micro-batches: teacher forward (no dropout, frozen: its parameters are an input, never
differentiated, and its outputs pass through `stop_gradient`), student forward with dropout, the objective's terms
divided by the whole update's counts (`Objective.counts`), and float32 gradients summed. So the update is the
full-batch one, whatever the number of tokens or targets in each micro-batch (`optax.MultiSteps` would average
per-micro-batch means instead). The dropout key of micro-batch i of step s is `fold_in(fold_in(rng, s), i)`.

`DistillStudent` holds what the optimizer trains: the student model and, for hidden-state MSE between models of
different widths, the learned projection (`losses.HiddenProjection`), which is not exported with the student.
"""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp
import optax
from flax import nnx

from distil.models import Model
from distil.train.objective import Objective
from distil.train.state import TrainState


class DistillStudent(nnx.Module):
    def __init__(self, model: Model, hidden_projection: nnx.Module | None = None):
        self.model = model
        self.hidden_projection = hidden_projection


def frozen_paths(params: nnx.State) -> set[tuple]:
    """Parameters that are not trained: a sinusoidal position table (transformers registers it frozen)."""
    frozen = set()
    for path, _ in nnx.to_flat_state(params):
        names = tuple(str(part) for part in path)
        if names[-3:] == ("position_embeddings", "embedding") or names[-2:] == ("position_embeddings", "embedding"):
            frozen.add(path)
    return frozen


def zero_frozen(tree: nnx.State, frozen: set[tuple]) -> nnx.State:
    """`tree` (gradients or optimizer updates of the parameters) with its leaves at `frozen` paths zero. Both are
    zeroed: a zero gradient alone still lets AdamW's weight decay shrink a frozen table, which transformers never
    touches (`requires_grad=False`)."""
    if not frozen:
        return tree

    def zero(path, leaf):
        if path not in frozen:
            return leaf
        return leaf.replace(jnp.zeros_like(leaf.get_value())) if isinstance(leaf, nnx.Variable) else \
            jnp.zeros_like(leaf)

    return nnx.map_state(zero, tree)


def make_train_step(
    student_graphdef: nnx.GraphDef,
    teacher_graphdef: nnx.GraphDef | None,
    objective: Objective,
    tx: optax.GradientTransformation,
    learning_rate: optax.Schedule,
    *,
    attention_heads: int,
    frozen: set[tuple] = frozenset(),
    remat: str = "none",
) -> Callable[[TrainState, nnx.State | None, dict], tuple[TrainState, dict]]:
    """The pure step. `frozen`: parameter paths whose gradient is zeroed (see `frozen_paths`). `remat`: "none", or
    the name of a `jax.checkpoint_policies` policy (e.g. "nothing_saveable", "dots_saveable") under which the
    student's forward is recomputed in the backward pass instead of keeping its activations."""
    if remat != "none" and not hasattr(jax.checkpoint_policies, remat):
        raise ValueError(f"remat must be 'none' or a jax.checkpoint_policies name, got {remat!r}")

    def outputs_of(micro) -> dict:
        # Packed rows carry segment and position ids; both models then attend within each sequence only.
        packing = {name: micro[name] for name in ("segment_ids", "position_ids") if name in micro}
        return dict(output_attentions=objective.needs_attentions, output_qkv=objective.needs_qkv,
                    output_mlm_hidden=objective.chunked_vocabulary, **packing)

    def student_forward(params, micro, dropout_key):
        student = nnx.merge(student_graphdef, params)
        return student.model(micro["input_ids"], micro["attention_mask"],
                             dropout_rngs=nnx.Rngs(dropout=dropout_key), **outputs_of(micro))

    if remat != "none":
        student_forward = jax.checkpoint(student_forward, policy=getattr(jax.checkpoint_policies, remat))

    def micro_loss(params, teacher_params, micro, dropout_key, totals):
        teacher_out = None
        if teacher_graphdef is not None:
            teacher = nnx.merge(teacher_graphdef, teacher_params)
            teacher_out = jax.lax.stop_gradient(teacher(micro["input_ids"], micro["attention_mask"],
                                                        **outputs_of(micro)))
        student_out = student_forward(params, micro, dropout_key)
        projection = nnx.merge(student_graphdef, params).hidden_projection
        return objective.loss(student_out, teacher_out, micro, totals, hidden_projection=projection)

    grad_fn = jax.grad(micro_loss, has_aux=True)

    def train_step(state: TrainState, teacher_params, batch: dict) -> tuple[TrainState, dict]:
        totals = objective.counts(batch, attention_heads=attention_heads)
        step_key = jax.random.fold_in(jax.random.wrap_key_data(state.rng), state.step)
        accum = batch["input_ids"].shape[0]

        def accumulate(carry, micro_and_index):
            grad_sum, term_sum = carry
            micro, index = micro_and_index
            grads, term_sums = grad_fn(state.params, teacher_params, micro,
                                       jax.random.fold_in(step_key, index), totals)
            grad_sum = jax.tree.map(lambda total, g: total + g.astype(jnp.float32), grad_sum, grads)
            term_sum = {term: term_sum[term] + term_sums[term] for term in term_sum}
            return (grad_sum, term_sum), None

        zero_grads = jax.tree.map(lambda p: jnp.zeros(p.shape, jnp.float32), state.params)
        zero_terms = {term: jnp.zeros((), jnp.float32) for term in totals}
        (grads, term_sums), _ = jax.lax.scan(accumulate, (zero_grads, zero_terms), (batch, jnp.arange(accum)))
        grads = jax.tree.map(lambda g, p: g.astype(p.dtype), zero_frozen(grads, frozen), state.params)
        grad_norm = optax.tree.norm(grads)
        updates, opt_state = tx.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, zero_frozen(updates, frozen))

        term_means = {term: term_sums[term] / jnp.maximum(totals[term], 1.0) for term in totals}
        real_tokens = batch["attention_mask"].astype(jnp.float32).sum()
        metrics = {
            "loss": sum(objective.alpha(term) * mean for term, mean in term_means.items()),
            **term_means,
            "grad_norm": grad_norm,
            "learning_rate": learning_rate(state.step),
            "real_tokens": real_tokens,
            "padding_fraction": 1.0 - real_tokens / batch["attention_mask"].size,
        }
        return TrainState(step=state.step + 1, rng=state.rng, params=params, opt_state=opt_state), metrics

    return train_step
