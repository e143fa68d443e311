"""distil/train/objective.py on its own: which terms an `Objective` switches on and what each needs from the models,
every term's denominator over an update (against hand-counted masks), and how the per-term (sum, count) pairs are
routed and combined into `Σ_t alpha_t · sum_t / max(total_t, 1)` (against NumPy float64 re-computations of every
term from the raw arrays, for the plain logits and for the chunked vocabulary path). The losses' own arithmetic is
tested against PyTorch and NumPy in tests/test_losses.py; here a NumPy term is only a check of which inputs, layers,
weights and temperature the objective hands over."""

from __future__ import annotations

import dataclasses
import math

import jax.numpy as jnp
import numpy as np
import pytest

from conftest import recipe_objective
from distil.data.masking import IGNORE_INDEX
from distil.models import EncoderOutput
from distil.train.objective import TEACHER_TERMS, TERMS, Objective

BATCH, LENGTH, VOCAB, HIDDEN = 3, 6, 11, 8
LENGTHS = [6, 4, 2]
TARGETS = [(0, 1), (0, 4), (0, 5), (1, 0), (1, 3), (2, 1)]  # row 0 holds three MLM targets, row 2 one
HEADS, HEAD_DIM = 2, 4  # the models' attention heads; HEADS * HEAD_DIM == HIDDEN
STUDENT_LAYERS, TEACHER_LAYERS = 2, 3
# float32 sums of O(1-10) terms over at most ~100 positions compared with float64: relative error ~1e-6.
RTOL = 1e-5

EVERY_TERM = dict(alpha_ce=5.0, alpha_mlm=2.0, alpha_cos=1.0, alpha_mse=0.25, alpha_hidden_mse=3.0,
                  alpha_attention=0.5, alpha_minilm=1.5, temperature=3.0, hidden_layer_map=(0, 3, 2),
                  attention_layer_map=(2, 0), minilm_student_layer=0, minilm_teacher_layer=1,
                  minilm_relation_heads=4)


# ---------------------------------------------------------------------------------------------------------------
# Which terms, and what they need.


def test_the_default_objective_is_the_distilbert_recipe():
    objective = recipe_objective()
    assert objective.terms == ("ce", "mlm", "cos")
    assert [objective.alpha(term) for term in objective.terms] == [5.0, 2.0, 1.0]
    assert objective.temperature == 2.0 and not objective.restrict_ce_to_mask
    assert objective.needs_teacher and objective.needs_teacher_logits
    assert not (objective.needs_attentions or objective.needs_qkv or objective.chunked_vocabulary)


def test_every_term_has_a_weight_and_only_mlm_needs_no_teacher():
    alphas = {field.name for field in dataclasses.fields(Objective) if field.name.startswith("alpha_")}
    assert alphas == {f"alpha_{term}" for term in TERMS}
    assert set(TERMS) - set(TEACHER_TERMS) == {"mlm"} and set(TEACHER_TERMS) <= set(TERMS)


@pytest.mark.parametrize(
    "alphas, terms, teacher, teacher_logits, attentions, qkv",
    [
        (dict(alpha_ce=0.0, alpha_cos=0.0), ("mlm",), False, False, False, False),
        (dict(alpha_ce=0.0, alpha_mlm=0.0), ("cos",), True, False, False, False),
        (dict(alpha_ce=0.0, alpha_mlm=0.0, alpha_cos=0.0, alpha_mse=1.0), ("mse",), True, True, False, False),
        (dict(alpha_ce=0.0, alpha_cos=0.0, alpha_hidden_mse=2.0), ("mlm", "hidden_mse"), True, False, False, False),
        (dict(alpha_ce=0.0, alpha_mlm=0.0, alpha_cos=0.0, alpha_attention=1.0), ("attention",), True, False, True,
         False),
        # Given in another order than TERMS, and with weights that are not 1: still in TERMS order.
        (dict(alpha_minilm=0.5, alpha_cos=0.0, alpha_mse=3.0, alpha_mlm=0.0, alpha_ce=1e-3),
         ("ce", "mse", "minilm"), True, True, False, True),
    ],
)
def test_terms_are_the_non_zero_weights_in_terms_order(alphas, terms, teacher, teacher_logits, attentions, qkv):
    objective = recipe_objective(**alphas)
    assert objective.terms == terms
    assert (objective.needs_teacher, objective.needs_teacher_logits) == (teacher, teacher_logits)
    assert (objective.needs_attentions, objective.needs_qkv) == (attentions, qkv)


