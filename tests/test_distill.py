"""The distillation trainer: accumulated updates equal full-batch ones, the same run on 1 and 8 devices, exact resume
after SIGKILL / SIGTERM, config errors before compiling, a NaN stop, MLM pre-training without a teacher."""

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

from conftest import REPO
from distil import losses
from distil.config import ConfigError, load_config
from distil.data.masking import IGNORE_INDEX
from distil.models import ModelConfig, create_model, student_config_for
from distil.models.extract import init_student_from_teacher
from distil.train import checkpoints
from distil.train.distill import TrainingError, train_and_evaluate
from distil.train.metrics import read_metrics
from distil.train.objective import Objective
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
    "recipe": (Objective(), "teacher_layers"),
    "every_term": (Objective(alpha_mse=0.5, alpha_hidden_mse=1.0, alpha_attention=1.0, alpha_minilm=1.0,
                             restrict_ce_to_mask=True, hidden_layer_map=(0, 2, 4), attention_layer_map=(1, 3),
                             minilm_student_layer=-1, minilm_teacher_layer=2, minilm_relation_heads=4),
                   "teacher_layers"),
    "narrow_student": (Objective(alpha_ce=0.0, alpha_cos=0.0, alpha_hidden_mse=3.0, alpha_minilm=1.0,
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

    for term in objective.terms + ("loss", "grad_norm"):
        np.testing.assert_allclose(metrics_micro[term], metrics_full[term], rtol=2e-6, atol=2e-7, err_msg=term)
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
    same update and metrics as the step on full logits (16 positions per chunk: 4 rows x 4 of the 12 positions),
    with the uneven masks of `_batch`; the models' other outputs are unchanged by the flag."""
    objective, kind = OBJECTIVES[name]
    teacher, student = _models(kind)
    teacher_graphdef, teacher_params = nnx.split(teacher)
    student_graphdef, params = nnx.split(student, nnx.Param)
    settings = OptimizerSettings(learning_rate=1.0, num_steps=10, warmup_steps=0)
    tx = optax.sgd(1.0)
    state = TrainState(step=jnp.zeros((), jnp.int32), rng=jax.random.key_data(jax.random.key(0)), params=params,
                       opt_state=tx.init(params))
    chunked = dataclasses.replace(objective, vocab_chunk_size=16)
    assert chunked.chunked_vocabulary and not objective.chunked_vocabulary
    results = []
    for each in (objective, chunked):
        step = jax.jit(make_train_step(student_graphdef, teacher_graphdef, each, tx, learning_rate_schedule(settings),
                                       attention_heads=student.model.config.num_attention_heads))
        results.append(step(state, teacher_params, _batch(accum=2, rows=4)))
    (state_plain, metrics_plain), (state_chunked, metrics_chunked) = results
    for term in objective.terms + ("loss", "grad_norm"):
        np.testing.assert_allclose(metrics_chunked[term], metrics_plain[term], rtol=2e-6, atol=2e-7, err_msg=term)
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
            "2x2x2 chunked": ["mesh.data=2", "mesh.fsdp=2", "mesh.tensor=2", "loss.vocab_chunk_size=24"]}
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
    with pytest.raises(checkpoints.ResumeError, match=r"written with global_batch=16, this run has global_batch=32"):
        train_and_evaluate(runlocal("num_steps=4", "batching.global_batch=32"), workdir)
    # The student checkpoint holds the student alone: the teacher is an input of the step, never saved.
    saved = json.loads((workdir / "checkpoints" / "2" / "state" / "_METADATA").read_text())
    names = " ".join(saved["tree_metadata"].keys())
    assert "model" in names and "teacher" not in names and "word_embeddings" in names


def test_a_non_finite_loss_stops_naming_the_step_and_term(tmp_path):
    config = runlocal("num_steps=10", "checkpoint.every_steps=2", "optimizer.learning_rate=1e30",
                      "optimizer.warmup_fraction=0.0")
    with pytest.raises(TrainingError, match=r"step \d+: the (ce|mlm|cos) loss is nan; stopped. The last good "
                                            r"checkpoint \(step \d+\) is in"):
        train_and_evaluate(config, tmp_path / "nan")


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
