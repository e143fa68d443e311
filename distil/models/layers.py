"""Building blocks shared by the BERT teacher and the DistilBERT student.

Both are post-LayerNorm transformer encoders with the same layer structure (self-attention -> add & norm ->
feed-forward -> add & norm), so one `TransformerLayer` serves both; they differ only in the embeddings (token types)
and the heads, which live in `bert.py` and `distilbert.py`.

Every parameter is created with logical axis names (`vocab`, `embed`, `heads`, `kv`, `mlp`, ...) and activations
are constrained with logical names (`batch`, `length`, `act_*`); which mesh axes these mean is decided by one rules
table (`distil.sharding.STANDARD_LOGICAL_AXIS_RULES` or the config's), never here. Without rules in scope the
constraints are no-ops, so the same modules run unsharded on one CPU.

Dropout is active only when the caller passes `dropout_rngs` (an `nnx.Rngs` with a `dropout` stream), which keeps
the training step pure: its dropout key is an input (`fold_in(rng, step)`), not hidden module state.
"""

from __future__ import annotations

import math
from typing import Sequence

import flax.linen as nn
import flax.struct
import jax
import jax.numpy as jnp
from flax import nnx

from distil.models.config import ModelConfig


@flax.struct.dataclass
class EncoderOutput:
    """What every encoder returns, mirroring transformers' output objects.

    last_hidden_state: [batch, length, hidden]
    hidden_states: the embedding output and every layer's output, each [batch, length, hidden]
    logits: MLM logits [batch, length, vocab], class logits [batch, num_labels], or None without a head
    attentions: with `output_attentions=True`, every layer's attention probabilities, each float32
        [batch, heads, query, key] (before attention dropout; transformers' `output_attentions` in eval mode)
    qkv: with `output_qkv=True`, every layer's (query, key, value) projections, each [batch, length, heads, head_dim]
        in the compute dtype (MiniLM-v2 relations)
    mlm_hidden, mlm_decoder: with `output_mlm_hidden=True` (and logits None), the MLM head's output before its
        decoder [batch, length, hidden] in the compute dtype, and the decoder as stored: (word embeddings
        [vocab, hidden], bias [vocab]); `vocabulary_losses.vocabulary_losses` takes them to never build the logits
    """

    last_hidden_state: jax.Array
    hidden_states: tuple[jax.Array, ...]
    logits: jax.Array | None = None
    attentions: tuple[jax.Array, ...] | None = None
    qkv: tuple[tuple[jax.Array, jax.Array, jax.Array], ...] | None = None
    mlm_hidden: jax.Array | None = None
    mlm_decoder: tuple[jax.Array, jax.Array] | None = None


def constrain(x: jax.Array, logical_axes: Sequence[str | None]) -> jax.Array:
    """Sharding constraint by logical names; a no-op unless `nnx.logical_axis_rules` is in scope."""
    return nn.with_logical_constraint(x, tuple(logical_axes))


def normal_init(config: ModelConfig, logical_axes: tuple[str | None, ...]):
    """BERT's N(0, initializer_range) weight init, with logical axis names attached."""
    return nnx.with_partitioning(nnx.initializers.normal(config.initializer_range), logical_axes)


def zeros_init(logical_axes: tuple[str | None, ...]):
    return nnx.with_partitioning(nnx.initializers.zeros_init(), logical_axes)


def ones_init(logical_axes: tuple[str | None, ...]):
    return nnx.with_partitioning(nnx.initializers.ones_init(), logical_axes)


def gelu(x: jax.Array) -> jax.Array:
    """Exact (erf) GELU, as transformers' "gelu"; the tanh approximation differs by up to ~1e-3."""
    return jax.nn.gelu(x, approximate=False)


def layer_norm(config: ModelConfig, *, rngs: nnx.Rngs) -> nnx.LayerNorm:
    return nnx.LayerNorm(
        config.hidden_size,
        epsilon=config.layer_norm_eps,
        dtype=jnp.dtype(config.dtype),
        param_dtype=jnp.dtype(config.param_dtype),
        scale_init=ones_init(("norm",)),
        bias_init=zeros_init(("norm",)),
        rngs=rngs,
    )


def dense(config: ModelConfig, in_features: int, out_features: int, axes: tuple[str, str], *, rngs: nnx.Rngs):
    return nnx.Linear(
        in_features,
        out_features,
        dtype=jnp.dtype(config.dtype),
        param_dtype=jnp.dtype(config.param_dtype),
        kernel_init=normal_init(config, axes),
        bias_init=zeros_init((axes[1],)),
        rngs=rngs,
    )