@pytest.mark.parametrize(
    "fields, chunked",
    [
        (dict(vocab_chunk_size=0), False),
        (dict(vocab_chunk_size=64), True),  # the recipe: ce and mlm are vocabulary terms
        (dict(vocab_chunk_size=64, alpha_ce=0.0, alpha_cos=0.0), True),  # mlm alone
        (dict(vocab_chunk_size=64, alpha_ce=0.0, alpha_mlm=0.0, alpha_mse=1.0), True),  # mse (and cos)
        (dict(vocab_chunk_size=64, alpha_ce=0.0, alpha_mlm=0.0, alpha_hidden_mse=1.0), False),  # no logits at all
        (dict(vocab_chunk_size=-1), False),
    ],
)
def test_chunked_vocabulary_needs_a_chunk_size_and_a_vocabulary_term(fields, chunked):
    assert recipe_objective(**fields).chunked_vocabulary is chunked


# ---------------------------------------------------------------------------------------------------------------
# The update's denominators, counted by hand.


def _update_batch() -> dict:
    """[accum=2, micro=2, length=5]: 5 + 3 + 2 + 4 = 14 real tokens; 1 + 0 + 2 + 1 = 4 MLM targets."""
    lengths = np.array([[5, 3], [2, 4]])
    mask = (np.arange(5)[None, None, :] < lengths[..., None]).astype(np.int32)
    labels = np.full((2, 2, 5), IGNORE_INDEX, np.int32)
    for where in [(0, 0, 4), (1, 0, 0), (1, 0, 1), (1, 1, 2)]:
        labels[where] = 7
    return {"attention_mask": jnp.asarray(mask), "mlm_labels": jnp.asarray(labels)}


@pytest.mark.parametrize("restrict_ce_to_mask", [False, True])
def test_counts_over_an_update_are_the_hand_counted_denominators(restrict_ce_to_mask):
    objective = recipe_objective(**{**EVERY_TERM, "hidden_layer_map": (0, 2, 3), "attention_layer_map": (1, 2),
                             "minilm_relation_heads": 3}, restrict_ce_to_mask=restrict_ce_to_mask)
    counts = objective.counts(_update_batch(), attention_heads=4)
    selected = 4 if restrict_ce_to_mask else 14  # ce and mse: MLM targets, or every real token
    assert {term: float(count) for term, count in counts.items()} == {
        "ce": selected, "mlm": 4, "cos": 14, "mse": selected,
        "hidden_mse": 14 * 3,  # real tokens x layer pairs
        "attention": 14 * 4 * 2,  # real queries x heads x layer pairs
        "minilm": 14 * 3,  # real queries x relation heads
    }
    assert all(count.dtype == jnp.float32 and count.shape == () for count in counts.values())


def test_counts_name_only_the_active_terms():
    counts = recipe_objective(alpha_ce=0.0, alpha_cos=0.0, alpha_minilm=1.0).counts(_update_batch(), attention_heads=4)
    assert list(counts) == ["mlm", "minilm"]
    assert (float(counts["mlm"]), float(counts["minilm"])) == (4, 14 * 12)  # 12 relation heads by default


# ---------------------------------------------------------------------------------------------------------------
# Every term from the raw arrays, in NumPy float64.


def _log_softmax(x, axis=-1):
    x = x - x.max(axis, keepdims=True)
    return x - np.log(np.exp(x).sum(axis, keepdims=True))


def _masked_softmax(scores, key_mask):
    """Probabilities over the real keys, exact zeros at the others."""
    scores = np.where(key_mask, scores, -np.inf)
    probs = np.exp(scores - scores.max(-1, keepdims=True))
    return probs / probs.sum(-1, keepdims=True)


def _models(seed: int = 0, lengths=LENGTHS, targets=TARGETS) -> tuple[dict, dict]:
    """A batch and the student / teacher outputs as NumPy arrays; padded positions of logits and hidden states hold
    large junk that no term may count."""
    rng = np.random.default_rng(seed)
    rows = len(lengths)
    mask = (np.arange(LENGTH)[None, :] < np.asarray(lengths)[:, None]).astype(np.int32)
    labels = np.full((rows, LENGTH), IGNORE_INDEX, np.int32)
    for where in targets:
        labels[where] = rng.integers(0, VOCAB)
    pad = mask == 0

    def junked(array):
        array[pad] = 50 * rng.normal(size=array[pad].shape)
        return array.astype(np.float32)

    def side(layers):
        key_mask = mask[:, None, None, :].astype(bool)
        table = rng.normal(size=(VOCAB, HIDDEN)).astype(np.float32)
        bias = (0.5 * rng.normal(size=VOCAB)).astype(np.float32)
        mlm_hidden = rng.normal(size=(rows, LENGTH, HIDDEN)).astype(np.float32)
        return dict(
            logits=junked(3 * rng.normal(size=(rows, LENGTH, VOCAB))),
            hidden_states=[junked(rng.normal(size=(rows, LENGTH, HIDDEN))) for _ in range(layers + 1)],
            attentions=[_masked_softmax(2 * rng.normal(size=(rows, HEADS, LENGTH, LENGTH)), key_mask)
                        .astype(np.float32) for _ in range(layers)],
            qkv=[tuple(rng.normal(size=(rows, LENGTH, HEADS, HEAD_DIM)).astype(np.float32) for _ in range(3))
                 for _ in range(layers)],
            mlm_hidden=mlm_hidden, mlm_decoder=(table, bias),
            chunked_logits=(mlm_hidden.astype(np.float64) @ table.T.astype(np.float64) + bias),
        )

    batch = dict(attention_mask=mask, mlm_labels=labels)
    return batch, dict(student=side(STUDENT_LAYERS), teacher=side(TEACHER_LAYERS))


