"""distil.models: sizes, logical axis names, precision and dropout of the NNX encoders."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from conftest import padded_batch
from distil.models import (ModelConfig, abstract_model, create_model, distilmbert_base, mbert_base,
                           parameter_count)
from distil.sharding import STANDARD_LOGICAL_AXIS_RULES

TINY = dict(vocab_size=97, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=48,
            max_position_embeddings=40)


def test_full_size_parameter_counts_match_references():
    # transformers' BertModel (with pooler) and DistilBertModel for the multilingual cased checkpoints.
    assert parameter_count(mbert_base()) == 177_853_440
    assert parameter_count(distilmbert_base()) == 134_734_080


def test_parameter_count_by_hand():
    config = ModelConfig(**TINY)
    hidden, inner, vocab = 32, 48, 97
    embeddings = vocab * hidden + 40 * hidden + 2 * hidden + 2 * hidden
    layer = 4 * (hidden * hidden + hidden) + 2 * 2 * hidden + hidden * inner + inner + inner * hidden + hidden
    pooler = hidden * hidden + hidden
    assert parameter_count(config) == embeddings + 2 * layer + pooler
    mlm_head = hidden * hidden + hidden + 2 * hidden + vocab  # transform, LayerNorm, bias (decoder tied)
    assert parameter_count(config.replace(head="mlm", add_pooler=False)) == embeddings + 2 * layer + mlm_head


@pytest.mark.parametrize("config", [mbert_base(head="mlm", add_pooler=False), mbert_base(head="classification"),
                                    distilmbert_base(head="mlm"), distilmbert_base(head="classification")])
def test_every_parameter_has_logical_axes_known_to_the_rules(config):
    known = {name for name, _ in STANDARD_LOGICAL_AXIS_RULES}
    params = nnx.to_flat_state(nnx.state(abstract_model(config), nnx.Param))
    assert len(params) > 0
    for path, leaf in params:
        axes = leaf.get_metadata().get("out_sharding")
        assert axes is not None and len(axes) == leaf.ndim, (path, axes)
        assert set(axes) <= known, (path, axes)
        spec = nn.logical_to_mesh_axes(axes, STANDARD_LOGICAL_AXIS_RULES)
        mesh_axes = [a for entry in spec if entry for a in ((entry,) if isinstance(entry, str) else entry)]
        assert len(mesh_axes) == len(set(mesh_axes)), (path, spec)  # no mesh axis used twice


def test_attention_matches_numpy_reference():
    """One layer's self-attention worked out in NumPy from the parameters."""
    config = ModelConfig(**TINY)
    model = create_model(config, seed=3)
    attention = model.encoder.layers[0].attention
    rng = np.random.default_rng(0)
    hidden = rng.normal(size=(2, 6, 32)).astype(np.float32)
    mask = np.array([[1] * 6, [1, 1, 1, 0, 0, 0]], np.int32)

    def project(module, x):
        return np.einsum("ble,ehd->blhd", x, np.asarray(module.kernel[...])) + np.asarray(module.bias[...])

    q, k, v = (project(m, hidden) for m in (attention.query, attention.key, attention.value))
    scores = np.einsum("bqhd,bkhd->bhqk", q, k) / np.sqrt(8)
    scores = np.where(mask[:, None, None, :] == 1, scores, -np.inf)
    probs = np.exp(scores - scores.max(-1, keepdims=True))
    probs /= probs.sum(-1, keepdims=True)
    context = np.einsum("bhqk,bkhd->bqhd", probs, v)
    expected = np.einsum("bqhd,hde->bqe", context, np.asarray(attention.output.kernel[...])) + np.asarray(
        attention.output.bias[...])
    ours = attention(jnp.asarray(hidden), jnp.asarray(mask))
    np.testing.assert_allclose(np.asarray(ours), expected, atol=1e-5)


def test_bf16_compute_close_to_fp32():
    config = ModelConfig(**TINY, head="mlm", add_pooler=False)
    fp32 = create_model(config, seed=1)
    bf16 = create_model(config.replace(dtype="bfloat16"), seed=1)
    input_ids, attention_mask, token_types = padded_batch(97, [12, 5], 12)
    out32 = fp32(jnp.asarray(input_ids), jnp.asarray(attention_mask), jnp.asarray(token_types))
    out16 = bf16(jnp.asarray(input_ids), jnp.asarray(attention_mask), jnp.asarray(token_types))
    assert bf16.encoder.layers[0].ffn.intermediate.kernel.dtype == jnp.float32  # storage stays fp32
    assert out16.logits.dtype == jnp.bfloat16
    np.testing.assert_allclose(np.asarray(out16.logits, np.float32), np.asarray(out32.logits), atol=0.1)
    assert not np.array_equal(np.asarray(out16.logits, np.float32), np.asarray(out32.logits))


