"""distil.losses against independent computations: PyTorch re-implementations of the reference distiller.py terms,
NumPy loops for the intermediate-layer losses, and transformers' own attention probabilities for the models."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from flax import nnx

from conftest import padded_batch
from hf_reference import save_hf_model
from distil import hf
from distil import vocabulary_losses as vocabulary_module
from distil.losses import (HiddenProjection, attention_kl, hidden_cosine, hidden_mse, logits_mse, masked_lm,
                           minilm_relations, soft_cross_entropy)
from distil.vocabulary_losses import vocabulary_losses

BATCH, LENGTH, VOCAB, HIDDEN = 3, 7, 41, 16
LENGTHS = [7, 4, 2]  # uneven padding; row 2 holds a single MLM target, row 0 several


def _attention_mask(lengths=LENGTHS, length=LENGTH) -> np.ndarray:
    return (np.arange(length)[None, :] < np.asarray(lengths)[:, None]).astype(np.int32)


@pytest.fixture(scope="module")
def reference_batch():
    """Random student/teacher logits and hidden states; padded positions hold large junk that must not count."""
    rng = np.random.default_rng(0)
    attention_mask = _attention_mask()
    student_logits = (3 * rng.normal(size=(BATCH, LENGTH, VOCAB))).astype(np.float32)
    teacher_logits = (3 * rng.normal(size=(BATCH, LENGTH, VOCAB))).astype(np.float32)
    student_hidden = rng.normal(size=(BATCH, LENGTH, HIDDEN)).astype(np.float32)
    teacher_hidden = (0.5 * student_hidden + rng.normal(size=(BATCH, LENGTH, HIDDEN))).astype(np.float32)
    padding = attention_mask == 0
    for array in (student_logits, teacher_logits, student_hidden, teacher_hidden):
        array[padding] = 40 * rng.normal(size=array[padding].shape)
    mlm_labels = np.full((BATCH, LENGTH), -100, np.int32)
    for row, col in [(0, 1), (0, 3), (0, 6), (1, 0), (1, 2), (2, 1)]:
        mlm_labels[row, col] = rng.integers(0, VOCAB)
    return dict(student_logits=student_logits, teacher_logits=teacher_logits, student_hidden=student_hidden,
                teacher_hidden=teacher_hidden, attention_mask=attention_mask, mlm_labels=mlm_labels)


# ---------------------------------------------------------------------------------------------------------------
# The reference terms, re-implemented in torch the way distiller.py computes them (masked_select, then means).


def _torch_reference(name, batch, temperature, restrict_ce_to_mask, student_tensors):
    s_logits, s_hidden = student_tensors
    t_logits = torch.tensor(batch["teacher_logits"], dtype=torch.float64)
    t_hidden = torch.tensor(batch["teacher_hidden"], dtype=torch.float64)
    attention_mask = torch.tensor(batch["attention_mask"]).bool()
    lm_labels = torch.tensor(batch["mlm_labels"], dtype=torch.long)
    mask = (lm_labels > -1) if restrict_ce_to_mask else attention_mask
    logits_mask = mask.unsqueeze(-1).expand_as(s_logits)
    s_logits_slct = torch.masked_select(s_logits, logits_mask).view(-1, VOCAB)
    t_logits_slct = torch.masked_select(t_logits, logits_mask).view(-1, VOCAB)
    if name == "ce":
        kl = torch.nn.KLDivLoss(reduction="batchmean")
        return kl(torch.log_softmax(s_logits_slct / temperature, -1),
                  torch.softmax(t_logits_slct / temperature, -1)) * temperature**2
    if name == "mlm":
        return torch.nn.CrossEntropyLoss(ignore_index=-100)(s_logits.view(-1, VOCAB), lm_labels.view(-1))
    if name == "mse":
        return torch.nn.MSELoss(reduction="sum")(s_logits_slct, t_logits_slct) / s_logits_slct.size(0)
    hidden_mask = attention_mask.unsqueeze(-1).expand_as(s_hidden)
    s_hidden_slct = torch.masked_select(s_hidden, hidden_mask).view(-1, HIDDEN)
    t_hidden_slct = torch.masked_select(t_hidden, hidden_mask).view(-1, HIDDEN)
    target = torch.ones(s_hidden_slct.size(0), dtype=torch.float64)
    return torch.nn.CosineEmbeddingLoss()(s_hidden_slct, t_hidden_slct, target)


def _ours(name, batch, temperature, restrict_ce_to_mask, student_logits, teacher_logits, student_hidden,
          teacher_hidden):
    mlm_labels = jnp.asarray(batch["mlm_labels"])
    weights = (mlm_labels != -100) if restrict_ce_to_mask else jnp.asarray(batch["attention_mask"])
    if name == "ce":
        return soft_cross_entropy(student_logits, teacher_logits, weights, temperature)
    if name == "mlm":
        return masked_lm(student_logits, mlm_labels)
    if name == "mse":
        return logits_mse(student_logits, teacher_logits, weights)
    return hidden_cosine(student_hidden, teacher_hidden, jnp.asarray(batch["attention_mask"]))


REFERENCE_CASES = [("ce", 2.0, False), ("ce", 1.0, True), ("mlm", 1.0, False), ("mse", 1.0, False),
                   ("mse", 1.0, True), ("cos", 1.0, False)]


@pytest.mark.parametrize("name,temperature,restrict_ce_to_mask", REFERENCE_CASES)
def test_reference_losses_and_gradients_match_torch(reference_batch, name, temperature, restrict_ce_to_mask):
    batch = reference_batch
    s_logits = torch.tensor(batch["student_logits"], dtype=torch.float64, requires_grad=True)
    s_hidden = torch.tensor(batch["student_hidden"], dtype=torch.float64, requires_grad=True)
    expected = _torch_reference(name, batch, temperature, restrict_ce_to_mask, (s_logits, s_hidden))
    expected.backward()

    def mean_loss(student_logits, teacher_logits, student_hidden, teacher_hidden):
        loss_sum, count = _ours(name, batch, temperature, restrict_ce_to_mask, student_logits, teacher_logits,
                                student_hidden, teacher_hidden)
        return loss_sum / count, (loss_sum, count)

    inputs = [jnp.asarray(batch[k]) for k in ("student_logits", "teacher_logits", "student_hidden", "teacher_hidden")]
    grads, (loss_sum, count) = jax.jit(jax.grad(mean_loss, argnums=(0, 1, 2, 3), has_aux=True))(*inputs)
    assert loss_sum.dtype == count.dtype == jnp.float32 and loss_sum.shape == count.shape == ()
    expected_count = {"mlm": 6, "cos": sum(LENGTHS)}.get(name, 6 if restrict_ce_to_mask else sum(LENGTHS))
    assert float(count) == expected_count
    np.testing.assert_allclose(float(loss_sum / count), expected.item(), rtol=2e-5)
    for ours_grad, reference_input in [(grads[0], s_logits), (grads[2], s_hidden)]:
        reference_grad = reference_input.grad  # None where the term does not use the input
        reference_grad = np.zeros(reference_input.shape) if reference_grad is None else reference_grad.numpy()
        np.testing.assert_allclose(np.asarray(ours_grad), reference_grad, atol=1e-6, rtol=1e-4)
    np.testing.assert_array_equal(np.asarray(grads[1]), 0)  # teacher: stop_gradient inside the loss
    np.testing.assert_array_equal(np.asarray(grads[3]), 0)


def test_sums_and_counts_accumulate_to_the_full_batch(reference_batch):
    """Micro-batches with uneven target counts: summing (sum, count) and dividing once gives the full-batch mean,
    while the mean of per-micro-batch means does not (the optax.MultiSteps trap)."""
    batch = reference_batch
    logits, labels = jnp.asarray(batch["student_logits"]), jnp.asarray(batch["mlm_labels"])
    full_sum, full_count = masked_lm(logits, labels)
    parts = [masked_lm(logits[rows], labels[rows]) for rows in (slice(0, 2), slice(2, 3))]  # 5 and 1 targets
    np.testing.assert_allclose(sum(s for s, _ in parts) / sum(c for _, c in parts), full_sum / full_count, rtol=1e-6)
    assert abs(np.mean([s / c for s, c in parts]) - full_sum / full_count) > 1e-3


def test_low_precision_inputs_are_upcast(reference_batch):
    batch = reference_batch
    student = jnp.asarray(batch["student_logits"], jnp.bfloat16)
    teacher = jnp.asarray(batch["teacher_logits"], jnp.bfloat16)
    mask = jnp.asarray(batch["attention_mask"])
    loss_sum, count = soft_cross_entropy(student, teacher, mask, 2.0)
    reference_sum, _ = soft_cross_entropy(student.astype(jnp.float32), teacher.astype(jnp.float32), mask, 2.0)
    assert loss_sum.dtype == jnp.float32 and count.dtype == jnp.float32
    np.testing.assert_allclose(loss_sum, reference_sum, rtol=1e-6)


def test_bad_arguments_are_named(reference_batch):
    logits = jnp.asarray(reference_batch["student_logits"])
    mask = jnp.asarray(reference_batch["attention_mask"])
    with pytest.raises(ValueError, match="temperature must be > 0"):
        soft_cross_entropy(logits, logits, mask, 0.0)
    with pytest.raises(ValueError, match="differ in shape"):
        logits_mse(logits, logits[..., :-1], mask)
    with pytest.raises(ValueError, match=r"weights must be \[batch, length\]"):
        hidden_cosine(logits, logits, mask[:, :-1])


# ---------------------------------------------------------------------------------------------------------------
# Intermediate-layer losses against NumPy loops.


def _softmax_rows(scores: np.ndarray, key_mask: np.ndarray) -> np.ndarray:
    """[..., query, key] -> probabilities over the real keys of each row (exact zeros elsewhere)."""
    scores = np.where(key_mask, scores, -np.inf)
    probs = np.exp(scores - scores.max(-1, keepdims=True))
    return probs / probs.sum(-1, keepdims=True)


def _random_attentions(rng, layers, heads, attention_mask):
    mask = attention_mask[:, None, None, :].astype(bool)
    return [_softmax_rows(2 * rng.normal(size=(attention_mask.shape[0], heads, LENGTH, LENGTH)), mask)
            .astype(np.float32) for _ in range(layers)]


def _numpy_hidden_mse(student_hiddens, teacher_hiddens, pairs, weights, kernel=None, bias=None):
    total = count = 0.0
    for student_index, teacher_index in pairs:
        for b in range(weights.shape[0]):
            for position in range(weights.shape[1]):
                h = student_hiddens[student_index][b, position].astype(np.float64)
                if kernel is not None:
                    h = h @ kernel + bias
                error = h - teacher_hiddens[teacher_index][b, position]
                total += weights[b, position] * np.mean(error**2)
                count += weights[b, position]
    return total, count


@pytest.mark.parametrize("projected", [False, True])
def test_hidden_mse_matches_numpy(projected):
    rng = np.random.default_rng(1)
    attention_mask = _attention_mask()
    teacher_width, student_width = 24, (12 if projected else 24)
    teacher_hiddens = [rng.normal(size=(BATCH, LENGTH, teacher_width)).astype(np.float32) for _ in range(5)]
    student_hiddens = [rng.normal(size=(BATCH, LENGTH, student_width)).astype(np.float32) for _ in range(3)]
    layer_map = (0, 2, 4)  # TinyBERT's uniform map incl. the embeddings: student i -> teacher 2i
    with nnx.use_eager_sharding(False):  # as distil.models.create_model off a mesh
        projection = HiddenProjection(student_width, teacher_width, rngs=nnx.Rngs(params=0)) if projected else None
    if projected:
        projection.linear.bias[...] = jnp.asarray(rng.normal(size=teacher_width) * 0.1, jnp.float32)
    loss_sum, count = hidden_mse(student_hiddens, teacher_hiddens, layer_map, attention_mask, projection)
    kernel = np.asarray(projection.linear.kernel[...], np.float64) if projected else None
    bias = np.asarray(projection.linear.bias[...], np.float64) if projected else None
    expected_sum, expected_count = _numpy_hidden_mse(student_hiddens, teacher_hiddens, list(enumerate(layer_map)),
                                                     attention_mask, kernel, bias)
    assert float(count) == expected_count == sum(LENGTHS) * 3
    np.testing.assert_allclose(float(loss_sum), expected_sum, rtol=1e-5)
    if projected:  # a plain kernel array is the same projection without the bias
        kernel_sum, _ = hidden_mse(student_hiddens, teacher_hiddens, {1: 2}, attention_mask,
                                   projection.linear.kernel[...])
        expected_kernel_sum, _ = _numpy_hidden_mse(student_hiddens, teacher_hiddens, [(1, 2)], attention_mask,
                                                   kernel, np.zeros(teacher_width))
        np.testing.assert_allclose(float(kernel_sum), expected_kernel_sum, rtol=1e-5)
    else:
        with pytest.raises(ValueError, match="teacher hidden state index 5 outside"):
            hidden_mse(student_hiddens, teacher_hiddens, (0, 5), attention_mask)


def test_hidden_projection_trains_as_part_of_the_student_side():
    """The trainer's layout: one module holding the student and the projection; gradients reach the projection
    and match the NumPy derivative d/dW of the weighted mean squared error."""

    class StudentSide(nnx.Module):  # stands in for the trainer's wrapper (model + hidden_projection)
        def __init__(self):
            self.hidden_projection = HiddenProjection(8, 12, rngs=nnx.Rngs(params=3))

    rng = np.random.default_rng(2)
    attention_mask = _attention_mask()
    student_hidden = rng.normal(size=(BATCH, LENGTH, 8)).astype(np.float32)
    teacher_hidden = rng.normal(size=(BATCH, LENGTH, 12)).astype(np.float32)
    with nnx.use_eager_sharding(False):
        side = StudentSide()

    def mean_loss(side):
        loss_sum, count = hidden_mse([student_hidden], [teacher_hidden], (0,), attention_mask, side.hidden_projection)
        return loss_sum / count

    grads = nnx.grad(mean_loss)(side)
    kernel = np.asarray(side.hidden_projection.linear.kernel[...], np.float64)
    error = student_hidden @ kernel - teacher_hidden  # bias is zero at init
    weights = attention_mask[..., None]
    expected = np.einsum("blf,blg->fg", student_hidden * weights, error) * 2 / 12 / attention_mask.sum()
    np.testing.assert_allclose(np.asarray(grads.hidden_projection.linear.kernel[...]), expected, atol=1e-6)


def _numpy_attention_kl(student, teacher, pairs, weights):
    total = count = 0.0
    for student_index, teacher_index in pairs:
        s, t = student[student_index].astype(np.float64), teacher[teacher_index].astype(np.float64)
        for b in range(s.shape[0]):
            for head in range(s.shape[1]):
                for query in range(s.shape[2]):
                    if weights[b, query] == 0:
                        continue
                    kl = sum(t[b, head, query, k] * math.log(t[b, head, query, k] / s[b, head, query, k])
                             for k in range(s.shape[3]) if t[b, head, query, k] > 0)
                    total += weights[b, query] * kl
                    count += weights[b, query]
    return total, count


def test_attention_kl_matches_numpy_and_requires_equal_heads():
    rng = np.random.default_rng(3)
    attention_mask = _attention_mask()
    teacher = _random_attentions(rng, 4, 4, attention_mask)
    student = _random_attentions(rng, 2, 4, attention_mask)
    layer_map = {0: 1, 1: 3}
    loss_sum, count = attention_kl(student, teacher, layer_map, attention_mask)
    expected_sum, expected_count = _numpy_attention_kl(student, teacher, layer_map.items(), attention_mask)
    assert float(count) == expected_count == sum(LENGTHS) * 4 * 2
    np.testing.assert_allclose(float(loss_sum), expected_sum, rtol=1e-5)

    grads = jax.grad(lambda s, t: attention_kl(s, t, layer_map, attention_mask)[0], argnums=(0, 1))(student, teacher)
    assert all(np.isfinite(np.asarray(g)).all() for g in grads[0])
    assert all((np.asarray(g) == 0).all() for g in grads[1])

    two_heads = _random_attentions(rng, 2, 2, attention_mask)
    with pytest.raises(ValueError, match="equal head counts: student layer 0 has 2 heads, teacher layer 1 has 4"):
        attention_kl(two_heads, teacher, layer_map, attention_mask)


def _numpy_minilm(student_qkv, teacher_qkv, attention_mask, num_relation_heads, relations):
    """Per relation, batch row, relation head and real query: softmax over the row's real keys only, then KL."""
    total = count = 0.0
    names = ("query", "key", "value")
    for name in relations:
        student = student_qkv[names.index(name)].astype(np.float64)
        teacher = teacher_qkv[names.index(name)].astype(np.float64)
        student, teacher = (x.reshape(x.shape[0], x.shape[1], -1) for x in (student, teacher))
        for b in range(attention_mask.shape[0]):
            real = np.flatnonzero(attention_mask[b])
            for head in range(num_relation_heads):
                relation = []
                for x in (student, teacher):
                    width = x.shape[-1] // num_relation_heads
                    vectors = x[b, real, head * width:(head + 1) * width]  # [real, d_r]
                    scores = vectors @ vectors.T / math.sqrt(width)
                    relation.append(np.exp(scores) / np.exp(scores).sum(-1, keepdims=True))
                student_relation, teacher_relation = relation
                for query in range(len(real)):
                    total += np.sum(teacher_relation[query] * np.log(teacher_relation[query] / student_relation[query]))
                    if name == relations[0]:
                        count += 1
    return total, count


