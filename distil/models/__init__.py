"""BERT (teacher) and DistilBERT (student) encoders in Flax NNX."""

from __future__ import annotations

import jax
from flax import nnx

from distil.models.bert import Bert
from distil.models.config import ModelConfig, distilmbert_base, mbert_base, student_config_for
from distil.models.distilbert import DistilBert
from distil.models.layers import EncoderOutput
from distil.sharding import STANDARD_LOGICAL_AXIS_RULES, LogicalRules, create_sharded

Model = Bert | DistilBert


def model_class(config: ModelConfig) -> type[Bert] | type[DistilBert]:
    return Bert if config.family == "bert" else DistilBert


def create_model(config: ModelConfig, *, seed: int = 0, mesh: jax.sharding.Mesh | None = None,
                 rules: LogicalRules | None = None) -> Model:
    """Builds a randomly initialised model: on the default device, or, given a `mesh`, with every parameter
    created directly in the sharding its logical axes get under `rules` (default: the standard table)."""

    def build():
        return model_class(config)(config, rngs=nnx.Rngs(params=seed))

    if mesh is None:
        with nnx.use_eager_sharding(False):
            return build()
    return create_sharded(build, mesh, STANDARD_LOGICAL_AXIS_RULES if rules is None else rules)


def abstract_model(config: ModelConfig) -> Model:
    """The model's structure with `jax.ShapeDtypeStruct` leaves: no memory is allocated."""
    with nnx.use_eager_sharding(False):
        return nnx.eval_shape(lambda: model_class(config)(config, rngs=nnx.Rngs(params=0)))


def parameter_count(model_or_config) -> int:
    """Number of parameters, computed from shapes (a config is never materialised)."""
    model = abstract_model(model_or_config) if isinstance(model_or_config, ModelConfig) else model_or_config
    return sum(leaf.size for leaf in jax.tree.leaves(nnx.state(model, nnx.Param)))


def parameter_counts_by_module(model_or_config) -> dict[str, int]:
    """Parameters per module: `embeddings`, `layers.<i>`, and each head module (`pooler`, `mlm_head`, ...)."""
    model = abstract_model(model_or_config) if isinstance(model_or_config, ModelConfig) else model_or_config
    counts: dict[str, int] = {}
    for path, leaf in nnx.to_flat_state(nnx.state(model, nnx.Param)):
        if path[0] == "encoder":
            name = "embeddings" if path[1] == "embeddings" else f"layers.{path[2]}"
        else:
            name = str(path[0])
        counts[name] = counts.get(name, 0) + leaf.size
    return counts


__all__ = [
    "Bert",
    "DistilBert",
    "EncoderOutput",
    "Model",
    "ModelConfig",
    "abstract_model",
    "create_model",
    "distilmbert_base",
    "mbert_base",
    "model_class",
    "parameter_count",
    "parameter_counts_by_module",
    "student_config_for",
]
