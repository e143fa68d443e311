"""distil.hf: load transformers checkpoints, export back, and agree with the transformers PyTorch models."""

from __future__ import annotations

import json
import os

import jax.numpy as jnp
import numpy as np
import pytest
import torch
import transformers
from safetensors.numpy import load_file, save_file

from conftest import padded_batch
from hf_reference import ARCHITECTURES, hf_outputs, save_hf_model
from distil import hf

TOLERANCE = 1e-4
LENGTHS = [11, 7, 16, 3]  # rows padded to 16: padding in the batch on purpose


def _max_abs_diff(ours, reference) -> float:
    return float(np.max(np.abs(np.asarray(ours, np.float64) - reference.detach().numpy().astype(np.float64))))


def _run_both(architecture, folder):
    family, head = ARCHITECTURES[architecture]
    reference_model = save_hf_model(architecture, folder)
    model = hf.load_pretrained(folder)
    input_ids, attention_mask, token_type_ids = padded_batch(97, LENGTHS, 16)
    token_types = token_type_ids if family == "bert" else None
    ours = model(jnp.asarray(input_ids), attention_mask=jnp.asarray(attention_mask),
                 token_type_ids=None if token_types is None else jnp.asarray(token_types))
    reference = hf_outputs(reference_model, input_ids, attention_mask, token_types)
    return model, ours, reference, (input_ids, attention_mask, token_types)


@pytest.mark.parametrize("architecture", sorted(ARCHITECTURES))
def test_load_matches_transformers(architecture, tmp_path):
    _, head = ARCHITECTURES[architecture]
    model, ours, reference, _ = _run_both(architecture, tmp_path / "reference")
    assert model.config.head == head
    assert len(ours.hidden_states) == len(reference.hidden_states) == 4
    diffs = [_max_abs_diff(a, b) for a, b in zip(ours.hidden_states, reference.hidden_states)]
    assert max(diffs) <= TOLERANCE, diffs
    if head is None:
        assert ours.logits is None
        assert _max_abs_diff(ours.last_hidden_state, reference.last_hidden_state) <= TOLERANCE
    else:
        assert ours.logits.shape == tuple(reference.logits.shape)
        assert _max_abs_diff(ours.logits, reference.logits) <= TOLERANCE


@pytest.mark.parametrize("architecture", sorted(ARCHITECTURES))
def test_export_round_trip_through_transformers(architecture, tmp_path):
    family, head = ARCHITECTURES[architecture]
    model, ours, _, (input_ids, attention_mask, token_types) = _run_both(architecture, tmp_path / "reference")
    exported = hf.save_pretrained(model, tmp_path / "exported")

    # The exported tensors are the reference's tensors, bit for bit.
    original = load_file(tmp_path / "reference" / "model.safetensors")
    written = load_file(exported / "model.safetensors")
    assert set(written) == set(original)
    for name in written:
        np.testing.assert_array_equal(written[name], original[name], err_msg=name)

    auto = {None: transformers.AutoModel, "mlm": transformers.AutoModelForMaskedLM,
            "classification": transformers.AutoModelForSequenceClassification}[head]
    reloaded = auto.from_pretrained(exported).eval()
    assert type(reloaded).__name__ == architecture
    reference = hf_outputs(reloaded, input_ids, attention_mask, token_types)
    ours_logits = ours.last_hidden_state if head is None else ours.logits
    reference_logits = reference.last_hidden_state if head is None else reference.logits
    assert _max_abs_diff(ours_logits, reference_logits) <= TOLERANCE


def test_bf16_load_and_export_dtype(tmp_path):
    save_hf_model("BertForMaskedLM", tmp_path / "reference")
    model = hf.load_pretrained(tmp_path / "reference", param_dtype="bfloat16", dtype="bfloat16")
    kernel = model.encoder.layers[0].attention.query.kernel
    assert kernel.dtype == jnp.bfloat16
    exported = hf.save_pretrained(model, tmp_path / "bf16")
    assert json.loads((exported / "config.json").read_text())["dtype"] == "bfloat16"
    reloaded = transformers.AutoModelForMaskedLM.from_pretrained(exported)
    assert reloaded.bert.encoder.layer[0].attention.self.query.weight.dtype == torch.bfloat16


