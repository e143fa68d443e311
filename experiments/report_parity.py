"""Max |distil - transformers| over every hidden state and the logits, for each supported architecture.

    .venv/bin/python experiments/report_parity.py [--layers 3] [--hidden 32] [--batch 4] [--length 16]

Each architecture is built in transformers (PyTorch) with random weights (biases and LayerNorms perturbed away
from zeros/ones) by the parity tests' own helper (tests/hf_reference.py), saved with `save_pretrained`, loaded with
`distil.hf.load_pretrained`, and both are run in float32 on the same batch, which includes padding. Needs the test
extras (transformers, torch).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import jax.numpy as jnp
import numpy as np

from distil import hf

# The tests' reference models, shared rather than copied: tests/ is not a package, so put it on the path.
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from hf_reference import ARCHITECTURES, hf_outputs, make_hf_model  # noqa: E402


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
        for architecture, (family, _) in ARCHITECTURES.items():
            reference = make_hf_model(architecture, vocab_size=args.vocab, hidden_size=args.hidden,
                                      layers=args.layers, intermediate_size=4 * args.hidden,
                                      max_position_embeddings=max(512, args.length))
            folder = Path(tmp) / architecture
            reference.save_pretrained(folder)
            model = hf.load_pretrained(folder)
            is_bert = family == "bert"
            theirs = hf_outputs(reference, input_ids, attention_mask, token_types if is_bert else None)
            ours = model(jnp.asarray(input_ids), jnp.asarray(attention_mask),
                         jnp.asarray(token_types) if is_bert else None)
            hidden_diff = max(float(np.abs(np.asarray(a) - b.numpy()).max())
                              for a, b in zip(ours.hidden_states, theirs.hidden_states, strict=True))
            logits_diff = (float(np.abs(np.asarray(ours.logits) - theirs.logits.numpy()).max())
                           if ours.logits is not None else None)
            print(f"| {architecture} | {hidden_diff:.2e} | {'-' if logits_diff is None else f'{logits_diff:.2e}'} |")


if __name__ == "__main__":
    main()
