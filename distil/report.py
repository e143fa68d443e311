"""XNLI result tables and plots, from result files only: one run's `xnli_results.{md,png}` and `distil report`.

    distil report runs/xnli_teacher runs/xnli_student --out runs/report

A run (`distil xnli`) writes `xnli_results.json` (`aggregate_seeds` below gives its accuracy fields); everything here
reads that dictionary and nothing else, so a table can be rebuilt or merged long after the models are gone.

Tables put a row per model and a column per XNLI language (the XNLI paper's order), then the average over the
run's languages and over the six languages of the model card. The card's rows are those of Hugging Face's
`distilbert-base-multilingual-cased` model card (test accuracy, %, after fine-tuning full-size models on all of
MultiNLI): mBERT base cased 82.1 / 74.6 / 69.1 / 72.3 / 66.4 / 58.5 and DistilmBERT 78.2 / 69.1 / 64.0 / 66.3 /
59.1 / 54.7 on en / es / zh / de / ar / ur. Where a BERT (teacher) and a DistilBERT (student) run are both in a table,
a row gives the student's accuracy as a share of the teacher's, per language, as the card's two rows do.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np

from distil import storage
from distil.atomic import write_atomically, write_text_atomically
from distil.data.nli import xnli_languages
from distil.train.run import RESULTS_FILE

REPORT_STEM = "xnli_report"
SPLITS = ("dev", "test")

CARD_LANGUAGES = ("en", "es", "zh", "de", "ar", "ur")
MODEL_CARD = {  # test accuracy in %, https://huggingface.co/distilbert-base-multilingual-cased
    "mBERT base cased (model card)": dict(zip(CARD_LANGUAGES, (82.1, 74.6, 69.1, 72.3, 66.4, 58.5))),
    "DistilmBERT (model card)": dict(zip(CARD_LANGUAGES, (78.2, 69.1, 64.0, 66.3, 59.1, 54.7))),
}


class ReportError(ValueError):
    """A results file that cannot be read or is not an XNLI results file; the message names it and the key."""


# ---------------------------------------------------------------------------------------------------- numbers


def accuracy(correct: int, count: int) -> float:
    """Fraction of correct predictions; every example counts once, whatever batch it fell in."""
    if count <= 0:
        raise ValueError(f"accuracy of {count} examples")
    return correct / count


def mean_and_std(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (n - 1; 0 for one value) over seeds."""
    values = np.asarray(values, np.float64)
    return float(values.mean()), float(values.std(ddof=1)) if len(values) > 1 else 0.0


def language_average(per_language: Mapping[str, float]) -> float:
    """Unweighted mean over languages, as XNLI tables report it (each language's split has the same size)."""
    return float(np.mean(list(per_language.values())))


def aggregate_seeds(per_seed: Sequence[Mapping]) -> dict:
    """The accuracy fields of a results file from each seed's `{"dev": {lang: acc}, "test": {...}}`.

    Returns `{"dev": {lang: mean}, "test": ..., "average": {"dev": mean, "test": mean}, "std": {"dev": {lang: std},
    "test": ..., "average": {...}}}`; an average is the mean over seeds of each seed's language average.
    """
    if not per_seed:
        raise ValueError("no seed results to aggregate")
    out: dict = {"std": {"average": {}}, "average": {}}
    for split in SPLITS:
        languages = list(per_seed[0][split])
        out[split], out["std"][split] = {}, {}
        for language in languages:
            out[split][language], out["std"][split][language] = mean_and_std([seed[split][language]
                                                                              for seed in per_seed])
        out["average"][split], out["std"]["average"][split] = mean_and_std(
            [language_average(seed[split]) for seed in per_seed])
    return out


# ---------------------------------------------------------------------------------------------------- reading


def results_path(path: str | os.PathLike) -> Path:
    """A run folder's `xnli_results.json`, or the file itself."""
    path = storage.location(path)
    return path / RESULTS_FILE if path.is_dir() else path


def _check_accuracies(values, path: Path, key: str) -> None:
    if not isinstance(values, dict) or not values:
        raise ReportError(f"{path}: key {key!r} must map languages to accuracies, got {values!r:.60}")
    for language, value in values.items():
        if not isinstance(value, (int, float)) or isinstance(value, bool) or not 0 <= value <= 1:
            raise ReportError(f"{path}: {key}.{language} must be an accuracy in [0, 1], got {value!r}")


