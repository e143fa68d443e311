"""The only place that knows meshes: mesh from config, logical rules -> shardings, sharded creation, global batches.

Models name their parameter and activation axes logically (see `distil.models.layers`); one rules table, which
configs copy and may override (`config.sharding.logical_axis_rules`), says which of the mesh axes (`data`, `fsdp`,
`tensor`) each one is split over. It follows t5x's `standard_logical_axis_rules`: batch over data-parallel axes,
weights' embed dimension over `fsdp` (ZeRO-3 style), heads / MLP / vocab over `tensor` (Megatron style).

Everything that needs a mesh takes it (and the rules) as arguments: nothing here asks the caller to enter
`jax.set_mesh` and `nnx.logical_axis_rules` in the right order. `activation_rules(mesh, rules)` is the one context a
traced function needs so that the models' `with_logical_constraint` calls resolve; `create_sharded` enters it itself.
"""

from __future__ import annotations

import contextlib
import math
from typing import Callable, Mapping, Sequence

import flax.linen as nn
import jax
import numpy as np
from flax import nnx

MESH_AXES = ("data", "fsdp", "tensor")

LogicalRules = Sequence[tuple[str, str | tuple[str, ...] | None]]

STANDARD_LOGICAL_AXIS_RULES: tuple[tuple[str, str | tuple[str, ...] | None], ...] = (
    # activations
    ("batch", ("data", "fsdp")),
    ("length", None),
    ("act_embed", None),
    ("act_heads", "tensor"),
    ("act_kv", None),
    ("act_mlp", "tensor"),
    ("act_vocab", "tensor"),
    # parameters
    ("vocab", "tensor"),
    ("embed", "fsdp"),
    ("heads", "tensor"),
    ("kv", None),
    ("mlp", "tensor"),
    ("hidden", None),
    ("position", None),
    ("token_type", None),
    ("norm", None),
    ("classes", None),
)


class MeshError(ValueError):
    """A mesh shape that does not fit the devices; the message names the config field."""


# ------------------------------------------------------------------------------------------------------- mesh


def mesh_shape(mesh_config: Mapping[str, int], num_devices: int, *, prefix: str = "mesh") -> tuple[int, ...]:
    """Sizes of (`data`, `fsdp`, `tensor`) from `{'data': 2, 'fsdp': -1, 'tensor': 1}`-like config.

    At most one axis may be -1: it takes the devices the others leave. Errors name the field (`mesh.fsdp`).
    """
    unknown = sorted(set(mesh_config) - set(MESH_AXES))
    if unknown:
        raise MeshError(f"{prefix} has unknown axes {unknown}; expected {list(MESH_AXES)}")
    sizes = {}
    for axis in MESH_AXES:
        size = mesh_config.get(axis, 1)
        if not isinstance(size, int) or isinstance(size, bool) or not (size == -1 or size >= 1):
            raise MeshError(f"{prefix}.{axis} must be a positive integer or -1 (the remaining devices), got {size!r}")
        sizes[axis] = size
    free = [axis for axis, size in sizes.items() if size == -1]
    if len(free) > 1:
        raise MeshError(f"only one mesh axis may be -1, got {', '.join(f'{prefix}.{a}' for a in free)}")
    fixed = math.prod(size for size in sizes.values() if size != -1)
    if free:
        if num_devices % fixed:
            raise MeshError(
                f"{prefix}.{free[0]} = -1: the other axes ({fixed} devices) do not divide the {num_devices} devices"
            )
        sizes[free[0]] = num_devices // fixed
    elif fixed != num_devices:
        shape = " x ".join(f"{prefix}.{axis}={size}" for axis, size in sizes.items())
        raise MeshError(f"{shape} = {fixed} devices, but {num_devices} are available; set one axis to -1")
    return tuple(sizes[axis] for axis in MESH_AXES)


def make_mesh(mesh_config: Mapping[str, int], devices: Sequence[jax.Device] | None = None) -> jax.sharding.Mesh:
    """A (`data`, `fsdp`, `tensor`) mesh over `devices` (default: all), every axis `Auto`-sharded.

    `jax.make_mesh` orders devices so that each process's devices are contiguous along the leading axes, which
    is what `make_global_batch` relies on. (Its default axis type is Explicit; distil's models use logical
    constraints, which need Auto.)
    """
    devices = list(jax.devices() if devices is None else devices)
    shape = mesh_shape(mesh_config, len(devices))
    return jax.make_mesh(shape, MESH_AXES, axis_types=(jax.sharding.AxisType.Auto,) * len(MESH_AXES),
                         devices=devices)


# ------------------------------------------------------------------------------------------------------ rules


def logical_to_spec(logical_axes: Sequence[str | None], rules: LogicalRules) -> jax.sharding.PartitionSpec:
    """('batch', 'length') -> P(('data', 'fsdp'), None) under `rules`."""
    return nn.logical_to_mesh_axes(tuple(logical_axes), tuple(rules))


def logical_to_sharding(
    logical_axes: Sequence[str | None], mesh: jax.sharding.Mesh, rules: LogicalRules
) -> jax.sharding.NamedSharding:
    return jax.sharding.NamedSharding(mesh, logical_to_spec(logical_axes, rules))


@contextlib.contextmanager
def activation_rules(mesh: jax.sharding.Mesh, rules: LogicalRules):
    """The context in which a model's logical activation constraints resolve to `mesh`: `jax.set_mesh(mesh)`
    and `nnx.logical_axis_rules(rules)` together, entered in the order flax needs."""
    with jax.set_mesh(mesh), nnx.logical_axis_rules(tuple(rules)):
        yield


