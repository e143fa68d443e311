"""Distillation objectives: the DistilBERT recipe's four terms and the TinyBERT / MiniLM intermediate losses.

Every loss returns a `(loss_sum, count)` pair of float32 scalars, never a mean: the trainer sums both over
micro-batches (and hosts) and divides once per update, so an accumulated update equals the full-batch one even when
micro-batches hold different numbers of real tokens or MLM targets. `loss_sum / count` is the reference's mean.

All arithmetic is float32 whatever the model's compute dtype (inputs are upcast first), and every teacher input
passes through `jax.lax.stop_gradient` here, so a caller cannot leak gradients into the teacher by mistake.
`weights` are per-position [batch, length] floats or ints (0 drops a position): the attention mask for "all real
tokens", or `mlm_labels != IGNORE_INDEX` for the reference's `restrict_ce_to_mask`.

The reference is Hugging Face's `examples/research_projects/distillation/distiller.py` (Sanh et al. 2019,
DistilBERT): `loss_ce`, `loss_mlm`, `loss_cos`, `loss_mse`. Beyond it: TinyBERT's hidden-state MSE with a learned
projection (Jiao et al. 2020, eq. 8), the attention-distribution KL of MiniLM (Wang et al. 2020, eq. 5; TinyBERT
distils the same distributions with an MSE on scores), and MiniLM-v2's multi-head self-attention relations
(Wang et al. 2021, eqs. 5-7).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence

import jax
import jax.numpy as jnp
from flax import nnx

from distil.data.masking import IGNORE_INDEX

Loss = tuple[jax.Array, jax.Array]  # (sum, count), float32 scalars
RELATIONS = ("query", "key", "value")
# torch.nn.CosineEmbeddingLoss's epsilon: cos = <s, t> / sqrt((|s|^2 + eps) (|t|^2 + eps)).
_COSINE_EPS = 1e-12


def as_float32(x) -> jax.Array:
    """Every loss computes in float32, whatever the model's dtype (also `distil.vocabulary_losses`)."""
    return jnp.asarray(x).astype(jnp.float32)


def _teacher(x) -> jax.Array:
    return jax.lax.stop_gradient(as_float32(x))


def _check_same_shape(student, teacher, what: str):
    if student.shape != teacher.shape:
        raise ValueError(f"student and teacher {what} differ in shape: {student.shape} vs {teacher.shape}")


def check_weights(weights, shape, what: str = "weights") -> jax.Array:
    """Per-position weights as float32 [batch, length]; another shape is a ValueError naming `what`."""
    weights = as_float32(weights)
    if weights.shape != tuple(shape):
        raise ValueError(f"{what} must be [batch, length] = {list(shape)}, got {list(weights.shape)}")
    return weights


def _kl_over_last_axis(teacher_log_probs, student_log_probs, keep=None) -> jax.Array:
    """sum_k p_t (log p_t - log p_s) over the last axis; entries where `keep` is False (masked keys) add 0.

    Written with exp(log p_t) rather than xlogy so that both arguments stay finite log-probabilities and no NaN can
    reach the gradient through a discarded `where` branch.
    """
    terms = jnp.exp(teacher_log_probs) * (teacher_log_probs - student_log_probs)
    if keep is not None:
        terms = jnp.where(keep, terms, 0.0)
    return terms.sum(-1)


# ---------------------------------------------------------------------------------------------------------------
# The reference recipe (distiller.py).


def soft_cross_entropy(student_logits, teacher_logits, weights, temperature: float) -> Loss:
    """The reference `loss_ce`: T² · KL(softmax(t/T) || softmax(s/T)), summed over the vocabulary.

    student_logits, teacher_logits: [batch, length, vocab]; weights: [batch, length].
    sum = Σ_positions weights · T² · Σ_v p_t (log p_t - log p_s); count = Σ weights (the number of selected
    positions). distiller.py's `nn.KLDivLoss(reduction="batchmean")` over the selected rows is sum / count.
    """
    if isinstance(temperature, (int, float)) and not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    student_logits, teacher_logits = as_float32(student_logits), _teacher(teacher_logits)
    _check_same_shape(student_logits, teacher_logits, "logits")
    weights = check_weights(weights, student_logits.shape[:2])
    student_log_probs = jax.nn.log_softmax(student_logits / temperature, axis=-1)
    teacher_log_probs = jax.nn.log_softmax(teacher_logits / temperature, axis=-1)
    per_position = _kl_over_last_axis(teacher_log_probs, student_log_probs) * (temperature**2)  # [batch, length]
    return (per_position * weights).sum(), weights.sum()


