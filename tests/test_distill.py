"""The distillation trainer: accumulated updates equal full-batch ones, the same run on 1 and 8 devices, exact resume
after SIGKILL / SIGTERM, config errors before compiling, MLM pre-training without a teacher (the NaN stop is
tested through the command in test_run.py)."""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import transformers
from flax import nnx

from conftest import REPO, free_port, recipe_objective, run_processes
from distil import hf, losses
from distil.config import ConfigError, load_config
from distil.data.masking import IGNORE_INDEX
from distil.models import ModelConfig, create_model, student_config_for
from distil.models.extract import init_student_from_teacher
from distil.train import checkpoints
from distil.train.distill import train_and_evaluate
from distil.train.metrics import read_metrics
from distil.train.run import RunConfigError
from distil.train.state import OptimizerSettings, TrainState, decay_mask, learning_rate_schedule, make_optimizer
from distil.train.step import DistillStudent, make_train_step

# Small and fast: sequences of at most 64 tokens, all padded to 64 (one compiled length), 16 per update.
FAST = ["data.max_length=64", "batching.pad_to_multiple=64", "batching.global_batch=16", "batching.micro_batches=2",
        "log_every_steps=1", "checkpoint.every_steps=100", "teacher.max_position_embeddings=64",
        "student.max_position_embeddings=64"]
METRIC_KEYS = ("loss", "ce", "mlm", "cos", "grad_norm", "learning_rate", "padding_fraction", "real_tokens")


def runlocal(*overrides: str):
    return load_config("distilmbert:runlocal", [*FAST, *overrides])


# ------------------------------------------------------------------------------------------- the step, exactly

TINY = dict(vocab_size=61, hidden_size=32, num_hidden_layers=4, num_attention_heads=4, intermediate_size=48,
            max_position_embeddings=24, head="mlm", add_pooler=False, hidden_dropout=0.0, attention_dropout=0.0)


def _batch(accum: int, rows: int, length: int = 12, seed: int = 0) -> dict:
    """[accum, rows, length] with uneven lengths and very uneven MLM target counts per micro-batch."""
    rng = np.random.default_rng(seed)
    lengths = rng.integers(3, length + 1, size=accum * rows)
    mask = (np.arange(length)[None] < lengths[:, None]).astype(np.int32)
    ids = np.where(mask == 1, rng.integers(5, TINY["vocab_size"], size=mask.shape), 0).astype(np.int32)
    labels = np.full(mask.shape, IGNORE_INDEX, np.int32)
    labels[0, 1:6] = ids[0, 1:6]  # the first micro-batch holds 5 + 1 targets, the second 1
    labels[1, 1] = ids[1, 1]
    labels[accum * rows - 1, 1] = ids[accum * rows - 1, 1]
    shape = (accum, rows, length)
    return {"input_ids": ids.reshape(shape), "attention_mask": mask.reshape(shape), "mlm_labels": labels.reshape(shape)}


OBJECTIVES = {
    "recipe": (recipe_objective(), "teacher_layers"),
    "every_term": (recipe_objective(alpha_mse=0.5, alpha_hidden_mse=1.0, alpha_attention=1.0, alpha_minilm=1.0,
                             restrict_ce_to_mask=True, hidden_layer_map=(0, 2, 4), attention_layer_map=(1, 3),
                             minilm_student_layer=-1, minilm_teacher_layer=2, minilm_relation_heads=4),
                   "teacher_layers"),
    "narrow_student": (recipe_objective(alpha_ce=0.0, alpha_cos=0.0, alpha_hidden_mse=3.0, alpha_minilm=1.0,
                                 hidden_layer_map=(0, 4), minilm_student_layer=1, minilm_teacher_layer=3,
                                 minilm_relation_heads=4), "narrow"),
}


def _models(kind: str):
    teacher = create_model(ModelConfig(**TINY), seed=1)
    if kind == "teacher_layers":
        student = init_student_from_teacher(teacher, teacher_layers=(0, 3))
        return teacher, DistillStudent(student)
    narrow = student_config_for(teacher.config, 2, hidden_size=16, num_attention_heads=2, intermediate_size=24)
    with nnx.use_eager_sharding(False):  # placed by the caller (the trainer: by its jitted init's shardings)
        projection = losses.HiddenProjection(16, 32, rngs=nnx.Rngs(params=3))
    return teacher, DistillStudent(create_model(narrow, seed=2), projection)


