"""Tiny randomly initialised transformers models, saved with `save_pretrained`, as the reference for parity tests.

Every parameter is perturbed after construction so that biases and LayerNorm parameters are not the trivial
zeros/ones of a fresh model (parity would otherwise not see a bias mapped to the wrong place).
`experiments/report_parity.py` builds its models here too, so the report measures what the tests check.
"""

from __future__ import annotations

from pathlib import Path

import torch
import transformers

ARCHITECTURES = {
    "BertModel": ("bert", None),
    "BertForMaskedLM": ("bert", "mlm"),
    "BertForSequenceClassification": ("bert", "classification"),
    "DistilBertModel": ("distilbert", None),
    "DistilBertForMaskedLM": ("distilbert", "mlm"),
    "DistilBertForSequenceClassification": ("distilbert", "classification"),
}


def tiny_hf_config(
    family: str,
    *,
    vocab_size: int = 97,
    layers: int = 3,
    num_labels: int = 3,
    hidden_size: int = 32,
    intermediate_size: int = 48,
    max_position_embeddings: int = 40,
):
    if family == "bert":
        return transformers.BertConfig(
            vocab_size=vocab_size,
            hidden_size=hidden_size,
            num_hidden_layers=layers,
            num_attention_heads=4,
            intermediate_size=intermediate_size,
            max_position_embeddings=max_position_embeddings,
            type_vocab_size=2,
            layer_norm_eps=1e-12,
            num_labels=num_labels,
        )
    return transformers.DistilBertConfig(
        vocab_size=vocab_size,
        dim=hidden_size,
        n_layers=layers,
        n_heads=4,
        hidden_dim=intermediate_size,
        max_position_embeddings=max_position_embeddings,
        num_labels=num_labels,
    )


def make_hf_model(architecture: str, *, seed: int = 0, **config_kwargs) -> torch.nn.Module:
    family, _ = ARCHITECTURES[architecture]
    torch.manual_seed(seed)
    model = getattr(transformers, architecture)(tiny_hf_config(family, **config_kwargs))
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            parameter.add_(0.05 * torch.randn_like(parameter))
    return model.eval()


def save_hf_model(architecture: str, folder: Path, *, seed: int = 0, **config_kwargs) -> torch.nn.Module:
    model = make_hf_model(architecture, seed=seed, **config_kwargs)
    model.save_pretrained(folder)
    return model


def hf_outputs(model: torch.nn.Module, input_ids, attention_mask, token_type_ids=None):
    kwargs = dict(input_ids=torch.as_tensor(input_ids, dtype=torch.long),
                  attention_mask=torch.as_tensor(attention_mask, dtype=torch.long))
    if token_type_ids is not None:
        kwargs["token_type_ids"] = torch.as_tensor(token_type_ids, dtype=torch.long)
    with torch.no_grad():
        return model(**kwargs, output_hidden_states=True)