def _output(side: dict, *, chunked: bool = False) -> EncoderOutput:
    return EncoderOutput(
        last_hidden_state=jnp.asarray(side["hidden_states"][-1]),
        hidden_states=tuple(jnp.asarray(h) for h in side["hidden_states"]),
        logits=None if chunked else jnp.asarray(side["logits"]),
        attentions=tuple(jnp.asarray(a) for a in side["attentions"]),
        qkv=tuple(tuple(jnp.asarray(x) for x in layer) for layer in side["qkv"]),
        mlm_hidden=jnp.asarray(side["mlm_hidden"]) if chunked else None,
        mlm_decoder=tuple(jnp.asarray(x) for x in side["mlm_decoder"]) if chunked else None,
    )


def _kl(teacher_log_probs, student_log_probs, keep=None):
    terms = np.exp(teacher_log_probs) * (teacher_log_probs - student_log_probs)
    return np.where(keep, terms, 0.0).sum(-1) if keep is not None else terms.sum(-1)


def _numpy_terms(objective: Objective, batch: dict, models: dict, *, chunked: bool = False) -> dict:
    """{term: (sum, count)} of every active term, float64, written out from each term's definition."""
    student, teacher = models["student"], models["teacher"]
    mask = batch["attention_mask"].astype(np.float64)
    labels = batch["mlm_labels"]
    is_target = labels != IGNORE_INDEX
    selected = is_target.astype(np.float64) if objective.restrict_ce_to_mask else mask
    s_logits = student["chunked_logits" if chunked else "logits"].astype(np.float64)
    t_logits = teacher["chunked_logits" if chunked else "logits"].astype(np.float64)
    out = {}
    for term in objective.terms:
        if term == "ce":
            t = objective.temperature
            per_position = t**2 * _kl(_log_softmax(t_logits / t), _log_softmax(s_logits / t))
            out[term] = ((per_position * selected).sum(), selected.sum())
        elif term == "mlm":
            log_probs = _log_softmax(s_logits)
            picked = np.take_along_axis(log_probs, np.where(is_target, labels, 0)[..., None], -1)[..., 0]
            out[term] = (-(picked * is_target).sum(), is_target.sum())
        elif term == "cos":
            s, t = student["hidden_states"][-1].astype(np.float64), teacher["hidden_states"][-1].astype(np.float64)
            cosine = (s * t).sum(-1) / np.sqrt((s**2).sum(-1) * (t**2).sum(-1))
            out[term] = (((1 - cosine) * mask).sum(), mask.sum())
        elif term == "mse":
            out[term] = ((((s_logits - t_logits) ** 2).sum(-1) * selected).sum(), selected.sum())
        elif term == "hidden_mse":
            total = 0.0
            for i, j in enumerate(objective.hidden_layer_map):
                error = student["hidden_states"][i].astype(np.float64) - teacher["hidden_states"][j]
                total += ((error**2).mean(-1) * mask).sum()
            out[term] = (total, mask.sum() * len(objective.hidden_layer_map))
        elif term == "attention":
            total = 0.0
            for i, j in enumerate(objective.attention_layer_map):
                p_s, p_t = student["attentions"][i].astype(np.float64), teacher["attentions"][j].astype(np.float64)
                keep = p_t > 0
                per_query = _kl(np.log(np.where(keep, p_t, 1.0)), np.log(np.where(keep, p_s, 1.0)), keep)
                total += (per_query * mask[:, None, :]).sum()
            out[term] = (total, mask.sum() * HEADS * len(objective.attention_layer_map))
        elif term == "minilm":
            heads = objective.minilm_relation_heads
            key_mask = (mask > 0)[:, None, None, :]

            def relation_log_probs(vectors):
                rows = vectors.shape[0]
                split = vectors.astype(np.float64).reshape(rows, LENGTH, heads, -1)
                scores = np.einsum("bqrd,bkrd->brqk", split, split) / math.sqrt(split.shape[-1])
                return _log_softmax(np.where(key_mask, scores, -1e30))

            s_qkv = student["qkv"][objective.minilm_student_layer]
            t_qkv = teacher["qkv"][objective.minilm_teacher_layer]
            total = sum((_kl(relation_log_probs(t_qkv[r]), relation_log_probs(s_qkv[r]), key_mask)
                         * mask[:, None, :]).sum() for r in range(3))
            out[term] = (total, mask.sum() * heads)
    return out


