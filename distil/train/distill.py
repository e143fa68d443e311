"""`distil distill`: the DistilBERT recipe (and MLM pre-training without a teacher), one readable function.

    train_and_evaluate(config, workdir)

Sections, in order: config checks (before anything is built) -> mesh -> data (binarised corpus, length-grouped
batches, MLM masking per micro-batch on the host) -> teacher (frozen, sharded, outside the optimizer) -> student
and optimizer state (created sharded) -> the step (jitted once per padded length, compiled ahead, memory and FLOPs
logged) -> checkpoint restore -> loop (metrics, NaN stop, checkpoints, SIGTERM) -> the student as a Hugging Face
folder. The config is read here and only here; everything below takes plain arguments.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import time
from pathlib import Path

import grain
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from flax import nnx

from distil import hf, losses, sharding
from distil.atomic import write_text_atomically
from distil.config import ConfigError
from distil.data.batching import GroupedBatchSource
from distil.data.binarize import load_token_counts, open_binarized, prepare
from distil.data.embedded import embedded_corpus_dir
from distil.data.masking import mask_batch, token_probs_from_counts
from distil.models import ModelConfig, create_model, model_class, student_config_for
from distil.models.extract import init_student_from_teacher
from distil.tokenization import default_vocab_path, load_tokenizer, special_token_ids
from distil.train import checkpoints
from distil.train.metrics import MetricsWriter, Progress
from distil.train.objective import TEACHER_TERMS, TERMS, Objective
from distil.train.state import OptimizerSettings, create_train_state, learning_rate_schedule, make_optimizer
from distil.train.step import DistillStudent, frozen_paths, make_train_step

CONFIG_FILE = "config.json"
STUDENT_DIR = "student"


class TrainingError(RuntimeError):
    """The run cannot go on (a non-finite loss); the message names the step and the term."""


# --------------------------------------------------------------------------------------------- config checks


def _objective(config: ml_collections.ConfigDict) -> Objective:
    loss = config.loss
    fields = {field.name: loss[field.name] for field in dataclasses.fields(Objective)}
    fields["hidden_layer_map"] = tuple(loss.hidden_layer_map)
    fields["attention_layer_map"] = tuple(loss.attention_layer_map)
    return Objective(**fields)


def check_config(config: ml_collections.ConfigDict, *, num_devices: int, process_count: int) -> None:
    """Errors that need no model or data: fail before anything is built, naming the key and what was expected."""
    loss = config.loss
    if not loss.temperature > 0:
        raise ConfigError(f"config.loss.temperature must be > 0, got {loss.temperature}")
    for term in TERMS:
        if loss[f"alpha_{term}"] < 0:
            raise ConfigError(f"config.loss.alpha_{term} must be >= 0, got {loss[f'alpha_{term}']}")
    if not any(loss[f"alpha_{term}"] for term in TERMS):
        raise ConfigError(f"config.loss: every loss weight is 0 ({', '.join(f'alpha_{t}' for t in TERMS)}); "
                          "set at least one > 0")
    if loss.vocab_chunk_size < 0:
        raise ConfigError(f"config.loss.vocab_chunk_size must be >= 0 (0 = full logits), got {loss.vocab_chunk_size}")
    if config.teacher.source not in ("checkpoint", "random", "none"):
        raise ConfigError(f"config.teacher.source must be 'checkpoint', 'random' or 'none', got "
                          f"{config.teacher.source!r}")
    if config.teacher.source == "checkpoint" and not config.teacher.checkpoint:
        raise ConfigError("config.teacher.checkpoint is empty: set it to a Hugging Face BERT folder "
                          "(e.g. bert-base-multilingual-cased downloaded beforehand), or use teacher.source='random'")
    if config.teacher.source == "none":
        needing = [f"alpha_{t}" for t in TEACHER_TERMS if loss[f"alpha_{t}"]]
        if needing:
            raise ConfigError(f"config.teacher.source='none' (MLM pre-training) but config.loss.{needing[0]} = "
                              f"{loss[needing[0]]} needs a teacher; set the teacher-side weights to 0")
        if config.student.init == "teacher_layers":
            raise ConfigError("config.teacher.source='none': config.student.init must be 'random' (there is no "
                              "teacher to copy layers from)")
    if config.student.init not in ("teacher_layers", "random"):
        raise ConfigError(f"config.student.init must be 'teacher_layers' or 'random', got {config.student.init!r}")
    batching = config.batching
    if batching.global_batch <= 0 or batching.micro_batches <= 0:
        raise ConfigError(f"config.batching.global_batch ({batching.global_batch}) and "
                          f"config.batching.micro_batches ({batching.micro_batches}) must be > 0")
    if batching.global_batch % batching.micro_batches:
        raise ConfigError(f"config.batching.micro_batches={batching.micro_batches} must divide "
                          f"config.batching.global_batch={batching.global_batch}")
    if batching.global_batch % process_count:
        raise ConfigError(f"config.batching.global_batch={batching.global_batch} must be a multiple of the "
                          f"{process_count} processes")
    if not (config.mesh.num_devices == -1 or 1 <= config.mesh.num_devices <= jax.device_count()):
        raise ConfigError(f"config.mesh.num_devices must be -1 (all) or in [1, {jax.device_count()}], got "
                          f"{config.mesh.num_devices}")
    try:
        mesh_config = {axis: config.mesh[axis] for axis in sharding.MESH_AXES}
        data, fsdp, _ = sharding.mesh_shape(mesh_config, num_devices, prefix="config.mesh")
    except sharding.MeshError as err:
        raise ConfigError(str(err)) from err
    micro = batching.global_batch // batching.micro_batches
    if micro % (data * fsdp):
        raise ConfigError(f"a micro-batch of config.batching.global_batch / micro_batches = {micro} sequences must "
                          f"split evenly over the data x fsdp = {data * fsdp} devices of config.mesh")
    if micro % process_count:
        raise ConfigError(f"a micro-batch of {micro} sequences must split evenly over the {process_count} processes")
    if config.num_steps < 0 or config.num_epochs <= 0 and not config.num_steps:
        raise ConfigError(f"config.num_steps ({config.num_steps}) must be > 0, or config.num_epochs > 0")
    if config.log_every_steps <= 0 or config.checkpoint.every_steps <= 0:
        raise ConfigError("config.log_every_steps and config.checkpoint.every_steps must be > 0")
    if not 0 <= config.optimizer.warmup_fraction <= 1:
        raise ConfigError(f"config.optimizer.warmup_fraction must be in [0, 1], got {config.optimizer.warmup_fraction}")


def _check_models(config, objective: Objective, teacher_config: ModelConfig | None, student_config: ModelConfig,
                  vocab_size: int) -> None:
    """Errors that need the models' configs: layer maps, vocabularies, positions, head counts."""
    where = f"the teacher ({config.teacher.checkpoint})" if config.teacher.source == "checkpoint" else "the teacher"
    max_length = config.data.max_length
    for name, model_config in (("teacher", teacher_config), ("student", student_config)):
        if model_config is None:
            continue
        if model_config.vocab_size != vocab_size:
            raise ConfigError(
                f"config.tokenizer has {vocab_size} tokens but the {name} has vocab_size={model_config.vocab_size}; "
                "a student and teacher must share the tokenizer's vocabulary (no mapping between vocabularies exists)"
            )
        if max_length > model_config.max_position_embeddings:
            raise ConfigError(f"config.data.max_length={max_length} exceeds the {name}'s "
                              f"max_position_embeddings={model_config.max_position_embeddings}")
    if teacher_config is None:
        return
    layers = teacher_config.num_hidden_layers
    if config.student.init == "teacher_layers":
        bad = [i for i in config.student.teacher_layers if not 0 <= i < layers]
        if bad or not config.student.teacher_layers:
            raise ConfigError(f"config.student.teacher_layers={tuple(config.student.teacher_layers)}: {where} has "
                              f"{layers} layers, expected indices in [0, {layers})")
    if objective.needs_teacher_logits and teacher_config.head != "mlm":
        raise ConfigError(f"config.loss.alpha_ce / alpha_mse need teacher logits but {where} has no MLM head "
                          "(use a BertForMaskedLM or BertForPreTraining folder)")
    if objective.alpha_hidden_mse:
        if len(objective.hidden_layer_map) > student_config.num_hidden_layers + 1 or not objective.hidden_layer_map:
            raise ConfigError(f"config.loss.hidden_layer_map={objective.hidden_layer_map} must name a teacher "
                              f"hidden_states index for each of up to {student_config.num_hidden_layers + 1} student "
                              "ones")
        bad = [i for i in objective.hidden_layer_map if not 0 <= i <= layers]
        if bad:
            raise ConfigError(f"config.loss.hidden_layer_map={objective.hidden_layer_map}: {where} has hidden_states "
                              f"0..{layers}")
        if student_config.hidden_size != teacher_config.hidden_size and not config.loss.hidden_projection:
            raise ConfigError(f"config.loss.alpha_hidden_mse: the student is {student_config.hidden_size} wide and "
                              f"the teacher {teacher_config.hidden_size}; set config.loss.hidden_projection=True")
    if objective.alpha_attention:
        bad = [i for i in objective.attention_layer_map if not 0 <= i < layers]
        if bad or not objective.attention_layer_map or \
                len(objective.attention_layer_map) > student_config.num_hidden_layers:
            raise ConfigError(f"config.loss.attention_layer_map={objective.attention_layer_map}: one teacher layer "
                              f"in [0, {layers}) per student layer")
        if student_config.num_attention_heads != teacher_config.num_attention_heads:
            raise ConfigError("config.loss.alpha_attention needs equal head counts (student "
                              f"{student_config.num_attention_heads}, teacher {teacher_config.num_attention_heads}); "
                              "use alpha_minilm, whose relation heads need not match")
    if objective.alpha_minilm:
        for name, index, model_config in (("student", objective.minilm_student_layer, student_config),
                                          ("teacher", objective.minilm_teacher_layer, teacher_config)):
            count = model_config.num_hidden_layers
            if not -count <= index < count:
                raise ConfigError(f"config.loss.minilm_{name}_layer={index} is outside the {name}'s {count} layers")
            if model_config.hidden_size % objective.minilm_relation_heads:
                raise ConfigError(f"config.loss.minilm_relation_heads={objective.minilm_relation_heads} must divide "
                                  f"the {name}'s width {model_config.hidden_size}")


