"""`distil report` over distillation runs: a sweep's points side by side, from their result files only.

    distil report runs/temperature_sweep --out runs/temperature_sweep/report
    distil report runs/a runs/b --out runs/a_vs_b        # any `distil distill` workdirs

A path is a sweep root (`ROOT/sweep.json` of `distil sweep --launcher local`, or any folder whose subfolders are
runs), a `distil distill` workdir (`config.json`, `metrics.jsonl`, `summary.json` once finished), or a `distil xnli`
workdir. A distill run's XNLI results are read from its `xnli/` folder (a sweep with `XNLI = ...` writes them there).

Writes `OUT/sweep_report.{json,md}` (a row per run: the config fields whose values differ between runs, then the
final logged loss terms, throughput and time; a second table of XNLI test accuracy per language and average),
`OUT/loss_curves.png` (a panel per loss term, a line per run) and, where any run has XNLI results,
`OUT/xnli_report.{json,md,png}` (the XNLI tables beside the model card, `distil.report`). Every file is read and
checked before anything is written; a run that has not finished is reported with the last step it logged.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Mapping, Sequence

from distil import report, storage
from distil.atomic import write_atomically, write_text_atomically
from distil.data.nli import xnli_languages
from distil.train.metrics import read_metrics
from distil.train.objective import TERMS
from distil.train.run import (CHECKPOINT_DIR, RUN_CONFIG_FILE, LOSS_CURVES_FILE, METRICS_FILE, SUMMARY_FILE, SWEEP_RECORD,
                              RUN_FILE, XNLI_DIR, check_output_folder, flatten)

LOSS_TERMS = ("loss", *TERMS)  # the weighted total, then each objective term as `distil distill` logs it
STEM = "sweep_report"


# ---------------------------------------------------------------------------------------------------- reading


def _read_json(path) -> dict:
    return storage.read_json(path, error=report.ReportError)


def read_run(folder: Path, name: str) -> dict:
    """One `distil distill` workdir: {"name", "folder", "config" (flat), "status", "final", "curve", "xnli"}."""
    config = _read_json(folder / RUN_CONFIG_FILE)
    if not isinstance(config, dict):
        raise report.ReportError(f"{folder / RUN_CONFIG_FILE}: expected a JSON object (the run's config)")
    curve = read_metrics(folder / METRICS_FILE)
    summary = _read_json(folder / SUMMARY_FILE) if (folder / SUMMARY_FILE).is_file() else None
    if summary is not None:
        if not isinstance(summary, dict) or not isinstance(summary.get("final"), dict):
            raise report.ReportError(f"{folder / SUMMARY_FILE}: key 'final' is missing; expected the summary.json "
                                     "of `distil distill`")
        final, status = summary["final"], "finished"
    else:
        final = curve[-1] if curve else {}
        status = f"unfinished (step {final['step']})" if curve else "not started"
    xnli_file = folder / XNLI_DIR / report.RESULTS_FILE
    xnli = report.read_results(xnli_file) if xnli_file.is_file() else None
    return {"name": name, "folder": str(folder), "config": flatten(config), "complete": True, "status": status,
            "final": final, "seconds": summary.get("seconds") if summary else None, "curve": curve, "xnli": xnli}


def _is_distill_run(folder: Path) -> bool:
    if (folder / RUN_FILE).is_file():
        return _read_json(folder / RUN_FILE).get("command") == "distill"
    return (folder / RUN_CONFIG_FILE).is_file() and ((folder / METRICS_FILE).is_file() or (folder / CHECKPOINT_DIR).is_dir()
                                                 or (folder / SUMMARY_FILE).is_file())


def collect(paths: Sequence[str | os.PathLike]) -> tuple[list[dict], list[dict]]:
    """(distill runs, XNLI-only runs) of the paths, a sweep root expanded into its points (in sweep.json's order,
    then any other run folder by name)."""
    runs, xnli_only = [], []
    for path in map(storage.location, paths):
        if not path.exists():
            raise report.ReportError(f"{path}: no such file or folder; expected a sweep root, a `distil distill` "
                                     "workdir or a `distil xnli` workdir")
        if path.is_file() or (path / report.RESULTS_FILE).is_file():
            xnli_only.append(report.read_results(path))
        elif _is_distill_run(path):
            runs.append(read_run(path, path.name))
        else:
            if (path / SWEEP_RECORD).is_file():  # this sweep's points (folders of points no longer in it are not)
                record = _read_json(path / SWEEP_RECORD)
                names = list(record)
            else:
                record, names = {}, sorted(child.name for child in path.iterdir()
                                           if child.is_dir() and _is_distill_run(child))
            if not names:
                raise report.ReportError(
                    f"{path}: no {report.RESULTS_FILE}, {RUN_CONFIG_FILE} or {SWEEP_RECORD}; expected a `distil xnli` "
                    "workdir, a `distil distill` workdir or a sweep root (run folders, or the sweep.json of `distil "
                    "sweep`)")
            for name in names:
                if not _is_distill_run(path / name):
                    runs.append(_unstarted_run(path / name, name, record[name]))
                    continue
                run = read_run(path / name, name)
                status = record.get(name, {}).get("status") if isinstance(record.get(name), dict) else None
                if status and status.startswith("failed"):  # what the sweep saw (a run may fail before logging)
                    run["status"] = status
                runs.append(run)
    return runs, xnli_only


def _unstarted_run(folder: Path, name: str, entry) -> dict:
    """A point of sweep.json that wrote no config (it failed before training): its status and overrides."""
    if not isinstance(entry, dict) or not isinstance(entry.get("overrides"), dict):
        raise report.ReportError(f"{folder.parent / SWEEP_RECORD}: entry {name!r} must be an object with 'status' "
                                 "and 'overrides'; expected the sweep.json of `distil sweep`")
    return {"name": name, "folder": str(folder), "config": flatten(entry["overrides"]), "complete": False,
            "status": str(entry.get("status", "not started")), "final": {}, "seconds": None, "curve": [],
            "xnli": None}


# ---------------------------------------------------------------------------------------------------- tables


def differing_fields(runs: Sequence[Mapping]) -> list[str]:
    """The flat config keys whose values are not the same in every run that wrote its config (a key missing from
    one counts as a value), in the first config's order; then the overrides of runs that failed before writing it
    where they differ from a written config."""
    configs = [run["config"] for run in runs if run["complete"]]
    keys = list(dict.fromkeys(key for config in configs for key in config))
    fields = [key for key in keys if len({repr(config.get(key, "<missing>")) for config in configs}) > 1]
    for run in runs:
        if not run["complete"]:
            fields += [key for key, value in run["config"].items() if key not in fields
                       and (not configs or any(repr(config.get(key)) != repr(value) for config in configs))]
    return fields


def _number(value, digits: int = 4) -> str:
    """A measured value: `digits` significant digits."""
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "" if value is None else str(value)
    return f"{value:.{digits}g}" if isinstance(value, float) else str(value)


def _setting(value) -> str:
    """A config value as it was set (1.0 stays 1.0; a layer map reads 0, 2, 4)."""
    if value is None:
        return ""
    return ", ".join(map(str, value)) if isinstance(value, tuple) else str(value)


def runs_table(runs: Sequence[Mapping]) -> tuple[str, list[str], list[str]]:
    """(Markdown, differing config keys, loss terms shown): a row per run."""
    fields = differing_fields(runs)
    terms = [term for term in LOSS_TERMS if any(term in run["final"] for run in runs)]
    header = ["run", "status", *fields, "step", *terms, "tokens/s", "minutes"]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(["---"] * (2 + len(fields)) + ["---:"]
                                                              * (len(header) - 2 - len(fields))) + "|"]
    for run in runs:
        final = run["final"]
        cells = [run["name"], run["status"], *(_setting(run["config"].get(key)) for key in fields),
                 _number(final.get("step")), *(_number(final.get(term)) for term in terms),
                 f"{final['tokens_per_sec']:,.0f}" if final.get("tokens_per_sec") is not None else "",
                 _number(run["seconds"] / 60, 2) if run["seconds"] is not None else ""]
        lines.append("| " + " | ".join(cell.replace("|", "\\|") for cell in cells) + " |")
    return "\n".join(lines), fields, terms


def xnli_table(runs: Sequence[Mapping]) -> str:
    """XNLI test accuracy (%) per language and average, a row per run that has XNLI results (the runs table above
    gives each run's settings)."""
    with_xnli = [run for run in runs if run["xnli"]]
    languages = [language for language in xnli_languages()
                 if any(language in run["xnli"]["test"] for run in with_xnli)]
    header = ["run", "avg", *languages]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(["---"] + ["---:"] * (1 + len(languages))) + "|"]
    for run in with_xnli:
        test, std = run["xnli"]["test"], run["xnli"]["std"]
        cells = [run["name"], report.percent_cell(100 * run["xnli"]["average"]["test"],
                                                  100 * std["average"].get("test", 0.0)),
                 *(report.percent_cell(100 * test[language], 100 * std["test"].get(language, 0.0))
                   if language in test else "" for language in languages)]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def markdown(runs: Sequence[Mapping], xnli_only: Sequence[Mapping], sources: Sequence[str]) -> str:
    table, _, _ = runs_table(runs)
    parts = ["# Distillation runs", "",
             f"{len(runs)} run(s) from {', '.join(sources)}. Columns: the config fields that differ between runs, "
             "then the last logged step's loss terms (each the mean per counted position of that step's update), "
             "tokens/s and wall time. A run that has not finished shows the last step it logged.", "",
             table, "", f"![loss curves]({LOSS_CURVES_FILE})", ""]
    if any(run["xnli"] for run in runs):
        parts += ["## XNLI zero-shot test accuracy (%)", "",
                  "Each run's student fine-tuned on English NLI and evaluated on every language "
                  "(mean ±std over seeds); beside the model card in [xnli_report.md](xnli_report.md).", "",
                  xnli_table(runs), "", "![XNLI](xnli_report.png)", ""]
    elif xnli_only:
        parts += ["XNLI runs given alone: see [xnli_report.md](xnli_report.md).", ""]
    return "\n".join(parts)