@pytest.mark.parametrize("remat", ["nothing_saveable", "dots_saveable"])
def test_remat_policies_give_the_same_update(remat):
    """Recomputing the student's forward in the backward pass changes memory, not the update."""
    objective, kind = OBJECTIVES["every_term"]
    teacher, student = _models(kind)
    teacher_graphdef, teacher_params = nnx.split(teacher)
    student_graphdef, params = nnx.split(student, nnx.Param)
    settings = OptimizerSettings(learning_rate=1.0, num_steps=10, warmup_steps=0)
    state = TrainState(step=jnp.zeros((), jnp.int32), rng=jax.random.key_data(jax.random.key(0)), params=params,
                       opt_state=optax.sgd(1.0).init(params))
    batch = _batch(accum=2, rows=4)
    results = {}
    for policy in ("none", remat):
        step = jax.jit(make_train_step(student_graphdef, teacher_graphdef, objective, optax.sgd(1.0),
                                       learning_rate_schedule(settings), attention_heads=4, remat=policy))
        results[policy] = step(state, teacher_params, batch)
    for (_, got), (_, want) in zip(nnx.to_flat_state(results[remat][0].params),
                                   nnx.to_flat_state(results["none"][0].params)):
        np.testing.assert_allclose(got.get_value(), want.get_value(), rtol=1e-5, atol=2e-7)
    with pytest.raises(ValueError, match=r"remat must be 'none' or a jax.checkpoint_policies name, got 'some'"):
        make_train_step(student_graphdef, teacher_graphdef, objective, optax.sgd(1.0),
                        learning_rate_schedule(settings), attention_heads=4, remat="some")


@pytest.mark.parametrize("name", list(OBJECTIVES))
def test_accumulated_update_equals_the_full_batch_update(name):
    objective, kind = OBJECTIVES[name]
    teacher, student = _models(kind)
    teacher_graphdef, teacher_params = nnx.split(teacher)
    student_graphdef, params = nnx.split(student, nnx.Param)
    settings = OptimizerSettings(learning_rate=1.0, num_steps=10, warmup_steps=0)
    tx = optax.sgd(1.0)  # params - gradient: compares the gradients themselves (Adam's g/|g| would amplify noise)
    state = TrainState(step=jnp.zeros((), jnp.int32), rng=jax.random.key_data(jax.random.key(0)), params=params,
                       opt_state=tx.init(params))
    step = jax.jit(make_train_step(student_graphdef, teacher_graphdef, objective, tx,
                                   learning_rate_schedule(settings), attention_heads=student.model.config.num_attention_heads))
    micro = _batch(accum=2, rows=4)
    full = {key: value.reshape(1, 8, -1) for key, value in micro.items()}
    state_micro, metrics_micro = step(state, teacher_params, micro)
    state_full, metrics_full = step(state, teacher_params, full)

    # Accumulating reorders float32 sums, whose rounding is relative to the size of what is summed, not of the
    # result. The KLs are differences of two cross-entropies that nearly cancel: ce's are of size ~T² ln(vocab) (a
    # KL of 1e-3 carries the rounding of numbers of size 16), the attention and MiniLM relation KLs' ~ln(length)
    # over a row's keys; cos is a mean of 1 - cosine with cosines of size 1; the MSEs sum positive parts of their
    # own size. 32 ulps of that size bound a reordered sum of a few hundred.
    eps = float(np.finfo(np.float32).eps)
    length = micro["input_ids"].shape[-1]
    sizes = {"ce": objective.temperature**2 * np.log(TINY["vocab_size"]), "cos": 1.0,
             "attention": np.log(length), "minilm": np.log(length)}
    for term in objective.terms + ("loss", "grad_norm"):
        size = sizes.get(term, abs(float(metrics_full[term])))
        if term == "loss":  # the weighted total carries each term's rounding
            size = sum(objective.alpha(t) * sizes.get(t, abs(float(metrics_full[t]))) for t in objective.terms)
        np.testing.assert_allclose(metrics_micro[term], metrics_full[term], rtol=0, atol=32 * eps * size,
                                   err_msg=f"{term}: more than 32 float32 ulps of the summed magnitude {size:.3g}")
    for (path, got), (_, want) in zip(nnx.to_flat_state(state_micro.params), nnx.to_flat_state(state_full.params)):
        np.testing.assert_allclose(got.get_value(), want.get_value(), rtol=1e-5, atol=2e-7, err_msg=str(path))
    assert int(state_micro.step) == 1
    moved = max(float(np.abs(new.get_value() - old.get_value()).max())
                for (_, new), (_, old) in zip(nnx.to_flat_state(state_full.params), nnx.to_flat_state(params)))
    assert moved > 1e-3  # a real update, not two no-ops agreeing

    # The update-wide counts are the losses' own counts summed over the micro-batches, and averaging the
    # micro-batches' means instead (optax.MultiSteps) would be visibly wrong for this uneven MLM mask.
    counts = objective.counts(micro, attention_heads=student.model.config.num_attention_heads)
    model = nnx.merge(student_graphdef, params)
    micro_means, returned = [], {term: 0.0 for term in objective.terms}
    for index in range(2):
        one = {key: value[index] for key, value in micro.items()}
        flags = dict(output_attentions=objective.needs_attentions, output_qkv=objective.needs_qkv)
        sums = objective.sums(model.model(one["input_ids"], one["attention_mask"], **flags),
                              teacher(one["input_ids"], one["attention_mask"], **flags), one,
                              hidden_projection=model.hidden_projection)
        for term, (loss_sum, count) in sums.items():
            returned[term] += float(count)
        micro_means.append(float(sums["mlm"][0] / sums["mlm"][1]))
    assert {term: float(count) for term, count in counts.items()} == returned
    assert abs(np.mean(micro_means) - float(metrics_full["mlm"])) > 1e-2  # vs agreement within 2e-7 above