# ---------------------------------------------------------------------------------------------------- models


def _teacher_config(config, vocab_size: int) -> ModelConfig | None:
    teacher = config.teacher
    if teacher.source == "none":
        return None
    if teacher.source == "checkpoint":
        return hf.read_checkpoint(teacher.checkpoint).config.replace(dtype=teacher.dtype)
    return ModelConfig(family="bert", vocab_size=vocab_size, hidden_size=teacher.hidden_size,
                       num_hidden_layers=teacher.num_hidden_layers, num_attention_heads=teacher.num_attention_heads,
                       intermediate_size=teacher.intermediate_size,
                       max_position_embeddings=teacher.max_position_embeddings, head="mlm", add_pooler=False,
                       dtype=teacher.dtype)


def _student_config(config, teacher_config: ModelConfig | None, vocab_size: int) -> ModelConfig:
    student = config.student
    if student.init == "teacher_layers":
        return student_config_for(teacher_config, len(student.teacher_layers), head="mlm", dtype=student.dtype,
                                  sinusoidal_pos_embds=student.sinusoidal_pos_embds)
    family_fields = dict(type_vocab_size=0, add_pooler=False, classifier_dropout=0.2) \
        if student.family == "distilbert" else dict(add_pooler=False)
    return ModelConfig(family=student.family, vocab_size=vocab_size, hidden_size=student.hidden_size,
                       num_hidden_layers=student.num_hidden_layers, num_attention_heads=student.num_attention_heads,
                       intermediate_size=student.intermediate_size,
                       max_position_embeddings=student.max_position_embeddings, head="mlm", dtype=student.dtype,
                       sinusoidal_pos_embds=student.sinusoidal_pos_embds and student.family == "distilbert",
                       **family_fields)


