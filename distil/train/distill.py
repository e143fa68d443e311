"""`distil distill`: the DistilBERT recipe (and MLM pre-training without a teacher), one readable function.

    train_and_evaluate(config, workdir)

Sections, in order: config checks (before anything is built) -> mesh -> data (binarised corpus, length-grouped
batches, MLM masking per micro-batch on the host) -> teacher (frozen, sharded, outside the optimizer) -> student
and optimizer state (created sharded) -> the step (jitted once per padded length, compiled ahead, memory and FLOPs
logged) -> checkpoint restore -> loop (metrics, NaN stop, checkpoints, SIGTERM) -> the student as a Hugging Face
folder. The pieces live beside it: the input pipeline in `distil.data.pipeline`, the models and the step (one
builder, shared with the dry run and the benchmarks) in `distil.train.assembly`, the run folder's rules in
`distil.train.run`. The config is read here, in `assembly` and in `pipeline`; everything below them takes plain
arguments.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import os
import time
from pathlib import Path

import jax
import ml_collections
from flax import nnx

from distil import hf, sharding, storage, trim
from distil.atomic import write_text_atomically
from distil.config import ConfigError
from distil.data import pipeline
from distil.data.binarize import INDEX_FILE, MIN_KEPT_LENGTH, check_prepared, is_prepared
from distil.models import ModelConfig, abstract_model, parameter_count
from distil.tokenization import default_vocab_path, load_tokenizer
from distil.train import assembly, checkpoints
from distil.train.metrics import MetricsWriter, Progress, read_metrics
from distil.train.objective import TEACHER_TERMS, TERMS, Objective
from distil.train.run import (CHECKPOINT_DIR, DATA_DIR, METRICS_FILE, STUDENT_DIR, SUMMARY_FILE, TRIM_DIR,
                              local_inputs, open_run, read_json, resolve_config)
from distil.train.state import abstract_train_state, create_train_state
from distil.train.tensorboard import ProfileWindow
from distil.train.trainer import (check_optimizer, configured_device_count, host_params, log, mesh_from_config,
                                  mesh_size, stop_if_not_finite)



# --------------------------------------------------------------------------------------------- config checks


def check_config(config: ml_collections.ConfigDict, *, num_devices: int | None, process_count: int,
                 dry_run: bool = False) -> None:
    """Errors that need no model or data: fail before anything is built, naming the key and what was expected.
    `num_devices=None` (a launcher, far from the devices): every check that does not depend on them."""
    loss = config.loss
    for key, value in (("student.teacher_layers", config.student.teacher_layers),
                       ("loss.hidden_layer_map", loss.hidden_layer_map),
                       ("loss.attention_layer_map", loss.attention_layer_map)):
        _check_layer_list(value, key)
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
    if loss.vocab_tile_size < 0:
        raise ConfigError(f"config.loss.vocab_tile_size must be >= 0 (0 = the whole vocabulary at once), got "
                          f"{loss.vocab_tile_size}")
    if config.teacher.source not in ("checkpoint", "random", "none"):
        raise ConfigError(f"config.teacher.source must be 'checkpoint', 'random' or 'none', got "
                          f"{config.teacher.source!r}")
    if config.teacher.source == "checkpoint" and not config.teacher.checkpoint and not dry_run:
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
    if num_devices is not None and not (config.mesh.num_devices == -1 or dry_run
                                        or 1 <= config.mesh.num_devices <= jax.device_count()):
        raise ConfigError(f"config.mesh.num_devices must be -1 (all) or in [1, {jax.device_count()}], got "
                          f"{config.mesh.num_devices}")
    data, fsdp, _ = mesh_size(config, num_devices) if num_devices is not None else (1, 1, 1)
    micro = batching.global_batch // batching.micro_batches
    if micro % (data * fsdp):
        raise ConfigError(f"a micro-batch of config.batching.global_batch / micro_batches = {micro} sequences must "
                          f"split evenly over the data x fsdp = {data * fsdp} devices of config.mesh")
    if micro % process_count:
        raise ConfigError(f"a micro-batch of {micro} sequences must split evenly over the {process_count} processes")
    if config.batching.composition not in ("update", "micro_batch", "packed"):
        raise ConfigError(f"config.batching.composition must be 'update', 'micro_batch' or 'packed', got "
                          f"{config.batching.composition!r}")
    group = config.masking.group_size
    if group <= 0 or (micro // process_count) % group:
        raise ConfigError(f"config.masking.group_size={group} must divide the {micro // process_count} rows of a "
                          f"micro-batch on each of the {process_count} processes")
    if config.num_steps < 0 or config.num_epochs <= 0 and not config.num_steps:
        raise ConfigError(f"config.num_steps ({config.num_steps}) must be > 0, or config.num_epochs > 0")
    if config.log_every_steps <= 0 or config.checkpoint.every_steps <= 0:
        raise ConfigError("config.log_every_steps and config.checkpoint.every_steps must be > 0")
    if config.get("trim") is not None and config.trim.enabled and config.trim.min_count < 1:
        raise ConfigError(f"config.trim.min_count must be >= 1, got {config.trim.min_count}")
    if config.checkpoint.keep < 1:
        raise ConfigError(f"config.checkpoint.keep must be >= 1, got {config.checkpoint.keep}")
    if config.data.max_length < MIN_KEPT_LENGTH:
        raise ConfigError(f"config.data.max_length must be >= {MIN_KEPT_LENGTH} (shorter sequences are left out), "
                          f"got {config.data.max_length}")
    if not config.data.sampling_alpha >= 0:
        raise ConfigError(f"config.data.sampling_alpha must be >= 0, got {config.data.sampling_alpha}")
    if batching.pad_to_multiple < 1:
        raise ConfigError(f"config.batching.pad_to_multiple must be >= 1, got {batching.pad_to_multiple}")
    _check_masking(config.masking)
    check_optimizer(config.optimizer)


def _check_masking(masking) -> None:
    for key in ("mlm_mask_prop", "word_mask", "word_keep", "word_rand"):
        if not 0 <= masking[key] <= 1:
            raise ConfigError(f"config.masking.{key} must be in [0, 1], got {masking[key]}")
    if not masking.mlm_mask_prop > 0:
        raise ConfigError(f"config.masking.mlm_mask_prop must be > 0 (the MLM targets), got {masking.mlm_mask_prop}")
    total = masking.word_mask + masking.word_keep + masking.word_rand
    if abs(total - 1) > 1e-6:
        raise ConfigError(f"config.masking.word_mask + word_keep + word_rand must be 1 (80/10/10), got {total:g}")
    if not masking.mlm_smoothing >= 0:
        raise ConfigError(f"config.masking.mlm_smoothing must be >= 0, got {masking.mlm_smoothing}")


def _check_layer_list(value, key: str) -> None:
    if not all(isinstance(item, int) and not isinstance(item, bool) for item in value):
        raise ConfigError(f"config.{key}={tuple(value)!r}: expected layer numbers (integers), e.g. (0, 2, 4)")


def check_models(config, objective: Objective, teacher_config: ModelConfig | None, student_config: ModelConfig,
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
        term = "alpha_ce" if objective.alpha_ce else "alpha_mse"
        raise ConfigError(f"config.loss.{term}={config.loss[term]} needs the teacher's logits but {where} has no MLM "
                          "head (a BertModel); set it to 0 and distil with the representation terms (alpha_cos, "
                          "alpha_hidden_mse, alpha_attention, alpha_minilm), or use a BertForMaskedLM / "
                          "BertForPreTraining folder")
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


def _trim_vocabulary(config, tokenizer, workdir: Path):
    """config.trim.enabled: the vocabulary of the training corpus (config.data's corpus and languages), its
    tokenizer and kept_ids.json written to workdir/trim/ by process 0; None otherwise."""
    settings = config.get("trim")
    if settings is None or not settings.enabled:
        return None

    def trimmed(out_dir):
        return trim.trim_for_training(tokenizer, pipeline.corpus_path(config),
                                      languages=list(config.data.languages) or None,
                                      data_dir=config.data.tfds_data_dir or None, min_count=settings.min_count,
                                      single_chars=settings.single_chars, out_dir=out_dir)

    if jax.process_index() == 0:
        with storage.staged(workdir / TRIM_DIR) as out_dir:
            return trimmed(out_dir)
    # On an object store every process keeps its own local copy of the trimmed tokenizer (`_trimmed_tokenizer`).
    return trimmed(storage.cache_folder(workdir / TRIM_DIR) if storage.is_remote(workdir) else None)


def _trimmed_tokenizer(workdir) -> Path:
    """The trimmed tokenizer's file as this process reads it: in the workdir, or in its cache on an object store."""
    folder = storage.cache_folder(workdir / TRIM_DIR) if storage.is_remote(workdir) else workdir / TRIM_DIR
    return folder / "tokenizer.json"


# ------------------------------------------------------------------------------------------------------ main


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str | os.PathLike) -> dict:
    """Runs (or resumes, or extends) the distillation in `workdir`; returns the summary written to
    `workdir/summary.json` (a finished run's, untouched, when it was finished earlier)."""
    workdir = storage.location(workdir)
    started = time.perf_counter()

    # Config checks (nothing written before they pass), then the workdir: locked, one config, finished is final.
    # Inputs on an object store are read from local copies; the run records the config as given.
    resolve_config("distill", config)
    recorded, config = config, local_inputs("distill", config)
    check_config(config, num_devices=configured_device_count(config), process_count=jax.process_count())
    objective = assembly.make_objective(config)
    tokenizer_path = config.tokenizer or default_vocab_path()
    tokenizer = load_tokenizer(tokenizer_path)
    vocab_size = tokenizer.get_vocab_size()
    teacher_config = assembly.teacher_model_config(config, vocab_size)
    student_config = assembly.student_model_config(config, teacher_config, vocab_size)
    check_models(config, objective, teacher_config, student_config, vocab_size)
    if teacher_config is not None and teacher_config.head != "mlm" and student_config.head == "mlm":
        log("the teacher has no MLM head (a BertModel): the student's is new, trained by the mlm term alone")
    trimming = config.get("trim") is not None and config.trim.enabled
    if is_prepared(pipeline.corpus_path(config)) and not trimming:  # (a trimmed run: against the trimmed tokenizer)
        check_prepared(pipeline.corpus_path(config), tokenizer_path, config.data.max_length)
    with open_run(workdir, "distill", recorded) as run:
        run.report(log)
        if run.finished:
            return read_json(workdir / SUMMARY_FILE, "summary")
        summary = _train(config, workdir, run, objective, tokenizer_path, tokenizer, teacher_config, student_config,
                         started)
        if "stopped_at" not in summary:
            run.mark_finished()
        return summary