def lookup(embed: nnx.Embed, token_ids: jax.Array) -> jax.Array:
    """`embed(token_ids)` with the table's `embed` dimension gathered first: [batch, length, hidden].

    With the table split over `fsdp` along `embed` (ZeRO-3), a gather from it by batch-split ids would come out
    split along `embed` and XLA can only reshard that to batch-split activations by replicating everything (its
    "involuntary full rematerialization"). All-gathering the table's `embed` dimension first, as FSDP does for
    every weight before use, lets the gather produce batch-split rows directly; rows split over `tensor` (the
    vocabulary) stay split, a vocabulary-parallel lookup XLA partitions well.
    """
    row_axis = embed.embedding.get_metadata()["out_sharding"][0]  # `vocab`, `position` or `token_type`
    table = constrain(embed.embedding[...].astype(embed.dtype), (row_axis, None))  # [rows, hidden]
    return jnp.take(table, token_ids, axis=0)


def _embedding_init(config: ModelConfig, logical_axes: tuple[str, str], zero_row: int | None):
    """N(0, initializer_range), with the padding row zeroed as torch's `nn.Embedding(padding_idx=...)` does."""
    base = nnx.initializers.normal(config.initializer_range)

    def init(key, shape, dtype=jnp.float32):
        table = base(key, shape, dtype)
        return table if zero_row is None else table.at[zero_row].set(0)

    return nnx.with_partitioning(init, logical_axes)