@pytest.mark.parametrize("name", ["recipe", "every_term"])
def test_chunked_vocabulary_step_equals_the_full_logits_step(name):
    """`vocab_chunk_size` > 0 (no [batch, length, vocab] logits, the gradient fused into the forward pass) gives the
    same update and metrics as the step on full logits (16 positions per chunk: 4 rows x 4 of the 12 positions; the
    61-token vocabulary in 4 tiles of 16, padded), with the uneven masks of `_batch`; the models' other outputs are
    unchanged by the flag."""
    objective, kind = OBJECTIVES[name]
    teacher, student = _models(kind)
    teacher_graphdef, teacher_params = nnx.split(teacher)
    student_graphdef, params = nnx.split(student, nnx.Param)
    settings = OptimizerSettings(learning_rate=1.0, num_steps=10, warmup_steps=0)
    tx = optax.sgd(1.0)
    state = TrainState(step=jnp.zeros((), jnp.int32), rng=jax.random.key_data(jax.random.key(0)), params=params,
                       opt_state=tx.init(params))
    chunked = dataclasses.replace(objective, vocab_chunk_size=16, vocab_tile_size=16)
    assert chunked.chunked_vocabulary and not objective.chunked_vocabulary
    results = []
    for each in (objective, chunked):
        step = jax.jit(make_train_step(student_graphdef, teacher_graphdef, each, tx, learning_rate_schedule(settings),
                                       attention_heads=student.model.config.num_attention_heads))
        results.append(step(state, teacher_params, _batch(accum=2, rows=4)))
    (state_plain, metrics_plain), (state_chunked, metrics_chunked) = results
    # ce's atol: the student starts from the teacher, so the KL is ~2e-3 and its float32 rounding (~1e-7 per logit,
    # which differs between the two ways of blocking the vocabulary matmul) shows at 1e-4 relative (3e-7 measured).
    for term in objective.terms + ("loss", "grad_norm"):
        np.testing.assert_allclose(metrics_chunked[term], metrics_plain[term], rtol=2e-6,
                                   atol=1e-6 if term == "ce" else 2e-7, err_msg=term)
    for (path, got), (_, want) in zip(nnx.to_flat_state(state_chunked.params), nnx.to_flat_state(state_plain.params)):
        np.testing.assert_allclose(got.get_value(), want.get_value(), rtol=1e-5, atol=2e-7, err_msg=str(path))


def test_weight_decay_skips_biases_and_layer_norms():
    params = nnx.state(create_model(ModelConfig(**TINY), seed=0), nnx.Param)
    mask = {".".join(map(str, path)): leaf for path, leaf in nnx.to_flat_state(decay_mask(params))}
    assert mask["encoder.layers.0.attention.query.kernel"] and mask["encoder.embeddings.word_embeddings.embedding"]
    assert not mask["encoder.layers.0.attention.query.bias"] and not mask["encoder.layers.0.output_norm.scale"]
    assert not mask["mlm_head.bias"]
    tx = make_optimizer(OptimizerSettings(learning_rate=0.1, num_steps=10, warmup_steps=0, weight_decay=0.5))
    zero_grads = jax.tree.map(jnp.zeros_like, params)
    updates, _ = tx.update(zero_grads, tx.init(params), params)
    flat = {".".join(map(str, path)): leaf.get_value() for path, leaf in nnx.to_flat_state(updates)}
    # Zero gradient, so only the decoupled decay moves weights: -lr(step 0 of warmup=0 -> peak) * wd * w.
    weights = {".".join(map(str, path)): leaf.get_value() for path, leaf in nnx.to_flat_state(params)}
    name = "encoder.layers.0.attention.query.kernel"
    np.testing.assert_allclose(flat[name], -0.1 * 0.5 * weights[name], rtol=1e-6)
    assert not np.any(flat["encoder.layers.0.output_norm.scale"])