def test_reads_legacy_names_and_stored_tied_decoder(tmp_path):
    """Old checkpoints: LayerNorm.gamma/beta, a stored decoder weight, and BertForPreTraining extras."""
    reference_model = save_hf_model("BertForMaskedLM", tmp_path / "reference")
    tensors = load_file(tmp_path / "reference" / "model.safetensors")
    legacy = {}
    for name, value in tensors.items():
        name = name.replace("LayerNorm.weight", "LayerNorm.gamma").replace("LayerNorm.bias", "LayerNorm.beta")
        legacy[name] = value
    legacy["cls.predictions.decoder.weight"] = tensors["bert.embeddings.word_embeddings.weight"]
    legacy["cls.seq_relationship.weight"] = np.zeros((2, 32), np.float32)
    legacy_folder = tmp_path / "legacy"
    legacy_folder.mkdir()
    save_file(legacy, str(legacy_folder / "model.safetensors"), metadata={"format": "pt"})
    config = json.loads((tmp_path / "reference" / "config.json").read_text())
    config["architectures"] = ["BertForPreTraining"]
    (legacy_folder / "config.json").write_text(json.dumps(config))
    model = hf.load_pretrained(legacy_folder)
    assert hf.read_checkpoint(legacy_folder).dropped == {
        "cls.seq_relationship.weight": "next-sentence head of BertForPreTraining"}
    input_ids, attention_mask, token_types = padded_batch(97, LENGTHS, 16)
    ours = model(jnp.asarray(input_ids), jnp.asarray(attention_mask), jnp.asarray(token_types))
    reference = hf_outputs(reference_model, input_ids, attention_mask, token_types)
    assert _max_abs_diff(ours.logits, reference.logits) <= TOLERANCE

    legacy["cls.predictions.decoder.weight"] = legacy["cls.predictions.decoder.weight"] + 1.0
    save_file(legacy, str(legacy_folder / "model.safetensors"), metadata={"format": "pt"})
    with pytest.raises(hf.CheckpointFormatError, match="cls.predictions.decoder.weight.*tied"):
        hf.load_pretrained(legacy_folder)


# ---------------------------------------------------------------------------------------------- bad input


@pytest.fixture
def reference_folder(tmp_path):
    save_hf_model("DistilBertForMaskedLM", tmp_path / "reference")
    return tmp_path / "reference"


def _rewrite_tensors(folder, change):
    tensors = load_file(folder / "model.safetensors")
    change(tensors)
    save_file(tensors, str(folder / "model.safetensors"), metadata={"format": "pt"})


def test_missing_config(tmp_path):
    with pytest.raises(hf.CheckpointFormatError, match=r"config\.json: missing"):
        hf.load_pretrained(tmp_path)


def test_other_architecture(reference_folder):
    config_path = reference_folder / "config.json"
    config = json.loads(config_path.read_text())
    config["model_type"] = "roberta"
    config_path.write_text(json.dumps(config))
    with pytest.raises(hf.CheckpointFormatError, match=r"config\.json: field 'model_type' is 'roberta'"):
        hf.load_pretrained(reference_folder)


def test_unknown_architectures_field(reference_folder):
    config_path = reference_folder / "config.json"
    config = json.loads(config_path.read_text())
    config["architectures"] = ["DistilBertForQuestionAnswering"]
    config_path.write_text(json.dumps(config))
    with pytest.raises(hf.CheckpointFormatError, match="architectures.*DistilBertForMaskedLM"):
        hf.load_pretrained(reference_folder)


def test_missing_field(reference_folder):
    config_path = reference_folder / "config.json"
    config = json.loads(config_path.read_text())
    del config["n_heads"]
    config_path.write_text(json.dumps(config))
    with pytest.raises(hf.CheckpointFormatError, match=r"config\.json: field 'n_heads' is missing"):
        hf.load_pretrained(reference_folder)


def test_missing_weights_file(reference_folder):
    os.remove(reference_folder / "model.safetensors")
    with pytest.raises(hf.CheckpointFormatError, match="no model.safetensors"):
        hf.load_pretrained(reference_folder)


def test_missing_tensor(reference_folder):
    _rewrite_tensors(reference_folder, lambda t: t.pop("distilbert.transformer.layer.1.ffn.lin2.bias"))
    with pytest.raises(hf.CheckpointFormatError, match=r"model\.safetensors: tensor "
                       r"'distilbert\.transformer\.layer\.1\.ffn\.lin2\.bias' is missing"):
        hf.load_pretrained(reference_folder)


