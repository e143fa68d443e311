"""distil/train/step.py on its own: one `make_train_step` update of a tiny DistilBERT student (1 layer, sinusoidal
position table, the recipe's 0.1 dropout) distilled from a tiny BERT teacher (2 layers) with the recipe's objective
(5·ce + 2·mlm + 1·cos, T = 2), checked against a hand computation: the three terms written out in jax.numpy from
the two models' outputs (the student's with dropout key fold_in(fold_in(rng, step), i) on micro-batch i), divided
by the whole update's counts, `jax.grad` of that with respect to the student alone, and a plain SGD update. The
batch's two micro-batches hold 15 and 5 real tokens and 6 and 1 MLM targets, so the update-wide
(Σ sums) / (Σ counts) and the average of micro-batch means (`optax.MultiSteps`) are far apart. Also: every returned
metric, `frozen_paths` and the frozen sinusoidal table, remat policies, the teacher as an untouched input, and the
dropout keys. How the trainer assembles the step (`distil.train.assembly.build_step`) and the step's equality
across objectives and the chunked vocabulary are tested in tests/test_distill.py."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from conftest import recipe_objective
from distil.data.masking import IGNORE_INDEX
from distil.models import ModelConfig, create_model
from distil.train.state import OptimizerSettings, TrainState, learning_rate_schedule, make_optimizer
from distil.train.step import DistillStudent, frozen_paths, make_train_step

VOCAB, LENGTH, HEADS = 97, 8, 4
# Initialised at 0.3 rather than BERT's 0.02: logits of size ~1, so the KL between the two models and every
# gradient are well above float32 rounding (at 0.02 the KL nearly cancels and the comparison would test noise).
COMMON = dict(vocab_size=VOCAB, hidden_size=32, num_attention_heads=HEADS, intermediate_size=48,
              max_position_embeddings=16, head="mlm", add_pooler=False, hidden_dropout=0.1, attention_dropout=0.1,
              initializer_range=0.3)
TEACHER = ModelConfig(family="bert", num_hidden_layers=2, **COMMON)  # run without dropout by the step
STUDENT = ModelConfig(family="distilbert", num_hidden_layers=1, type_vocab_size=0, sinusoidal_pos_embds=True,
                      **COMMON)
OBJECTIVE = recipe_objective()  # ce 5, mlm 2, cos 1 at T = 2, ce over every real token
POSITION_TABLE = ("model", "encoder", "embeddings", "position_embeddings", "embedding")
# The state's step is in the linear decay: lr(6) = 0.5 · (10 - 6) / (10 - 4).
SETTINGS = OptimizerSettings(learning_rate=0.5, num_steps=10, warmup_steps=4)
STEP, LEARNING_RATE = 6, 0.5 * (10 - 6) / (10 - 4)
EPS = float(np.finfo(np.float32).eps)

# [accum=2, micro=2, length=8]: micro-batch 0 holds rows of 8 and 7 real tokens and 5 + 1 MLM targets, micro-batch 1
# rows of 3 and 2 real tokens and 1 target: 20 real tokens and 7 targets in all, 32 positions.
LENGTHS = [[8, 7], [3, 2]]
TARGETS = [(0, 0, 1), (0, 0, 2), (0, 0, 3), (0, 0, 4), (0, 0, 5), (0, 1, 2), (1, 0, 1)]
REAL_TOKENS, MLM_TARGETS = 20, 7


# A term's float32 sum adds ≤ 20 per-position values of the size of T²·ln(V) (ce: a difference of two
# cross-entropies that nearly cancel carries their rounding), ln(V) (mlm) or ≤ 2 (cos); 32 ulps of that many bound
# its rounding.
SIZES = {"ce": OBJECTIVE.temperature**2 * np.log(VOCAB), "mlm": np.log(VOCAB), "cos": 2.0}


def _term_atol(term: str, count: float) -> float:
    return 32 * EPS * REAL_TOKENS * SIZES[term] / count


def _loss_atol(counts: dict) -> float:
    """The weighted total carries each term's rounding."""
    return sum(OBJECTIVE.alpha(term) * _term_atol(term, counts[term][0]) for term in OBJECTIVE.terms)