# ------------------------------------------------------------------------------------------- the whole trainer


def _student_tensors(workdir: Path) -> dict:
    from safetensors.numpy import load_file

    return load_file(workdir / "student" / "model.safetensors")


def test_one_and_eight_devices_and_three_meshes_agree(tmp_path):
    runs = {"1": ["mesh.num_devices=1", "mesh.data=1"], "8x1x1": ["mesh.data=8"],
            "2x2x2": ["mesh.data=2", "mesh.fsdp=2", "mesh.tensor=2"],
            "2x2x2 chunked": ["mesh.data=2", "mesh.fsdp=2", "mesh.tensor=2", "loss.vocab_chunk_size=24",
                               "loss.vocab_tile_size=1000"]}  # each device's 4,000 tokens in 4 tiles
    results = {}
    for name, overrides in runs.items():
        workdir = tmp_path / name
        train_and_evaluate(runlocal("num_steps=3", *overrides), workdir)
        results[name] = (read_metrics(workdir / "metrics.jsonl"), _student_tensors(workdir))
    reference_metrics, reference_tensors = results["1"]
    assert [row["step"] for row in reference_metrics] == [1, 2, 3]
    assert reference_metrics[-1]["ce"] > 0 and reference_metrics[-1]["mlm"] > 0
    for name in ("8x1x1", "2x2x2", "2x2x2 chunked"):
        metrics, tensors = results[name]
        for got, want in zip(metrics, reference_metrics):
            for key in METRIC_KEYS:
                np.testing.assert_allclose(got[key], want[key], rtol=2e-5, err_msg=f"{name} step {want['step']} {key}")
        assert tensors.keys() == reference_tensors.keys()
        for key in tensors:
            np.testing.assert_allclose(tensors[key], reference_tensors[key], atol=2e-5, err_msg=f"{name} {key}")


RESUME = ["num_steps=16", "checkpoint.every_steps=4", "checkpoint.keep=2"]


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("uninterrupted")
    train_and_evaluate(runlocal(*RESUME), workdir)
    return read_metrics(workdir / "metrics.jsonl")


def _command(workdir: Path) -> list[str]:
    return [sys.executable, "-m", "distil", "distill", "--config", "distilmbert:runlocal", "--workdir", str(workdir),
            *(f"--config.{o}" for o in [*FAST, *RESUME])]