# ---------------------------------------------------------------------------------------------------- plots


def short_labels(runs: Sequence[Mapping], fields: Sequence[str]) -> dict[str, str]:
    """{run name: 'alpha_minilm=1.0, minilm_teacher_layer=3'}: each run's differing fields where its value is not the
    one most runs share (every value, where no value is shared by most); the run's name where nothing is left."""
    labels = {}
    for run in runs:
        parts = []
        for key in fields:
            values = [repr(other["config"].get(key)) for other in runs]
            counts = sorted(((values.count(value), value) for value in set(values)), reverse=True)
            common = counts[0][1] if counts[0][0] > 1 and (len(counts) == 1 or counts[1][0] < counts[0][0]) else None
            if key in run["config"] and repr(run["config"][key]) != common:
                parts.append(f"{key.rsplit('.', 1)[-1]}={_setting(run['config'][key])}")
        labels[run["name"]] = ", ".join(parts) or run["name"]
    return labels


def plot_loss_curves(runs: Sequence[Mapping], fields: Sequence[str], path: str | os.PathLike) -> None:
    """A panel per loss term (log scale), a line per run labelled by its differing fields, one legend below;
    Agg canvas, written atomically."""
    from matplotlib.figure import Figure

    terms = [term for term in LOSS_TERMS if any(term in row for run in runs for row in run["curve"])]
    columns = min(len(terms), 3) or 1
    rows = -(-len(terms) // columns) or 1
    figure = Figure(figsize=(4.5 * columns, 3.2 * rows + 0.3 * len(runs)), layout="constrained")
    labels = short_labels(runs, fields)
    lines = {}
    for index, term in enumerate(terms):
        axes = figure.add_subplot(rows, columns, index + 1)
        for run_index, run in enumerate(runs):
            points = [(row["step"], row[term]) for row in run["curve"] if term in row and row[term] > 0]
            if points:
                (line,) = axes.plot(*zip(*points), marker="." if len(points) < 30 else None,
                                    color=f"C{run_index % 10}")
                lines[run["name"]] = (line, labels[run["name"]])
        axes.set_title(term)
        axes.set_xlabel("step")
        axes.set_yscale("log")
    if lines:
        figure.legend([line for line, _ in lines.values()], [label for _, label in lines.values()],
                      loc="outside lower center", fontsize="small", ncols=1 if len(lines) > 4 else len(lines))
    write_atomically(path, lambda handle: figure.savefig(handle, format="png", dpi=100))


# ---------------------------------------------------------------------------------------------------- files


def write_report(paths: Sequence[str | os.PathLike], out_dir: str | os.PathLike) -> dict[str, Path]:
    """`distil report`: everything read and checked first, then `OUT/sweep_report.{json,md}`, `loss_curves.png`
    and, where there are XNLI results, `xnli_report.{json,md,png}`. XNLI workdirs alone give the XNLI files only."""
    if not paths:
        raise report.ReportError("no runs given; expected sweep roots or workdirs of `distil distill` / `distil xnli`")
    runs, xnli_only = collect(paths)
    fields = differing_fields(runs)
    labels = short_labels(runs, fields)
    xnli_runs = [{**run["xnli"], "model": labels[run["name"]]} for run in runs if run["xnli"]] + list(xnli_only)
    names = [f"{STEM}.json", f"{STEM}.md", LOSS_CURVES_FILE,
             *(f"{report.REPORT_STEM}.{suffix}" for suffix in ("json", "md", "png"))]
    out_dir = check_output_folder(out_dir, names, "report folder")  # never over a file distil did not write
    written = {}
    if runs:
        written["md"] = out_dir / f"{STEM}.md"
        written["json"] = out_dir / f"{STEM}.json"
        write_text_atomically(written["json"], json.dumps({
            "differing_fields": fields,
            "runs": [{key: run[key] for key in ("name", "folder", "status", "final", "seconds")}
                     | {"config": {key: run["config"].get(key) for key in fields},
                        "xnli": run["xnli"] and {key: run["xnli"][key] for key in ("test", "dev", "average", "std")}}
                     for run in runs]}, indent=2, default=list) + "\n")
        write_text_atomically(written["md"], markdown(runs, xnli_only, [str(path) for path in paths]))
        written["loss_curves"] = out_dir / LOSS_CURVES_FILE
        plot_loss_curves(runs, fields, written["loss_curves"])
    if xnli_runs:
        xnli_files = report.write_files(xnli_runs, out_dir, report.REPORT_STEM,
                                        {"runs": xnli_runs, "sources": [str(path) for path in paths]})
        written.update({f"xnli_{suffix}": path for suffix, path in xnli_files.items()})
        if not runs:
            written.update(xnli_files)
    return written
