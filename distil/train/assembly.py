"""From a distill config to the jitted step: the objective, the models' shapes, the teacher, the student's
initializer, the step and its compilation (memory and FLOPs per padded length).

One builder for every caller: `distil distill` (concrete teacher parameters), its memory dry run (abstract ones),
`distil bench step` and `experiments/profile_step.py`; what is benchmarked is the step that trains. The config is
read here and in `distil.train.distill`'s checks, nowhere below.
"""

from __future__ import annotations

import dataclasses
import time
from typing import Callable

import jax
import jax.numpy as jnp
import ml_collections
from flax import nnx

from distil import hf, losses, sharding, trim
from distil.models import ModelConfig, create_model, mbert_base, model_class, student_config_for
from distil.models.extract import init_student_from_teacher
from distil.train.objective import Objective
from distil.train.state import abstract_train_state, learning_rate_schedule, make_optimizer
from distil.train.step import DistillStudent, frozen_paths, make_train_step
from distil.train.trainer import describe_analysis, optimizer_settings, step_analysis


def make_objective(config: ml_collections.ConfigDict) -> Objective:
    """The config's `loss` section as the `Objective` the step computes (its one hand-off: every field by name;
    `loss.hidden_projection` goes to the student's initializer instead)."""
    loss = config.loss
    return Objective(
        alpha_ce=loss.alpha_ce, alpha_mlm=loss.alpha_mlm, alpha_cos=loss.alpha_cos, alpha_mse=loss.alpha_mse,
        alpha_hidden_mse=loss.alpha_hidden_mse, alpha_attention=loss.alpha_attention, alpha_minilm=loss.alpha_minilm,
        temperature=loss.temperature, restrict_ce_to_mask=loss.restrict_ce_to_mask,
        hidden_layer_map=tuple(loss.hidden_layer_map), attention_layer_map=tuple(loss.attention_layer_map),
        minilm_student_layer=loss.minilm_student_layer, minilm_teacher_layer=loss.minilm_teacher_layer,
        minilm_relation_heads=loss.minilm_relation_heads, vocab_chunk_size=loss.vocab_chunk_size,
        vocab_tile_size=loss.vocab_tile_size)



def teacher_model_config(config, vocab_size: int) -> ModelConfig | None:
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


def student_model_config(config, teacher_config: ModelConfig | None, vocab_size: int) -> ModelConfig:
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


def load_teacher(config, teacher_config: ModelConfig | None, mesh, rules, kept_ids=None):
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


def student_initializer(config, student_config: ModelConfig, teacher_graphdef, teacher_config):
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



@dataclasses.dataclass
class StepParts:
    init_params: object  # traced (teacher_params) -> the trainable nnx.State
    student_graphdef: nnx.GraphDef
    tx: object
    jitted: object  # the step under jax.jit with in/out shardings and donated state
    batch_sharding: jax.sharding.NamedSharding
    batch_names: tuple[str, ...]


def build_step(config, objective: Objective, student_config: ModelConfig, teacher_config, teacher_graphdef,
                teacher_params, num_steps: int, mesh, rules) -> StepParts:
    """Everything the step is made of, from concrete or abstract (`jax.ShapeDtypeStruct`) teacher parameters: the
    training run and the memory dry run build it the same way."""
    init_params, build_student = student_initializer(config, student_config, teacher_graphdef, teacher_config)
    student_graphdef, abstract_params = nnx.split(nnx.eval_shape(build_student, teacher_params), nnx.Param)
    settings = optimizer_settings(config.optimizer, num_steps)
    tx = make_optimizer(settings)
    _, state_shardings = abstract_train_state(init_params, (teacher_params,), tx, seed=config.seed, mesh=mesh,
                                              rules=rules)
    frozen = frozen_paths(abstract_params) if student_config.sinusoidal_pos_embds else set()
    train_step = make_train_step(student_graphdef, teacher_graphdef, objective, tx, learning_rate_schedule(settings),
                                 attention_heads=student_config.num_attention_heads, frozen=frozen,
                                 remat=config.student.remat)
    batch_sharding = sharding.batch_sharding(mesh, rules, micro_batched=True)
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


def compiled_steps(config, parts: StepParts, state, teacher_params, teacher_config: ModelConfig | None,
                   student_config: ModelConfig, log) -> CompiledSteps:
    """The step of `parts` for `state` and the teacher, compiled per padded length as batches come."""
    batching = config.batching
    return CompiledSteps(parts.jitted, state, teacher_params, parts.batch_sharding, batching.micro_batches,
                         batching.global_batch // batching.micro_batches, log, parts.batch_names,
                         model_flops_per_token(teacher_config, student_config))