def _load_teacher(config, teacher_config: ModelConfig | None, mesh, rules):
    """(graphdef, params placed by the rules) or (None, None) without a teacher."""
    if teacher_config is None:
        return None, None
    if config.teacher.source == "checkpoint":
        teacher = hf.load_pretrained(config.teacher.checkpoint, dtype=config.teacher.dtype)
        graphdef, params = nnx.split(teacher)
        return graphdef, jax.device_put(params, sharding.state_shardings(params, mesh, rules))
    graphdef, params = nnx.split(create_model(teacher_config, seed=config.seed + 1, mesh=mesh, rules=rules))
    return graphdef, params


def _student_initializer(config, student_config: ModelConfig, teacher_graphdef, teacher_config):
    """A traced function (teacher_params) -> the student's trainable nnx.State, and the student's graphdef."""

    def build(teacher_params) -> DistillStudent:
        # Placement is decided by the jitted init's out_shardings, not eagerly (and the Variables' metadata must
        # match the teacher's, created the same way, for the layer copy).
        with nnx.use_eager_sharding(False):
            model = model_class(student_config)(student_config, rngs=nnx.Rngs(params=config.seed))
            if config.student.init == "teacher_layers":
                init_student_from_teacher(nnx.merge(teacher_graphdef, teacher_params), model,
                                          teacher_layers=tuple(config.student.teacher_layers),
                                          copy_mlm_transform=config.student.copy_mlm_transform)
            projection = None
            if config.loss.alpha_hidden_mse and config.loss.hidden_projection:
                projection = losses.HiddenProjection(student_config.hidden_size, teacher_config.hidden_size,
                                                     rngs=nnx.Rngs(params=config.seed + 2))
            return DistillStudent(model, projection)

    def init_params(teacher_params):
        return nnx.state(build(teacher_params), nnx.Param)

    return init_params, build


