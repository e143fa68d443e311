"""`distil distill`: the DistilBERT recipe (and MLM pre-training without a teacher), one readable function.

    train_and_evaluate(config, workdir)

Sections, in order: config checks (before anything is built) -> mesh -> data (binarised corpus, length-grouped
batches, MLM masking per micro-batch on the host) -> teacher (frozen, sharded, outside the optimizer) -> student
and optimizer state (created sharded) -> the step (jitted once per padded length, compiled ahead, memory and FLOPs
logged) -> checkpoint restore -> loop (metrics, NaN stop, checkpoints, SIGTERM) -> the student as a Hugging Face
folder. The config is read here and only here; everything below takes plain arguments.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import math
import os
import time
from pathlib import Path
from typing import Callable

import grain
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from flax import nnx

from distil import hf, losses, sharding, storage, trim
from distil.atomic import write_text_atomically
from distil.config import ConfigError
from distil.data.batching import GlobalBatchError, GroupedBatchSource
from distil.data.binarize import (INDEX_FILE, MIN_KEPT_LENGTH, TokenSequences, check_prepared, is_prepared,
                                  load_token_counts, open_binarized, prepare)
from distil.data.embedded import embedded_corpus_dir
from distil.data.masking import mask_batch, token_probs_from_counts
from distil.models import (ModelConfig, abstract_model, create_model, mbert_base, model_class, parameter_count,
                           student_config_for)
from distil.models.extract import init_student_from_teacher
from distil.tokenization import default_vocab_path, load_tokenizer, special_token_ids
from distil.train import checkpoints
from distil.train.metrics import MetricsWriter, Progress, read_metrics
from distil.train.objective import TEACHER_TERMS, TERMS, Objective
from distil.train.run import (CHECKPOINT_DIR, DATA_DIR, METRICS_FILE, STUDENT_DIR, SUMMARY_FILE, TRIM_DIR,
                              local_inputs, open_run, read_json, resolve_config)
from distil.train.state import abstract_train_state, create_train_state, learning_rate_schedule, make_optimizer
from distil.train.step import DistillStudent, frozen_paths, make_train_step
from distil.train.tensorboard import ProfileWindow
from distil.train.trainer import (check_optimizer, configured_device_count, describe_analysis, host_params, log,
                                  mesh_from_config, mesh_size, optimizer_settings, step_analysis,
                                  stop_if_not_finite)



# --------------------------------------------------------------------------------------------- config checks


def _objective(config: ml_collections.ConfigDict) -> Objective:
    loss = config.loss
    fields = {field.name: loss[field.name] for field in dataclasses.fields(Objective)}
    fields["hidden_layer_map"] = tuple(loss.hidden_layer_map)
    fields["attention_layer_map"] = tuple(loss.attention_layer_map)
    return Objective(**fields)


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


# ---------------------------------------------------------------------------------------------------- models


def _teacher_config(config, vocab_size: int) -> ModelConfig | None:
    teacher = config.teacher
    if teacher.source == "none":
        return None
    if teacher.source == "checkpoint" and not teacher.checkpoint:  # a dry run of the recipe: mBERT's shapes
        return mbert_base(vocab_size=vocab_size, head="mlm", add_pooler=False, dtype=teacher.dtype)
    if teacher.source == "checkpoint":
        return hf.read_config(teacher.checkpoint).replace(dtype=teacher.dtype)  # weights: validated when loaded
    return ModelConfig(family="bert", vocab_size=vocab_size, hidden_size=teacher.hidden_size,
                       num_hidden_layers=teacher.num_hidden_layers, num_attention_heads=teacher.num_attention_heads,
                       intermediate_size=teacher.intermediate_size,
                       max_position_embeddings=teacher.max_position_embeddings, head="mlm", add_pooler=False,
                       dtype=teacher.dtype)


def _student_config(config, teacher_config: ModelConfig | None, vocab_size: int) -> ModelConfig:
    """The student's shape. From teacher layers it has an MLM head when the teacher has one (copied) or the MLM
    term needs one (new, when the teacher is a headless BertModel); a headless teacher distilled with the
    representation terms alone gives a headless student (a DistilBertModel folder)."""
    student = config.student
    if student.init == "teacher_layers":
        head = "mlm" if teacher_config.head == "mlm" or config.loss.alpha_mlm else None
        return student_config_for(teacher_config, len(student.teacher_layers), head=head, dtype=student.dtype,
                                  sinusoidal_pos_embds=student.sinusoidal_pos_embds)
    family_fields = dict(type_vocab_size=0, add_pooler=False, classifier_dropout=0.2) \
        if student.family == "distilbert" else dict(add_pooler=False)
    return ModelConfig(family=student.family, vocab_size=vocab_size, hidden_size=student.hidden_size,
                       num_hidden_layers=student.num_hidden_layers, num_attention_heads=student.num_attention_heads,
                       intermediate_size=student.intermediate_size,
                       max_position_embeddings=student.max_position_embeddings, head="mlm", dtype=student.dtype,
                       sinusoidal_pos_embds=student.sinusoidal_pos_embds and student.family == "distilbert",
                       **family_fields)


def _load_teacher(config, teacher_config: ModelConfig | None, mesh, rules, kept_ids=None):
    """(graphdef, params placed by the rules) or (None, None) without a teacher. With `kept_ids` (config.trim) the
    teacher of `teacher_config`'s full vocabulary is trimmed to those rows before it is placed."""
    if teacher_config is None:
        return None, None
    if config.teacher.source == "checkpoint" or kept_ids is not None:
        if config.teacher.source == "checkpoint":
            teacher = hf.load_pretrained(config.teacher.checkpoint, dtype=config.teacher.dtype)
        else:  # the same random teacher as without trimming
            teacher = create_model(teacher_config, seed=config.seed + 1, mesh=mesh, rules=rules)
        if kept_ids is not None:
            teacher = trim.trim_model(teacher, kept_ids)
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