def test_minilm_relations_with_different_heads_and_widths_match_numpy():
    rng = np.random.default_rng(4)
    attention_mask = _attention_mask([7, 4, 0])  # an all-padding row must neither count nor produce NaN
    teacher_qkv = tuple(rng.normal(size=(BATCH, LENGTH, 4, 8)).astype(np.float32) for _ in range(3))  # 4 x 8
    student_qkv = tuple(rng.normal(size=(BATCH, LENGTH, 2, 8)).astype(np.float32) for _ in range(3))  # 2 x 8
    for relations in [("query", "key", "value"), ("value",)]:
        loss_sum, count = minilm_relations(student_qkv, teacher_qkv, attention_mask, 4, relations)
        expected_sum, expected_count = _numpy_minilm(student_qkv, teacher_qkv, attention_mask, 4, relations)
        assert float(count) == expected_count == 11 * 4  # real queries x relation heads, whatever the relations
        np.testing.assert_allclose(float(loss_sum), expected_sum, rtol=1e-5)
    # Heads concatenated: [batch, length, hidden] gives the same loss as [batch, length, heads, head_dim].
    flat_student = tuple(x.reshape(BATCH, LENGTH, 16) for x in student_qkv)
    np.testing.assert_allclose(minilm_relations(flat_student, teacher_qkv, attention_mask, 4)[0],
                               minilm_relations(student_qkv, teacher_qkv, attention_mask, 4)[0], rtol=1e-6)
    with pytest.raises(ValueError, match="student's q/k/v width 16 is not divisible by num_relation_heads=3"):
        minilm_relations(student_qkv, teacher_qkv, attention_mask, 3)


