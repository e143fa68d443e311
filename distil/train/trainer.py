"""What both trainers (`distill`, `xnli`) build the same way from their config: the mesh, the optimizer settings,
the value checks of those sections, the NaN stop, the compiled step's memory and FLOPs, and host copies of
parameters. Each takes a config section and returns plain objects; the trainers stay the only readers of a config.
"""

from __future__ import annotations

import math

import jax
import numpy as np
from flax import nnx

from distil import sharding
from distil.config import ConfigError
from distil.train.run import TrainingError
from distil.train.state import OptimizerSettings


def log(message: str) -> None:
    """A line on process 0's console."""
    if jax.process_index() == 0:
        print(message, flush=True)


# ---------------------------------------------------------------------------------------------------- config


def check_optimizer(optimizer) -> None:
    """config.optimizer's values, each named with what it must be."""
    checks = [
        ("learning_rate", optimizer.learning_rate > 0 and math.isfinite(optimizer.learning_rate), "> 0 and finite"),
        ("b1", 0 <= optimizer.b1 < 1, "in [0, 1)"),
        ("b2", 0 <= optimizer.b2 < 1, "in [0, 1)"),
        ("eps", optimizer.eps > 0, "> 0"),
        ("weight_decay", optimizer.weight_decay >= 0, ">= 0"),
        ("warmup_fraction", 0 <= optimizer.warmup_fraction <= 1, "in [0, 1]"),
        ("clip_norm", optimizer.clip_norm >= 0, ">= 0 (0: no clipping)"),
    ]
    for key, ok, expected in checks:
        if not ok:
            raise ConfigError(f"config.optimizer.{key} must be {expected}, got {optimizer[key]}")


def optimizer_settings(optimizer, num_steps: int) -> OptimizerSettings:
    """config.optimizer -> the AdamW + warmup + linear decay settings of `num_steps` updates."""
    return OptimizerSettings(
        learning_rate=optimizer.learning_rate, num_steps=num_steps,
        warmup_steps=math.ceil(optimizer.warmup_fraction * num_steps), b1=optimizer.b1, b2=optimizer.b2,
        eps=optimizer.eps, weight_decay=optimizer.weight_decay, clip_norm=optimizer.clip_norm or None,
    )


def mesh_size(config, num_devices: int) -> tuple[int, int, int]:
    """(data, fsdp, tensor) of config.mesh over `num_devices`, or a ConfigError naming the axes."""
    try:
        return sharding.mesh_shape({axis: config.mesh[axis] for axis in sharding.MESH_AXES}, num_devices,
                                   prefix="config.mesh")
    except sharding.MeshError as err:
        raise ConfigError(str(err)) from err


def configured_device_count(config) -> int:
    """How many devices config.mesh.num_devices asks for (-1: every visible one)."""
    return jax.device_count() if config.mesh.num_devices == -1 else config.mesh.num_devices


def mesh_from_config(config) -> tuple[jax.sharding.Mesh, tuple]:
    """(mesh, logical axis rules) of config.mesh and config.sharding."""
    rules = tuple(tuple(rule) for rule in config.sharding.logical_axis_rules)
    devices = jax.devices() if config.mesh.num_devices == -1 else jax.devices()[: config.mesh.num_devices]
    mesh = sharding.make_mesh({axis: config.mesh[axis] for axis in sharding.MESH_AXES}, devices)
    return mesh, rules


# ------------------------------------------------------------------------------------------------------ loop


def stop_if_not_finite(metrics, terms: tuple[str, ...], step: int, manager, where: str = "") -> None:
    """The NaN stop: a non-finite loss term ends the run with one line naming the step, the term and the last
    good checkpoint (the state of this step is never saved)."""
    bad = [term for term in terms if not np.isfinite(metrics[term])]
    if not bad and np.isfinite(metrics["loss"]):
        return
    manager.wait_until_finished()
    term = bad[0] if bad else "loss"
    latest = manager.latest_step()
    last_good = f"the last good checkpoint is step {latest} in {manager.directory}" if latest is not None else \
        f"no checkpoint yet in {manager.directory}"
    name = f"the {term} loss" if term != "loss" else "the loss"
    raise TrainingError(f"{where}step {step}: {name} is {metrics[term]}; stopped ({last_good})")


def host_params(params: nnx.State) -> nnx.State:
    """Parameters as host arrays, gathered from every process when they span several."""
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        return multihost_utils.process_allgather(params, tiled=True)
    return jax.device_get(params)


# --------------------------------------------------------------------------------------------- step analysis


def step_analysis(compiled) -> dict:
    """Per-device bytes (arguments, outputs, temporaries, peak) of a compiled step, and XLA's FLOP count (each
    loop body once)."""
    memory = compiled.memory_analysis()
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    fields = {"argument_bytes": "argument_size_in_bytes", "output_bytes": "output_size_in_bytes",
              "temp_bytes": "temp_size_in_bytes", "alias_bytes": "alias_size_in_bytes",
              "peak_bytes": "peak_memory_in_bytes"}
    out = {name: int(getattr(memory, attr, 0) or 0) for name, attr in fields.items()} if memory else {}
    if memory:  # the CPU backend reports no peak; arguments + outputs + temporaries bound it
        out["peak_bytes"] = max(out["peak_bytes"], out["argument_bytes"] + out["output_bytes"] + out["temp_bytes"]
                                - out["alias_bytes"])
    out["xla_flops"] = float((cost or {}).get("flops", 0.0))
    return out


def describe_analysis(analysis: dict) -> str:
    mib = 2**20
    return (f"per device {analysis.get('argument_bytes', 0) / mib:,.0f} MiB arguments, "
            f"{analysis.get('temp_bytes', 0) / mib:,.0f} MiB temporaries, "
            f"{analysis.get('peak_bytes', 0) / mib:,.0f} MiB peak; "
            + (f"{analysis['flops'] / 1e9:,.1f} GFLOP per step per device (model FLOPs)" if "flops" in analysis
               else f"{analysis['xla_flops'] / 1e9:,.1f} GFLOP per step per device (XLA's count, each loop body once)"))