def _trim_vocabulary(config, tokenizer, workdir: Path):
    """config.trim.enabled: the vocabulary of the training corpus (config.data's corpus and languages), its
    tokenizer and kept_ids.json written to workdir/trim/ by process 0; None otherwise."""
    settings = config.get("trim")
    if settings is None or not settings.enabled:
        return None

    def trimmed(out_dir):
        return trim.trim_for_training(tokenizer, _corpus(config), languages=list(config.data.languages) or None,
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


# ------------------------------------------------------------------------------------------------------ data


def _corpus(config) -> str | os.PathLike:
    """What config.data.corpus names: the embedded corpus' folder, 'wikipedia', a folder of <lang>.txt, or a folder
    `distil prepare` wrote."""
    return embedded_corpus_dir() if config.data.corpus == "embedded" else config.data.corpus


def prepare_corpus(config, tokenizer_path, out_dir: Path) -> None:
    """Binarises config.data.corpus into `out_dir` (resumable; a finished one is reused)."""
    prepare(_corpus(config), out_dir, tokenizer_path=tokenizer_path, languages=list(config.data.languages) or None,
            data_dir=config.data.tfds_data_dir or None, sampling_alpha=config.data.sampling_alpha, seed=config.seed,
            max_length=config.data.max_length, progress=jax.process_index() == 0,
            # tokenizers' own threads, no worker processes: forking after JAX (and jax.distributed) started is
            # unsafe, and in-process was the fastest on small hosts anyway (experiments/bench_binarize.py).
            num_workers=0)


def corpus_fingerprint(sequences, token_counts: np.ndarray) -> str:
    """A short hash of the binarised corpus' content (lengths and token counts), stored with checkpoints."""
    digest = hashlib.sha256(np.asarray(sequences.lengths, np.int64).tobytes())
    digest.update(np.asarray(token_counts, np.int64).tobytes())
    return digest.hexdigest()[:16]


class MaskUpdate:
    """Host-side transform of one step's rows: MLM masking, then `[micro_batches, rows, length]` arrays.

    The reference masks each GPU's batch (5 sequences) on its own: ceil(0.15 x its real tokens) targets. Here a
    micro-batch is masked in groups of `group_size` consecutive rows, each group from its own stream
    (seed, step, micro-batch, global group index). A process holds whole groups of every micro-batch, so the masks
    are the same whatever the number of processes (and a resumed run masks exactly as the uninterrupted one).
    """

    def __init__(self, token_probs, specials, vocab_size: int, masking, *, seed: int, micro_batches: int,
                 group_size: int, first_group: int):
        self.token_probs, self.specials, self.vocab_size = token_probs, specials, vocab_size
        self.masking, self.seed, self.micro_batches = masking, seed, micro_batches
        self.group_size, self.first_group = group_size, first_group

    def __call__(self, step: int, rows: dict) -> dict:
        split = {name: value.reshape(self.micro_batches, -1, *value.shape[1:]) for name, value in rows.items()}
        masked, labels = np.empty_like(split["input_ids"]), np.empty_like(split["input_ids"])
        for micro in range(self.micro_batches):
            for start in range(0, split["input_ids"].shape[1], self.group_size):
                group = slice(start, start + self.group_size)
                masked[micro, group], labels[micro, group] = mask_batch(
                    split["input_ids"][micro, group], split["lengths"][micro, group], self.token_probs,
                    seed=self.seed, step=step * self.micro_batches + micro,
                    process_index=self.first_group + start // self.group_size,  # the stream: the global group
                    mask_id=self.specials.mask, vocab_size=self.vocab_size,
                    mlm_mask_prop=self.masking.mlm_mask_prop, word_mask=self.masking.word_mask,
                    word_keep=self.masking.word_keep, word_rand=self.masking.word_rand,
                )
        batch = {"input_ids": masked, "attention_mask": split["attention_mask"], "mlm_labels": labels}
        batch.update({name: split[name] for name in ("segment_ids", "position_ids") if name in split})
        return batch


@dataclasses.dataclass
class InputPipeline:
    """What the trainer reads each step: the binarised corpus, its token counts, the per-host batch source, the
    masking transform, and the grain dataset that applies it on 2 threads with 4 batches prefetched."""

    sequences: TokenSequences
    token_counts: np.ndarray
    source: GroupedBatchSource
    mask_update: MaskUpdate
    dataset: grain.IterDataset


def input_pipeline(config, data_dir: Path, tokenizer, vocab_size: int) -> InputPipeline:
    """The host side of training over a corpus `prepare_corpus` wrote to `data_dir` (also what
    experiments/bench_input_vs_step.py times)."""
    sequences = open_binarized(data_dir)
    token_counts = load_token_counts(data_dir)
    specials = special_token_ids(tokenizer)
    token_probs = token_probs_from_counts(token_counts, [specials.pad, specials.unk, specials.cls, specials.sep,
                                                         specials.mask], smoothing=config.masking.mlm_smoothing)
    batching = config.batching
    try:
        source = GroupedBatchSource(sequences, global_batch=batching.global_batch,
                                    max_length=config.data.max_length, seed=config.seed,
                                    pad_to_multiple=batching.pad_to_multiple, group_by_length=batching.group_by_length,
                                    micro_batches=batching.micro_batches, composition=batching.composition)
    except GlobalBatchError as err:
        raise ConfigError(f"config.batching.global_batch={batching.global_batch}: {err}") from err
    mask_update = MaskUpdate(token_probs, specials, vocab_size, config.masking, seed=config.seed,
                             micro_batches=batching.micro_batches, group_size=config.masking.group_size,
                             first_group=source.process_index * source.local_micro_rows // config.masking.group_size)
    dataset = grain.MapDataset.source(source).map_with_index(mask_update).to_iter_dataset(
        grain.ReadOptions(num_threads=2, prefetch_buffer_size=4))
    return InputPipeline(sequences, token_counts, source, mask_update, dataset)


# ------------------------------------------------------------------------------------------------------ step


@dataclasses.dataclass
class StepParts:
    init_params: object  # traced (teacher_params) -> the trainable nnx.State
    student_graphdef: nnx.GraphDef
    tx: object
    jitted: object  # the step under jax.jit with in/out shardings and donated state
    batch_sharding: jax.sharding.NamedSharding
    batch_names: tuple[str, ...]


def _step_parts(config, objective: Objective, student_config: ModelConfig, teacher_config, teacher_graphdef,
                teacher_params, num_steps: int, mesh, rules) -> StepParts:
    """Everything the step is made of, from concrete or abstract (`jax.ShapeDtypeStruct`) teacher parameters: the
    training run and the memory dry run build it the same way."""
    init_params, build_student = _student_initializer(config, student_config, teacher_graphdef, teacher_config)
    student_graphdef, abstract_params = nnx.split(nnx.eval_shape(build_student, teacher_params), nnx.Param)
    settings = optimizer_settings(config.optimizer, num_steps)
    tx = make_optimizer(settings)
    _, state_shardings = abstract_train_state(init_params, (teacher_params,), tx, seed=config.seed, mesh=mesh,
                                              rules=rules)
    frozen = frozen_paths(abstract_params) if student_config.sinusoidal_pos_embds else set()
    train_step = make_train_step(student_graphdef, teacher_graphdef, objective, tx, learning_rate_schedule(settings),
                                 attention_heads=student_config.num_attention_heads, frozen=frozen,
                                 remat=config.student.remat)
    batch_sharding = sharding.logical_to_sharding((None, "batch", "length"), mesh, rules)
    teacher_shardings = None if teacher_params is None else jax.tree.map(lambda x: x.sharding, teacher_params)
    replicated = jax.sharding.NamedSharding(mesh, jax.P())
    jitted = jax.jit(train_step, in_shardings=(state_shardings, teacher_shardings, batch_sharding),
                     out_shardings=(state_shardings, replicated), donate_argnums=0)
    batch_names = ("input_ids", "attention_mask", "mlm_labels") + (
        ("segment_ids", "position_ids") if config.batching.composition == "packed" else ())
    return StepParts(init_params, student_graphdef, tx, jitted, batch_sharding, batch_names)


class CompiledSteps:
    """The jitted step compiled ahead of use, once per padded length, with its memory and FLOPs logged."""

    def __init__(self, jitted, state, teacher_params, batch_sharding, micro_batches: int, micro_rows: int, log,
                 batch_names: tuple[str, ...], flops_per_token: Callable[[int], float]):
        self.jitted, self.state, self.teacher_params = jitted, state, teacher_params
        self.flops_per_token = flops_per_token
        self.batch_names = batch_names
        self.batch_sharding, self.micro_batches, self.micro_rows = batch_sharding, micro_batches, micro_rows
        self.log = log
        self.compiled: dict[int, object] = {}
        self.analysis: dict[int, dict] = {}

    def abstract_batch(self, length: int) -> dict:
        shape = (self.micro_batches, self.micro_rows, length)
        return {name: jax.ShapeDtypeStruct(shape, jnp.int32, sharding=self.batch_sharding) for name in self.batch_names}

    def get(self, length: int):
        if length not in self.compiled:
            started = time.perf_counter()
            compiled = self.jitted.lower(self.state, self.teacher_params, self.abstract_batch(length)).compile()
            self.compiled[length] = compiled
            self.analysis[length] = step_analysis(compiled)
            # XLA's cost analysis counts a loop body once, and the step loops over micro-batches, position chunks
            # and vocabulary tiles: its count ("xla_flops") is far below the step's. "flops" is the model FLOPs per
            # device instead (teacher forward + student forward and backward, spread evenly over the devices).
            tokens = self.micro_batches * self.micro_rows * length
            self.analysis[length]["flops"] = self.flops_per_token(length) * tokens / self.batch_sharding.num_devices
            self.analysis[length]["compile_seconds"] = time.perf_counter() - started
            self.log(f"compiled the step for length {length} in {self.analysis[length]['compile_seconds']:.1f}s: "
                     + describe_analysis(self.analysis[length]))
        return self.compiled[length]


def model_flops_per_token(teacher: ModelConfig | None, student: ModelConfig) -> Callable[[int], float]:
    """length -> the recipe's model FLOPs per token: teacher forward + student forward and backward (matmuls)."""
    def per_token(length: int) -> float:
        teacher_flops = teacher.forward_flops_per_token(length) if teacher is not None else 0.0
        return teacher_flops + 3 * student.forward_flops_per_token(length)
    return per_token


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
    objective = _objective(config)
    tokenizer_path = config.tokenizer or default_vocab_path()
    tokenizer = load_tokenizer(tokenizer_path)
    vocab_size = tokenizer.get_vocab_size()
    teacher_config = _teacher_config(config, vocab_size)
    student_config = _student_config(config, teacher_config, vocab_size)
    _check_models(config, objective, teacher_config, student_config, vocab_size)
    if teacher_config is not None and teacher_config.head != "mlm" and student_config.head == "mlm":
        log("the teacher has no MLM head (a BertModel): the student's is new, trained by the mlm term alone")
    trimming = config.get("trim") is not None and config.trim.enabled
    if is_prepared(_corpus(config)) and not trimming:  # (a trimmed run checks it against the trimmed tokenizer)
        check_prepared(_corpus(config), tokenizer_path, config.data.max_length)
    with open_run(workdir, "distill", recorded) as run:
        if run.finished:
            log(run.finished_message())
            return read_json(workdir / SUMMARY_FILE, "summary")
        if run.changes:
            log(f"{run.status} with changed settings: " + "; ".join(run.changes))
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
        student_config = _student_config(config, teacher_config, vocab_size)
        log(f"trimmed the vocabulary to the training corpus: {trimming.source_vocab_size:,} -> {vocab_size:,} "
            f"tokens ({workdir / TRIM_DIR / trim.KEPT_IDS_FILE})")

    # Data: the binarised corpus (a folder `distil prepare` wrote, used as it is, or prepared here by process 0),
    # length-grouped batches, masking per micro-batch on the host.
    corpus = _corpus(config)
    if is_prepared(corpus):
        data_dir = Path(corpus)
        if trimming is not None:  # untrimmed runs checked it before opening the workdir
            check_prepared(data_dir, tokenizer_path, config.data.max_length)
    else:  # prepared by process 0 (locally, then uploaded, on an object store); every process reads a local copy
        data_dir = workdir / DATA_DIR
        if jax.process_index() == 0:
            with storage.staged(data_dir, last=(INDEX_FILE,)) as local_dir:
                prepare_corpus(config, tokenizer_path, local_dir)
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices("distil: corpus prepared")
    data_dir = storage.local_copy(data_dir, "the prepared corpus")
    pipeline = input_pipeline(config, data_dir, tokenizer, vocab_size)
    batching = config.batching
    num_steps = config.num_steps or config.num_epochs * pipeline.source.batches_per_epoch
    iterator = iter(pipeline.dataset)
    data_settings = {
        "seed": config.seed, "global_batch": batching.global_batch, "micro_batches": batching.micro_batches,
        "max_length": config.data.max_length, "pad_to_multiple": batching.pad_to_multiple,
        "group_by_length": batching.group_by_length, "composition": batching.composition,
        "masking": dict(config.masking), "corpus": corpus_fingerprint(pipeline.sequences, pipeline.token_counts),
    }

    with sharding.activation_rules(mesh, rules):
        # Teacher: frozen, sharded by the same rules, an input of the step (never in the optimizer or checkpoint).
        teacher_graphdef, teacher_params = _load_teacher(config, full_teacher_config, mesh, rules,
                                                         None if trimming is None else trimming.kept_ids)

        # Student (and loss-side parameters) and optimizer state, created sharded; the step, jitted once.
        parts = _step_parts(config, objective, student_config, teacher_config, teacher_graphdef, teacher_params,
                            num_steps, mesh, rules)
        state, state_shardings = create_train_state(parts.init_params, (teacher_params,), parts.tx, seed=config.seed,
                                                    mesh=mesh, rules=rules)
        steps = CompiledSteps(parts.jitted, state, teacher_params, parts.batch_sharding, batching.micro_batches,
                              batching.global_batch // batching.micro_batches, log, parts.batch_names,
                              model_flops_per_token(teacher_config, student_config))
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
    objective = _objective(config)
    rules = tuple(tuple(rule) for rule in config.sharding.logical_axis_rules)
    mesh = sharding.make_mesh({axis: config.mesh[axis] for axis in sharding.MESH_AXES}, jax.devices()[:num_devices])
    vocab_size = load_tokenizer(config.tokenizer or default_vocab_path()).get_vocab_size()
    teacher_config = _teacher_config(config, vocab_size)
    student_config = _student_config(config, teacher_config, vocab_size)
    _check_models(config, objective, teacher_config, student_config, vocab_size)
    with sharding.activation_rules(mesh, rules):
        teacher_graphdef = teacher_params = None
        if teacher_config is not None:
            teacher_graphdef, shapes = nnx.split(abstract_model(teacher_config))
            teacher_params = sharding.abstract_with_shardings(shapes, sharding.state_shardings(shapes, mesh, rules))
        parts = _step_parts(config, objective, student_config, teacher_config, teacher_graphdef, teacher_params,
                            max(config.num_steps, 1), mesh, rules)
        state, _ = abstract_train_state(parts.init_params, (teacher_params,), parts.tx, seed=config.seed, mesh=mesh,
                                        rules=rules)
        batching = config.batching
        steps = CompiledSteps(parts.jitted, state, teacher_params, parts.batch_sharding, batching.micro_batches,
                              batching.global_batch // batching.micro_batches, lambda message: None,
                              parts.batch_names, model_flops_per_token(teacher_config, student_config))
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