def test_minilm_relations_ignore_padding_and_stop_teacher_gradients():
    """Junk at padded positions changes nothing (padded keys get zero relation probability, padded queries are
    not counted); the student's padded positions get zero gradient and the teacher none at all."""
    rng = np.random.default_rng(5)
    attention_mask = _attention_mask([7, 4, 0])
    padding = attention_mask == 0
    teacher_qkv = tuple(rng.normal(size=(BATCH, LENGTH, 32)).astype(np.float32) for _ in range(3))
    student_qkv = tuple(rng.normal(size=(BATCH, LENGTH, 16)).astype(np.float32) for _ in range(3))

    def with_junk(qkv):
        return tuple(np.where(padding[..., None], 50 * rng.normal(size=x.shape), x).astype(np.float32) for x in qkv)

    def loss(student, teacher):
        return minilm_relations(student, teacher, attention_mask, 4)[0]

    reference = loss(student_qkv, teacher_qkv)
    assert np.isfinite(float(reference))
    np.testing.assert_allclose(loss(with_junk(student_qkv), with_junk(teacher_qkv)), reference, rtol=1e-6)
    student_grads, teacher_grads = jax.grad(loss, argnums=(0, 1))(student_qkv, teacher_qkv)
    for grad in student_grads:
        assert np.isfinite(np.asarray(grad)).all()
        np.testing.assert_array_equal(np.asarray(grad)[padding], 0)
        assert np.abs(np.asarray(grad)[~padding]).max() > 0
    for grad in teacher_grads:
        np.testing.assert_array_equal(np.asarray(grad), 0)


