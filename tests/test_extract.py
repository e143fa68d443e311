"""distil.models.extract: student from teacher layers, checked against the reference extraction done on
transformers state dicts (scripts/extract_distilbert.py of the distillation example, re-done here by name)."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import pytest
import torch
import transformers

from conftest import padded_batch
from hf_reference import hf_outputs, make_hf_model, tiny_hf_config
from distil import hf
from distil.models import ModelConfig, create_model, student_config_for
from distil.models.extract import DEFAULT_TEACHER_LAYERS, init_student_from_teacher


def reference_extraction(teacher_state: dict, teacher_layers, vocab_transform: bool) -> dict:
    """The reference script's mapping of BertForMaskedLM names onto DistilBertForMaskedLM names."""
    student = {}
    for w in ("word_embeddings", "position_embeddings"):
        student[f"distilbert.embeddings.{w}.weight"] = teacher_state[f"bert.embeddings.{w}.weight"]
    for w in ("weight", "bias"):
        student[f"distilbert.embeddings.LayerNorm.{w}"] = teacher_state[f"bert.embeddings.LayerNorm.{w}"]
    for student_index, teacher_index in enumerate(teacher_layers):
        s, t = f"distilbert.transformer.layer.{student_index}", f"bert.encoder.layer.{teacher_index}"
        for w in ("weight", "bias"):
            student[f"{s}.attention.q_lin.{w}"] = teacher_state[f"{t}.attention.self.query.{w}"]
            student[f"{s}.attention.k_lin.{w}"] = teacher_state[f"{t}.attention.self.key.{w}"]
            student[f"{s}.attention.v_lin.{w}"] = teacher_state[f"{t}.attention.self.value.{w}"]
            student[f"{s}.attention.out_lin.{w}"] = teacher_state[f"{t}.attention.output.dense.{w}"]
            student[f"{s}.sa_layer_norm.{w}"] = teacher_state[f"{t}.attention.output.LayerNorm.{w}"]
            student[f"{s}.ffn.lin1.{w}"] = teacher_state[f"{t}.intermediate.dense.{w}"]
            student[f"{s}.ffn.lin2.{w}"] = teacher_state[f"{t}.output.dense.{w}"]
            student[f"{s}.output_layer_norm.{w}"] = teacher_state[f"{t}.output.LayerNorm.{w}"]
    student["vocab_projector.weight"] = teacher_state["bert.embeddings.word_embeddings.weight"]
    student["vocab_projector.bias"] = teacher_state["cls.predictions.bias"]
    if vocab_transform:
        for w in ("weight", "bias"):
            student[f"vocab_transform.{w}"] = teacher_state[f"cls.predictions.transform.dense.{w}"]
            student[f"vocab_layer_norm.{w}"] = teacher_state[f"cls.predictions.transform.LayerNorm.{w}"]
    return student


@pytest.mark.parametrize("teacher_layers", [DEFAULT_TEACHER_LAYERS, (11, 0, 5)])
def test_student_matches_reference_extraction(tmp_path, teacher_layers):
    teacher_hf = make_hf_model("BertForMaskedLM", layers=12)
    teacher_hf.save_pretrained(tmp_path / "teacher")
    teacher = hf.load_pretrained(tmp_path / "teacher")
    student = init_student_from_teacher(teacher, teacher_layers=teacher_layers)
    assert student.config.num_hidden_layers == len(teacher_layers)

    config = tiny_hf_config("distilbert", layers=len(teacher_layers))
    student_hf = transformers.DistilBertForMaskedLM(config).eval()
    state = reference_extraction(teacher_hf.state_dict(), teacher_layers, vocab_transform=True)
    missing, unexpected = student_hf.load_state_dict(state, strict=False)
    assert not unexpected and set(missing) <= {"distilbert.embeddings.position_ids"}, (missing, unexpected)

    input_ids, attention_mask, _ = padded_batch(97, [16, 9, 4], 16)
    ours = student(jnp.asarray(input_ids), jnp.asarray(attention_mask))
    reference = hf_outputs(student_hf, input_ids, attention_mask)
    for mine, theirs in zip(ours.hidden_states, reference.hidden_states):
        np.testing.assert_allclose(np.asarray(mine), theirs.numpy(), atol=1e-4)
    np.testing.assert_allclose(np.asarray(ours.logits), reference.logits.numpy(), atol=1e-4)

    # The exported student is the reference student, tensor for tensor.
    exported = hf.save_pretrained(student, tmp_path / "student")
    reloaded = transformers.DistilBertForMaskedLM.from_pretrained(exported).eval()
    for name, tensor in reloaded.state_dict().items():
        if name in state:
            torch.testing.assert_close(tensor, state[name], rtol=0, atol=0, msg=name)


def test_without_mlm_transform_keeps_student_init(tmp_path):
    teacher_hf = make_hf_model("BertForMaskedLM", layers=4)
    teacher_hf.save_pretrained(tmp_path / "teacher")
    teacher = hf.load_pretrained(tmp_path / "teacher")
    fresh = create_model(student_config_for(teacher.config, 2), seed=5)
    untouched = np.asarray(fresh.mlm_head.transform.kernel[...]).copy()
    student = init_student_from_teacher(teacher, fresh, teacher_layers=(1, 3), copy_mlm_transform=False)
    np.testing.assert_array_equal(np.asarray(student.mlm_head.transform.kernel[...]), untouched)
    np.testing.assert_array_equal(np.asarray(student.mlm_head.bias[...]), np.asarray(teacher.mlm_head.bias[...]))
    np.testing.assert_array_equal(
        np.asarray(student.encoder.layers[1].ffn.output.kernel[...]),
        np.asarray(teacher.encoder.layers[3].ffn.output.kernel[...]),
    )


def test_bad_layer_maps():
    tiny = dict(vocab_size=50, hidden_size=16, num_hidden_layers=4, num_attention_heads=2, intermediate_size=20,
                max_position_embeddings=20)
    teacher = create_model(ModelConfig(**tiny, head="mlm", add_pooler=False))
    with pytest.raises(ValueError, match=r"teacher_layers \[4\] out of range for a teacher with 4 layers"):
        init_student_from_teacher(teacher, teacher_layers=(0, 4))
    with pytest.raises(ValueError, match="at least one"):
        init_student_from_teacher(teacher, teacher_layers=())
    student = create_model(student_config_for(teacher.config, 3))
    with pytest.raises(ValueError, match="student has 3 layers but teacher_layers names 2"):
        init_student_from_teacher(teacher, student, teacher_layers=(0, 1))
    narrow = create_model(student_config_for(teacher.config, 2, intermediate_size=24))
    with pytest.raises(ValueError, match="intermediate_size"):
        init_student_from_teacher(teacher, narrow, teacher_layers=(0, 1))