def masked_lm(student_logits, mlm_labels) -> Loss:
    """The reference `loss_mlm`: cross-entropy at MLM targets (labels != IGNORE_INDEX = -100).

    student_logits: [batch, length, vocab]; mlm_labels: int [batch, length].
    sum = Σ_targets -log softmax(s)[label]; count = number of targets (torch's CrossEntropyLoss(ignore_index=-100)
    mean is sum / count).
    """
    student_logits = as_float32(student_logits)
    mlm_labels = jnp.asarray(mlm_labels)
    if mlm_labels.shape != student_logits.shape[:2]:
        raise ValueError(f"mlm_labels must be [batch, length] = {list(student_logits.shape[:2])}, "
                         f"got {list(mlm_labels.shape)}")
    is_target = mlm_labels != IGNORE_INDEX
    safe_labels = jnp.where(is_target, mlm_labels, 0)
    log_probs = jax.nn.log_softmax(student_logits, axis=-1)
    label_log_probs = jnp.take_along_axis(log_probs, safe_labels[..., None], axis=-1)[..., 0]  # [batch, length]
    return -jnp.where(is_target, label_log_probs, 0.0).sum(), is_target.sum().astype(jnp.float32)


def hidden_cosine(student_hidden, teacher_hidden, weights) -> Loss:
    """The reference `loss_cos`: 1 - cos(student, teacher) of the last hidden states, per position.

    student_hidden, teacher_hidden: [batch, length, hidden]; weights: [batch, length] (the reference uses the
    attention mask here even with `restrict_ce_to_mask`). Cosine as torch's CosineEmbeddingLoss (target 1), whose
    mean over the selected positions is sum / count; count = Σ weights.
    """
    student_hidden, teacher_hidden = as_float32(student_hidden), _teacher(teacher_hidden)
    _check_same_shape(student_hidden, teacher_hidden, "hidden states")
    weights = check_weights(weights, student_hidden.shape[:2])
    dot = (student_hidden * teacher_hidden).sum(-1)
    norms = jnp.sqrt(((student_hidden**2).sum(-1) + _COSINE_EPS) * ((teacher_hidden**2).sum(-1) + _COSINE_EPS))
    return ((1.0 - dot / norms) * weights).sum(), weights.sum()


def logits_mse(student_logits, teacher_logits, weights) -> Loss:
    """The reference `loss_mse`: `MSELoss(reduction="sum")` over the selected positions' logits / their number.

    student_logits, teacher_logits: [batch, length, vocab]; weights: [batch, length] (the same selection as `ce`).
    sum = Σ_positions weights · Σ_v (s - t)²; count = Σ weights.
    """
    student_logits, teacher_logits = as_float32(student_logits), _teacher(teacher_logits)
    _check_same_shape(student_logits, teacher_logits, "logits")
    weights = check_weights(weights, student_logits.shape[:2])
    return (((student_logits - teacher_logits) ** 2).sum(-1) * weights).sum(), weights.sum()


# ---------------------------------------------------------------------------------------------------------------
# Intermediate layers: TinyBERT hidden states, attention distributions.


def _layer_pairs(layer_map: Sequence[int] | Mapping[int, int], num_student: int, num_teacher: int, what: str):
    """[(student_index, teacher_index), ...] from a sequence (entry i is student i's teacher) or a mapping."""
    pairs = list(layer_map.items()) if isinstance(layer_map, Mapping) else list(enumerate(layer_map))
    if not pairs:
        raise ValueError(f"layer_map for {what} is empty")
    for student_index, teacher_index in pairs:
        if not 0 <= student_index < num_student:
            raise ValueError(f"layer_map: student {what} index {student_index} outside [0, {num_student})")
        if not 0 <= teacher_index < num_teacher:
            raise ValueError(f"layer_map: teacher {what} index {teacher_index} outside [0, {num_teacher}) "
                             f"(student {student_index} -> teacher {teacher_index})")
    return pairs


class HiddenProjection(nnx.Module):
    """TinyBERT's `fit_dense`: one learned linear map student_width -> teacher_width shared by every layer pair.

    A trainable part of the student side of distillation, not of the student model: the trainer keeps it beside
    the student (e.g. an `nnx.Module` holding `model` and `hidden_projection`) so the optimizer, gradients and
    checkpoints cover it, while `hf.save_pretrained` exports `model` alone. N(0, initializer_range) kernel, zero
    bias, float32 (losses run in float32).
    """

    def __init__(self, student_width: int, teacher_width: int, *, rngs: nnx.Rngs, initializer_range: float = 0.02):
        self.linear = nnx.Linear(
            student_width,
            teacher_width,
            kernel_init=nnx.with_partitioning(nnx.initializers.normal(initializer_range), ("embed", "hidden")),
            bias_init=nnx.with_partitioning(nnx.initializers.zeros_init(), ("hidden",)),
            rngs=rngs,
        )

    def __call__(self, student_hidden: jax.Array) -> jax.Array:
        return self.linear(as_float32(student_hidden))  # [..., teacher_width]


