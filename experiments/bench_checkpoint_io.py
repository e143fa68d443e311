"""Full-size checkpoint round trip: save / load times of distil next to transformers', and full-size parity.

    .venv/bin/python experiments/bench_checkpoint_io.py [--family bert|distilbert] [--batch 2] [--length 128]

Builds a randomly initialised full-size mBERT MLM (or DistilmBERT MLM) in distil, writes it as a Hugging Face
folder, reads it back with `distil.hf.load_pretrained` and with transformers' `AutoModelForMaskedLM`, and runs both
on the same padded batch of real-vocabulary ids. Prints a table of seconds and the max |logit difference|.
Needs the test extras (transformers, torch); about 3 GB of memory.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import jax.numpy as jnp
import numpy as np
import torch
import transformers

from distil import hf
from distil.models import create_model, distilmbert_base, mbert_base, parameter_count


def timed(fn):
    start = time.perf_counter()
    result = fn()
    return result, time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--family", choices=("bert", "distilbert"), default="bert")
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--length", type=int, default=128)
    args = parser.parse_args()

    config = (mbert_base(head="mlm", add_pooler=False) if args.family == "bert" else distilmbert_base(head="mlm"))
    model, create_seconds = timed(lambda: create_model(config, seed=0))
    rng = np.random.default_rng(0)
    lengths = np.array([args.length] + list(rng.integers(8, args.length, size=args.batch - 1)))
    attention_mask = (np.arange(args.length)[None] < lengths[:, None]).astype(np.int32)
    input_ids = (rng.integers(104, config.vocab_size, size=(args.batch, args.length)) * attention_mask).astype(np.int32)

    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "model"
        _, save_seconds = timed(lambda: hf.save_pretrained(model, folder))
        size_mb = (folder / hf.WEIGHTS_FILE).stat().st_size / 2**20
        loaded, load_seconds = timed(lambda: hf.load_pretrained(folder))
        reference, hf_load_seconds = timed(lambda: transformers.AutoModelForMaskedLM.from_pretrained(folder).eval())
        ours, ours_seconds = timed(lambda: np.asarray(
            loaded(jnp.asarray(input_ids), jnp.asarray(attention_mask)).logits))
        with torch.no_grad():
            theirs, theirs_seconds = timed(lambda: reference(
                input_ids=torch.as_tensor(input_ids, dtype=torch.long),
                attention_mask=torch.as_tensor(attention_mask, dtype=torch.long)).logits.numpy())

    print(f"{type(reference).__name__}: {parameter_count(config):,} parameters, {size_mb:,.0f} MiB safetensors; "
          f"batch {args.batch} x {args.length} (real lengths {lengths.tolist()})\n")
    print("| step | distil (s) | transformers (s) | ratio |")
    print("|---|---:|---:|---:|")
    print(f"| create random model | {create_seconds:.2f} | - | - |")
    print(f"| save_pretrained | {save_seconds:.2f} | - | - |")
    print(f"| load | {load_seconds:.2f} | {hf_load_seconds:.2f} | {load_seconds / hf_load_seconds:.2f} |")
    print(f"| first forward (distil: eager, uncompiled) | {ours_seconds:.2f} | {theirs_seconds:.2f} | "
          f"{ours_seconds / theirs_seconds:.2f} |")
    print(f"\nmax |logits difference|: {float(np.abs(ours - theirs).max()):.2e} "
          f"(logits up to {float(np.abs(theirs).max()):.1f})")


if __name__ == "__main__":
    main()
