"""Initialising a DistilBERT student from a BERT teacher by taking a subset of its layers.

Follows `scripts/extract_distilbert.py` of the reference distillation code (DistilBERT, Sanh et al. 2019): word and
position embeddings and the embedding LayerNorm are copied, token-type embeddings dropped; student layer j takes
every tensor of teacher layer `teacher_layers[j]` (q/k/v/out, both LayerNorms, FFN); the MLM decoder is tied to the
copied word embeddings and its bias is copied; the MLM transform (dense + LayerNorm) is copied only with
`copy_mlm_transform` (the reference's `--vocab_transform`). The default map [0, 2, 4, 7, 9, 11] is the reference's.
"""

from __future__ import annotations

from typing import Sequence

import jax
from flax import nnx

from distil.models import Bert, DistilBert, create_model, student_config_for

DEFAULT_TEACHER_LAYERS = (0, 2, 4, 7, 9, 11)


def _copy(source: nnx.Module, target: nnx.Module) -> None:
    """target's parameters := source's (same structure), cast to the target's storage dtype."""
    source_params = nnx.state(source, nnx.Param)
    target_params = nnx.state(target, nnx.Param)
    nnx.update(target, jax.tree.map(lambda s, t: s.astype(t.dtype), source_params, target_params))


def init_student_from_teacher(
    teacher: Bert,
    student: DistilBert | None = None,
    *,
    teacher_layers: Sequence[int] = DEFAULT_TEACHER_LAYERS,
    copy_mlm_transform: bool = True,
    seed: int = 0,
) -> DistilBert:
    """Copies teacher tensors into `student` (created as a DistilBERT of len(teacher_layers) layers when None).

    Parameters the map does not cover (the MLM transform without `copy_mlm_transform`, a classification head)
    keep their random initialisation. Returns the student.
    """
    teacher_layers = list(teacher_layers)
    num_teacher_layers = teacher.config.num_hidden_layers
    if not teacher_layers:
        raise ValueError("teacher_layers must name at least one teacher layer")
    bad = [i for i in teacher_layers if not 0 <= i < num_teacher_layers]
    if bad:
        raise ValueError(f"teacher_layers {bad} out of range for a teacher with {num_teacher_layers} layers")
    if student is None:
        student = create_model(student_config_for(teacher.config, len(teacher_layers)), seed=seed)
    if student.config.num_hidden_layers != len(teacher_layers):
        raise ValueError(
            f"student has {student.config.num_hidden_layers} layers but teacher_layers names {len(teacher_layers)}"
        )
    for field in ("vocab_size", "hidden_size", "num_attention_heads", "intermediate_size", "max_position_embeddings"):
        if getattr(student.config, field) != getattr(teacher.config, field):
            raise ValueError(
                f"student and teacher differ in {field}: {getattr(student.config, field)} vs "
                f"{getattr(teacher.config, field)}"
            )

    teacher_embeddings, student_embeddings = teacher.encoder.embeddings, student.encoder.embeddings
    _copy(teacher_embeddings.word_embeddings, student_embeddings.word_embeddings)
    _copy(teacher_embeddings.position_embeddings, student_embeddings.position_embeddings)
    _copy(teacher_embeddings.layer_norm, student_embeddings.layer_norm)
    for student_index, teacher_index in enumerate(teacher_layers):
        _copy(teacher.encoder.layers[teacher_index], student.encoder.layers[student_index])
    if student.mlm_head is not None and teacher.mlm_head is not None:
        student.mlm_head.bias.set_value(teacher.mlm_head.bias.get_value().astype(student.mlm_head.bias.dtype))
        if copy_mlm_transform:
            _copy(teacher.mlm_head.transform, student.mlm_head.transform)
            _copy(teacher.mlm_head.layer_norm, student.mlm_head.layer_norm)
    return student