def _start(workdir: Path) -> subprocess.Popen:
    env = dict(os.environ, PYTHONPATH=str(REPO), PYTHONUNBUFFERED="1")
    return subprocess.Popen(_command(workdir), env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _wait_for_checkpoint(process: subprocess.Popen, workdir: Path, step: int, timeout: float = 240) -> None:
    deadline = time.monotonic() + timeout
    while not (workdir / "checkpoints" / str(step) / "_CHECKPOINT_METADATA").exists():
        if process.poll() is not None:
            pytest.fail(f"the run ended before checkpoint {step}: {process.stdout.read()}")
        if time.monotonic() > deadline:
            process.kill()
            pytest.fail(f"no checkpoint {step} after {timeout}s")
        time.sleep(0.05)


def _assert_same_metrics(got: list[dict], want: list[dict]) -> None:
    assert [row["step"] for row in got] == [row["step"] for row in want] == list(range(1, 17))
    for got_row, want_row in zip(got, want):
        assert {k: got_row[k] for k in METRIC_KEYS} == {k: want_row[k] for k in METRIC_KEYS}, got_row["step"]


def test_sigkill_then_rerun_logs_exactly_the_uninterrupted_metrics(tmp_path, uninterrupted):
    workdir = tmp_path / "killed"
    process = _start(workdir)
    _wait_for_checkpoint(process, workdir, 4)
    process.send_signal(signal.SIGKILL)
    process.wait(timeout=60)
    assert process.returncode == -signal.SIGKILL
    logged = read_metrics(workdir / "metrics.jsonl")
    assert logged and max(row["step"] for row in logged) < 16  # killed mid-run
    rerun = subprocess.run(_command(workdir), env=dict(os.environ, PYTHONPATH=str(REPO)), capture_output=True,
                           text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stdout + rerun.stderr
    assert "resumed from" in rerun.stdout
    _assert_same_metrics(read_metrics(workdir / "metrics.jsonl"), uninterrupted)


def test_sigterm_saves_exits_zero_and_resumes_exactly(tmp_path, uninterrupted):
    workdir = tmp_path / "preempted"
    process = _start(workdir)
    _wait_for_checkpoint(process, workdir, 4)
    process.send_signal(signal.SIGTERM)
    output, _ = process.communicate(timeout=120)
    assert process.returncode == 0, output
    assert "received SIGTERM" in output and "saved a checkpoint at step" in output
    stopped = int(output.split("saved a checkpoint at step ")[1].split()[0])
    assert (workdir / "checkpoints" / str(stopped)).is_dir() and stopped < 16
    rerun = subprocess.run(_command(workdir), env=dict(os.environ, PYTHONPATH=str(REPO)), capture_output=True,
                           text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stdout + rerun.stderr
    assert f"resumed from {workdir / 'checkpoints'} at step {stopped}" in rerun.stdout
    _assert_same_metrics(read_metrics(workdir / "metrics.jsonl"), uninterrupted)


def test_resuming_with_other_data_settings_names_the_field(tmp_path):
    workdir = tmp_path / "run"
    train_and_evaluate(runlocal("num_steps=2", "checkpoint.every_steps=2"), workdir)
    # The run scaffold refuses the changed config before the checkpoint is read (tests/test_run.py has the rules)...
    with pytest.raises(RunConfigError, match=r"config.batching.global_batch: 16 -> 32"):
        train_and_evaluate(runlocal("num_steps=4", "batching.global_batch=32"), workdir)
    # ... and the checkpoint's own data settings guard what no config key says (the corpus' content).
    saved = {"global_batch": 16, "corpus": "0123"}
    with pytest.raises(checkpoints.ResumeError, match=r"written with corpus='0123', this run has corpus='4567'"):
        checkpoints.check_settings(saved, {**saved, "corpus": "4567"}, workdir / "checkpoints")
    # The student checkpoint holds the student alone: the teacher is an input of the step, never saved.
    saved = json.loads((workdir / "checkpoints" / "2" / "state" / "_METADATA").read_text())
    names = " ".join(saved["tree_metadata"].keys())
    assert "model" in names and "teacher" not in names and "word_embeddings" in names


def test_mlm_pretraining_without_a_teacher(tmp_path):
    workdir = tmp_path / "mlm"
    config = runlocal("num_steps=4", "teacher.source=none", "student.init=random", "student.family=bert",
                      "loss.alpha_ce=0.0", "loss.alpha_cos=0.0", "loss.alpha_mlm=1.0")
    summary = train_and_evaluate(config, workdir)
    rows = read_metrics(workdir / "metrics.jsonl")
    assert set(rows[-1]) >= {"mlm", "loss"} and "ce" not in rows[-1]
    assert rows[-1]["loss"] == pytest.approx(rows[-1]["mlm"])
    assert summary["teacher"] is None
    model = transformers.AutoModelForMaskedLM.from_pretrained(workdir / "student")
    assert type(model).__name__ == "BertForMaskedLM" and model.config.vocab_size == 8000


@pytest.mark.parametrize(
    "overrides, message",
    [
        (["loss.temperature=0.0"], r"config.loss.temperature must be > 0, got 0.0"),
        (["loss.alpha_ce=0.0", "loss.alpha_mlm=0.0", "loss.alpha_cos=0.0"], r"config.loss: every loss weight is 0"),
        (["loss.alpha_mlm=-1.0"], r"config.loss.alpha_mlm must be >= 0, got -1.0"),
        (["student.teacher_layers=(0, 4)"], r"config.student.teacher_layers=\(0, 4\): the teacher has 4 layers"),
        (["mesh.data=3"], r"config.mesh.data=3 x config.mesh.fsdp=1 x config.mesh.tensor=1 = 3 devices, but 8"),
        (["batching.micro_batches=3"], r"config.batching.micro_batches=3 must divide config.batching.global_batch=16"),
        (["batching.micro_batches=4"], r"a micro-batch of .* = 4 sequences must split evenly over the data x fsdp = 8"),
        (["data.max_length=128"], r"config.data.max_length=128 exceeds the teacher's max_position_embeddings=64"),
        (["teacher.source=none"], r"config.teacher.source='none' \(MLM pre-training\) but config.loss.alpha_ce"),
        (["teacher.source=checkpoint"], r"config.teacher.checkpoint is empty"),
        (["loss.alpha_attention=1.0", "loss.attention_layer_map=(0, 9)"], r"config.loss.attention_layer_map=\(0, 9\)"),
        (["loss.alpha_hidden_mse=1.0", "loss.hidden_layer_map=(0, 1, 2)", "student.init=random",
          "student.hidden_size=32"], r"the student is 32 wide and the teacher 64; set config.loss.hidden_projection"),
    ],
)
def test_bad_config_values_fail_before_compiling(tmp_path, overrides, message, capsys):
    with pytest.raises(ConfigError, match=message):
        train_and_evaluate(runlocal(*overrides), tmp_path / "bad")
    assert "compiled the step" not in capsys.readouterr().out
    assert not (tmp_path / "bad" / "checkpoints").exists()


def test_teacher_from_a_hugging_face_folder(tmp_path):
    """A teacher folder written by transformers itself (BertForMaskedLM) drives the recipe; its vocabulary must be
    the tokenizer's."""
    from distil.data.embedded import embedded_wordpiece_vocab

    torch_config = transformers.BertConfig(vocab_size=8000, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                                           intermediate_size=64, max_position_embeddings=64)
    transformers.BertForMaskedLM(torch_config).save_pretrained(tmp_path / "teacher")
    workdir = tmp_path / "run"
    train_and_evaluate(runlocal("num_steps=2", "teacher.source=checkpoint", f"teacher.checkpoint={tmp_path / 'teacher'}",
                                "student.teacher_layers=(0, 1)"), workdir)
    assert [row["step"] for row in read_metrics(workdir / "metrics.jsonl")] == [1, 2]
    student = transformers.AutoModelForMaskedLM.from_pretrained(workdir / "student")
    assert type(student).__name__ == "DistilBertForMaskedLM" and student.config.n_layers == 2
    assert (workdir / "student" / "vocab.txt").read_bytes() == embedded_wordpiece_vocab().read_bytes()
    # The same teacher with mBERT's tokenizer: no mapping between the vocabularies exists, so it is refused.
    with pytest.raises(ConfigError, match=r"config.tokenizer has 119547 tokens but the teacher has vocab_size=8000"):
        train_and_evaluate(runlocal("teacher.source=checkpoint", f"teacher.checkpoint={tmp_path / 'teacher'}",
                                    "student.teacher_layers=(0, 1)", "tokenizer="), tmp_path / "mismatch")


def test_a_headless_teacher_is_distilled_with_the_representation_terms(tmp_path, capsys):
    """A BertModel folder (no MLM head, e.g. a sentence-transformers export) drives the representation terms; the
    student from its layers has no MLM head either and is written as a DistilBertModel whose hidden states
    transformers reproduces. A term that needs the teacher's logits is refused, naming it."""
    import torch

    torch_config = transformers.BertConfig(vocab_size=8000, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                                           intermediate_size=64, max_position_embeddings=64)
    transformers.BertModel(torch_config).save_pretrained(tmp_path / "teacher")
    teacher = [f"teacher.checkpoint={tmp_path / 'teacher'}", "teacher.source=checkpoint", "student.teacher_layers=(0, 1)"]
    with pytest.raises(ConfigError, match=r"config.loss.alpha_ce=5.0 needs the teacher's logits but the teacher \(.*"
                                          r"\) has no MLM head \(a BertModel\)"):
        train_and_evaluate(runlocal("num_steps=2", *teacher), tmp_path / "refused")
    workdir = tmp_path / "run"
    train_and_evaluate(runlocal("num_steps=2", *teacher, "loss.alpha_ce=0.0", "loss.alpha_mlm=0.0",
                                "loss.alpha_cos=1.0", "loss.alpha_hidden_mse=1.0", "loss.hidden_layer_map=(0, 1, 2)"),
                       workdir)
    rows = read_metrics(workdir / "metrics.jsonl")
    assert [row["step"] for row in rows] == [1, 2] and {"cos", "hidden_mse"} <= set(rows[-1]) and "mlm" not in rows[-1]
    student = transformers.AutoModel.from_pretrained(workdir / "student")
    assert type(student).__name__ == "DistilBertModel" and student.config.n_layers == 2
    ours = hf.load_pretrained(workdir / "student")
    ids = np.random.default_rng(0).integers(5, 8000, size=(2, 16)).astype(np.int32)
    mask = np.ones_like(ids)
    with torch.no_grad():
        want = student(torch.tensor(ids, dtype=torch.long), attention_mask=torch.tensor(mask)).last_hidden_state
    got = ours(jnp.asarray(ids), jnp.asarray(mask)).last_hidden_state
    np.testing.assert_allclose(np.asarray(got), want.numpy(), atol=1e-4)  # float32 encoders of O(1) values
    # Asked for the mlm term, the student from a headless teacher gets a new MLM head.
    train_and_evaluate(runlocal("num_steps=1", *teacher, "loss.alpha_ce=0.0", "loss.alpha_mlm=2.0"), tmp_path / "mlm")
    assert "the student's is new, trained by the mlm term alone" in capsys.readouterr().out
    assert type(transformers.AutoModelForMaskedLM.from_pretrained(tmp_path / "mlm" / "student")).__name__ == \
        "DistilBertForMaskedLM"


def test_losses_of_a_packed_batch_equal_those_unpacked():
    """The recipe's terms over packed rows equal (as sum and count) the same sequences in their own padded rows."""
    teacher, student = _models("teacher_layers")
    objective = recipe_objective(alpha_mse=1.0)
    rng = np.random.default_rng(7)
    sizes = [[6, 9, 4], [11, 7], [15]]
    length = 20
    packed = {name: np.zeros((3, length), np.int32) for name in
              ("input_ids", "segment_ids", "position_ids", "mlm_labels")}
    alone = {name: np.zeros((6, length), np.int32) for name in ("input_ids", "mlm_labels")}
    index = 0
    for row, row_sizes in enumerate(sizes):
        start = 0
        for segment, size in enumerate(row_sizes, 1):
            tokens = rng.integers(5, TINY["vocab_size"], size=size)
            labels = np.where(rng.random(size) < 0.3, tokens, IGNORE_INDEX)
            span = slice(start, start + size)
            packed["input_ids"][row, span], packed["mlm_labels"][row, span] = tokens, labels
            packed["segment_ids"][row, span], packed["position_ids"][row, span] = segment, np.arange(size)
            alone["input_ids"][index, :size], alone["mlm_labels"][index, :size] = tokens, labels
            alone["mlm_labels"][index, size:] = IGNORE_INDEX
            start, index = start + size, index + 1
        packed["mlm_labels"][row, start:] = IGNORE_INDEX
    packed["attention_mask"] = (packed["segment_ids"] > 0).astype(np.int32)
    alone["attention_mask"] = (alone["input_ids"] > 0).astype(np.int32)

    def terms(batch, **packing):
        out_t = teacher(batch["input_ids"], batch["attention_mask"], **packing)
        out_s = student.model(batch["input_ids"], batch["attention_mask"], **packing)
        return objective.sums(out_s, out_t, batch)

    packed_terms = terms(packed, segment_ids=packed["segment_ids"], position_ids=packed["position_ids"])
    alone_terms = terms(alone)
    assert set(packed_terms) == {"ce", "mlm", "cos", "mse"}
    for term in packed_terms:
        np.testing.assert_allclose(packed_terms[term][0], alone_terms[term][0], rtol=2e-5, atol=1e-5, err_msg=term)
        assert float(packed_terms[term][1]) == float(alone_terms[term][1]), term


def test_masks_do_not_depend_on_the_number_of_processes():
    """Each process masks whole row groups of every micro-batch from the group's own stream: the two halves masked
    by two processes are, row for row, what one process masks."""
    from distil.data.masking import token_probs_from_counts
    from distil.tokenization import special_token_ids, load_tokenizer
    from distil.data.embedded import embedded_wordpiece_vocab
    from distil.data.pipeline import MaskUpdate

    specials = special_token_ids(load_tokenizer(embedded_wordpiece_vocab()))
    probs = token_probs_from_counts(np.ones(8000, np.int64), [0, 100, 101, 102, 103])
    batch = _batch(accum=2, rows=8, length=16, seed=3)
    rows = {"input_ids": batch["input_ids"].reshape(16, 16), "attention_mask": batch["attention_mask"].reshape(16, 16)}
    rows["lengths"] = rows["attention_mask"].sum(1).astype(np.int32)
    masking = load_config("distilmbert:runlocal").masking

    def mask(process: int, count: int) -> dict:
        local_rows = 8 // count
        local = {name: value.reshape(2, 8, *value.shape[1:])[:, process * local_rows:(process + 1) * local_rows]
                 .reshape(2 * local_rows, *value.shape[1:]) for name, value in rows.items()}
        update = MaskUpdate(probs, specials, 8000, masking, seed=0, micro_batches=2, group_size=2,
                            first_group=process * local_rows // 2)
        return update(5, local)

    whole = mask(0, 1)
    halves = [mask(p, 2) for p in range(2)]
    for name in ("input_ids", "mlm_labels"):
        np.testing.assert_array_equal(np.concatenate([h[name] for h in halves], axis=1), whole[name])
    assert (whole["mlm_labels"] != IGNORE_INDEX).sum() > 0


def test_two_processes_equal_one_and_resume_in_one(tmp_path):
    """2 processes x 4 CPU devices (jax.distributed on 127.0.0.1, each reading and masking its own rows) log the
    losses of 1 process x 8 devices, and a checkpoint they wrote resumes in one process to the same next losses."""
    port = free_port()
    overrides = [*FAST, "num_steps=4", "checkpoint.every_steps=2"]
    worker = Path(__file__).parent / "hosts" / "distill_worker.py"
    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=4", "JAX_PLATFORMS": "cpu",
           "PYTHONPATH": str(REPO)}
    workdir = tmp_path / "two"
    outputs = run_processes([([sys.executable, str(worker), str(port), str(i), str(workdir), *overrides], env)
                             for i in range(2)], coordinator_port=port, timeout=300)
    assert all(code == 0 for code, _ in outputs), "\n\n".join(output for _, output in outputs)[-4000:]

    reference_dir = tmp_path / "one"
    train_and_evaluate(runlocal("num_steps=4", "checkpoint.every_steps=2"), reference_dir)
    reference = read_metrics(reference_dir / "metrics.jsonl")
    two = read_metrics(workdir / "metrics.jsonl")
    assert [row["step"] for row in two] == [1, 2, 3, 4]
    for got, want in zip(two, reference):
        for key in METRIC_KEYS:
            np.testing.assert_allclose(got[key], want[key], rtol=2e-5, err_msg=f"step {want['step']} {key}")

    # Resume the 2-process checkpoint of step 2 in one process: steps 3 and 4 as the 1-process run logged them.
    import shutil

    shutil.rmtree(workdir / "checkpoints" / "4")  # as if killed after checkpoint 2: not finished, no summary
    (workdir / "summary.json").unlink()
    record = json.loads((workdir / "run.json").read_text())
    (workdir / "run.json").write_text(json.dumps({**record, "status": "running"}))
    train_and_evaluate(runlocal("num_steps=4", "checkpoint.every_steps=2"), workdir)
    resumed = read_metrics(workdir / "metrics.jsonl")
    assert [row["step"] for row in resumed] == [1, 2, 3, 4]
    for got, want in zip(resumed[2:], reference[2:]):
        for key in METRIC_KEYS:
            np.testing.assert_allclose(got[key], want[key], rtol=2e-5, err_msg=f"resumed step {want['step']} {key}")


def test_dry_run_compiles_the_step_without_data_or_weights(tmp_path, capsys):
    """The teacher folder holds a config.json and no weights: the dry run needs only shapes. With parameters
    replicated (data 8), each device holds the teacher, the student and Adam's two moments (float32)."""
    from distil import cli
    from distil.train.distill import dry_run

    teacher = tmp_path / "teacher"
    teacher.mkdir()
    transformers.BertConfig(vocab_size=8000, hidden_size=64, num_hidden_layers=4, num_attention_heads=4,
                            intermediate_size=256, max_position_embeddings=128,
                            architectures=["BertForMaskedLM"]).to_json_file(teacher / "config.json")
    config = runlocal("teacher.source=checkpoint", f"teacher.checkpoint={teacher}", "mesh.data=8")
    result = dry_run(config)
    assert not (tmp_path / "teacher" / "model.safetensors").exists()
    expected_arguments = 4 * (result["teacher_parameters"] + 3 * result["student_parameters"])
    assert expected_arguments <= result["argument_bytes"] <= 1.05 * expected_arguments
    assert result["peak_bytes"] >= result["argument_bytes"] + result["temp_bytes"] > result["argument_bytes"]
    assert result["flops"] > 0 and result["rows_per_device"] == 1 and result["mesh"]["data"] == 8

    code = cli.main(["distill", "--config", "distilmbert:runlocal", "--dry_run", "--config.mesh.data=2",
                     "--config.mesh.fsdp=2", "--config.mesh.tensor=2"])
    out = capsys.readouterr().out
    assert code == 0 and "dry run: mesh {'data': 2, 'fsdp': 2, 'tensor': 2}" in out and "MiB peak" in out
