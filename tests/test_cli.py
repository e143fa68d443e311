"""The `distil` command end to end: extract -> export -> inspect, and the exported student in a transformers
fill-mask pipeline agreeing with distil's own logits."""

from __future__ import annotations

import json
import subprocess
import sys

import jax.numpy as jnp
import numpy as np
import pytest
import transformers

from distil import cli, hf
from distil.models import ModelConfig, create_model
from distil.tokenization import default_vocab_path, load_tokenizer

SENTENCES = [
    "Paris is the [MASK] of France.",
    "Der Hund läuft über die [MASK].",
    "北京是中国的[MASK]都。",
    "Ce film est [MASK] bon.",
]


@pytest.fixture(scope="module")
def teacher_folder(tmp_path_factory):
    """A small random BERT MLM teacher with the real mBERT vocabulary, saved with its tokenizer."""
    tokenizer = load_tokenizer(default_vocab_path())
    config = ModelConfig(vocab_size=tokenizer.get_vocab_size(), hidden_size=32, num_hidden_layers=4,
                         num_attention_heads=4, intermediate_size=64, max_position_embeddings=64, head="mlm",
                         add_pooler=False)
    folder = tmp_path_factory.mktemp("cli") / "teacher"
    hf.save_pretrained(create_model(config, seed=11), folder, tokenizer=tokenizer)
    return folder


def test_extract_then_fill_mask_pipeline_agrees(teacher_folder, tmp_path):
    student_folder = tmp_path / "student"
    assert cli.main(["extract", str(teacher_folder), str(student_folder), "--layers", "0,3",
                     "--tokenizer", str(default_vocab_path())]) == 0
    student = hf.load_pretrained(student_folder)
    assert student.config.num_hidden_layers == 2
    teacher = hf.load_pretrained(teacher_folder)
    np.testing.assert_array_equal(np.asarray(student.encoder.layers[1].attention.key.kernel[...]),
                                  np.asarray(teacher.encoder.layers[3].attention.key.kernel[...]))

    tokenizer = load_tokenizer(student_folder)
    fill_mask = transformers.pipeline("fill-mask", model=str(student_folder), tokenizer=str(student_folder),
                                      top_k=5, device="cpu")
    mask_id = tokenizer.token_to_id("[MASK]")
    for sentence in SENTENCES:
        ids = tokenizer.encode(sentence).ids
        position = ids.index(mask_id)
        logits = np.asarray(student(jnp.asarray([ids], jnp.int32)).logits[0, position])
        ours_top = list(np.argsort(-logits)[:5])
        theirs = fill_mask(sentence)
        assert [row["token"] for row in theirs] == ours_top, sentence
        probs = np.exp(logits - logits.max()) / np.exp(logits - logits.max()).sum()
        np.testing.assert_allclose([row["score"] for row in theirs], probs[ours_top], rtol=1e-4)


def test_export_converts_dtype_and_inspect_reports_it(teacher_folder, tmp_path, capsys):
    destination = tmp_path / "bf16"
    assert cli.main(["export", str(teacher_folder), str(destination), "--dtype", "bfloat16"]) == 0
    report = hf.describe_pretrained(destination)
    assert report["architecture"] == "BertForMaskedLM"
    assert report["config"]["param_dtype"] == "bfloat16"
    vocab, hidden, inner, layers = 119_547, 32, 64, 4
    embeddings = vocab * hidden + 64 * hidden + 2 * hidden + 2 * hidden
    layer = 4 * (hidden * hidden + hidden) + 4 * hidden + 2 * hidden * inner + inner + hidden
    mlm_head = hidden * hidden + hidden + 2 * hidden + vocab
    assert report["parameters_by_module"] == {"embeddings": embeddings, **{f"layers.{i}": layer for i in range(4)},
                                              "mlm_head": mlm_head}
    assert report["parameters"] == embeddings + layers * layer + mlm_head
    assert report["stored_values_by_dtype"] == {"BF16": report["parameters"]}

    capsys.readouterr()
    assert cli.main(["inspect", str(destination), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["parameters"] == report["parameters"]


def test_errors_name_the_file_and_exit_2(tmp_path, capsys):
    assert cli.main(["inspect", str(tmp_path)]) == 2
    assert f"{tmp_path}/config.json: missing" in capsys.readouterr().err


def test_console_entry_point_lists_subcommands():
    out = subprocess.run([sys.executable, "-m", "distil", "--help"], capture_output=True, text=True, check=True).stdout
    for command in ("inspect", "export", "extract", "prepare", "demo"):
        assert command in out