def _assert_terms_equal(got: dict, expected: dict):
    assert list(got) == list(expected)
    for term, (want_sum, want_count) in expected.items():
        got_sum, got_count = got[term]
        assert float(got_count) == want_count, term
        np.testing.assert_allclose(float(got_sum), want_sum, rtol=RTOL, err_msg=term)


@pytest.mark.parametrize("restrict_ce_to_mask", [False, True])
def test_sums_route_each_term_its_inputs_layers_weights_and_temperature(restrict_ce_to_mask):
    """Every term at once, with layer maps that are not the identity, a MiniLM pair that is not the last layers,
    a temperature that is not 1, and ce / mse weights from `restrict_ce_to_mask` (cos keeps the attention mask)."""
    objective = recipe_objective(**EVERY_TERM, restrict_ce_to_mask=restrict_ce_to_mask)
    batch, models = _models()
    got = objective.sums(_output(models["student"]), _output(models["teacher"]),
                         {k: jnp.asarray(v) for k, v in batch.items()})
    _assert_terms_equal(got, _numpy_terms(objective, batch, models))


def test_sums_of_chosen_terms_and_the_default_minilm_layers():
    objective = recipe_objective(**{**EVERY_TERM, "minilm_student_layer": -1, "minilm_teacher_layer": -1})
    batch, models = _models(seed=1)
    expected = _numpy_terms(objective, batch, models)  # -1: the last layer of each model, as Python indexes
    got = objective.sums(_output(models["student"]), _output(models["teacher"]),
                         {k: jnp.asarray(v) for k, v in batch.items()}, terms=("minilm", "cos"))
    _assert_terms_equal(got, {term: expected[term] for term in ("minilm", "cos")})


# ---------------------------------------------------------------------------------------------------------------
# The weighted total.


def test_loss_is_the_weighted_sum_of_the_terms_over_the_update_totals():
    objective = recipe_objective(**EVERY_TERM)
    batch, models = _models(seed=2)
    expected = _numpy_terms(objective, batch, models)
    # Totals of a larger update (this micro-batch is one of several); cos's 0.25 is clamped to 1.
    totals = {"ce": 40.0, "mlm": 9.0, "cos": 0.25, "mse": 40.0, "hidden_mse": 120.0, "attention": 160.0,
              "minilm": 160.0}
    loss, sums = objective.loss(_output(models["student"]), _output(models["teacher"]),
                                {k: jnp.asarray(v) for k, v in batch.items()},
                                {k: jnp.asarray(v) for k, v in totals.items()})
    want = sum(objective.alpha(term) * expected[term][0] / max(totals[term], 1.0) for term in objective.terms)
    assert loss.shape == () and loss.dtype == jnp.float32
    np.testing.assert_allclose(float(loss), want, rtol=RTOL)
    assert list(sums) == list(objective.terms)
    for term in objective.terms:
        np.testing.assert_allclose(float(sums[term]), expected[term][0], rtol=RTOL, err_msg=term)


def _rows(side: dict, rows: slice) -> dict:
    """The outputs of a micro-batch of `rows`."""
    out = {}
    for key, value in side.items():
        if key == "mlm_decoder":
            out[key] = value
        elif key == "qkv":
            out[key] = [tuple(x[rows] for x in layer) for layer in value]
        elif isinstance(value, list):
            out[key] = [x[rows] for x in value]
        else:
            out[key] = value[rows]
    return out


