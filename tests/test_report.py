"""distil.report: tables beside the model card, student/teacher ratios, plots, `distil report` merging result files,
and results files that cannot be read named with their key."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from PIL import Image

from distil import cli, report, sweep_report

LANGUAGES = ("en", "fr", "es", "de", "ar", "zh", "ur")


def _results(name: str, family: str, per_seed_test: list[dict], seeds_offset: int = 0) -> dict:
    """A results dictionary shaped as `distil xnli` writes it (its accuracy fields from `aggregate_seeds`)."""
    per_seed = [{"seed": seeds_offset + i, "selected_step": 10 * (i + 1), "test": test,
                 "dev": {language: value - 0.01 for language, value in test.items()}}
                for i, test in enumerate(per_seed_test)]
    return {"model": name, "family": family, "architecture": family, "init": "", "parameters": 1000,
            **report.aggregate_seeds(per_seed), "seeds": per_seed, "train_examples": 3000, "train_languages": ["en"],
            "eval_examples": {"dev": {language: 150 for language in per_seed_test[0]},
                              "test": {language: 300 for language in per_seed_test[0]}}}


TEACHER = _results("teacher", "bert", [dict(zip(LANGUAGES, (0.80, 0.72, 0.70, 0.70, 0.60, 0.60, 0.50)))])
STUDENT = _results("student", "distilbert", [dict(zip(LANGUAGES, (0.70, 0.70, 0.63, 0.63, 0.54, 0.57, 0.45))),
                                             dict(zip(LANGUAGES, (0.74, 0.70, 0.63, 0.63, 0.54, 0.57, 0.45)))])


def _row(table: str, name: str) -> list[str]:
    line = next(line for line in table.splitlines() if line.startswith(f"| {name} |"))
    return [cell.strip() for cell in line.strip("|").split("|")][1:]


def test_table_by_hand():
    table = report.split_table([TEACHER, STUDENT], "test", with_card=True)
    header = _row(table, "model")
    assert header == ["en", "fr", "es", "de", "ar", "zh", "ur", "avg", "avg (card 6)"]  # the XNLI paper's order
    # teacher: average of 7 languages 4.62 / 7; card languages (en es zh de ar ur) 3.9 / 6.
    assert _row(table, "teacher") == ["80.0", "72.0", "70.0", "70.0", "60.0", "60.0", "50.0", "66.0", "65.0"]
    # student, 2 seeds: en 70 and 74 -> 72.0 ± 2.8 (sample std); per-seed averages 4.22/7 and 4.26/7 -> 60.6 ± 0.4.
    assert _row(table, "student (2 seeds)") == ["72.0 ±2.8", "70.0", "63.0", "63.0", "54.0", "57.0", "45.0",
                                                "60.6 ±0.4", "59.0"]
    # student / teacher, per language: 72/80, 70/72, 63/70, 63/70, 54/60, 57/60, 45/50; averages 60.57/66.0, 59/65.
    assert _row(table, "student / teacher (%)") == ["90.0", "97.2", "90.0", "90.0", "90.0", "95.0", "90.0", "91.8",
                                                    "90.8"]
    assert _row(table, "mBERT base cased (model card)") == ["82.1", "", "74.6", "72.3", "66.4", "69.1", "58.5", "",
                                                            "70.5"]
    assert _row(table, "DistilmBERT (model card)") == ["78.2", "", "69.1", "66.3", "59.1", "64.0", "54.7", "", "65.2"]
    # 78.2/82.1, 69.1/74.6, 66.3/72.3, 59.1/66.4, 64.0/69.1, 54.7/58.5; 65.23/70.5.
    assert _row(table, "DistilmBERT / mBERT, model card (%)") == ["95.2", "", "92.6", "91.7", "89.0", "92.6", "93.5",
                                                                  "", "92.5"]
    dev = report.split_table([STUDENT], "dev", with_card=False)
    assert "model card" not in dev and "teacher" not in dev
    assert _row(dev, "student (2 seeds)")[:2] == ["71.0 ±2.8", "69.0"]


def test_report_merges_runs_into_one_table_and_plot(tmp_path, capsys):
    for name, results in (("teacher", TEACHER), ("student", STUDENT)):
        (tmp_path / name).mkdir()
        (tmp_path / name / report.RESULTS_FILE).write_text(json.dumps(results), encoding="utf-8")
    out = tmp_path / "out"
    assert cli.main(["report", str(tmp_path / "teacher"), str(tmp_path / "student" / report.RESULTS_FILE),
                     "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "| student / teacher (%) | 90.0 |" in printed and f"wrote {out / 'xnli_report.json'}" in printed
    merged = json.loads((out / "xnli_report.json").read_text())
    assert [run["model"] for run in merged["runs"]] == ["teacher", "student"]
    assert (out / "xnli_report.md").read_text() == report.results_markdown([TEACHER, STUDENT])
    with Image.open(out / "xnli_report.png") as image:
        assert image.format == "PNG" and image.size[0] > 600


def _write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


@pytest.mark.parametrize("content, message", [
    (None, r"no xnli_results\.json, config\.json or sweep\.json; expected a `distil xnli` workdir"),
    ("{oops", r"xnli_results\.json:1: not valid JSON \(Expecting property name"),
    ("[1]", r"xnli_results\.json: expected a JSON object \{\.\.\.\}, got list"),
    (json.dumps({k: v for k, v in TEACHER.items() if k != "test"}), r"xnli_results\.json: key 'test' is missing"),
    (json.dumps({**TEACHER, "dev": {**TEACHER["dev"], "de": 71.2}}),
     r"xnli_results\.json: dev\.de must be an accuracy in \[0, 1\], got 71\.2"),
])
def test_unreadable_results_are_named_and_nothing_is_written(tmp_path, capsys, content, message):
    good = tmp_path / "good"
    good.mkdir()
    _write(good / report.RESULTS_FILE, json.dumps(TEACHER))
    bad = tmp_path / "bad"
    bad.mkdir()
    if content is not None:
        _write(bad / report.RESULTS_FILE, content)
    with pytest.raises(report.ReportError, match=message):
        sweep_report.write_report([good, bad], tmp_path / "out")
    assert not (tmp_path / "out").exists()
    assert cli.main(["report", str(good), str(bad), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"distil report: error: {bad}") and err.count("\n") == 1
    assert cli.main(["report", str(good), "--out", str(tmp_path / "out"), "--config.seed=1"]) == 2
    assert "distil report takes no config" in capsys.readouterr().err


def test_a_bad_metrics_line_is_named_with_file_and_line(tmp_path, capsys):
    """`distil report` over a distill workdir reads metrics.jsonl with the trainer's reader, which names the line."""
    run = tmp_path / "run"
    run.mkdir()
    _write(run / "config.json", json.dumps({"seed": 0, "loss": {"temperature": 2.0}}))
    _write(run / "metrics.jsonl", '{"step": 1, "loss": 3.0}\n{"step": "two"}\n')
    assert cli.main(["report", str(run), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert err == (f"distil report: error: {run / 'metrics.jsonl'}:2: expected an object with an integer 'step'\n")
    assert not (tmp_path / "out").exists()