# ------------------------------------------------------------------------------------------------------ data


def prepare_corpus(config, tokenizer_path, out_dir: Path) -> None:
    """Binarises config.data.corpus into `out_dir` (resumable; a finished one is reused)."""
    corpus = embedded_corpus_dir() if config.data.corpus == "embedded" else config.data.corpus
    prepare(corpus, out_dir, tokenizer_path=tokenizer_path, languages=list(config.data.languages) or None,
            data_dir=config.data.tfds_data_dir or None, sampling_alpha=config.data.sampling_alpha, seed=config.seed,
            max_length=config.data.max_length, progress=jax.process_index() == 0)


def corpus_fingerprint(sequences, token_counts: np.ndarray) -> str:
    """A short hash of the binarised corpus' content (lengths and token counts), stored with checkpoints."""
    digest = hashlib.sha256(np.asarray(sequences.lengths, np.int64).tobytes())
    digest.update(np.asarray(token_counts, np.int64).tobytes())
    return digest.hexdigest()[:16]


class MaskUpdate:
    """Host-side transform of one step's rows: MLM masking per micro-batch (as the reference masks each GPU batch of
    5 sequences), then `[micro_batches, rows, length]`. Masking is a function of (seed, step, micro-batch, process),
    so a resumed run masks exactly as the uninterrupted one."""

    def __init__(self, token_probs, specials, vocab_size: int, masking, *, seed: int, micro_batches: int):
        self.token_probs, self.specials, self.vocab_size = token_probs, specials, vocab_size
        self.masking, self.seed, self.micro_batches = masking, seed, micro_batches

    def __call__(self, step: int, rows: dict) -> dict:
        length = rows["input_ids"].shape[1]
        split = {name: rows[name].reshape(self.micro_batches, -1, *rows[name].shape[1:])
                 for name in ("input_ids", "attention_mask", "lengths")}
        masked, labels = [], []
        for micro in range(self.micro_batches):
            ids, mlm_labels = mask_batch(
                split["input_ids"][micro], split["lengths"][micro], self.token_probs, seed=self.seed,
                step=step * self.micro_batches + micro, process_index=jax.process_index(),
                mask_id=self.specials.mask, vocab_size=self.vocab_size, mlm_mask_prop=self.masking.mlm_mask_prop,
                word_mask=self.masking.word_mask, word_keep=self.masking.word_keep,
                word_rand=self.masking.word_rand,
            )
            masked.append(ids)
            labels.append(mlm_labels)
        del length
        return {"input_ids": np.stack(masked), "attention_mask": split["attention_mask"],
                "mlm_labels": np.stack(labels)}