def read_results(path: str | os.PathLike) -> dict:
    """One run's results (a folder holding `xnli_results.json`, or the file), checked for what the tables read."""
    file = results_path(path)
    if not file.is_file():
        where = f"{path}: no {RESULTS_FILE}" if storage.location(path).is_dir() else f"{path}: no such file"
        raise ReportError(f"{where}; expected the results of `distil xnli` (run it on that workdir first)")
    results = storage.read_json(file, error=ReportError)
    for key in ("model", "family", "dev", "test", "average", "std", "seeds"):
        if key not in results:
            raise ReportError(f"{file}: key {key!r} is missing; expected an xnli_results.json of `distil xnli`")
    for split in SPLITS:
        _check_accuracies(results[split], file, split)
        _check_accuracies(results["std"].get(split, {}) if isinstance(results["std"], dict) else None, file,
                          f"std.{split}")
    return results


# ---------------------------------------------------------------------------------------------------- tables


def _columns(runs: Sequence[Mapping], split: str) -> list[str]:
    present = {language for run in runs for language in run[split]}
    return [language for language in xnli_languages() if language in present]


def _card_average(values: Mapping[str, float]) -> float | None:
    if all(language in values for language in CARD_LANGUAGES):
        return float(np.mean([values[language] for language in CARD_LANGUAGES]))
    return None


def percent_cell(mean: float | None, std: float = 0.0) -> str:
    if mean is None or not math.isfinite(mean):
        return ""
    return f"{mean:.1f} ±{std:.1f}" if std else f"{mean:.1f}"


def _teacher_student_pairs(runs: Sequence[Mapping]) -> list[tuple[Mapping, Mapping]]:
    """(teacher, student): each DistilBERT run against the first BERT run of the table."""
    teachers = [run for run in runs if run["family"] == "bert"]
    return [(teachers[0], run) for run in runs if run["family"] == "distilbert"] if teachers else []


def split_table(runs: Sequence[Mapping], split: str, *, with_card: bool) -> str:
    """A Markdown table of `split` accuracy (%): a row per run (mean ± std over seeds), the card's rows when asked,
    and a student/teacher ratio row (%) per pair of runs of both families (and for the card's two rows)."""
    languages = _columns(runs, split)
    header = ["model", *languages, "avg", "avg (card 6)"]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(["---"] + ["---:"] * (len(header) - 1)) + "|"]

    def row(name: str, values: Mapping[str, float], stds: Mapping[str, float] | None = None, average=None,
            average_std=0.0, card=None) -> str:
        cells = [percent_cell(values.get(language), (stds or {}).get(language, 0.0)) for language in languages]
        return "| " + " | ".join([name, *cells, percent_cell(average, average_std), percent_cell(card)]) + " |"

    def ratio_row(name: str, student: Mapping[str, float], teacher: Mapping[str, float], average=None) -> str:
        ratios = {language: 100 * student[language] / teacher[language]
                  for language in student if teacher.get(language)}
        card_student, card_teacher = _card_average(student), _card_average(teacher)
        card = 100 * card_student / card_teacher if card_student is not None and card_teacher else None
        return row(name, ratios, average=average, card=card)

    for run in runs:
        values = {language: 100 * value for language, value in run[split].items()}
        stds = {language: 100 * value for language, value in run["std"][split].items()}
        seeds = len(run["seeds"])
        name = f"{run['model']} ({seeds} seeds)" if seeds > 1 else run["model"]
        lines.append(row(name, values, stds, 100 * run["average"][split], 100 * run["std"]["average"][split],
                         _card_average(values)))
    for teacher, student in _teacher_student_pairs(runs):
        average = 100 * student["average"][split] / teacher["average"][split] if teacher["average"][split] else None
        lines.append(ratio_row(f"{student['model']} / {teacher['model']} (%)", student[split], teacher[split],
                               average))
    if with_card:
        for name, values in MODEL_CARD.items():
            lines.append(row(name, values, card=_card_average(values)))
        teacher, student = MODEL_CARD.values()
        lines.append(ratio_row("DistilmBERT / mBERT, model card (%)", student, teacher))
    return "\n".join(lines)