def _train(config, workdir: Path, run, objective: Objective, tokenizer_path, tokenizer, teacher_config,
           student_config, started: float) -> dict:
    mesh, rules = mesh_from_config(config)
    vocab_size = tokenizer.get_vocab_size()

    # Vocabulary trimming (config.trim): the teacher cut to the tokens of the training corpus, in memory; the
    # student, the tokenizer and the binarised data use the trimmed vocabulary (new ids = rows of kept_ids).
    full_teacher_config, trimming = teacher_config, _trim_vocabulary(config, tokenizer, workdir)
    if trimming is not None:
        tokenizer_path, tokenizer = _trimmed_tokenizer(workdir), trimming.tokenizer
        vocab_size = trimming.vocab_size
        teacher_config = trim.trimmed_model_config(teacher_config, trimming.kept_ids) if teacher_config else None
        student_config = assembly.student_model_config(config, teacher_config, vocab_size)
        log(f"trimmed the vocabulary to the training corpus: {trimming.source_vocab_size:,} -> {vocab_size:,} "
            f"tokens ({workdir / TRIM_DIR / trim.KEPT_IDS_FILE})")

    # Data: the binarised corpus (a folder `distil prepare` wrote, used as it is, or prepared here by process 0),
    # length-grouped batches, masking per micro-batch on the host.
    corpus = pipeline.corpus_path(config)
    if is_prepared(corpus):
        data_dir = Path(corpus)
        if trimming is not None:  # untrimmed runs checked it before opening the workdir
            check_prepared(data_dir, tokenizer_path, config.data.max_length)
    else:  # prepared by process 0 (locally, then uploaded, on an object store); every process reads a local copy
        data_dir = workdir / DATA_DIR
        if jax.process_index() == 0:
            with storage.staged(data_dir, last=(INDEX_FILE,)) as local_dir:
                pipeline.prepare_corpus(config, tokenizer_path, local_dir, progress=True)
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices("distil: corpus prepared")
    data_dir = storage.local_copy(data_dir, "the prepared corpus")
    inputs = pipeline.input_pipeline(config, data_dir, tokenizer, vocab_size)
    batching = config.batching
    num_steps = config.num_steps or config.num_epochs * inputs.source.batches_per_epoch
    iterator = iter(inputs.dataset)
    data_settings = {
        "seed": config.seed, "global_batch": batching.global_batch, "micro_batches": batching.micro_batches,
        "max_length": config.data.max_length, "pad_to_multiple": batching.pad_to_multiple,
        "group_by_length": batching.group_by_length, "composition": batching.composition,
        "masking": dict(config.masking), "corpus": pipeline.corpus_fingerprint(inputs.sequences, inputs.token_counts),
    }

    with sharding.activation_rules(mesh, rules):
        # Teacher: frozen, sharded by the same rules, an input of the step (never in the optimizer or checkpoint).
        teacher_graphdef, teacher_params = assembly.load_teacher(config, full_teacher_config, mesh, rules,
                                                         None if trimming is None else trimming.kept_ids)

        # Student (and loss-side parameters) and optimizer state, created sharded; the step, jitted once.
        parts = assembly.build_step(config, objective, student_config, teacher_config, teacher_graphdef, teacher_params,
                            num_steps, mesh, rules)
        state, state_shardings = create_train_state(parts.init_params, (teacher_params,), parts.tx, seed=config.seed,
                                                    mesh=mesh, rules=rules)
        steps = assembly.compiled_steps(config, parts, state, teacher_params, teacher_config, student_config, log)
        ahead = steps.get(config.data.max_length)  # the longest padded length: the step's worst-case memory
        del ahead

        # Checkpoints: resume if the workdir holds one.
        manager = checkpoints.make_manager(workdir / CHECKPOINT_DIR, every_steps=config.checkpoint.every_steps,
                                           keep=config.checkpoint.keep, async_save=config.checkpoint.async_save)
        abstract_state = sharding.abstract_with_shardings(jax.eval_shape(lambda: state), state_shardings)
        restored, start_step = checkpoints.restore(manager, abstract_state, iterator, data_settings)
        if restored is not None:
            state = restored
            log(f"resumed from {manager.directory} at step {start_step}")
        unit = "packed rows" if batching.composition == "packed" else "sequences"
        micro = f"{batching.micro_batches} micro-batch{'es' if batching.micro_batches > 1 else ''}"
        log(f"distil distill: {num_steps} steps of {batching.global_batch} {unit} ({micro}) on mesh "
            f"{dict(mesh.shape)}; terms " + ", ".join(f"{objective.alpha(t):g}·{t}" for t in objective.terms))

        # Loop.
        metrics_writer = MetricsWriter(workdir, resume_step=start_step)
        progress = Progress(num_steps, start_step)
        profile = ProfileWindow.from_config(workdir, config.get("profile"))
        with checkpoints.PreemptionGuard() as guard, contextlib.closing(profile):
            step = start_step
            while step < num_steps:
                local = next(iterator)
                batch = sharding.make_global_batch(local, parts.batch_sharding)
                profile.before_step(step + 1)
                state, metrics = steps.get(local["input_ids"].shape[-1])(state, teacher_params, batch)
                step += 1
                profile.after_step(step, metrics)
                metrics = jax.device_get(metrics)
                stop_if_not_finite(metrics, objective.terms, step, manager)
                progress.add_tokens(float(metrics["real_tokens"]))
                if step % config.log_every_steps == 0 or step == num_steps:
                    steps_per_sec, tokens_per_sec = progress.rates(step)
                    row = {"step": step, **{k: float(v) for k, v in metrics.items()},
                           "steps_per_sec": steps_per_sec, "tokens_per_sec": tokens_per_sec}
                    run.check_held()
                    metrics_writer.write(row)
                    progress.report(row, objective.terms)
                stop = guard.should_stop(manager, step)
                checkpoints.save(manager, step, state, iterator, data_settings, force=stop or step == num_steps)
                if stop:
                    manager.wait_until_finished()
                    log(f"saved a checkpoint at step {step} before stopping; rerun the same command to resume")
                    metrics_writer.close()
                    return {"stopped_at": step}
        manager.wait_until_finished()
        metrics_writer.close()

    # The student as a Hugging Face folder, with the tokenizer.
    student = nnx.merge(parts.student_graphdef, host_params(state.params)).model
    if jax.process_index() == 0:
        extra = None if trimming is None else {trim.KEPT_IDS_FILE: trimming.to_json()}
        hf.save_pretrained(student, workdir / STUDENT_DIR, tokenizer=tokenizer, extra_files=extra)
    logged = read_metrics(workdir / METRICS_FILE) if jax.process_index() == 0 else []
    summary = {
        # The last logged row (also when the run resumed from its final checkpoint and trained no more steps).
        "steps": num_steps, "final": logged[-1] if logged else None,
        "teacher": dataclasses.asdict(teacher_config) if teacher_config else None,
        "student": dataclasses.asdict(student_config), "step_analysis": {str(k): v for k, v in steps.analysis.items()},
        "seconds": time.perf_counter() - started,
        "extended": [entry for entry in run.extensions() if entry["extended"]],
    }
    if jax.process_index() == 0:
        write_text_atomically(workdir / SUMMARY_FILE, json.dumps(summary, indent=2) + "\n")
        log(f"wrote {workdir / STUDENT_DIR} (Hugging Face folder), {workdir / METRICS_FILE}")
    return summary