# ------------------------------------------------------------------------------------------------------ step


class CompiledSteps:
    """The jitted step compiled ahead of use, once per padded length, with its memory and FLOPs logged."""

    def __init__(self, jitted, state, teacher_params, batch_sharding, micro_batches: int, micro_rows: int, log):
        self.jitted, self.state, self.teacher_params = jitted, state, teacher_params
        self.batch_sharding, self.micro_batches, self.micro_rows = batch_sharding, micro_batches, micro_rows
        self.log = log
        self.compiled: dict[int, object] = {}
        self.analysis: dict[int, dict] = {}

    def abstract_batch(self, length: int) -> dict:
        shape = (self.micro_batches, self.micro_rows, length)
        return {name: jax.ShapeDtypeStruct(shape, jnp.int32, sharding=self.batch_sharding)
                for name in ("input_ids", "attention_mask", "mlm_labels")}

    def get(self, length: int):
        if length not in self.compiled:
            started = time.perf_counter()
            compiled = self.jitted.lower(self.state, self.teacher_params, self.abstract_batch(length)).compile()
            self.compiled[length] = compiled
            self.analysis[length] = step_analysis(compiled)
            self.analysis[length]["compile_seconds"] = time.perf_counter() - started
            self.log(f"compiled the step for length {length} in {self.analysis[length]['compile_seconds']:.1f}s: "
                     + describe_analysis(self.analysis[length]))
        return self.compiled[length]


def step_analysis(compiled) -> dict:
    """Per-device bytes (arguments, outputs, temporaries, peak) and FLOPs of a compiled step."""
    memory = compiled.memory_analysis()
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    fields = {"argument_bytes": "argument_size_in_bytes", "output_bytes": "output_size_in_bytes",
              "temp_bytes": "temp_size_in_bytes", "alias_bytes": "alias_size_in_bytes",
              "peak_bytes": "peak_memory_in_bytes"}
    out = {name: int(getattr(memory, attr, 0) or 0) for name, attr in fields.items()} if memory else {}
    if memory:  # the CPU backend reports no peak; arguments + outputs + temporaries bound it
        out["peak_bytes"] = max(out["peak_bytes"], out["argument_bytes"] + out["output_bytes"] + out["temp_bytes"]
                                - out["alias_bytes"])
    out["flops"] = float((cost or {}).get("flops", 0.0))
    return out


def describe_analysis(analysis: dict) -> str:
    mib = 2**20
    return (f"per device {analysis.get('argument_bytes', 0) / mib:,.0f} MiB arguments, "
            f"{analysis.get('temp_bytes', 0) / mib:,.0f} MiB temporaries, "
            f"{analysis.get('peak_bytes', 0) / mib:,.0f} MiB peak; {analysis['flops'] / 1e9:,.1f} GFLOP per step")


# ------------------------------------------------------------------------------------------------------ main