# ---------------------------------------------------------------------------------------------------------------
# What the models expose for these losses, against transformers.


@pytest.mark.parametrize("architecture", ["BertModel", "DistilBertModel"])
def test_model_attentions_and_qkv_match_transformers(architecture, tmp_path):
    reference_model = save_hf_model(architecture, tmp_path / "reference")
    reference_model.set_attn_implementation("eager")  # sdpa returns no probabilities
    model = hf.load_pretrained(tmp_path / "reference")
    input_ids, attention_mask, _ = padded_batch(97, [11, 6, 16], 16)
    with torch.no_grad():
        reference = reference_model(input_ids=torch.as_tensor(input_ids, dtype=torch.long),
                                    attention_mask=torch.as_tensor(attention_mask, dtype=torch.long),
                                    output_attentions=True, output_hidden_states=True)
    ours = model(jnp.asarray(input_ids), jnp.asarray(attention_mask), output_attentions=True, output_qkv=True)
    plain = model(jnp.asarray(input_ids), jnp.asarray(attention_mask))
    assert plain.attentions is None and plain.qkv is None
    np.testing.assert_array_equal(plain.last_hidden_state, ours.last_hidden_state)

    assert len(ours.attentions) == len(reference.attentions) == len(ours.qkv) == 3
    for layer, (probs, reference_probs) in enumerate(zip(ours.attentions, reference.attentions)):
        assert probs.dtype == jnp.float32 and probs.shape == (3, 4, 16, 16)
        np.testing.assert_allclose(np.asarray(probs), reference_probs.numpy(), atol=1e-5, err_msg=f"layer {layer}")
        hf_layer = (reference_model.encoder.layer[layer].attention.self if architecture == "BertModel"
                    else reference_model.transformer.layer[layer].attention)
        projections = ((hf_layer.query, hf_layer.key, hf_layer.value) if architecture == "BertModel"
                       else (hf_layer.q_lin, hf_layer.k_lin, hf_layer.v_lin))
        with torch.no_grad():
            layer_input = reference.hidden_states[layer]
            for ours_x, projection in zip(ours.qkv[layer], projections):
                assert ours_x.shape == (3, 16, 4, 8)
                np.testing.assert_allclose(np.asarray(ours_x).reshape(3, 16, 32), projection(layer_input).numpy(),
                                           atol=1e-5)