def _variable_logical_axes(variable: nnx.Variable) -> tuple[str | None, ...]:
    names = variable.get_metadata().get("out_sharding")
    return tuple(names) if names else (None,) * np.ndim(variable.get_value())


def fit_spec_to_shape(
    spec: jax.sharding.PartitionSpec, shape: Sequence[int], mesh: jax.sharding.Mesh
) -> jax.sharding.PartitionSpec:
    """`spec` without the mesh axes that do not divide their dimension (dropped from the last), so the array
    can be laid out: jit rejects uneven parameter shardings, and mBERT's vocabulary (119,547 = 3^2 x 37 x 359) is
    odd, so with `tensor` = 2 its rows stay whole on each device while `embed` is still split over `fsdp`."""
    fitted = []
    for size, entry in zip(shape, tuple(spec) + (None,) * (len(shape) - len(spec))):
        axes = [] if entry is None else [entry] if isinstance(entry, str) else list(entry)
        while axes and size % math.prod(mesh.shape[axis] for axis in axes):
            axes.pop()
        fitted.append(None if not axes else axes[0] if len(axes) == 1 else tuple(axes))
    return jax.sharding.PartitionSpec(*fitted)


def state_shardings(state, mesh: jax.sharding.Mesh, rules: LogicalRules):
    """A `NamedSharding` for every Variable of an (abstract or concrete) nnx state: the mesh axes its logical
    names get under `rules`, less those that do not divide the dimension (`fit_spec_to_shape`)."""

    def sharding_of(variable: nnx.Variable) -> nnx.Variable:
        spec = logical_to_spec(_variable_logical_axes(variable), rules)
        return variable.replace(jax.sharding.NamedSharding(mesh, fit_spec_to_shape(spec, variable.shape, mesh)))

    return jax.tree.map(sharding_of, state, is_leaf=lambda x: isinstance(x, nnx.Variable))


def create_sharded(
    constructor: Callable[[], nnx.Module], mesh: jax.sharding.Mesh, rules: LogicalRules
) -> nnx.Module:
    """`constructor()` with every parameter created directly in its sharding: eval_shape -> shardings -> a jitted
    init with those out_shardings. No parameter is ever whole on one device or host."""

    def build():
        with nnx.use_eager_sharding(False):
            return constructor()

    with activation_rules(mesh, rules):
        graphdef, abstract_state = nnx.split(nnx.eval_shape(build))
        shardings = state_shardings(abstract_state, mesh, rules)
        state = jax.jit(lambda: nnx.state(build()), out_shardings=shardings)()
    return nnx.merge(graphdef, state)


def abstract_with_shardings(shapes, shardings):
    """`jax.ShapeDtypeStruct` leaves carrying their shardings: targets to restore onto, or inputs to compile for
    without allocating anything (`jit(...).lower(...)`)."""
    return jax.tree.map(lambda shape, where: jax.ShapeDtypeStruct(shape.shape, shape.dtype, sharding=where),
                        shapes, shardings)


# ---------------------------------------------------------------------------------------------------- batches


def batch_sharding(mesh: jax.sharding.Mesh, rules: LogicalRules, *, micro_batched: bool = False
                   ) -> jax.sharding.NamedSharding:
    """How a [batch, length] input is split: `batch` over the data-parallel axes, as the models' activations; with
    `micro_batched`, how a [micro_batches, batch, length] one is (the micro-batch axis unsplit: the step scans it)."""
    return logical_to_sharding(((None,) if micro_batched else ()) + ("batch", "length"), mesh, rules)


def shards_of(logical_axis: str, size: int) -> int:
    """Into how many parts an array axis of `size` named `logical_axis` is split under the mesh and logical rules in
    scope (`activation_rules`; 1 outside them, or when `size` does not divide evenly). For code that must know its
    per-device share inside a jitted function (the vocabulary losses' chunks and tiles)."""
    mesh = jax.sharding.get_abstract_mesh()
    spec = nn.logical_to_mesh_axes((logical_axis,)) if not mesh.empty else None
    axes = spec[0] if spec else None
    if axes is None:
        return 1
    shards = math.prod(mesh.shape[axis] for axis in ((axes,) if isinstance(axes, str) else axes))
    return shards if size % shards == 0 else 1


def make_global_batch(
    local_batch: Mapping[str, np.ndarray], sharding: jax.sharding.NamedSharding
) -> dict[str, jax.Array]:
    """Each process's rows -> global arrays of shape [global_batch, ...] split as `sharding` says.

    `sharding` describes the rank-2 arrays (e.g. `batch_sharding(mesh, rules)`); arrays of another rank use its
    leading entries (1-D `lengths`) or add unsplit trailing ones. Process p's rows are rows
    [p * local_batch, (p + 1) * local_batch) of the global batch when the mesh orders processes along the batch
    axes, as `jax.make_mesh` (and so `make_mesh`) does.
    """
    spec = tuple(sharding.spec)
    global_batch = {}
    for name, local_array in local_batch.items():
        local_array = np.asarray(local_array)
        array_spec = (spec + (None,) * local_array.ndim)[: local_array.ndim]
        array_sharding = jax.sharding.NamedSharding(sharding.mesh, jax.sharding.PartitionSpec(*array_spec))
        global_batch[name] = jax.make_array_from_process_local_data(array_sharding, local_array)
    return global_batch
