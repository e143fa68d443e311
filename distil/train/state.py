"""Train state, created already sharded, and the optax optimizer from config.

The state is a plain pytree (`TrainState`: step, RNG, trainable parameters, optimizer state) so that one jitted
step can take and return it with explicit shardings and donation, and one orbax item can save it. The model's
structure (an `nnx.GraphDef`) stays outside, static. Nothing here reads a config file: `make_optimizer` takes the
optimizer section's values, the trainer hands them down.
"""

from __future__ import annotations

import dataclasses
from typing import Callable

import flax.struct
import jax
import jax.numpy as jnp
import optax
from flax import nnx

from distil import sharding


@flax.struct.dataclass
class TrainState:
    """step: int32 []; rng: the run's base key (uint32 [2]; a step's key is `fold_in(rng, step)`);
    params: the trainable `nnx.State` (student and any loss-side parameters); opt_state: optax's state."""

    step: jax.Array
    rng: jax.Array
    params: nnx.State
    opt_state: optax.OptState


@dataclasses.dataclass(frozen=True)
class OptimizerSettings:
    """AdamW with linear warmup then linear decay to 0, global-norm clipping (the DistilBERT recipe's shape)."""

    learning_rate: float
    num_steps: int
    warmup_steps: int
    b1: float = 0.9
    b2: float = 0.98
    eps: float = 1e-6
    weight_decay: float = 0.0
    clip_norm: float | None = 5.0


def learning_rate_schedule(settings: OptimizerSettings) -> optax.Schedule:
    """0 -> peak over `warmup_steps`, then linearly to 0 at `num_steps` (transformers'
    `get_linear_schedule_with_warmup`, which the reference uses)."""
    warmup = max(settings.warmup_steps, 0)
    decay_steps = max(settings.num_steps - warmup, 1)
    return optax.join_schedules(
        [optax.linear_schedule(0.0, settings.learning_rate, max(warmup, 1)),
         optax.linear_schedule(settings.learning_rate, 0.0, decay_steps)],
        [warmup],
    )


def decay_mask(params: nnx.State):
    """True for weights that take weight decay: kernels and embeddings, not biases or LayerNorm scales (as the
    reference's `no_decay = ["bias", "LayerNorm.weight"]`)."""
    return nnx.map_state(lambda path, leaf: path[-1] not in ("bias", "scale"), params)


def make_optimizer(settings: OptimizerSettings) -> optax.GradientTransformation:
    schedule = learning_rate_schedule(settings)
    parts = [optax.clip_by_global_norm(settings.clip_norm)] if settings.clip_norm else []
    parts.append(optax.adamw(schedule, b1=settings.b1, b2=settings.b2, eps=settings.eps,
                             weight_decay=settings.weight_decay,
                             mask=decay_mask if settings.weight_decay else None))
    return optax.chain(*parts)


def state_shardings(abstract_state: TrainState, tx: optax.GradientTransformation, mesh, rules) -> TrainState:
    """Where every leaf of the state lives: parameters by their logical axes; optimizer moments like the
    parameters they follow (`optax.tree_map_params`); counters and the RNG replicated."""
    replicated = jax.sharding.NamedSharding(mesh, jax.P())
    param_shardings = sharding.state_shardings(abstract_state.params, mesh, rules)
    opt_shardings = optax.tree_map_params(
        tx,
        lambda _, param_sharding: param_sharding,
        abstract_state.opt_state,
        param_shardings,
        transform_non_params=lambda _: replicated,
    )
    return TrainState(step=replicated, rng=replicated, params=param_shardings, opt_state=opt_shardings)


def _initializer(init_params: Callable[..., nnx.State], tx: optax.GradientTransformation, seed: int):
    def init(*args) -> TrainState:
        params = init_params(*args)
        return TrainState(step=jnp.zeros((), jnp.int32), rng=jax.random.key_data(jax.random.key(seed)),
                          params=params, opt_state=tx.init(params))

    return init


def abstract_train_state(
    init_params: Callable[..., nnx.State], init_args: tuple, tx: optax.GradientTransformation, *, seed: int, mesh,
    rules,
) -> tuple[TrainState, TrainState]:
    """(state of `jax.ShapeDtypeStruct`s carrying their shardings, shardings), nothing allocated: what a restore
    targets and what a memory dry run compiles for."""
    with sharding.activation_rules(mesh, rules):
        shapes = jax.eval_shape(_initializer(init_params, tx, seed), *init_args)
        shardings = state_shardings(shapes, tx, mesh, rules)
    return sharding.abstract_with_shardings(shapes, shardings), shardings


def create_train_state(
    init_params: Callable[..., nnx.State],
    init_args: tuple,
    tx: optax.GradientTransformation,
    *,
    seed: int,
    mesh,
    rules,
) -> tuple[TrainState, TrainState]:
    """(state, shardings): `init_params(*init_args)` and the optimizer state created in one jitted function whose
    outputs are placed by `state_shardings`, so no parameter is ever whole on one host. `init_params` runs traced
    (it may copy from a sharded teacher given in `init_args`)."""
    _, shardings = abstract_train_state(init_params, init_args, tx, seed=seed, mesh=mesh, rules=rules)
    with sharding.activation_rules(mesh, rules):
        state = jax.jit(_initializer(init_params, tx, seed), out_shardings=shardings)(*init_args)
    return state, shardings