def test_misshaped_tensor(reference_folder):
    def shrink(tensors):
        tensors["distilbert.transformer.layer.0.attention.q_lin.weight"] = np.zeros((32, 31), np.float32)

    _rewrite_tensors(reference_folder, shrink)
    with pytest.raises(hf.CheckpointFormatError,
                       match=r"tensor 'distilbert\.transformer\.layer\.0\.attention\.q_lin\.weight' has shape "
                             r"\[32, 31\], expected \[32, 32\]"):
        hf.load_pretrained(reference_folder)


def test_unreadable_dtype(reference_folder):
    def to_int(tensors):
        tensors["vocab_projector.bias"] = tensors["vocab_projector.bias"].astype(np.int32)

    _rewrite_tensors(reference_folder, to_int)
    with pytest.raises(hf.CheckpointFormatError, match=r"tensor 'vocab_projector\.bias' has dtype I32"):
        hf.load_pretrained(reference_folder)


def test_corrupt_weights_file(reference_folder):
    (reference_folder / "model.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(hf.CheckpointFormatError, match="model.safetensors: not a readable safetensors file"):
        hf.load_pretrained(reference_folder)


def test_failed_export_leaves_target_untouched(reference_folder, tmp_path, monkeypatch):
    model = hf.load_pretrained(reference_folder)
    target = tmp_path / "target"
    hf.save_pretrained(model, target)
    before = {p.name: p.read_bytes() for p in target.iterdir()}

    def broken_save(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(hf, "save_file", broken_save)
    with pytest.raises(OSError, match="disk full"):
        hf.save_pretrained(model, target)
    assert {p.name: p.read_bytes() for p in target.iterdir()} == before
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".target")] == []


def test_config_fields_are_checked(reference_folder):
    config_path = reference_folder / "config.json"
    good = json.loads(config_path.read_text())
    for change, message in [
        ({"n_layers": 2.0}, r"field 'n_layers' must be an integer >= 1, got 2\.0"),
        ({"vocab_size": -3}, r"field 'vocab_size' must be an integer >= 1, got -3"),
        ({"dropout": 1.5}, r"field 'dropout' must be a probability in \[0, 1\), got 1\.5"),
        ({"pad_token_id": 97}, r"field 'pad_token_id' is 97, expected an id below vocab_size 97"),
        ({"architectures": "DistilBertForMaskedLM"}, r"field 'architectures' must be a list"),
    ]:
        config_path.write_text(json.dumps({**good, **change}))
        with pytest.raises(hf.CheckpointFormatError, match=r"config\.json: " + message):
            hf.read_checkpoint(reference_folder)
    config_path.write_text("[]")
    with pytest.raises(hf.CheckpointFormatError, match=r"config\.json: expected a JSON object \{\.\.\.\}, got list"):
        hf.load_pretrained(reference_folder)


def test_tensors_the_config_does_not_describe_are_refused_or_dropped_on_request(tmp_path):
    """A config.json saying 2 layers over weights of 4 is refused, naming the extra layers; accepted on request."""
    save_hf_model("BertForMaskedLM", tmp_path / "four", layers=4)
    config = json.loads((tmp_path / "four" / "config.json").read_text())
    (tmp_path / "four" / "config.json").write_text(json.dumps({**config, "num_hidden_layers": 2}))
    with pytest.raises(hf.CheckpointFormatError, match=r"32 tensor\(s\) that a BertForMaskedLM of this config\.json "
                       r"does not have: 'bert\.encoder\.layer\.2\..* says num_hidden_layers=2; the weights hold "
                       r"layers \[0, 1, 2, 3\]\)"):
        hf.load_pretrained(tmp_path / "four")
    checkpoint = hf.read_checkpoint(tmp_path / "four", allow_unused=True)
    assert len(checkpoint.unused) == 32 and checkpoint.config.num_hidden_layers == 2
    assert hf.load_pretrained(tmp_path / "four", allow_unused=True).config.num_hidden_layers == 2

    (tmp_path / "four" / "config.json").write_text(json.dumps({**config, "num_hidden_layers": 6}))
    with pytest.raises(hf.CheckpointFormatError, match=r"tensor 'bert\.encoder\.layer\.4\..*' is missing "
                       r"\(config\.json says num_hidden_layers=6; the weights hold layers \[0, 1, 2, 3\]\)"):
        hf.describe_pretrained(tmp_path / "four")