def test_dropout_only_with_rngs_and_reproducible():
    config = ModelConfig(**TINY, hidden_dropout=0.3, attention_dropout=0.3)
    model = create_model(config)
    input_ids, attention_mask, _ = padded_batch(97, [10, 10], 10)
    args = (jnp.asarray(input_ids), jnp.asarray(attention_mask))
    plain_a, plain_b = model(*args), model(*args)
    np.testing.assert_array_equal(plain_a.last_hidden_state, plain_b.last_hidden_state)
    drop_a = model(*args, dropout_rngs=nnx.Rngs(dropout=7))
    drop_b = model(*args, dropout_rngs=nnx.Rngs(dropout=7))
    drop_c = model(*args, dropout_rngs=nnx.Rngs(dropout=8))
    np.testing.assert_array_equal(drop_a.last_hidden_state, drop_b.last_hidden_state)
    assert not np.allclose(drop_a.last_hidden_state, plain_a.last_hidden_state)
    assert not np.allclose(drop_a.last_hidden_state, drop_c.last_hidden_state)


def test_embedding_dropout_rate():
    """Dropout keeps a (1 - rate) fraction and rescales by 1 / (1 - rate), like torch's nn.Dropout."""
    config = ModelConfig(**TINY, hidden_dropout=0.25)
    embeddings = create_model(config).encoder.embeddings
    input_ids = jnp.asarray(np.random.default_rng(0).integers(1, 97, size=(64, 40)), jnp.int32)
    clean = np.asarray(embeddings(input_ids))
    dropped = np.asarray(embeddings(input_ids, dropout_rngs=nnx.Rngs(dropout=0)))
    kept = dropped != 0
    assert abs(kept.mean() - 0.75) < 0.01
    np.testing.assert_allclose(dropped[kept], clean[kept] / 0.75, rtol=1e-5)


def test_token_types_rejected_by_distilbert_and_long_inputs_rejected():
    model = create_model(distilmbert_base(**{k: v for k, v in TINY.items()}))
    ids = jnp.ones((1, 4), jnp.int32)
    with pytest.raises(ValueError, match="token_type_ids=None"):
        model(ids, token_type_ids=jnp.zeros_like(ids))
    with pytest.raises(ValueError, match="max_position_embeddings=40"):
        model(jnp.ones((1, 41), jnp.int32))


def test_bad_config_fields_are_named():
    with pytest.raises(ValueError, match="divisible by num_attention_heads"):
        ModelConfig(hidden_size=30, num_attention_heads=4)
    with pytest.raises(ValueError, match="param_dtype must be one of"):
        ModelConfig(param_dtype="float8")
    with pytest.raises(ValueError, match="no token types"):
        ModelConfig(family="distilbert", type_vocab_size=2, add_pooler=False)


def test_model_is_jittable_as_split_state():
    config = ModelConfig(**TINY, head="mlm", add_pooler=False)
    model = create_model(config)
    graphdef, params = nnx.split(model)

    @jax.jit
    def forward(params, input_ids):
        return nnx.merge(graphdef, params)(input_ids).logits

    ids = jnp.asarray(np.arange(12).reshape(2, 6) % 97, jnp.int32)
    np.testing.assert_allclose(forward(params, ids), model(ids).logits, atol=1e-5)


def test_sinusoidal_positions_match_transformers():
    import torch
    import transformers

    config = transformers.DistilBertConfig(vocab_size=97, dim=32, n_layers=1, n_heads=4, hidden_dim=48,
                                           max_position_embeddings=40, sinusoidal_pos_embds=True)
    torch.manual_seed(0)
    reference = transformers.DistilBertModel(config).embeddings.position_embeddings.weight.detach().numpy()
    ours = create_model(distilmbert_base(**{**TINY, "num_hidden_layers": 1}, sinusoidal_pos_embds=True))
    np.testing.assert_allclose(np.asarray(ours.encoder.embeddings.position_embeddings.embedding[...]), reference,
                               atol=1e-6)