def _sinusoidal_init(logical_axes: tuple[str, str]):
    """DistilBERT's `create_sinusoidal_embeddings` table (sin on even, cos on odd features)."""

    def init(key, shape, dtype=jnp.float32):
        del key
        positions, dim = shape
        angles = jnp.arange(positions)[:, None] / jnp.power(10000.0, 2 * (jnp.arange(dim) // 2) / dim)[None, :]
        table = jnp.where(jnp.arange(dim) % 2 == 0, jnp.sin(angles), jnp.cos(angles))
        return table.astype(dtype)

    return nnx.with_partitioning(init, logical_axes)


class Embeddings(nnx.Module):
    """word + position (+ token type) embeddings, LayerNorm, dropout."""

    def __init__(self, config: ModelConfig, *, rngs: nnx.Rngs):
        self.config = config
        self.word_embeddings = nnx.Embed(
            config.vocab_size,
            config.hidden_size,
            dtype=jnp.dtype(config.dtype),
            param_dtype=jnp.dtype(config.param_dtype),
            embedding_init=_embedding_init(config, ("vocab", "embed"), config.pad_token_id),
            rngs=rngs,
        )
        position_init = (
            _sinusoidal_init(("position", "embed"))
            if config.sinusoidal_pos_embds
            else _embedding_init(config, ("position", "embed"), None)
        )
        self.position_embeddings = nnx.Embed(
            config.max_position_embeddings,
            config.hidden_size,
            dtype=jnp.dtype(config.dtype),
            param_dtype=jnp.dtype(config.param_dtype),
            embedding_init=position_init,
            rngs=rngs,
        )
        self.token_type_embeddings = (
            nnx.Embed(
                config.type_vocab_size,
                config.hidden_size,
                dtype=jnp.dtype(config.dtype),
                param_dtype=jnp.dtype(config.param_dtype),
                embedding_init=_embedding_init(config, ("token_type", "embed"), None),
                rngs=rngs,
            )
            if config.type_vocab_size
            else None
        )
        self.layer_norm = layer_norm(config, rngs=rngs)
        self.dropout = nnx.Dropout(config.hidden_dropout)

    def __call__(self, input_ids, token_type_ids=None, position_ids=None, *, dropout_rngs: nnx.Rngs | None = None):
        """position_ids: [batch, length] (packed rows restart at 0 per sequence); default 0, 1, 2, ..."""
        length = input_ids.shape[1]
        if length > self.config.max_position_embeddings:
            raise ValueError(
                f"input length {length} exceeds max_position_embeddings={self.config.max_position_embeddings}"
            )
        if position_ids is None:
            positions = self.position_embeddings(jnp.arange(length))[None]
        else:
            positions = lookup(self.position_embeddings, position_ids)
        embedded = lookup(self.word_embeddings, input_ids) + positions
        if self.token_type_embeddings is not None:
            if token_type_ids is None:
                token_type_ids = jnp.zeros_like(input_ids)
            embedded = embedded + lookup(self.token_type_embeddings, token_type_ids)
        embedded = self.layer_norm(embedded)
        embedded = self.dropout(embedded, deterministic=dropout_rngs is None, rngs=dropout_rngs)
        return constrain(embedded, ("batch", "length", "act_embed"))


class SelfAttention(nnx.Module):
    """Multi-head self-attention with per-head [embed, heads, kv] projections.

    Softmax runs in float32. Masked keys get float32's most negative value, as transformers' eager attention does, so
    padded query rows still attend to the real tokens and match the reference everywhere, padding included.
    Attention-probability dropout (as in BERT/DistilBERT) is why this is written out instead of using
    `jax.nn.dot_product_attention`, which has no dropout.

    With `with_internals=True` it also returns `(probs, (query, key, value))` for the distillation losses: the
    float32 probabilities before dropout [batch, heads, query, key] and the projections [batch, length, heads, kv].
    """

    def __init__(self, config: ModelConfig, *, rngs: nnx.Rngs):
        self.config = config
        heads, head_dim, hidden = config.num_attention_heads, config.head_dim, config.hidden_size

        def projection():
            return nnx.LinearGeneral(
                hidden,
                (heads, head_dim),
                dtype=jnp.dtype(config.dtype),
                param_dtype=jnp.dtype(config.param_dtype),
                kernel_init=normal_init(config, ("embed", "heads", "kv")),
                bias_init=zeros_init(("heads", "kv")),
                rngs=rngs,
            )

        self.query, self.key, self.value = projection(), projection(), projection()
        self.output = nnx.LinearGeneral(
            (heads, head_dim),
            hidden,
            axis=(-2, -1),
            dtype=jnp.dtype(config.dtype),
            param_dtype=jnp.dtype(config.param_dtype),
            kernel_init=normal_init(config, ("heads", "kv", "embed")),
            bias_init=zeros_init(("embed",)),
            rngs=rngs,
        )
        self.dropout = nnx.Dropout(config.attention_dropout)

    def __call__(self, hidden, attention_mask, *, dropout_rngs: nnx.Rngs | None = None, with_internals=False):
        head_axes = ("batch", "length", "act_heads", "act_kv")
        query = constrain(self.query(hidden), head_axes)  # [batch, length, heads, head_dim]
        key = constrain(self.key(hidden), head_axes)
        value = constrain(self.value(hidden), head_axes)
        scores = jnp.einsum("bqhd,bkhd->bhqk", query, key).astype(jnp.float32) / math.sqrt(self.config.head_dim)
        # attention_mask: [batch, key] (padding) or [batch, query, key] (packed rows: block-diagonal by segment).
        keys = attention_mask[:, None, None, :] if attention_mask.ndim == 2 else attention_mask[:, None, :, :]
        scores = jnp.where(keys.astype(bool), scores, jnp.finfo(jnp.float32).min)
        fp32_probs = jax.nn.softmax(scores, axis=-1)  # [batch, heads, query, key]
        probs = self.dropout(fp32_probs.astype(value.dtype), deterministic=dropout_rngs is None, rngs=dropout_rngs)
        context = constrain(jnp.einsum("bhqk,bkhd->bqhd", probs, value), head_axes)
        if with_internals:
            return self.output(context), (fp32_probs, (query, key, value))
        return self.output(context)


class FeedForward(nnx.Module):
    def __init__(self, config: ModelConfig, *, rngs: nnx.Rngs):
        self.intermediate = dense(config, config.hidden_size, config.intermediate_size, ("embed", "mlp"), rngs=rngs)
        self.output = dense(config, config.intermediate_size, config.hidden_size, ("mlp", "embed"), rngs=rngs)

    def __call__(self, hidden):
        activated = constrain(gelu(self.intermediate(hidden)), ("batch", "length", "act_mlp"))
        return self.output(activated)


class TransformerLayer(nnx.Module):
    """Post-LN block: x = LN(x + drop(attn(x))); x = LN(x + drop(ffn(x))) — BERT's and DistilBERT's alike."""

    def __init__(self, config: ModelConfig, *, rngs: nnx.Rngs):
        self.attention = SelfAttention(config, rngs=rngs)
        self.attention_norm = layer_norm(config, rngs=rngs)
        self.ffn = FeedForward(config, rngs=rngs)
        self.output_norm = layer_norm(config, rngs=rngs)
        self.dropout = nnx.Dropout(config.hidden_dropout)

    def __call__(self, hidden, attention_mask, *, dropout_rngs: nnx.Rngs | None = None, with_internals=False):
        """The layer output; with `with_internals=True`, `(output, internals)` as `SelfAttention` returns them."""
        deterministic = dropout_rngs is None
        attended = self.attention(hidden, attention_mask, dropout_rngs=dropout_rngs, with_internals=with_internals)
        if with_internals:
            attended, internals = attended
        hidden = self.attention_norm(hidden + self.dropout(attended, deterministic=deterministic, rngs=dropout_rngs))
        transformed = self.ffn(hidden)
        hidden = self.output_norm(hidden + self.dropout(transformed, deterministic=deterministic, rngs=dropout_rngs))
        hidden = constrain(hidden, ("batch", "length", "act_embed"))
        return (hidden, internals) if with_internals else hidden


class Encoder(nnx.Module):
    """Embeddings and a stack of `TransformerLayer`s; returns every hidden state (distillation needs them).

    `output_attentions` / `output_qkv` add every layer's attention probabilities / q, k, v projections to the
    output (`EncoderOutput.attentions` / `.qkv`); they are static flags, so a jitted step that does not ask for them
    neither computes nor carries them, and the default output is unchanged.
    """

    def __init__(self, config: ModelConfig, *, rngs: nnx.Rngs):
        self.embeddings = Embeddings(config, rngs=rngs)
        self.layers = nnx.List([TransformerLayer(config, rngs=rngs) for _ in range(config.num_hidden_layers)])

    def __call__(self, input_ids, attention_mask=None, token_type_ids=None, *, segment_ids=None, position_ids=None,
                 dropout_rngs=None, output_attentions=False, output_qkv=False) -> EncoderOutput:
        """segment_ids: [batch, length] for packed rows (1, 2, ... per sequence, 0 = padding): a token attends only
        to tokens of its own sequence, so each packed sequence is encoded exactly as it would be alone (with its
        `position_ids` restarting at 0)."""
        if attention_mask is None:
            attention_mask = jnp.ones_like(input_ids)
        if segment_ids is not None:  # [batch, query, key]
            attention_mask = (segment_ids[:, :, None] == segment_ids[:, None, :]) & (segment_ids[:, None, :] > 0)
        with_internals = bool(output_attentions or output_qkv)
        hidden = self.embeddings(input_ids, token_type_ids, position_ids, dropout_rngs=dropout_rngs)
        hidden_states, attentions, qkv = [hidden], [], []
        for layer in self.layers:
            hidden = layer(hidden, attention_mask, dropout_rngs=dropout_rngs, with_internals=with_internals)
            if with_internals:
                hidden, (probs, layer_qkv) = hidden
                attentions.append(probs)
                qkv.append(layer_qkv)
            hidden_states.append(hidden)
        return EncoderOutput(
            last_hidden_state=hidden,
            hidden_states=tuple(hidden_states),
            attentions=tuple(attentions) if output_attentions else None,
            qkv=tuple(qkv) if output_qkv else None,
        )


class MlmHead(nnx.Module):
    """dense -> GELU -> LayerNorm -> decoder tied to the word embeddings, plus a vocab bias.

    BERT calls these `cls.predictions.{transform.dense, transform.LayerNorm, bias}`, DistilBERT
    `vocab_transform`, `vocab_layer_norm`, `vocab_projector.bias`; the computation is the same.
    """

    def __init__(self, config: ModelConfig, *, rngs: nnx.Rngs):
        self.transform = dense(config, config.hidden_size, config.hidden_size, ("embed", "hidden"), rngs=rngs)
        self.layer_norm = layer_norm(config, rngs=rngs)
        bias_init = zeros_init(("vocab",))
        self.bias = nnx.Param(bias_init(rngs.params(), (config.vocab_size,), jnp.dtype(config.param_dtype)))

    def __call__(self, hidden, word_embeddings: nnx.Embed, *, output_hidden=False):
        """Logits [batch, length, vocab]; with `output_hidden=True` instead (decoder input [batch, length, hidden],
        (embedding [vocab, hidden], bias [vocab])) for losses that apply the decoder in chunks."""
        transformed = self.layer_norm(gelu(self.transform(hidden)))
        if output_hidden:
            return transformed, (word_embeddings.embedding[...], self.bias[...])
        logits = word_embeddings.attend(transformed) + self.bias[...].astype(transformed.dtype)
        return constrain(logits, ("batch", "length", "act_vocab"))  # [batch, length, vocab]


def head_outputs(model, encoded: EncoderOutput, *, pool, dropout_rngs, output_mlm_hidden: bool) -> EncoderOutput:
    """What BERT and DistilBERT do alike after their encoders: the MLM head's logits (or, with `output_mlm_hidden`,
    its hidden states and tied decoder, for losses that apply the decoder in chunks), or the classifier's logits
    on `pool(first token)` after dropout, or no logits (a headless model). `model` has `encoder`, `mlm_head`,
    `classifier` and `classifier_dropout`; `pool` is the family's own ([CLS] -> pooled)."""
    last_hidden = encoded.last_hidden_state
    word_embeddings = model.encoder.embeddings.word_embeddings
    if model.mlm_head is not None and output_mlm_hidden:  # no logits: the loss applies the decoder in chunks
        mlm_hidden, mlm_decoder = model.mlm_head(last_hidden, word_embeddings, output_hidden=True)
        return encoded.replace(mlm_hidden=mlm_hidden, mlm_decoder=mlm_decoder)
    logits = None
    if model.mlm_head is not None:
        logits = model.mlm_head(last_hidden, word_embeddings)
    elif model.classifier is not None:
        pooled = model.classifier_dropout(pool(last_hidden[:, 0]), deterministic=dropout_rngs is None,
                                          rngs=dropout_rngs)
        logits = model.classifier(pooled)  # [batch, num_labels]
    return encoded.replace(logits=logits)