# --------------------------------------------------------------------------------------------------- dry run


def dry_run_devices(config: ml_collections.ConfigDict) -> int:
    """How many devices the configured mesh has: the product of its axes, or `mesh.num_devices` with a -1 axis."""
    sizes = [config.mesh[axis] for axis in sharding.MESH_AXES]
    if -1 not in sizes:
        return math.prod(sizes)
    if config.mesh.num_devices < 1:
        raise ConfigError("a dry run needs the mesh's size: set every config.mesh axis, or config.mesh.num_devices "
                          "with one axis -1")
    return config.mesh.num_devices


def dry_run(config: ml_collections.ConfigDict) -> dict:
    """Compiles the configured step for the configured mesh without data or weights and returns its per-device memory
    and FLOPs (`step_analysis`). The teacher's shapes come from its config.json (mBERT's when no folder is set); the
    step is compiled for `data.max_length`, the worst case. Needs `dry_run_devices(config)` devices (fake CPU
    devices: `distil distill --dry_run` sets XLA_FLAGS itself): CPU's memory analysis, a close guide for TPU/GPU
    (their fusion and layouts differ)."""
    num_devices = dry_run_devices(config)
    if jax.device_count() < num_devices:
        raise ConfigError(f"config.mesh needs {num_devices} devices and {jax.device_count()} are visible; run with "
                          f"XLA_FLAGS=--xla_force_host_platform_device_count={num_devices} JAX_PLATFORMS=cpu")
    resolve_config("distill", config)
    check_config(config, num_devices=num_devices, process_count=1, dry_run=True)
    objective = assembly.make_objective(config)
    rules = tuple(tuple(rule) for rule in config.sharding.logical_axis_rules)
    mesh = sharding.make_mesh({axis: config.mesh[axis] for axis in sharding.MESH_AXES}, jax.devices()[:num_devices])
    vocab_size = load_tokenizer(config.tokenizer or default_vocab_path()).get_vocab_size()
    teacher_config = assembly.teacher_model_config(config, vocab_size)
    student_config = assembly.student_model_config(config, teacher_config, vocab_size)
    check_models(config, objective, teacher_config, student_config, vocab_size)
    with sharding.activation_rules(mesh, rules):
        teacher_graphdef = teacher_params = None
        if teacher_config is not None:
            teacher_graphdef, shapes = nnx.split(abstract_model(teacher_config))
            teacher_params = sharding.abstract_with_shardings(shapes, sharding.state_shardings(shapes, mesh, rules))
        parts = assembly.build_step(config, objective, student_config, teacher_config, teacher_graphdef, teacher_params,
                            max(config.num_steps, 1), mesh, rules)
        state, _ = abstract_train_state(parts.init_params, (teacher_params,), parts.tx, seed=config.seed, mesh=mesh,
                                        rules=rules)
        batching = config.batching
        steps = assembly.compiled_steps(config, parts, state, teacher_params, teacher_config, student_config,
                                        lambda message: None)
        steps.get(config.data.max_length)
    analysis = steps.analysis[config.data.max_length]
    micro_rows = batching.global_batch // batching.micro_batches
    batch_devices = mesh.shape["data"] * mesh.shape["fsdp"]
    return {
        "mesh": dict(mesh.shape), "devices": num_devices, "global_batch": batching.global_batch,
        "micro_batches": batching.micro_batches, "rows_per_device": micro_rows // batch_devices,
        "max_length": config.data.max_length, "teacher_parameters": parameter_count(teacher_config)
        if teacher_config else 0, "student_parameters": parameter_count(student_config), **analysis,
    }