@pytest.mark.parametrize("family", ["bert", "distilbert"])
def test_packed_rows_encode_each_sequence_as_alone(family):
    """Several sequences in one row (segment ids, positions restarting) give every sequence exactly the hidden states
    and MLM logits it gets alone in its own padded row."""
    extra = dict(type_vocab_size=0, add_pooler=False) if family == "distilbert" else dict(add_pooler=False)
    config = ModelConfig(family=family, **{**TINY, "num_hidden_layers": 3}, head="mlm", **extra)
    model = create_model(config, seed=4)
    rng = np.random.default_rng(3)
    lengths = [[7, 5, 9], [12, 3], [20]]  # three packed rows of at most 24 tokens
    length = 24
    packed = {name: np.zeros((3, length), np.int32) for name in ("input_ids", "segment_ids", "position_ids")}
    sequences = []
    for row, row_lengths in enumerate(lengths):
        start = 0
        for segment, size in enumerate(row_lengths, 1):
            tokens = rng.integers(5, 97, size=size).astype(np.int32)
            sequences.append((row, start, tokens))
            packed["input_ids"][row, start:start + size] = tokens
            packed["segment_ids"][row, start:start + size] = segment
            packed["position_ids"][row, start:start + size] = np.arange(size)
            start += size
    real = (packed["segment_ids"] > 0).astype(np.int32)
    out = model(jnp.asarray(packed["input_ids"]), jnp.asarray(real), segment_ids=jnp.asarray(packed["segment_ids"]),
                position_ids=jnp.asarray(packed["position_ids"]))
    for row, start, tokens in sequences:
        alone_ids = np.zeros((1, length), np.int32)
        alone_ids[0, :len(tokens)] = tokens
        alone = model(jnp.asarray(alone_ids), jnp.asarray((alone_ids > 0).astype(np.int32)))
        span = slice(start, start + len(tokens))
        for got, want in zip(out.hidden_states, alone.hidden_states):
            np.testing.assert_allclose(np.asarray(got[row, span]), np.asarray(want[0, :len(tokens)]), atol=2e-5)
        np.testing.assert_allclose(np.asarray(out.logits[row, span]), np.asarray(alone.logits[0, :len(tokens)]),
                                   atol=2e-5)


@pytest.mark.parametrize("family", ["bert", "distilbert"])
def test_mlm_hidden_and_decoder_give_the_logits(family):
    """`output_mlm_hidden=True` hands over the MLM head's decoder input and the tied decoder instead of logits:
    hidden @ embeddingᵀ + bias is the default output's logits, and every other output is unchanged."""
    config = (mbert_base(**TINY, head="mlm", add_pooler=False) if family == "bert"
              else distilmbert_base(**TINY, head="mlm"))
    model = create_model(config, seed=3)
    model.mlm_head.bias[...] = jax.random.normal(jax.random.key(0), (config.vocab_size,))
    input_ids, attention_mask, _ = padded_batch(config.vocab_size, [6, 3], 6)
    default = model(input_ids, attention_mask)
    split = model(input_ids, attention_mask, output_mlm_hidden=True)
    assert default.mlm_hidden is None and default.mlm_decoder is None and split.logits is None
    embedding, bias = split.mlm_decoder
    assert embedding is not None and embedding.shape == (config.vocab_size, config.hidden_size)
    np.testing.assert_array_equal(embedding, model.encoder.embeddings.word_embeddings.embedding[...])
    np.testing.assert_allclose(split.mlm_hidden @ embedding.T + bias, default.logits, atol=1e-5)
    np.testing.assert_array_equal(split.last_hidden_state, default.last_hidden_state)


def test_forward_flops_per_token_by_hand():
    """2 layers of width 8 (MLP 16), 10 tokens of vocabulary, length 4: per layer 2·(4·8² + 2·8·16) projections and
    MLP + 2·2·4·8 attention = 1,152; the MLM head 2·8² + 2·8·10 = 288; without a head, the layers only."""
    config = ModelConfig(vocab_size=10, hidden_size=8, num_hidden_layers=2, num_attention_heads=2,
                         intermediate_size=16, head="mlm")
    assert config.forward_flops_per_token(4) == 2 * 1152 + 288
    assert config.replace(head=None).forward_flops_per_token(4) == 2 * 1152
