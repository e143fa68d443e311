"""Max |distil - transformers| over every hidden state and the logits, for each supported architecture.

    .venv/bin/python experiments/report_parity.py [--layers 3] [--hidden 32] [--batch 4] [--length 16]

Each architecture is built in transformers (PyTorch) with random weights (biases and LayerNorms perturbed away
from zeros/ones), saved with `save_pretrained`, loaded with `distil.hf.load_pretrained`, and both are run in
float32 on the same batch, which includes padding. Needs the test extras (transformers, torch).
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import jax.numpy as jnp
import numpy as np
import torch
import transformers

from distil import hf

ARCHITECTURES = ("BertModel", "BertForMaskedLM", "BertForSequenceClassification", "DistilBertModel",
                 "DistilBertForMaskedLM", "DistilBertForSequenceClassification")


def reference_model(architecture: str, *, vocab: int, hidden: int, layers: int) -> torch.nn.Module:
    if architecture.startswith("Bert"):
        config = transformers.BertConfig(vocab_size=vocab, hidden_size=hidden, num_hidden_layers=layers,
                                         num_attention_heads=4, intermediate_size=4 * hidden, num_labels=3)
    else:
        config = transformers.DistilBertConfig(vocab_size=vocab, dim=hidden, n_layers=layers, n_heads=4,
                                               hidden_dim=4 * hidden, num_labels=3)
    torch.manual_seed(0)
    model = getattr(transformers, architecture)(config)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(0.05 * torch.randn_like(parameter))
    return model.eval()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--layers", type=int, default=3)
    parser.add_argument("--hidden", type=int, default=32)
    parser.add_argument("--vocab", type=int, default=997)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--length", type=int, default=16)
    args = parser.parse_args()

    rng = np.random.default_rng(0)
    lengths = rng.integers(2, args.length + 1, size=args.batch)
    lengths[0] = args.length
    attention_mask = (np.arange(args.length)[None] < lengths[:, None]).astype(np.int32)
    input_ids = (rng.integers(1, args.vocab, size=(args.batch, args.length)) * attention_mask).astype(np.int32)
    token_types = ((np.arange(args.length)[None] >= lengths[:, None] // 2) * attention_mask).astype(np.int32)

    print(f"batch {args.batch} x {args.length} (real lengths {lengths.tolist()}), {args.layers} layers, "
          f"hidden {args.hidden}, vocab {args.vocab}, float32\n")
    print("| architecture | max diff, hidden states | max diff, logits |")
    print("|---|---:|---:|")
    with tempfile.TemporaryDirectory() as tmp:
        for architecture in ARCHITECTURES:
            reference = reference_model(architecture, vocab=args.vocab, hidden=args.hidden, layers=args.layers)
            folder = Path(tmp) / architecture
            reference.save_pretrained(folder)
            model = hf.load_pretrained(folder)
            is_bert = architecture.startswith("Bert")
            inputs = {"input_ids": torch.as_tensor(input_ids, dtype=torch.long),
                      "attention_mask": torch.as_tensor(attention_mask, dtype=torch.long)}
            if is_bert:
                inputs["token_type_ids"] = torch.as_tensor(token_types, dtype=torch.long)
            with torch.no_grad():
                theirs = reference(**inputs, output_hidden_states=True)
            ours = model(jnp.asarray(input_ids), jnp.asarray(attention_mask),
                         jnp.asarray(token_types) if is_bert else None)
            hidden_diff = max(float(np.abs(np.asarray(a) - b.numpy()).max())
                              for a, b in zip(ours.hidden_states, theirs.hidden_states, strict=True))
            logits_diff = (float(np.abs(np.asarray(ours.logits) - theirs.logits.numpy()).max())
                           if ours.logits is not None else None)
            print(f"| {architecture} | {hidden_diff:.2e} | {'-' if logits_diff is None else f'{logits_diff:.2e}'} |")


if __name__ == "__main__":
    main()
