"""The one description of an encoder's shape, shared by the BERT teacher and the DistilBERT student.

Field names follow BERT's `config.json` (hidden_size, num_hidden_layers, ...); `distil.hf` translates DistilBERT's
(dim, n_layers, ...) into these. Sizes are plain ints so a config can be hashed and used as a static jit argument.
"""

from __future__ import annotations

import dataclasses
from typing import Literal

Family = Literal["bert", "distilbert"]
Head = Literal[None, "mlm", "classification"]

DTYPE_NAMES = ("bfloat16", "float16", "float32")
"""The dtypes a config may name; `jnp.dtype(name)` turns a name into the dtype."""


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """Shape, regularisation and precision of a BERT or DistilBERT encoder and its optional head.

    `dtype` is the compute dtype of activations and matmuls; `param_dtype` the storage dtype of parameters. Softmax
    and LayerNorm statistics are always computed in float32. Both are names (as in config.json and as flax calls
    its two arguments), so a config stays hashable and printable; modules take `jnp.dtype(config.dtype)`.
    """

    family: Family = "bert"
    vocab_size: int = 119_547
    hidden_size: int = 768
    num_hidden_layers: int = 12
    num_attention_heads: int = 12
    intermediate_size: int = 3072
    max_position_embeddings: int = 512
    # 0 means no token-type embedding (DistilBERT).
    type_vocab_size: int = 2
    # BERT reads it from config.json; DistilBERT hard-codes 1e-12 in its modules.
    layer_norm_eps: float = 1e-12
    hidden_dropout: float = 0.1
    attention_dropout: float = 0.1
    # BERT: config.classifier_dropout (None -> hidden_dropout); DistilBERT: config.seq_classif_dropout.
    classifier_dropout: float | None = None
    hidden_act: str = "gelu"
    initializer_range: float = 0.02
    pad_token_id: int = 0
    # BERT's pooler (dense + tanh on [CLS]); DistilBERT has none.
    add_pooler: bool = True
    sinusoidal_pos_embds: bool = False
    head: Head = None
    num_labels: int = 3
    dtype: str = "float32"
    param_dtype: str = "float32"

    def __post_init__(self):
        if self.family not in ("bert", "distilbert"):
            raise ValueError(f"family must be 'bert' or 'distilbert', got {self.family!r}")
        if self.head not in (None, "mlm", "classification"):
            raise ValueError(f"head must be None, 'mlm' or 'classification', got {self.head!r}")
        if self.hidden_size % self.num_attention_heads:
            raise ValueError(
                f"hidden_size ({self.hidden_size}) must be divisible by num_attention_heads "
                f"({self.num_attention_heads})"
            )
        if self.hidden_act not in ("gelu",):
            raise ValueError(f"hidden_act {self.hidden_act!r} is not supported (only exact-erf 'gelu')")
        if self.family == "distilbert" and (self.type_vocab_size or self.add_pooler):
            raise ValueError("a distilbert config has no token types and no pooler")
        for field in ("dtype", "param_dtype"):
            if getattr(self, field) not in DTYPE_NAMES:
                raise ValueError(f"{field} must be one of {list(DTYPE_NAMES)}, got {getattr(self, field)!r}")

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads

    @property
    def classifier_dropout_rate(self) -> float:
        return self.hidden_dropout if self.classifier_dropout is None else self.classifier_dropout

    def replace(self, **changes) -> "ModelConfig":
        return dataclasses.replace(self, **changes)

    def forward_flops_per_token(self, length: int) -> float:
        """Matmul FLOPs of one forward pass per token of a `length`-token sequence: each layer's projections and
        MLP, attention scores and context, and the MLM head's transform and vocabulary projection when it has one
        (model FLOPs, as MFU counts them; a backward pass is twice a forward)."""
        width = self.hidden_size
        layer = 2 * (4 * width * width + 2 * width * self.intermediate_size) + 2 * 2 * length * width
        head = 2 * width * width + 2 * width * self.vocab_size if self.head == "mlm" else 0
        return self.num_hidden_layers * layer + head


def mbert_base(**overrides) -> ModelConfig:
    """bert-base-multilingual-cased: 12 layers, 768 wide, 12 heads, 119,547 WordPiece tokens."""
    return ModelConfig(family="bert", **overrides)


def distilmbert_base(**overrides) -> ModelConfig:
    """distilbert-base-multilingual-cased: mBERT's width with 6 layers, no token types and no pooler.

    Its classification dropout is DistilBERT's `seq_classif_dropout` (0.2).
    """
    fields = dict(
        family="distilbert",
        num_hidden_layers=6,
        type_vocab_size=0,
        add_pooler=False,
        classifier_dropout=0.2,
    )
    fields.update(overrides)
    return ModelConfig(**fields)


def student_config_for(teacher: ModelConfig, num_layers: int, **overrides) -> ModelConfig:
    """A DistilBERT config as wide as `teacher` (the layer-map initialisation needs that), with `num_layers` layers:
    the teacher's config without token types and pooler, with DistilBERT's fixed LayerNorm eps and classifier
    dropout."""
    fields = dict(
        family="distilbert",
        num_hidden_layers=num_layers,
        type_vocab_size=0,
        add_pooler=False,
        layer_norm_eps=1e-12,
        classifier_dropout=0.2,
    )
    fields.update(overrides)
    return teacher.replace(**fields)