# ---------------------------------------------------------------------------------------------------------------
# The vocabulary terms in chunks of positions: values and gradients equal the plain losses on full logits.


CHUNK_LENGTH, CHUNK_LENGTHS = 8, [8, 5, 2]  # a length with divisors 1, 2, 4, 8 for the chunks


def _decoder_batch(seed=0, vocab=VOCAB, width=HIDDEN):
    """MLM-head hidden states and tied decoders of both models; uneven padding, a row with a single MLM target."""
    rng = np.random.default_rng(seed)
    arrays = dict(student_hidden=rng.normal(size=(BATCH, CHUNK_LENGTH, width)),
                  teacher_hidden=rng.normal(size=(BATCH, CHUNK_LENGTH, width)),
                  student_embedding=rng.normal(size=(vocab, width)), student_bias=rng.normal(size=(vocab,)),
                  teacher_embedding=rng.normal(size=(vocab, width)), teacher_bias=rng.normal(size=(vocab,)))
    arrays = {name: jnp.asarray(value, jnp.float32) for name, value in arrays.items()}
    mlm_labels = np.full((BATCH, CHUNK_LENGTH), -100, np.int32)
    for row, col in [(0, 1), (0, 3), (0, 7), (1, 0), (1, 4), (2, 1)]:
        mlm_labels[row, col] = rng.integers(0, vocab)
    mlm_labels[0, 3] = vocab - 1  # the last vocabulary row is a target too
    return arrays, jnp.asarray(_attention_mask(CHUNK_LENGTHS, CHUNK_LENGTH)), jnp.asarray(mlm_labels)