def test_micro_batch_losses_add_up_to_the_full_batch_means():
    """Two micro-batches with 5 and 1 MLM targets and 10 and 2 real tokens: each micro-batch's loss over the
    update's counts adds up to alpha · (Σ sums / Σ counts), which the mean of micro-batch means misses."""
    objective = recipe_objective(alpha_ce=5.0, alpha_mlm=2.0, alpha_cos=1.0, temperature=2.0)
    batch, models = _models(seed=3)
    full = _numpy_terms(objective, batch, models)
    want = sum(objective.alpha(term) * full[term][0] / full[term][1] for term in objective.terms)

    micro_rows = [slice(0, 2), slice(2, 3)]
    parts = []
    for rows in micro_rows:
        micro_batch = {k: v[rows] for k, v in batch.items()}
        micro_models = {name: _rows(side, rows) for name, side in models.items()}
        parts.append((micro_batch, micro_models))
    update = {k: jnp.asarray(np.stack([np.pad(v[rows], ((0, 2 - (rows.stop - rows.start)), (0, 0)),
                                              constant_values=0 if k == "attention_mask" else IGNORE_INDEX)
                                       for rows in micro_rows])) for k, v in batch.items()}  # [accum, 2, length]
    totals = objective.counts(update, attention_heads=HEADS)
    assert {t: float(c) for t, c in totals.items()} == {"ce": 12, "mlm": 6, "cos": 12}
    got = 0.0
    for micro_batch, micro_models in parts:
        loss, _ = objective.loss(_output(micro_models["student"]), _output(micro_models["teacher"]),
                                 {k: jnp.asarray(v) for k, v in micro_batch.items()}, totals)
        got += float(loss)
    np.testing.assert_allclose(got, want, rtol=RTOL)
    micro_means = [_numpy_terms(objective, micro_batch, micro_models) for micro_batch, micro_models in parts]
    naive = sum(objective.alpha(term) * np.mean([m[term][0] / m[term][1] for m in micro_means])
                for term in objective.terms)
    assert abs(naive - want) > 100 * RTOL * abs(want)  # the test tells the two apart


def test_mlm_pretraining_needs_no_teacher():
    objective = recipe_objective(alpha_ce=0.0, alpha_cos=0.0, alpha_mlm=1.0)
    batch, models = _models(seed=4)
    expected = _numpy_terms(objective, batch, models)["mlm"]
    loss, sums = objective.loss(_output(models["student"]), None, {k: jnp.asarray(v) for k, v in batch.items()},
                                {"mlm": jnp.asarray(expected[1], jnp.float32)})
    np.testing.assert_allclose(float(loss), expected[0] / expected[1], rtol=RTOL)
    assert list(sums) == ["mlm"]


# ---------------------------------------------------------------------------------------------------------------
# The chunked vocabulary terms: outputs with mlm_hidden and the tied decoder instead of logits.


@pytest.mark.parametrize("alphas", [
    dict(alpha_ce=5.0, alpha_mlm=2.0, alpha_cos=1.0),  # the recipe: vocabulary terms beside a plain one
    dict(alpha_ce=0.0, alpha_mlm=1.0, alpha_cos=0.0, alpha_mse=0.5, restrict_ce_to_mask=True),
])
def test_chunked_vocabulary_terms_equal_those_of_the_decoded_logits(alphas):
    objective = recipe_objective(**alphas, temperature=1.5, vocab_chunk_size=4, vocab_tile_size=4)
    assert objective.chunked_vocabulary
    batch, models = _models(seed=5)
    expected = _numpy_terms(objective, batch, models, chunked=True)  # logits = mlm_hidden @ tableᵀ + bias
    student, teacher = _output(models["student"], chunked=True), _output(models["teacher"], chunked=True)
    jbatch = {k: jnp.asarray(v) for k, v in batch.items()}
    totals = {"ce": 30.0, "mlm": 7.0, "cos": 20.0, "mse": 5.0}
    loss, sums = objective.loss(student, teacher, jbatch, {t: jnp.asarray(totals[t]) for t in objective.terms})
    want = sum(objective.alpha(term) * expected[term][0] / totals[term] for term in objective.terms)
    np.testing.assert_allclose(float(loss), want, rtol=RTOL)
    assert list(sums) == list(objective.terms)
    for term in objective.terms:
        np.testing.assert_allclose(float(sums[term]), expected[term][0], rtol=RTOL, err_msg=term)
    _assert_terms_equal(objective.sums(student, teacher, jbatch), expected)


def test_chunked_terms_without_mlm_hidden_are_refused_naming_the_flag():
    objective = recipe_objective(vocab_chunk_size=4)
    batch, models = _models()
    plain = _output(models["student"])
    headless = dataclasses.replace(plain, logits=None)  # neither logits nor mlm_hidden
    with pytest.raises(ValueError, match=r"need the student's mlm_hidden .*output_mlm_hidden=True"):
        objective.loss(headless, _output(models["teacher"], chunked=True),
                       {k: jnp.asarray(v) for k, v in batch.items()},
                       {term: jnp.asarray(1.0) for term in objective.terms})