def _log(message: str) -> None:
    if jax.process_index() == 0:
        print(message, flush=True)


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str | os.PathLike) -> dict:
    """Runs (or resumes) the distillation in `workdir`; returns the summary written to `workdir/summary.json`."""
    workdir = Path(workdir)
    started = time.perf_counter()

    # Config checks, mesh.
    num_devices = jax.device_count() if config.mesh.num_devices == -1 else config.mesh.num_devices
    check_config(config, num_devices=num_devices, process_count=jax.process_count())
    objective = _objective(config)
    rules = tuple(tuple(rule) for rule in config.sharding.logical_axis_rules)
    mesh_config = {axis: config.mesh[axis] for axis in sharding.MESH_AXES}
    devices = jax.devices() if config.mesh.num_devices == -1 else jax.devices()[: config.mesh.num_devices]
    mesh = sharding.make_mesh(mesh_config, devices)
    tokenizer_path = config.tokenizer or default_vocab_path()
    tokenizer = load_tokenizer(tokenizer_path)
    vocab_size = tokenizer.get_vocab_size()
    teacher_config = _teacher_config(config, vocab_size)
    student_config = _student_config(config, teacher_config, vocab_size)
    _check_models(config, objective, teacher_config, student_config, vocab_size)
    if jax.process_index() == 0:
        workdir.mkdir(parents=True, exist_ok=True)
        write_text_atomically(workdir / CONFIG_FILE, config.to_json_best_effort(indent=2) + "\n")

    # Data: the binarised corpus, length-grouped batches, masking per micro-batch on the host.
    data_dir = workdir / "data"
    if jax.process_index() == 0:
        prepare_corpus(config, tokenizer_path, data_dir)
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices("distil: corpus prepared")
    sequences = open_binarized(data_dir)
    token_counts = load_token_counts(data_dir)
    specials = special_token_ids(tokenizer)
    token_probs = token_probs_from_counts(token_counts, [specials.pad, specials.unk, specials.cls, specials.sep,
                                                         specials.mask], smoothing=config.masking.mlm_smoothing)
    batching = config.batching
    source = GroupedBatchSource(sequences, global_batch=batching.global_batch, max_length=config.data.max_length,
                                seed=config.seed, pad_to_multiple=batching.pad_to_multiple,
                                group_by_length=batching.group_by_length)
    num_steps = config.num_steps or config.num_epochs * source.batches_per_epoch
    mask_update = MaskUpdate(token_probs, specials, vocab_size, config.masking, seed=config.seed,
                             micro_batches=batching.micro_batches)
    dataset = grain.MapDataset.source(source).map_with_index(mask_update).to_iter_dataset(
        grain.ReadOptions(num_threads=2, prefetch_buffer_size=4))
    iterator = iter(dataset)
    data_settings = {
        "seed": config.seed, "global_batch": batching.global_batch, "micro_batches": batching.micro_batches,
        "max_length": config.data.max_length, "pad_to_multiple": batching.pad_to_multiple,
        "group_by_length": batching.group_by_length, "masking": dict(config.masking),
        "corpus": corpus_fingerprint(sequences, token_counts), "process_count": jax.process_count(),
    }

    with sharding.activation_rules(mesh, rules):
        # Teacher: frozen, sharded by the same rules, an input of the step (never in the optimizer or checkpoint).
        teacher_graphdef, teacher_params = _load_teacher(config, teacher_config, mesh, rules)

        # Student (and loss-side parameters) and optimizer state, created sharded.
        init_params, build_student = _student_initializer(config, student_config, teacher_graphdef, teacher_config)
        student_graphdef = nnx.graphdef(nnx.eval_shape(lambda: build_student(teacher_params)))
        settings = OptimizerSettings(
            learning_rate=config.optimizer.learning_rate, num_steps=num_steps,
            warmup_steps=math.ceil(config.optimizer.warmup_fraction * num_steps), b1=config.optimizer.b1,
            b2=config.optimizer.b2, eps=config.optimizer.eps, weight_decay=config.optimizer.weight_decay,
            clip_norm=config.optimizer.clip_norm or None,
        )
        tx = make_optimizer(settings)
        state, state_shardings = create_train_state(init_params, (teacher_params,), tx, seed=config.seed, mesh=mesh,
                                                    rules=rules)
        frozen = frozen_paths(state.params) if student_config.sinusoidal_pos_embds else set()

        # The step: jitted with explicit shardings, donated state.
        batch_sharding = sharding.logical_to_sharding((None, "batch", "length"), mesh, rules)
        teacher_shardings = (None if teacher_params is None
                             else jax.tree.map(lambda x: x.sharding, teacher_params))
        replicated = jax.sharding.NamedSharding(mesh, jax.P())
        train_step = make_train_step(student_graphdef, teacher_graphdef, objective, tx,
                                     learning_rate_schedule(settings),
                                     attention_heads=student_config.num_attention_heads, frozen=frozen)
        jitted = jax.jit(train_step, in_shardings=(state_shardings, teacher_shardings, batch_sharding),
                         out_shardings=(state_shardings, replicated), donate_argnums=0)
        steps = CompiledSteps(jitted, state, teacher_params, batch_sharding, batching.micro_batches,
                              batching.global_batch // batching.micro_batches, _log)
        ahead = steps.get(config.data.max_length)  # the longest padded length: the step's worst-case memory
        del ahead

        # Checkpoints: resume if the workdir holds one.
        manager = checkpoints.make_manager(workdir / "checkpoints", every_steps=config.checkpoint.every_steps,
                                           keep=config.checkpoint.keep, async_save=config.checkpoint.async_save)
        abstract_state = checkpoints.abstract_with_shardings(jax.eval_shape(lambda: state), state_shardings)
        restored, start_step = checkpoints.restore(manager, abstract_state, iterator, data_settings)
        if restored is not None:
            state = restored
            _log(f"resumed from {manager.directory} at step {start_step}")
        _log(f"distil distill: {num_steps} steps of {batching.global_batch} sequences "
             f"({batching.micro_batches} micro-batches) on mesh {dict(mesh.shape)}; terms "
             + ", ".join(f"{objective.alpha(t):g}·{t}" for t in objective.terms))

        # Loop.
        metrics_writer = MetricsWriter(workdir, resume_step=start_step)
        progress = Progress(num_steps, start_step)
        last_row = None
        with checkpoints.PreemptionGuard() as guard:
            step = start_step
            while step < num_steps:
                local = next(iterator)
                batch = sharding.make_global_batch(local, batch_sharding)
                state, metrics = steps.get(local["input_ids"].shape[-1])(state, teacher_params, batch)
                step += 1
                metrics = jax.device_get(metrics)
                bad = [term for term in objective.terms if not np.isfinite(metrics[term])]
                if bad or not np.isfinite(metrics["loss"]):
                    manager.wait_until_finished()  # this state is never saved: the last checkpoint stays the last good
                    name = bad[0] if bad else "total"
                    raise TrainingError(
                        f"step {step}: the {name} loss is {metrics[bad[0] if bad else 'loss']}; stopped. The last "
                        f"good checkpoint (step {manager.latest_step()}) is in {manager.directory}"
                    )
                progress.add_tokens(float(metrics["real_tokens"]))
                if step % config.log_every_steps == 0 or step == num_steps:
                    steps_per_sec, tokens_per_sec = progress.rates(step)
                    last_row = {"step": step, **{k: float(v) for k, v in metrics.items()},
                                "steps_per_sec": steps_per_sec, "tokens_per_sec": tokens_per_sec}
                    metrics_writer.write(last_row)
                    progress.report(last_row, objective.terms)
                stop = guard.should_stop(manager, step)
                checkpoints.save(manager, step, state, iterator, data_settings, force=stop or step == num_steps)
                if stop:
                    manager.wait_until_finished()
                    _log(f"saved a checkpoint at step {step} before stopping; rerun the same command to resume")
                    metrics_writer.close()
                    return {"stopped_at": step}
        manager.wait_until_finished()
        metrics_writer.close()

    # The student as a Hugging Face folder, with the tokenizer.
    student = nnx.merge(student_graphdef, _host_params(state.params)).model
    if jax.process_index() == 0:
        hf.save_pretrained(student, workdir / STUDENT_DIR, tokenizer=tokenizer)
    summary = {
        "steps": num_steps, "final": last_row, "teacher": dataclasses.asdict(teacher_config) if teacher_config else None,
        "student": dataclasses.asdict(student_config), "step_analysis": {str(k): v for k, v in steps.analysis.items()},
        "seconds": time.perf_counter() - started,
    }
    if jax.process_index() == 0:
        write_text_atomically(workdir / "summary.json", json.dumps(summary, indent=2) + "\n")
        _log(f"wrote {workdir / STUDENT_DIR} (Hugging Face folder), {workdir / 'metrics.jsonl'}")
    return summary


def _host_params(params: nnx.State) -> nnx.State:
    """Parameters as host arrays, gathered from every process when they span several."""
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        return multihost_utils.process_allgather(params, tiled=True)
    return jax.device_get(params)