def _plain_vocabulary(arrays, mask, mlm_labels, coefficients, temperature, ce_weights):
    """Σ_t c_t sum_t and {term: (sum, count)} through full [batch, length, vocab] logits and the plain losses."""
    student_logits = arrays["student_hidden"] @ arrays["student_embedding"].T + arrays["student_bias"]
    teacher_logits = arrays["teacher_hidden"] @ arrays["teacher_embedding"].T + arrays["teacher_bias"]
    terms = {"ce": lambda: soft_cross_entropy(student_logits, teacher_logits, ce_weights, temperature),
             "mlm": lambda: masked_lm(student_logits, mlm_labels),
             "mse": lambda: logits_mse(student_logits, teacher_logits, ce_weights)}
    out = {term: terms[term]() for term in coefficients}
    return sum(coefficients[term] * out[term][0] for term in out), out


def _chunked_vocabulary(arrays, mask, mlm_labels, coefficients, temperature, ce_weights, chunk_size, tile_size):
    return vocabulary_losses(
        arrays["student_hidden"], (arrays["student_embedding"], arrays["student_bias"]), coefficients=coefficients,
        chunk_size=chunk_size, tile_size=tile_size, mlm_labels=mlm_labels, teacher_hidden=arrays["teacher_hidden"],
        teacher_decoder=(arrays["teacher_embedding"], arrays["teacher_bias"]), ce_weights=ce_weights,
        mse_weights=ce_weights, temperature=temperature)