def hidden_mse(
    student_hiddens: Sequence[jax.Array],
    teacher_hiddens: Sequence[jax.Array],
    layer_map: Sequence[int] | Mapping[int, int],
    weights,
    projection: Callable[[jax.Array], jax.Array] | jax.Array | None = None,
) -> Loss:
    """TinyBERT's hidden-state loss MSE(h_s W_h, h_t) over (student, teacher) pairs of `hidden_states`.

    student_hiddens / teacher_hiddens: `EncoderOutput.hidden_states`, index 0 the embedding output, index i the
    output of layer i, each [batch, length, width]. layer_map: entry i (or key i) is the teacher index for student
    index i, e.g. TinyBERT's uniform map (0, 2, 4, ...). projection: None when widths match, else a callable
    (`HiddenProjection`, `nnx.Linear`) or a plain kernel [student_width, teacher_width], shared by all pairs.

    sum = Σ_pairs Σ_positions weights · mean_features (h_s W - h_t)²; count = Σ weights · num_pairs. So sum / count
    is the per-pair mean squared error averaged over pairs (over real tokens only); TinyBERT sums its per-layer
    means over layers, i.e. num_pairs times this (fold that into the loss weight if it matters).
    """
    pairs = _layer_pairs(layer_map, len(student_hiddens), len(teacher_hiddens), "hidden state")
    weights = check_weights(weights, student_hiddens[0].shape[:2])
    total = jnp.zeros((), jnp.float32)
    for student_index, teacher_index in pairs:
        student_hidden = as_float32(student_hiddens[student_index])  # [batch, length, student_width]
        teacher_hidden = _teacher(teacher_hiddens[teacher_index])  # [batch, length, teacher_width]
        if callable(projection):
            student_hidden = as_float32(projection(student_hidden))
        elif projection is not None:
            student_hidden = student_hidden @ as_float32(projection)  # a plain [student_width, teacher_width] kernel
        _check_same_shape(student_hidden, teacher_hidden,
                          f"hidden states (student {student_index} -> teacher {teacher_index}; "
                          f"a narrower student needs a projection)")
        total = total + (((student_hidden - teacher_hidden) ** 2).mean(-1) * weights).sum()
    return total, weights.sum() * len(pairs)


def attention_kl(
    student_attention_probs: Sequence[jax.Array],
    teacher_attention_probs: Sequence[jax.Array],
    layer_map: Sequence[int] | Mapping[int, int],
    weights,
) -> Loss:
    """KL(teacher || student) of self-attention distributions per layer pair, head and query (MiniLM eq. 5).

    student/teacher_attention_probs: `EncoderOutput.attentions`, index i = layer i (no embedding entry, unlike
    `hidden_states`), each [batch, heads, query, key] probabilities with exact zeros at masked keys. layer_map as in
    `hidden_mse`, over layer indices. weights: [batch, length] over query positions (the attention mask).
    Head counts must match (use `minilm_relations` otherwise).

    sum = Σ_pairs Σ_heads Σ_queries weights · Σ_keys p_t (log p_t - log p_s); count = Σ weights · heads ·
    num_pairs, so sum / count is the mean KL per (pair, head, real query); TinyBERT-style sums over layers are
    num_pairs times this. Keys where the teacher gives 0 (padding) add 0; student probabilities are floored at the
    smallest normal float32 so a log never sees 0.
    """
    pairs = _layer_pairs(layer_map, len(student_attention_probs), len(teacher_attention_probs), "attention layer")
    heads = student_attention_probs[0].shape[1]
    weights = check_weights(weights, (student_attention_probs[0].shape[0], student_attention_probs[0].shape[2]),
                             "weights (over queries)")
    tiny = jnp.finfo(jnp.float32).tiny
    total = jnp.zeros((), jnp.float32)
    for student_index, teacher_index in pairs:
        student_probs = as_float32(student_attention_probs[student_index])
        teacher_probs = _teacher(teacher_attention_probs[teacher_index])
        if student_probs.shape[1] != teacher_probs.shape[1]:
            raise ValueError(
                f"attention_kl needs equal head counts: student layer {student_index} has {student_probs.shape[1]} "
                f"heads, teacher layer {teacher_index} has {teacher_probs.shape[1]}; use minilm_relations, whose "
                "relation heads need not match the attention heads"
            )
        _check_same_shape(student_probs, teacher_probs, f"attentions (student {student_index} -> teacher "
                                                        f"{teacher_index})")
        keep = teacher_probs > 0
        teacher_log_probs = jnp.log(jnp.where(keep, teacher_probs, 1.0))
        student_log_probs = jnp.log(jnp.maximum(student_probs, tiny))
        per_query = _kl_over_last_axis(teacher_log_probs, student_log_probs, keep)  # [batch, heads, query]
        total = total + (per_query * weights[:, None, :]).sum()
    return total, weights.sum() * heads * len(pairs)