def results_markdown(runs: Sequence[Mapping]) -> str:
    """The Markdown of one run or several: test accuracy beside the model card, dev accuracy, and what each run
    trained on and was evaluated with."""
    parts = ["# XNLI zero-shot accuracy", "",
             "Fine-tuned on English NLI, model selected on English dev only, evaluated on every language. Accuracy "
             "in %, mean ±sample std over seeds. The model card's rows are full-size models fine-tuned on all of "
             "MultiNLI and tested on the full XNLI test sets; a ratio row is the student's accuracy as a share of "
             "the teacher's.", "",
             "## Test", "", split_table(runs, "test", with_card=True), "",
             "## Dev", "", split_table(runs, "dev", with_card=False), "", "## Runs", ""]
    for run in runs:
        seeds = ", ".join(f"{seed['seed']} (step {seed.get('selected_step', '?')})" for seed in run["seeds"])
        examples = run.get("eval_examples", {})
        sizes = ", ".join(f"{split} {sorted(set(examples[split].values()))}" for split in SPLITS if split in examples)
        trained_on = ", ".join(run.get("train_languages", ["en"]))
        parts.append(f"- **{run['model']}**: {run.get('architecture', run['family'])}, "
                     f"{run.get('parameters', 0):,} parameters, init `{run.get('init') or 'random'}`; "
                     f"{run.get('train_examples', '?')} training examples ({trained_on}); "
                     f"examples per language: {sizes}; seeds (selected step): {seeds}")
    return "\n".join(parts) + "\n"


# ---------------------------------------------------------------------------------------------------- plots


def plot_results(runs: Sequence[Mapping], path: str | os.PathLike, *, split: str = "test") -> None:
    """Grouped bars per language (and the average): one bar per run (error bar: std over seeds) and per model card
    row. Drawn with matplotlib's Agg canvas, no display needed; written atomically."""
    from matplotlib.figure import Figure  # Figure without pyplot: no global backend state, no display

    languages = _columns(runs, split)
    groups = [*languages, "avg"]
    series = [(run["model"], [100 * run[split].get(language, math.nan) for language in languages]
               + [100 * run["average"][split]],
               [100 * run["std"][split].get(language, 0.0) for language in languages]
               + [100 * run["std"]["average"][split]]) for run in runs]
    if split == "test":
        series += [(name, [values.get(language, math.nan) for language in languages] + [math.nan], None)
                   for name, values in MODEL_CARD.items()]
    figure = Figure(figsize=(max(6.0, 0.75 * len(groups) + 2), 4.2), layout="constrained")
    axes = figure.add_subplot()
    width = 0.8 / len(series)
    positions = np.arange(len(groups))
    for index, (name, values, stds) in enumerate(series):
        offsets = positions - 0.4 + width * (index + 0.5)
        axes.bar(offsets, values, width, label=name, yerr=stds if stds and any(stds) else None, capsize=2,
                 hatch="//" if stds is None else None, alpha=0.6 if stds is None else 1.0)
    axes.set_xticks(positions, groups)
    axes.set_ylabel(f"{split} accuracy (%)")
    axes.set_ylim(0, 100)
    axes.axhline(100 / 3, color="gray", linewidth=0.8, linestyle=":", label="chance (3 classes)")
    axes.set_title(f"XNLI {split} accuracy per language (fine-tuned on English)")
    axes.legend(fontsize="small", ncols=2)
    write_atomically(path, lambda handle: figure.savefig(handle, format="png", dpi=110))


# ---------------------------------------------------------------------------------------------------- files


def write_files(runs: Sequence[Mapping], folder: str | os.PathLike, stem: str, json_value) -> dict[str, Path]:
    """`folder/stem.{json,md,png}`, each written atomically."""
    folder = storage.location(folder)
    paths = {suffix: folder / f"{stem}.{suffix}" for suffix in ("json", "md", "png")}
    write_text_atomically(paths["json"], json.dumps(json_value, indent=2) + "\n")
    write_text_atomically(paths["md"], results_markdown(runs))
    plot_results(runs, paths["png"])
    return paths