@pytest.mark.parametrize("coefficients,chunk_size,tile_size,vocab,restrict_ce_to_mask,temperature", [
    ({"ce": 1.0}, 6, 8, VOCAB, False, 2.0),  # 3 rows x 2 positions per chunk, 4 chunks; 41 -> 6 tiles of 8, padded
    ({"mlm": 1.0}, 2, 1, VOCAB, False, 1.0),  # fewer positions than rows: 1 position (of every row) per chunk
    ({"mse": 1.0}, 3, 0, VOCAB, True, 1.0),
    ({"mse": 1.0}, 3, 7, 42, True, 1.0),  # 6 tiles of 7 (a divisor), no padding
    ({"ce": 5.0 / 15, "mlm": 2.0 / 6, "mse": 0.5 / 15}, 12, 8, VOCAB, False, 2.0),  # the trainer's alpha / count
    ({"ce": 5.0 / 15, "mlm": 2.0 / 6}, 12, 0, VOCAB, False, 2.0),  # the recipe, the whole vocabulary at once
    ({"ce": 0.3, "mlm": 1.7}, 20, 24, VOCAB, True, 3.0),  # 20 / 3 rows -> 4 positions; 2 tiles of 24, padded
    ({"ce": 0.3, "mlm": 1.7, "mse": 0.01}, 100, 100, VOCAB, False, 0.5),  # one chunk, one tile
])
def test_vocabulary_losses_and_gradients_equal_the_plain_losses(coefficients, chunk_size, tile_size, vocab,
                                                                restrict_ce_to_mask, temperature):
    arrays, mask, mlm_labels = _decoder_batch(vocab=vocab)
    ce_weights = (mlm_labels != -100) if restrict_ce_to_mask else mask
    names = list(arrays)

    def as_function(compute):
        def function(*values):
            return compute(dict(zip(names, values)), mask, mlm_labels, coefficients, temperature, ce_weights)
        return function

    plain = jax.value_and_grad(as_function(_plain_vocabulary), argnums=tuple(range(len(names))), has_aux=True)
    chunked = jax.value_and_grad(as_function(lambda *a: _chunked_vocabulary(*a, chunk_size, tile_size)),
                                 argnums=tuple(range(len(names))), has_aux=True)
    (want, want_terms), want_grads = plain(*arrays.values())
    (got, got_terms), got_grads = jax.jit(chunked)(*arrays.values())

    np.testing.assert_allclose(got, want, rtol=2e-6)
    assert got_terms.keys() == want_terms.keys() == coefficients.keys()
    for term, (loss_sum, count) in got_terms.items():
        np.testing.assert_allclose(loss_sum, want_terms[term][0], rtol=2e-6, err_msg=term)
        assert float(count) == float(want_terms[term][1]), term
    for name, got_grad, want_grad in zip(names, got_grads, want_grads):
        if name.startswith("teacher"):
            np.testing.assert_array_equal(got_grad, 0, err_msg=name)  # stop_gradient, as the plain losses
            continue
        assert got_grad.dtype == arrays[name].dtype
        scale = float(np.abs(want_grad).max())
        assert scale > 0, name
        np.testing.assert_allclose(got_grad, want_grad, atol=2e-6 * scale, rtol=1e-5, err_msg=name)


