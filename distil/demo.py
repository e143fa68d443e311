"""The demo: the whole pipeline at laptop scale on embedded data (see configs/demo.py).

    run_demo(config, workdir)

1. teacher/: MLM pre-training of a small BERT (`distil.train.distill` with no teacher; it binarises the corpus);
2. student/: the DistilBERT recipe from that teacher; student-mlm/, student-random/ and student-scratch/: the
   ablations (the MLM term alone from the same teacher layers; the recipe from random weights; no teacher at all,
   the same shape pre-trained as the teacher was), same steps and rows;
3. xnli-teacher/, xnli-student/: zero-shot XNLI of both (`distil.train.xnli`);
4. evaluation.json: held-out masked-token accuracy of the five models and of the unigram baseline on the same fixed
   masks (`distil.evaluation`), fill-mask examples of the exported student; report.md whose first table is that
   evaluation, with loss curves (loss_curves.png), the XNLI table of both beside the model card's rows
   (xnli_results.{json,md,png}), the student's speed-up over the teacher measured here, and what the full recipe needs
   (its memory dry run and the launch commands).
The demo's workdir is a run of its own (distil.train.run): locked while it runs, of one demo config, and final once
its report is written (a rerun prints where it is and changes nothing). Each stage is a run in its own folder: a
finished one is reused, an interrupted one resumes from its checkpoint (the trainers do that).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import jax.numpy as jnp
import ml_collections
import numpy as np
from flax import nnx

from distil import evaluation, hf, report
from distil.atomic import write_atomically, write_text_atomically
from distil.config import ConfigError, with_changes
from distil.data.embedded import embedded_corpus_dir
from distil.models import parameter_count
from distil.sweep_report import LOSS_TERMS
from distil.tokenization import load_tokenizer
from distil.train import distill, xnli
from distil.train.metrics import read_metrics
from distil.train.run import (DEMO_FILE, DRY_RUN_FILE, LOSS_CURVES_FILE, METRICS_FILE, REPORT_FILE, RESULTS_FILE,
                              STUDENT_DIR, SUMMARY_FILE, is_finished, open_run, read_json)


def _log(message: str) -> None:
    print(f"distil demo: {message}", flush=True)


def _stage(name: str, folder: Path, run) -> float:
    """Runs a stage (its trainer reuses it when it finished earlier); returns the seconds it took (0 when reused)."""
    if is_finished(folder):
        _log(f"{name}: reusing {folder} (finished earlier)")
        return 0.0
    _log(f"{name} -> {folder}")
    started = time.perf_counter()
    result = run()
    if isinstance(result, dict) and "stopped_at" in result:  # SIGTERM: the stage saved its checkpoint
        raise SystemExit(f"distil demo: {name} stopped at step {result['stopped_at']}; rerun the same command to "
                         "resume")
    return time.perf_counter() - started


def check_config(config: ml_collections.ConfigDict) -> None:
    for key in ("speed_batch", "eval_seed"):
        least = 0 if key == "eval_seed" else 1
        if not isinstance(config[key], int) or config[key] < least:
            raise ConfigError(f"config.{key} must be an integer >= {least}, got {config[key]!r}")


def run_demo(config: ml_collections.ConfigDict, workdir: str | os.PathLike) -> dict:
    """Runs (or resumes) the demo in `workdir`; returns its summary (`demo.json`; a finished demo's, untouched)."""
    check_config(config)
    workdir = Path(workdir)
    with open_run(workdir, "demo", config) as run:
        if run.finished:
            _log(run.finished_message())
            return read_json(workdir / DEMO_FILE, "demo summary")
        summary = _run_stages(config, workdir)
        run.mark_finished()
        return summary


# The fields that make a model's shape in a distill config's `student` section.
SHAPE_FIELDS = ("family", "hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size",
                "max_position_embeddings", "sinusoidal_pos_embds")


def stage_configs(config: ml_collections.ConfigDict, workdir: Path) -> dict[str, ml_collections.ConfigDict]:
    """Each stage's folder name -> its config (the demo config's sections, wired to the workdir: the students'
    teacher is the teacher stage's export, XNLI starts from each model's stage)."""
    student = with_changes(config.student, ml_collections.ConfigDict(
        {"teacher": {"checkpoint": str(workdir / "teacher" / STUDENT_DIR)}}), "config.student")
    random_student = with_changes(student, config.student_random, "config.student_random")
    return {
        "teacher": with_changes(config.teacher, ml_collections.ConfigDict(), "config.teacher"),
        "student": student,
        "student-mlm": with_changes(student, config.student_mlm, "config.student_mlm"),
        "student-random": random_student,
        # No teacher at all: the students' shape and updates, pre-trained as the teacher was (its optimizer and
        # masking: the recipe's Adam eps 1e-6 keeps a model this size on the unigram plateau, configs/demo.py).
        "student-scratch": with_changes(config.teacher, ml_collections.ConfigDict({
            "student": {key: random_student.student[key] for key in SHAPE_FIELDS}, "num_steps": student.num_steps}),
            "config.teacher"),
        **{f"xnli-{model}": with_changes(config.xnli, ml_collections.ConfigDict(
            {"init": str(workdir / model), "name": model}), "config.xnli") for model in ("teacher", "student")},
    }


def _run_stages(config: ml_collections.ConfigDict, workdir: Path) -> dict:
    started = time.perf_counter()
    stages = {name: workdir / name for name in ("teacher", *STUDENTS, "xnli-teacher", "xnli-student")}
    configs = stage_configs(config, workdir)
    teacher_config = configs["teacher"]

    seconds = {"teacher": _stage("1/4 MLM pre-training of the teacher", stages["teacher"],
                                 lambda: distill.train_and_evaluate(teacher_config, stages["teacher"]))}
    for name, what in STUDENTS.items():
        seconds[name] = _stage(f"2/4 {what}", stages[name],
                               lambda: distill.train_and_evaluate(configs[name], stages[name]))
    for model in ("teacher", "student"):
        stage = stages[f"xnli-{model}"]
        seconds[f"xnli-{model}"] = _stage(f"3/4 XNLI of the {model}", stage,
                                          lambda: xnli.train_and_evaluate(configs[f"xnli-{model}"], stage))

    _log("4/4 held-out evaluation and report")
    tick = time.perf_counter()
    heldout = heldout_evaluation(config, teacher_config, {name: stages[name] / STUDENT_DIR
                                                          for name in ("teacher", *STUDENTS)})
    write_text_atomically(workdir / EVALUATION_FILE, json.dumps(heldout, indent=2) + "\n")
    seconds["evaluation"] = time.perf_counter() - tick
    runs = [report.read_results(stages["xnli-teacher"]), report.read_results(stages["xnli-student"])]
    report.write_files(runs, workdir, RESULTS_FILE.removesuffix(".json"), {"runs": runs})
    plot_loss_curves({name: read_metrics(stages[name] / METRICS_FILE) for name in ("teacher", *STUDENTS)},
                     workdir / LOSS_CURVES_FILE)
    teacher_folder, student_folder = (stages[name] / STUDENT_DIR for name in ("teacher", "student"))
    speed = measure_speedup(teacher_folder, student_folder, batch=config.speed_batch)
    summary = {
        "workdir": str(workdir), "seconds": seconds, "speed": speed,
        **{name: read_json(stages[name] / SUMMARY_FILE, "summary") for name in ("teacher", *STUDENTS)},
        "heldout": heldout,
        "xnli": {run["model"]: run["test"] for run in runs},
        "dry_run": full_recipe_dry_run(workdir / DRY_RUN_FILE),
    }
    summary["total_seconds"] = time.perf_counter() - started
    write_text_atomically(workdir / DEMO_FILE, json.dumps(summary, indent=2, default=str) + "\n")
    write_text_atomically(workdir / REPORT_FILE, to_markdown(summary, workdir))
    return summary


# The distillation stages after the teacher: folder -> what it is (the report's rows, in this order).
STUDENTS = {"student": "distilling the student (the recipe, from teacher layers)",
            "student-mlm": "ablation: the same student trained with the MLM term alone",
            "student-random": "ablation: the recipe into the same shape from random weights",
            "student-scratch": "no teacher: the same shape and updates pre-trained with MLM as the teacher was"}
EVALUATION_FILE = "evaluation.json"  # held-out masked-token accuracy, unigram baseline, fill-mask examples
# The first table's rows: evaluation.json key -> label.
MODELS = {"teacher": "teacher (4 layers, MLM pre-training)",
          "student": "**distilled student** (2 layers, teacher layers 0 and 3 + 5·ce + 2·mlm + 1·cos)",
          "student-mlm": "MLM-only student (same init, steps and rows; alpha_ce = alpha_cos = 0)",
          "student-random": "random-init student (same shape and recipe, random weights)",
          "student-scratch": "no teacher (same shape and updates, MLM pre-training as the teacher's)"}


def heldout_masks_and_baseline(config: ml_collections.ConfigDict, teacher_config: ml_collections.ConfigDict):
    """What every held-out score is taken on: the teacher's tokenizer, the held-out lines (config.heldout) and their
    fixed uniform 15% masks (config.eval_seed), the teacher's training lines and the unigram baseline's answer for
    each language (its most frequent training token)."""
    tokenizer = load_tokenizer(teacher_config.tokenizer)
    lines = evaluation.read_lines(config.heldout)
    masks = evaluation.heldout_masks(tokenizer, lines, seed=config.eval_seed,
                                     max_length=teacher_config.data.max_length)
    corpus = teacher_config.data.corpus  # the baseline counts the teacher's training lines (a folder of <lang>.txt)
    train_lines = evaluation.read_lines(embedded_corpus_dir() if corpus == "embedded" else corpus, list(lines))
    return tokenizer, lines, masks, train_lines, evaluation.unigram_predictions(tokenizer, train_lines)


def heldout_evaluation(config: ml_collections.ConfigDict, teacher_config: ml_collections.ConfigDict,
                       folders: dict[str, Path]) -> dict:
    """Masked-token accuracy of each exported model on the held-out lines (config.heldout) with the same fixed
    uniform 15% masks, the unigram baseline on them (most frequent token of each language's training lines), bigram
    counts on them for scale (what the neighbouring tokens alone give), the student's retention of the teacher's
    accuracy, the distilled student against each ablation on the same targets (evaluation.paired_comparison), how
    much attention each head of the teacher and the student puts on each neighbour, and fill-mask examples
    (transformers' pipeline on the exported student, one held-out sentence per language with one single-token word
    masked, top-3)."""
    tokenizer, lines, masks, train_lines, unigram_answers = heldout_masks_and_baseline(config, teacher_config)
    unigram = evaluation.unigram_accuracy(masks, unigram_answers)
    out = {"languages": list(lines), "lines": {lang: len(texts) for lang, texts in lines.items()},
           "targets": unigram["targets"], "unigram": unigram["accuracy"],
           "bigram": evaluation.bigram_accuracy(tokenizer, masks, train_lines, unigram_answers)["accuracy"]}
    models = {name: hf.load_pretrained(folder) for name, folder in folders.items()}  # loaded once for both passes
    answers = {name: evaluation.masked_answers(model, masks) for name, model in models.items()}
    out["models"] = {name: evaluation.answers_accuracy(masks, answers[name])["accuracy"] for name in models}
    # The distilled student against each ablation on the same targets (the report's verdicts).
    out["paired"] = {name: evaluation.paired_comparison(masks, answers["student"], answers[name])
                     for name in answers if name not in ("teacher", "student")}
    # Whether the teacher (and what the student kept of it) reads its neighbours or only the line's words.
    out["neighbour_attention"] = {name: evaluation.neighbour_attention(models[name], masks)
                                  for name in ("teacher", "student")}
    teacher = out["models"]["teacher"]
    out["retention"] = {key: evaluation.retention(value, teacher[key])
                        for key, value in out["models"]["student"].items()}
    examples = []
    for lang in config.fill_mask_languages:
        for index, text in enumerate(lines.get(lang, [])):
            masked, word = evaluation.mask_one_word(tokenizer, text, seed=config.eval_seed + index)
            if masked and len(text) < 160:
                examples.append({"language": lang, "text": masked, "answer": word})
                break
    answers = evaluation.fill_mask(folders["student"], [example["text"] for example in examples], top_k=3)
    out["fill_mask"] = [{**example, "top3": result["answers"]} for example, result in zip(examples, answers)]
    return out


def plot_loss_curves(metrics: dict[str, list[dict]], path: Path) -> None:
    """One panel per stage: every logged loss term against the step."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(1, len(metrics), figsize=(5 * len(metrics), 4))
    for ax, (name, rows) in zip(np.atleast_1d(axes), metrics.items()):
        steps = [row["step"] for row in rows]
        for term in LOSS_TERMS:
            if term in rows[0]:
                ax.plot(steps, [row[term] for row in rows], label=term)
        kind = {"teacher": "MLM pre-training", "student-mlm": "MLM only",
                "student-scratch": "MLM pre-training"}.get(name, "distillation")
        ax.set_title(f"{name}: {kind}")
        ax.set_xlabel("step")
        ax.set_yscale("log")
        ax.legend()
    figure.tight_layout()
    write_atomically(path, lambda handle: figure.savefig(handle, format="png", dpi=100))
    plt.close(figure)


def measure_speedup(teacher_folder: Path, student_folder: Path, *, batch: int, length: int = 128,
                    repeats: int = 20) -> dict:
    """Median seconds of a jitted forward (MLM logits) of each model on the same [batch, length] input, here."""

    @nnx.jit
    def forward(model, input_ids, attention_mask):
        return model(input_ids, attention_mask).logits

    rng = np.random.default_rng(0)
    out = {}
    for name, folder in (("teacher", teacher_folder), ("student", student_folder)):
        model = hf.load_pretrained(folder)
        input_ids = jnp.asarray(rng.integers(104, model.config.vocab_size, (batch, length)), jnp.int32)
        mask = jnp.ones_like(input_ids)
        forward(model, input_ids, mask).block_until_ready()  # compile
        times = []
        for _ in range(repeats):
            tick = time.perf_counter()
            forward(model, input_ids, mask).block_until_ready()
            times.append(time.perf_counter() - tick)
        out[name] = {"seconds": float(np.median(times)), "parameters": parameter_count(model),
                     "layers": model.config.num_hidden_layers}
    out["speedup"] = out["teacher"]["seconds"] / out["student"]["seconds"]
    out["batch"], out["length"] = batch, length
    return out


def full_recipe_dry_run(cache: Path) -> str:
    """The full recipe's per-device memory on one device (`distil distill --dry_run`, fake CPU device, no weights),
    kept in `cache` once it succeeded: it depends on no demo setting, so a resumed demo does not compile it again."""
    if cache.is_file():
        return cache.read_text(encoding="utf-8")
    command = [sys.executable, "-m", "distil", "distill", "--config", "distilmbert", "--dry_run",
               "--config.mesh.data=1", "--config.batching.micro_batches=40"]
    done = subprocess.run(command, capture_output=True, text=True, env={**os.environ, "JAX_PLATFORMS": "cpu"})
    if done.returncode != 0:
        return f"(dry run failed: {done.stderr.strip()[-300:]})"
    text = "\n".join(line for line in done.stdout.splitlines() if line.startswith(("dry run:", "per device")))
    write_text_atomically(cache, text)
    return text


def to_markdown(summary: dict, workdir: Path) -> str:
    teacher, speed = summary["teacher"], summary["speed"]
    # The XNLI report's sections, one level down (its title is this section's).
    xnli_table = "\n".join(f"#{line}" if line.startswith("## ") else line
                           for line in (workdir / RESULTS_FILE).with_suffix(".md").read_text(
                               encoding="utf-8").splitlines()[1:])
    averages = {model: 100 * sum(test.values()) / len(test) for model, test in summary["xnli"].items()}
    near_chance = all(abs(average - 100 / 3) < 3 for average in averages.values())
    heldout = summary["heldout"]
    stage_rows = [
        f"| 1. MLM pre-training (teacher) | teacher/ | {teacher['steps']} | "
        f"mlm {teacher['final']['mlm']:.3f} | {summary['seconds']['teacher']:.0f} |"]
    for name in STUDENTS:
        final = summary[name]["final"]
        stage_rows.append(f"| 2. {MODELS[name].replace('**', '')} | {name}/ | {summary[name]['steps']} | "
                          + ", ".join(f"{term} {final[term]:.3f}" for term in ("ce", "mlm", "cos") if term in final)
                          + f" | {summary['seconds'][name]:.0f} |")
    lines = [
        "# distil demo",
        "",
        "The whole pipeline at laptop scale on embedded data: a small BERT pre-trained with MLM on 15 languages "
        f"({teacher['steps']:,} updates of ~1,000 tokens), distilled into a 2-layer DistilBERT with the DistilBERT "
        "recipe, set beside the DistilBERT paper's ablations in miniature, then fine-tuned on 1,000 English MultiNLI "
        "pairs and evaluated zero-shot on the 15 XNLI languages. **At this size the numbers are far below the model "
        f"card's** (a teacher of {summary['speed']['teacher']['parameters'] / 1e6:.1f}M parameters, a corpus ten "
        "thousand times smaller than Wikipedia).",
        "",
        "## Held-out masked-token accuracy (%)",
        "",
        heldout_markdown(heldout),
        "",
        "## Fill-mask: the exported student on held-out sentences",
        "",
        "transformers' `fill-mask` pipeline on `student/student` (offline), one held-out sentence per language with "
        "one word (a single token of the vocabulary) masked; top-3 answers with their probabilities.",
        "",
        "| language | sentence | masked word | top-3 |",
        "|---|---|---|---|",
        *(f"| {ex['language']} | {ex['text'].replace('|', '/')} | {ex['answer']} | "
          + ", ".join(f"`{answer['token']}` {answer['score']:.2f}" for answer in ex["top3"]) + " |"
          for ex in heldout["fill_mask"]),
        "",
        "## What ran",
        "",
        "| stage | folder | steps | final training loss | seconds |",
        "|---|---|---:|---|---:|",
        *stage_rows,
        f"| 3. XNLI, teacher | xnli-teacher/ | | | {summary['seconds']['xnli-teacher']:.0f} |",
        f"| 3. XNLI, student | xnli-student/ | | | {summary['seconds']['xnli-student']:.0f} |",
        f"| 4. held-out evaluation | evaluation.json | | | {summary['seconds']['evaluation']:.0f} |",
        "",
        f"Stages reused from an earlier run show 0 seconds. Total {summary['total_seconds']:.0f} s.",
        "",
        "![loss curves](loss_curves.png)",
        "",
        "## Sizes and speed (measured in this process)",
        "",
        "| model | layers | parameters | forward, batch "
        f"{speed['batch']} x {speed['length']} |",
        "|---|---:|---:|---:|",
        f"| teacher | {speed['teacher']['layers']} | {speed['teacher']['parameters']:,} | "
        f"{speed['teacher']['seconds'] * 1e3:.1f} ms |",
        f"| student | {speed['student']['layers']} | {speed['student']['parameters']:,} | "
        f"{speed['student']['seconds'] * 1e3:.1f} ms |",
        "",
        f"The student's forward is **{speed['speedup']:.2f}x** the teacher's speed (the model card: DistilmBERT "
        "is about twice as fast as mBERT).",
        "",
        "## XNLI (zero-shot, accuracy %)",
        "",
        "Average test accuracy over the 15 languages: "
        + ", ".join(f"{model} {average:.1f}%" for model, average in averages.items())
        + (". **Both are at chance (33.3% for three classes), as expected here**: models this small, pre-trained "
           "on ~1.5M tokens and fine-tuned on 1,000 English pairs, do not learn NLI; the table shows the 15 "
           "languages read, evaluated and set beside the model card, which a full run fills in." if near_chance
           else "."),
        "",
        xnli_table.strip(),
        "",
        "![XNLI](xnli_results.png)",
        "",
        "## What the full recipe needs",
        "",
        "The memory dry run of `distilmbert` (mBERT teacher with 119,547 tokens, 6-layer student, rows of 512) "
        "compiled for one device here, with no data and no weights:",
        "",
        "```",
        str(summary["dry_run"]),
        "```",
        "",
        "Launch it on a TPU pod slice, a GPU cluster or GKE (the README has the table per mesh):",
        "",
        "```bash",
        "distil distill --config distilmbert:tpu=v4-32 --workdir /mnt/runs/distilmbert \\",
        "    --config.teacher.checkpoint=/mnt/models/bert-base-multilingual-cased --distributed",
        "distil xnli --config distilmbert_xnli --workdir /mnt/runs/xnli --config.init=/mnt/runs/distilmbert",
        "# ablations: each point distilled on the slice, then fine-tuned on XNLI; one table for all",
        "distil sweep experiments/objectives_sweep.py --launcher tpu --tpu my-v4-32 --zone us-central2-b \\",
        "    --config distilmbert:tpu=v4-32 --workdir /mnt/sweeps/objectives \\",
        "    --config.teacher.checkpoint=/mnt/models/bert-base-multilingual-cased",
        "distil sweep experiments/student_shape_sweep.py --launcher slurm --nodes 2 --gpus-per-node 8 \\",
        "    --venv /scratch/venvs/distil --config distilmbert:gpu=8xh100 --workdir /scratch/sweeps/shape \\",
        "    --config.teacher.checkpoint=/scratch/models/bert-base-multilingual-cased",
        "distil report /mnt/sweeps/objectives --out /mnt/sweeps/objectives/report",
        "```",
        "",
        "The student is a Hugging Face folder: `transformers.pipeline('fill-mask', 'student/student')` loads it "
        "offline.",
        "",
    ]
    return "\n".join(lines)


def heldout_markdown(heldout: dict) -> str:
    """The report's first table: per language and overall, every model's held-out masked-token accuracy, the
    unigram baseline and bigram counts on the same masks, and the distilled student's retention of the teacher's
    accuracy."""
    keys = [*heldout["languages"], "overall"]
    header = "| model | " + " | ".join(keys) + " |\n|---|" + "---:|" * len(keys)
    rows = [f"| {MODELS[name]} | " + " | ".join(f"{100 * accuracy[key]:.1f}" for key in keys) + " |"
            for name, accuracy in heldout["models"].items()]
    rows.append("| unigram baseline (each language's most frequent training token) | "
                + " | ".join(f"{100 * heldout['unigram'][key]:.1f}" for key in keys) + " |")
    rows.append("| bigram counts, for scale (both unmasked neighbours, counted in the training lines; no training) | "
                + " | ".join(f"{100 * heldout['bigram'][key]:.1f}" for key in keys) + " |")
    rows.append("| retention: distilled / teacher | "
                + " | ".join("-" if heldout["retention"][key] is None else f"{heldout['retention'][key]:.2f}"
                             for key in keys) + " |")
    unigram, targets = heldout["unigram"]["overall"], heldout["targets"]["overall"]
    ratio = heldout["models"]["teacher"]["overall"] / unigram if unigram else float("nan")
    retained = "-" if heldout["retention"]["overall"] is None else f"{heldout['retention']['overall']:.0%}"
    comparisons = []
    for name, label in (("student-mlm", "the MLM-only student"), ("student-random", "the random-init student"),
                        ("student-scratch", "the same shape pre-trained without a teacher")):
        paired = heldout["paired"][name]  # on the same targets: within two standard errors is noise
        gap, noise = paired["difference"], paired["two_se"]
        verdict = ("above" if gap > noise else "below" if gap < -noise else "level with (within noise)")
        comparisons.append(f"{verdict} {label} ({100 * gap:+.2f} points: {paired['first_only']} targets only "
                           f"the distilled student gets right, {paired['second_only']} only the other; 2 standard "
                           f"errors of the paired difference: {100 * noise:.2f} points)")
    text = (f"{sum(heldout['lines'].values())} held-out lines ({heldout['lines'][keys[0]]} per language, never "
            f"trained on), {targets:,} masked tokens: a fixed uniform 15% of each line's tokens (as BERT's own "
            "pre-training picks them), every one replaced by [MASK], the same masks for every model. "
            f"Teacher: **{ratio:.1f}x** the unigram baseline overall; counting bigrams of the same training lines "
            f"gives {100 * heldout['bigram']['overall']:.1f}% with no training, so a model below that does not yet "
            f"read its neighbours as well as counting does. Distilled student: **{retained}** of the "
            f"teacher's accuracy, {'; '.join(comparisons)}: the DistilBERT paper's ablations in miniature "
            "(without the distillation terms; without the teacher-layer initialisation; without either).")
    return "\n".join([text, "", header, *rows, "", neighbour_markdown(heldout["neighbour_attention"])])


def neighbour_markdown(attention: dict[str, dict]) -> str:
    """Which heads of the teacher and the student read a neighbour (evaluation.reading_heads), or, where none does,
    the most any head puts on one: the sign of a model still reading its lines as bags of words."""
    parts = []
    for name, weights in attention.items():
        heads = evaluation.reading_heads(weights)
        if heads:
            parts.append(f"{name}: " + ", ".join(f"layer {h['layer']} head {h['head']} on {h['offset']:+d} "
                                                 f"({h['weight']:.2f})" for h in heads))
        else:
            most = max(value for layer in weights["weights"] for head in layer for value in head)
            parts.append(f"{name}: none (at most {most:.2f} on one neighbour: a bag of words)")
    return ("Heads that read a neighbour (at least half of their attention on the token at one offset, "
            f"{', '.join(f'{o:+d}' for o in next(iter(attention.values()))['offsets'])}, on the held-out lines; "
            "layers and heads from 0): " + "; ".join(parts) + ". MLM pre-training starts from bags of words; "
            "the demo's teacher grows such heads after ~10,000 updates (configs/demo.py).")