def _batch(seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    mask = (np.arange(LENGTH)[None, None, :] < np.asarray(LENGTHS)[..., None]).astype(np.int32)
    ids = np.where(mask == 1, rng.integers(5, VOCAB, size=mask.shape), 0).astype(np.int32)
    labels = np.full(mask.shape, IGNORE_INDEX, np.int32)
    for where in TARGETS:
        labels[where] = rng.integers(5, VOCAB)  # not the input token: a masked position's original
    return {"input_ids": ids, "attention_mask": mask, "mlm_labels": labels}


# ---------------------------------------------------------------------------------------------------------------
# The hand computation: the recipe's three terms from the models' outputs.


def _term_sums(student_out, teacher_out, micro) -> dict[str, jax.Array]:
    """Each term's sum over a micro-batch: T²·KL(softmax(t/T) || softmax(s/T)) at every real token,
    -log softmax(s)[label] at every MLM target, 1 - cos(student, teacher last hidden) at every real token."""
    mask = micro["attention_mask"].astype(jnp.float32)
    temperature = OBJECTIVE.temperature
    teacher_log_probs = jax.nn.log_softmax(teacher_out.logits / temperature)
    student_log_probs = jax.nn.log_softmax(student_out.logits / temperature)
    kl = (jnp.exp(teacher_log_probs) * (teacher_log_probs - student_log_probs)).sum(-1)
    is_target = micro["mlm_labels"] != IGNORE_INDEX
    picked = jnp.take_along_axis(jax.nn.log_softmax(student_out.logits),
                                 jnp.where(is_target, micro["mlm_labels"], 0)[..., None], -1)[..., 0]
    s, t = student_out.last_hidden_state, teacher_out.last_hidden_state
    cosine = (s * t).sum(-1) / jnp.sqrt((s * s).sum(-1) * (t * t).sum(-1))
    return {"ce": (temperature**2 * kl * mask).sum(), "mlm": -jnp.where(is_target, picked, 0.0).sum(),
            "cos": ((1.0 - cosine) * mask).sum()}


def _hand_loss(params, graphdef, teacher_params, teacher_graphdef, batch, key_data, denominators):
    """Σ_i Σ_t alpha_t · sum_t(micro-batch i) / denominators_t[i], the student run on micro-batch i with the dropout
    key `key_data[i]` and the teacher without dropout. With every denominator the update's count it is the
    full-batch loss; with each micro-batch's own count times the number of micro-batches, the mean of the
    micro-batch means. Also returns each term's sum over the update."""
    student = nnx.merge(graphdef, params).model
    teacher = nnx.merge(teacher_graphdef, teacher_params)
    loss, sums = 0.0, {term: 0.0 for term in OBJECTIVE.terms}
    for index in range(batch["input_ids"].shape[0]):
        micro = {name: value[index] for name, value in batch.items()}
        dropout = nnx.Rngs(dropout=jax.random.wrap_key_data(key_data[index]))
        micro_sums = _term_sums(student(micro["input_ids"], micro["attention_mask"], dropout_rngs=dropout),
                                teacher(micro["input_ids"], micro["attention_mask"]), micro)
        for term in OBJECTIVE.terms:
            loss = loss + OBJECTIVE.alpha(term) * micro_sums[term] / denominators[term][index]
            sums[term] = sums[term] + micro_sums[term]
    return loss, sums


def _keys(fold_step: bool = True, order=(0, 1)) -> jax.Array:
    """Key data of micro-batch i's dropout key: fold_in(fold_in(key(0), STEP), i) (or without the step)."""
    base = jax.random.key(0)
    if fold_step:
        base = jax.random.fold_in(base, STEP)
    return jnp.stack([jax.random.key_data(jax.random.fold_in(base, index)) for index in order])


def _hand_counts(batch: dict) -> dict[str, tuple[float, np.ndarray]]:
    """(update-wide, per micro-batch) counts of each term, counted from the masks."""
    real = batch["attention_mask"].sum(axis=(1, 2))  # [accum]
    targets = (batch["mlm_labels"] != IGNORE_INDEX).sum(axis=(1, 2))
    per_micro = {"ce": real, "mlm": targets, "cos": real}
    return {term: (float(count.sum()), count.astype(np.float64)) for term, count in per_micro.items()}


def _state(params, tx) -> TrainState:
    return TrainState(step=jnp.asarray(STEP, jnp.int32), rng=jax.random.key_data(jax.random.key(0)), params=params,
                      opt_state=tx.init(params))


def _step(student_graphdef, teacher_graphdef, tx, **options):
    return jax.jit(make_train_step(student_graphdef, teacher_graphdef, OBJECTIVE, tx,
                                   learning_rate_schedule(SETTINGS), attention_heads=HEADS, **options))


def _flat(state: nnx.State) -> dict[tuple, np.ndarray]:
    return {path: np.asarray(leaf.get_value()) for path, leaf in nnx.to_flat_state(state)}


def _gradient_atol(params: dict, grads: dict) -> dict[tuple, float]:
    """How far `params - gradient` may be from the hand's, per leaf. The step sums each gradient element over two
    micro-batches instead of at once and scales each micro-batch's terms by 1/count before summing: float32 sums of
    the same per-position contributions in another order. Their rounding is relative to the contributions, not to
    the result (the attention key bias's gradient is 0 exactly, softmax being blind to a shift of every score of a
    query, yet each of its elements sums contributions of the size of the query bias's), so the scale is the
    largest gradient element of the whole update (7.7 here, the MLM head's LayerNorm scale): 16 ulps of it for a
    reordered sum of ≤ 32 positions (measured: under 1), plus 16 ulps of the parameter for the subtraction
    p - g, whose result is of the size of both."""
    scale = max(float(np.abs(grad).max()) for grad in grads.values())
    return {path: 16 * EPS * (scale + float(np.abs(params[path]).max())) for path in params}


# Its gradient is 0 up to rounding (see `_gradient_atol`): the one parameter an update leaves (nearly) in place.
KEY_BIAS = ("model", "encoder", "layers", 0, "attention", "key", "bias")


@pytest.fixture(scope="module")
def update():
    """One SGD(1) update of the recipe's step (no remat, nothing frozen: see the frozen tests) and the hand
    computation of its full-batch gradient and of the mean-of-micro-means gradient."""
    teacher_graphdef, teacher_params = nnx.split(create_model(TEACHER, seed=1))
    student_graphdef, params = nnx.split(DistillStudent(create_model(STUDENT, seed=2)), nnx.Param)
    teacher_before = _flat(teacher_params)
    batch = _batch()
    tx = optax.sgd(1.0)  # params - gradient: the update is the gradient itself
    state = _state(params, tx)
    new_state, metrics = _step(student_graphdef, teacher_graphdef, tx)(state, teacher_params, batch)

    counts = _hand_counts(batch)
    full = {term: jnp.full(2, total, jnp.float32) for term, (total, _) in counts.items()}
    naive = {term: jnp.asarray(2 * micro, jnp.float32) for term, (_, micro) in counts.items()}  # 2 micro-batches
    grad_fn = jax.jit(jax.value_and_grad(_hand_loss, has_aux=True), static_argnums=(1, 3))

    def hand(key_data, denominators):
        return grad_fn(params, student_graphdef, teacher_params, teacher_graphdef,
                       {name: jnp.asarray(value) for name, value in batch.items()}, key_data, denominators)

    (loss, sums), grads = hand(_keys(), full)
    (naive_loss, _), naive_grads = hand(_keys(), naive)
    return dict(params=params, state=state, new_state=new_state, metrics=metrics, batch=batch,
                teacher_params=teacher_params, teacher_before=teacher_before, counts=counts,
                teacher_graphdef=teacher_graphdef, student_graphdef=student_graphdef, hand=hand, full=full,
                loss=float(loss), sums={term: float(value) for term, value in sums.items()}, grads=_flat(grads),
                naive_loss=float(naive_loss), naive_grads=_flat(naive_grads))


# ---------------------------------------------------------------------------------------------------------------
# The accumulated update is the full-batch one.


def _hand_update(update, grads, frozen=frozenset()) -> dict[tuple, np.ndarray]:
    """params - gradient, in float32, the gradient of the `frozen` paths zeroed."""
    params = _flat(update["params"])
    return {path: params[path] - (0 * grads[path] if path in frozen else grads[path]) for path in params}


def test_two_uneven_micro_batches_give_the_full_batch_update(update):
    params, got = _flat(update["params"]), _flat(update["new_state"].params)
    want = _hand_update(update, update["grads"])
    atol = _gradient_atol(params, update["grads"])
    assert set(got) == set(want)
    for path in want:
        np.testing.assert_allclose(got[path], want[path], rtol=0, atol=atol[path], err_msg=str(path))
    # A real update: every leaf moved by far more than the tolerance, but the key bias, whose gradient is 0.
    for path in want:
        moved = np.abs(got[path] - params[path]).max()
        assert moved < atol[path] if path == KEY_BIAS else moved > 1000 * atol[path], path


def test_the_mean_of_micro_batch_means_is_a_different_update_that_the_comparison_tells_apart(update):
    """`optax.MultiSteps` (average of each micro-batch's mean-loss gradient) weighs micro-batch 1's single MLM
    target like micro-batch 0's six and its 5 real tokens like the other's 15: the update this test would see."""
    params, got = _flat(update["params"]), _flat(update["new_state"].params)
    naive = _hand_update(update, update["naive_grads"])
    atol = _gradient_atol(params, update["grads"])
    worst = max(float(np.abs(got[path] - naive[path]).max()) / atol[path] for path in naive)
    assert worst > 100  # in units of the tolerance the full-batch comparison allows
    assert abs(update["naive_loss"] - update["loss"]) > 1e-2 * update["loss"]
    assert abs(float(update["metrics"]["loss"]) - update["naive_loss"]) > 1e-2 * update["loss"]


# ---------------------------------------------------------------------------------------------------------------
# The metrics.


def test_metrics_are_the_update_wide_means_norm_schedule_and_token_counts(update):
    metrics, counts, sums = update["metrics"], update["counts"], update["sums"]
    assert set(metrics) == {"loss", "ce", "mlm", "cos", "grad_norm", "learning_rate", "real_tokens",
                            "padding_fraction"}
    assert all(np.shape(value) == () for value in metrics.values())
    assert (counts["ce"][0], counts["mlm"][0]) == (REAL_TOKENS, MLM_TARGETS)
    for term in OBJECTIVE.terms:  # the update's sum over the update's count
        np.testing.assert_allclose(float(metrics[term]), sums[term] / counts[term][0], rtol=0,
                                   atol=_term_atol(term, counts[term][0]), err_msg=term)
    np.testing.assert_allclose(float(metrics["loss"]), update["loss"], rtol=0, atol=_loss_atol(counts))

    assert float(metrics["real_tokens"]) == REAL_TOKENS  # attention-mask ones, both micro-batches
    assert float(metrics["padding_fraction"]) == 1.0 - REAL_TOKENS / (2 * 2 * LENGTH)
    np.testing.assert_allclose(float(metrics["learning_rate"]), LEARNING_RATE, rtol=1e-6)  # the schedule at STEP

    # The global norm of the whole gradient (before the optimizer's clipping), from the hand gradient in float64.
    norm = np.sqrt(sum(float((g.astype(np.float64) ** 2).sum()) for g in update["grads"].values()))
    np.testing.assert_allclose(float(metrics["grad_norm"]), norm, rtol=1e-5)


def test_the_state_advances_one_step_and_keeps_its_rng(update):
    state, new_state = update["state"], update["new_state"]
    assert int(new_state.step) == STEP + 1 and new_state.step.dtype == jnp.int32
    np.testing.assert_array_equal(np.asarray(new_state.rng), np.asarray(state.rng))
    assert jax.tree.structure(new_state.opt_state) == jax.tree.structure(state.opt_state)


# ---------------------------------------------------------------------------------------------------------------
# Frozen parameters.


def test_frozen_paths_name_the_sinusoidal_position_table_only(update):
    assert frozen_paths(update["params"]) == {POSITION_TABLE}
    assert POSITION_TABLE in _flat(update["params"])


def test_the_frozen_table_is_unchanged_while_every_other_parameter_takes_the_full_batch_update(update):
    """`build_step` freezes `frozen_paths` of a sinusoidal student: its table keeps its values though it has a
    gradient, every other parameter gets the hand update, and grad_norm is the norm without the table's gradient
    (as transformers, which gives the table no gradient at all)."""
    tx = optax.sgd(1.0)
    frozen = frozen_paths(update["params"])
    step = _step(update["student_graphdef"], update["teacher_graphdef"], tx, frozen=frozen)
    new_state, metrics = step(_state(update["params"], tx), update["teacher_params"], update["batch"])
    before, after, grads = _flat(update["params"]), _flat(new_state.params), update["grads"]
    np.testing.assert_array_equal(after[POSITION_TABLE], before[POSITION_TABLE])
    assert np.abs(grads[POSITION_TABLE]).max() > 1e-3  # it has a gradient, which the step drops
    want, atol = _hand_update(update, grads, frozen), _gradient_atol(before, grads)
    for path in want:
        np.testing.assert_allclose(after[path], want[path], rtol=0, atol=atol[path], err_msg=str(path))
    trained = np.sqrt(sum(float((g.astype(np.float64) ** 2).sum()) for p, g in grads.items() if p not in frozen))
    np.testing.assert_allclose(float(metrics["grad_norm"]), trained, rtol=1e-5)
    assert abs(float(update["metrics"]["grad_norm"]) - trained) > 1e-3 * trained


def test_the_frozen_table_is_unchanged_under_the_trainers_adamw_with_weight_decay(update):
    """transformers registers the sinusoidal table with requires_grad=False, so torch's AdamW never touches it."""
    # No warmup: the optimizer's own count starts at 0, where a warmup's learning rate (and so the decay) is 0.
    tx = make_optimizer(OptimizerSettings(learning_rate=0.5, num_steps=10, warmup_steps=0, weight_decay=0.01))
    step = _step(update["student_graphdef"], update["teacher_graphdef"], tx, frozen=frozen_paths(update["params"]))
    new_state, _ = step(_state(update["params"], tx), update["teacher_params"], update["batch"])
    np.testing.assert_array_equal(_flat(new_state.params)[POSITION_TABLE], _flat(update["params"])[POSITION_TABLE])


# ---------------------------------------------------------------------------------------------------------------
# The teacher is an input.


def test_the_teacher_is_an_input_left_untouched_and_outside_the_state(update):
    """Its parameters come back unchanged (not donated, not updated), the new state holds exactly the student's
    parameters, and the student's gradient is the one with the teacher's outputs as constants (the update test)."""
    for path, leaf in nnx.to_flat_state(update["teacher_params"]):
        np.testing.assert_array_equal(np.asarray(leaf.get_value()), update["teacher_before"][path])
    new_params = _flat(update["new_state"].params)
    assert set(new_params) == set(_flat(update["params"]))
    assert all(path[0] == "model" for path in new_params)  # no hidden projection here, and no teacher leaf
    assert jax.tree.structure(update["new_state"].params) == jax.tree.structure(update["params"])
    assert sum(leaf.size for leaf in new_params.values()) < sum(leaf.size for leaf in update["teacher_before"].values())


# ---------------------------------------------------------------------------------------------------------------
# Remat.


def test_remat_gives_the_same_update_and_metrics(update):
    """The student's forward recomputed in the backward pass (its dropout masks redrawn from the same keys): the
    same arithmetic, which XLA may fuse or order differently: the update within the gradient tolerance of the
    accumulation test, the metrics within the rounding of their sums."""
    tx = optax.sgd(1.0)
    step = _step(update["student_graphdef"], update["teacher_graphdef"], tx, remat="nothing_saveable")
    new_state, metrics = step(_state(update["params"], tx), update["teacher_params"], update["batch"])
    got, want = _flat(new_state.params), _flat(update["new_state"].params)
    atol = _gradient_atol(_flat(update["params"]), update["grads"])
    for path in want:
        np.testing.assert_allclose(got[path], want[path], rtol=0, atol=atol[path], err_msg=str(path))
    counts = update["counts"]
    atols = {"loss": _loss_atol(counts), **{term: _term_atol(term, counts[term][0]) for term in OBJECTIVE.terms}}
    for name, value in update["metrics"].items():  # grad_norm: a sum of squares of the gradient: 16 ulps of it
        np.testing.assert_allclose(float(metrics[name]), float(value), rtol=16 * EPS, atol=atols.get(name, 0.0),
                                   err_msg=name)


@pytest.mark.parametrize("remat", ["no_such_policy", "checkpoint_dots_everything", ""])
def test_an_unknown_remat_policy_is_refused_naming_it(update, remat):
    with pytest.raises(ValueError, match=rf"remat must be 'none' or a jax.checkpoint_policies name, got '{remat}'"):
        make_train_step(update["student_graphdef"], update["teacher_graphdef"], OBJECTIVE, optax.sgd(1.0),
                        learning_rate_schedule(SETTINGS), attention_heads=HEADS, remat=remat)


# ---------------------------------------------------------------------------------------------------------------
# Dropout keys.


def test_micro_batch_i_of_step_s_drops_out_with_fold_in_fold_in_rng_s_i(update):
    """The hand loss the step's matches (the metrics test) used dropout key fold_in(fold_in(rng, s), i) on
    micro-batch i; the same hand loss with the keys swapped between the micro-batches, or without the step folded
    in, is far from it: the step's dropout is on and its keys are those."""
    metrics, atol = update["metrics"], _loss_atol(update["counts"])
    np.testing.assert_allclose(float(metrics["loss"]), update["loss"], rtol=0, atol=atol)
    for keys in (_keys(order=(1, 0)), _keys(fold_step=False)):
        (other, _), _ = update["hand"](keys, update["full"])
        assert abs(float(other) - float(metrics["loss"])) > 1000 * atol
