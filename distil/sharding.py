"""Logical axis names -> mesh axes, said once.

Models name their parameter and activation axes logically (see `distil.models.layers`); this table, which configs
copy and may override (`config.sharding.logical_axis_rules`), says which of the mesh axes (`data`, `fsdp`,
`tensor`) each one is split over. It follows t5x's `standard_logical_axis_rules`: batch over data-parallel axes,
weights' embed dimension over `fsdp` (ZeRO-3 style), heads / MLP / vocab over `tensor` (Megatron style).
"""

from __future__ import annotations

MESH_AXES = ("data", "fsdp", "tensor")

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