@pytest.mark.parametrize("share,tile_size,want", [
    (119_547, 4096, (3231, 37)),  # mBERT: 3^2 x 37 x 359, a divisor near the target
    (8000, 4096, (4000, 2)),  # the embedded vocabulary
    (10_007, 4096, (3336, 3)),  # a prime: padded to 3 x 3,336 (a multiple of 8)
    (41, 8, (8, 6)),  # 41 -> 48: 7 padding entries
    (100, 0, (100, 1)),  # 0: the whole share
    (100, 512, (100, 1)),
])
def test_vocabulary_tiles(share, tile_size, want):
    tile, tiles = want
    assert vocabulary_module._vocabulary_tiles(share, tile_size) == want
    assert tile <= max(tile_size, share) and tile * tiles >= share and (tiles - 1) * tile < share


def test_vocabulary_losses_coefficient_gradients_and_bfloat16():
    """d weighted / d c_t = sum_t (the trainer's counts are data, but the custom VJP stays a true derivative);
    bfloat16 hidden states give float32 sums close to the float32 ones and gradients in bfloat16."""
    arrays, mask, mlm_labels = _decoder_batch(seed=1)

    def weighted(c_ce, c_mlm, hidden):
        return vocabulary_losses(
            hidden, (arrays["student_embedding"], arrays["student_bias"]), coefficients={"ce": c_ce, "mlm": c_mlm},
            chunk_size=2, mlm_labels=mlm_labels, teacher_hidden=arrays["teacher_hidden"],
            teacher_decoder=(arrays["teacher_embedding"], arrays["teacher_bias"]), ce_weights=mask,
            temperature=2.0)

    (value, terms), grads = jax.value_and_grad(weighted, argnums=(0, 1, 2), has_aux=True)(
        jnp.float32(0.5), jnp.float32(2.0), arrays["student_hidden"])
    np.testing.assert_allclose(grads[0], terms["ce"][0], rtol=1e-6)
    np.testing.assert_allclose(grads[1], terms["mlm"][0], rtol=1e-6)
    np.testing.assert_allclose(value, 0.5 * terms["ce"][0] + 2.0 * terms["mlm"][0], rtol=1e-6)

    (low, low_terms), low_grads = jax.value_and_grad(weighted, argnums=(0, 1, 2), has_aux=True)(
        jnp.float32(0.5), jnp.float32(2.0), arrays["student_hidden"].astype(jnp.bfloat16))
    assert low.dtype == jnp.float32 and low_grads[2].dtype == jnp.bfloat16
    np.testing.assert_allclose(low, value, rtol=2e-2)
    np.testing.assert_allclose(np.asarray(low_grads[2], np.float32), grads[2],
                               atol=0.05 * float(np.abs(grads[2]).max()))


def test_vocabulary_losses_bad_arguments_are_named():
    arrays, mask, mlm_labels = _decoder_batch()
    decoder = (arrays["student_embedding"], arrays["student_bias"])
    with pytest.raises(ValueError, match="coefficients must name some of"):
        vocabulary_losses(arrays["student_hidden"], decoder, coefficients={"cos": 1.0}, chunk_size=2)
    with pytest.raises(ValueError, match="tile_size must be >= 0"):
        vocabulary_losses(arrays["student_hidden"], decoder, coefficients={"mlm": 1.0}, chunk_size=2, tile_size=-1,
                          mlm_labels=mlm_labels)
    with pytest.raises(ValueError, match="chunk_size must be >= 1"):
        vocabulary_losses(arrays["student_hidden"], decoder, coefficients={"mlm": 1.0}, chunk_size=0,
                          mlm_labels=mlm_labels)
    with pytest.raises(ValueError, match="need teacher_hidden and teacher_decoder"):
        vocabulary_losses(arrays["student_hidden"], decoder, coefficients={"ce": 1.0}, chunk_size=2, ce_weights=mask)
    with pytest.raises(ValueError, match="mlm_labels must be"):
        vocabulary_losses(arrays["student_hidden"], decoder, coefficients={"mlm": 1.0}, chunk_size=2,
                          mlm_labels=mlm_labels[:, :3])