# ---------------------------------------------------------------------------------------------------------------
# MiniLM-v2: multi-head self-attention relations.


def _relation_log_probs(vectors: jax.Array, num_relation_heads: int, key_mask: jax.Array, side: str) -> jax.Array:
    """log softmax(x_r x_rᵀ / sqrt(d_r)) per relation head r, masked keys excluded: [batch, heads_r, query, key].

    vectors: [batch, length, hidden] or [batch, length, heads, head_dim] (the heads are concatenated first, in the
    order of transformers' `view(batch, length, heads, head_dim)`), then split into `num_relation_heads` slices.
    """
    batch, length = vectors.shape[:2]
    vectors = vectors.reshape(batch, length, -1)
    width = vectors.shape[-1]
    if width % num_relation_heads:
        raise ValueError(f"the {side}'s q/k/v width {width} is not divisible by num_relation_heads="
                         f"{num_relation_heads}")
    relation_dim = width // num_relation_heads
    split = vectors.reshape(batch, length, num_relation_heads, relation_dim)
    scores = jnp.einsum("bqrd,bkrd->brqk", split, split) / math.sqrt(relation_dim)
    scores = jnp.where(key_mask[:, None, None, :], scores, jnp.finfo(jnp.float32).min)
    return jax.nn.log_softmax(scores, axis=-1)


def minilm_relations(
    student_qkv: Sequence[jax.Array],
    teacher_qkv: Sequence[jax.Array],
    attention_mask,
    num_relation_heads: int,
    relations: Sequence[str] = RELATIONS,
) -> Loss:
    """MiniLM-v2's self-attention relation loss between one student layer and one teacher layer.

    student_qkv / teacher_qkv: one layer's (query, key, value) as in `EncoderOutput.qkv[layer]`, each
    [batch, length, heads, head_dim] or [batch, length, hidden]. Heads are concatenated and re-split into
    `num_relation_heads` relation heads, so head counts and widths may differ between teacher and student (each
    width must divide by num_relation_heads). attention_mask: [batch, length]; padded keys get relation probability
    0 on both sides and padded queries are not counted. relations: which of "query", "key", "value" to use.

    For each relation x: R_x = softmax(x_r x_rᵀ / sqrt(d_r)) and the loss adds KL(R_x^teacher || R_x^student) per
    relation head and real query. sum = Σ_relations Σ_heads_r Σ_real_queries KL; count = real queries ·
    num_relation_heads. sum / count is the paper's loss: each relation averaged over heads and queries, summed over
    the (three) relation types.
    """
    if num_relation_heads < 1:
        raise ValueError(f"num_relation_heads must be >= 1, got {num_relation_heads}")
    unknown = [name for name in relations if name not in RELATIONS]
    if unknown or not relations:
        raise ValueError(f"relations must be a non-empty subset of {RELATIONS}, got {tuple(relations)}")
    if len(student_qkv) != 3 or len(teacher_qkv) != 3:
        raise ValueError("student_qkv and teacher_qkv must each be a (query, key, value) triple")
    query_mask = check_weights(attention_mask, student_qkv[0].shape[:2], "attention_mask")
    key_mask = query_mask > 0
    total = jnp.zeros((), jnp.float32)
    for name in relations:
        index = RELATIONS.index(name)
        student_vectors, teacher_vectors = as_float32(student_qkv[index]), _teacher(teacher_qkv[index])
        if student_vectors.shape[:2] != teacher_vectors.shape[:2]:
            raise ValueError(f"student and teacher {name} differ in [batch, length]: "
                             f"{student_vectors.shape[:2]} vs {teacher_vectors.shape[:2]}")
        student_log_probs = _relation_log_probs(student_vectors, num_relation_heads, key_mask, "student")
        teacher_log_probs = _relation_log_probs(teacher_vectors, num_relation_heads, key_mask, "teacher")
        per_query = _kl_over_last_axis(teacher_log_probs, student_log_probs, key_mask[:, None, None, :])
        total = total + (per_query * query_mask[:, None, :]).sum()
    return total, query_mask.sum() * num_relation_heads
