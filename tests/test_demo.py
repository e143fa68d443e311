"""The demo end to end on the embedded data (every stage shortened): report.md whose first table is the held-out
masked-token accuracy of the teacher, the distilled student and both ablations beside the unigram baseline, XNLI of
both models in the 15 languages, a student that transformers' fill-mask pipeline loads offline, and a rerun that
reuses every stage. Learning is not asserted here (a few steps cannot learn); the full `distil demo` is measured in
the README. Also experiments/demo_teacher_budget.py, which trains variants of the demo's teacher stage: each is the
stage with exactly the change it names, trained and scored on the held-out masks."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import transformers
from conftest import REPO

from distil import cli
from distil.config import load_config
from distil.data.embedded import embedded_dir
from distil.data.nli import xnli_languages
from distil.demo import neighbour_markdown
from distil.train.run import flatten

sys.path.insert(0, str(REPO / "experiments"))
import demo_teacher_budget as budget  # noqa: E402

SHORT = ["--config.teacher.num_steps=6", "--config.student.num_steps=4", "--config.speed_batch=4",
         "--config.xnli.num_steps=3", "--config.xnli.train.max_examples=64", "--config.xnli.eval.batch_size=512",
         "--config.xnli.eval.languages=('en','de','zh')"]
LANGUAGES = {"en", "de", "zh"}  # XNLI in three languages here (every language: tests/test_xnli.py)


def _short_heldout(folder: Path) -> list[str]:
    """The first 12 held-out lines of each language (the evaluation of five models on all 900 lines is the full
    demo's; here it would be a third of the test's time)."""
    source = embedded_dir() / "demo-corpus" / "heldout"
    folder.mkdir()
    for path in source.glob("*.txt"):
        (folder / path.name).write_text("".join(path.read_text(encoding="utf-8").splitlines(True)[:12]),
                                        encoding="utf-8")
    return [*SHORT, f"--config.heldout={folder}"]


def test_demo_runs_every_stage_and_reuses_them(tmp_path, capsys):
    workdir = tmp_path / "demo"
    short = _short_heldout(tmp_path / "heldout")
    assert cli.main(["demo", "--workdir", str(workdir), *short]) == 0
    report = (workdir / "report.md").read_text()
    for section in ("# distil demo", "## Held-out masked-token accuracy", "unigram baseline", "bigram counts",
                    "retention", "## Fill-mask", "## What ran", "## Sizes and speed", "## XNLI",
                    "## What the full recipe needs", "far below the model card", "DistilmBERT", "loss_curves.png"):
        assert section in report, section
    assert "per device" in report  # the full recipe's memory dry run
    assert report.index("## Held-out masked-token accuracy") < report.index("## What ran")  # the first table
    heldout = json.loads((workdir / "evaluation.json").read_text())
    keys = [*heldout["languages"], "overall"]
    assert set(heldout["languages"]) == set(xnli_languages()) and heldout["targets"]["overall"] > 100
    assert list(heldout["models"]) == ["teacher", "student", "student-mlm", "student-random", "student-scratch"]
    for accuracy in [*heldout["models"].values(), heldout["unigram"], heldout["bigram"]]:
        assert set(accuracy) == set(keys) and all(0 <= accuracy[key] <= 1 for key in keys)
    assert 0 < heldout["unigram"]["overall"] < 0.2  # a real baseline: right sometimes, mostly wrong
    assert heldout["bigram"]["overall"] > heldout["unigram"]["overall"]  # neighbours say more than frequency
    teacher, student = heldout["models"]["teacher"], heldout["models"]["student"]
    for key in keys:
        assert heldout["retention"][key] == (student[key] / teacher[key] if teacher[key] else None)
    assert list(heldout["paired"]) == ["student-mlm", "student-random", "student-scratch"]
    for name, paired in heldout["paired"].items():  # the same targets: the counts give the accuracies' difference
        assert paired["targets"] == heldout["targets"]["overall"] and paired["two_se"] >= 0
        assert paired["difference"] == pytest.approx(student["overall"] - heldout["models"][name]["overall"])
        assert paired["difference"] == (paired["first_only"] - paired["second_only"]) / paired["targets"]
    assert "2 standard errors of the paired difference" in report
    assert list(heldout["neighbour_attention"]) == ["teacher", "student"]
    for name, layers in (("teacher", 4), ("student", 2)):  # every layer's every head, at offsets -2, -1, +1, +2
        weights = np.asarray(heldout["neighbour_attention"][name]["weights"])
        assert weights.shape == (layers, 4, 4) and ((0 <= weights) & (weights <= 1)).all()
    assert "Heads that read a neighbour" in report and "teacher: none (at most" in report  # 6 updates: none yet
    assert len(heldout["fill_mask"]) >= 3
    for example in heldout["fill_mask"]:
        assert example["text"].count("[MASK]") == 1 and len(example["top3"]) == 3
        assert f"| {example['answer']} |" in report
    for name in ("loss_curves.png", "xnli_results.png", "xnli_results.md"):
        assert (workdir / name).stat().st_size > 0, name
    results = json.loads((workdir / "xnli_results.json").read_text())["runs"]
    assert [run["model"] for run in results] == ["teacher", "student"]
    for run in results:
        assert set(run["test"]) == LANGUAGES and all(0 <= v <= 1 for v in run["test"].values())
    summary = json.loads((workdir / "demo.json").read_text())
    assert summary["speed"]["student"]["layers"] == 2 and summary["speed"]["teacher"]["layers"] == 4
    assert ("(6 updates of ~1,000 tokens)" in report  # the run's own size, not a fixed phrase
            and f"a teacher of {summary['speed']['teacher']['parameters'] / 1e6:.1f}M parameters" in report)
    assert summary["teacher"]["steps"] == 6
    assert all(summary[name]["steps"] == 4 for name in ("student", "student-mlm", "student-random",
                                                         "student-scratch"))
    for name in ("student-mlm", "student-scratch"):
        assert summary[name]["final"].keys() >= {"mlm"} and "ce" not in summary[name]["final"]

    fill_mask = transformers.pipeline("fill-mask", model=str(workdir / "student" / "student"))
    predictions = fill_mask("Paris is the [MASK] of France.")
    assert len(predictions) == 5 and all("token_str" in p for p in predictions)

    # Finished is final: a rerun changes no file.
    files = {path: path.read_bytes() for path in sorted(workdir.rglob("*")) if path.is_file()}
    capsys.readouterr()
    assert cli.main(["demo", "--workdir", str(workdir), *short]) == 0
    assert f"{workdir}: finished earlier" in capsys.readouterr().out
    assert {path: path.read_bytes() for path in sorted(workdir.rglob("*")) if path.is_file()} == files
    # A demo stopped before its report reuses every finished stage; another demo config is refused.
    record = json.loads((workdir / "run.json").read_text())
    (workdir / "run.json").write_text(json.dumps({**record, "status": "running"}))
    (workdir / "report.md").unlink()
    assert cli.main(["demo", "--workdir", str(workdir), *short]) == 0
    assert capsys.readouterr().out.count("(finished earlier)") == 7 and (workdir / "report.md").is_file()
    assert cli.main(["demo", "--workdir", str(workdir), *SHORT, "--config.student.num_steps=5"]) == 2
    assert "config.student.num_steps: 4 -> 5" in capsys.readouterr().err


def test_neighbour_heads_in_the_report_by_hand():
    """The report's line on heads that read a neighbour: the heads at or above one half, else the most any puts."""
    text = neighbour_markdown({
        "teacher": {"offsets": [-1, 1], "weights": [[[0.9, 0.1], [0.2, 0.5]], [[0.0, 0.0], [0.3, 0.1]]]},
        "student": {"offsets": [-1, 1], "weights": [[[0.2, 0.3], [0.1, 0.0]]]}})
    assert "teacher: layer 0 head 0 on -1 (0.90), layer 0 head 1 on +1 (0.50); " in text
    assert "student: none (at most 0.30 on one neighbour: a bag of words)" in text and "offset, -1, +1," in text


def test_teacher_budget_variants_change_only_what_they_say(tmp_path):
    """experiments/demo_teacher_budget.py's table names each variant's change: its config is the demo's teacher
    with exactly those fields changed (through the same `--config.teacher.KEY=VALUE` overrides `distil demo` takes)."""
    demo = flatten(load_config("demo").teacher.to_dict())
    assert set(budget.VARIANTS) >= {"demo", "updates_6000", "rows_32", "wordpiece_16k"}
    for name, (_, changes) in budget.VARIANTS.items():
        variant = flatten(load_config("demo", budget.overrides(name, tmp_path)).teacher.to_dict())
        assert {key for key in demo if demo[key] != variant[key]} == set(changes), name
        for key, value in changes.items():
            assert variant[key] == (str(tmp_path / budget.WORDPIECE_16K / "vocab.txt")
                                    if value == budget.WORDPIECE_16K else value), (name, key)


def test_teacher_budget_trains_scores_and_reuses_a_variant(tmp_path, monkeypatch):
    """One variant end to end (6 updates): the demo's teacher trains, is scored on the demo's held-out masks beside
    the unigram baseline, and a second call reuses the finished workdir with its recorded time."""
    monkeypatch.setitem(budget.VARIANTS, "tiny", ("6 updates", {"num_steps": 6}))
    result = budget.run_variant("tiny", tmp_path)
    assert result["updates"] == 6 and result["tokens"] == 6 * 8 * 128
    assert result["ratio"] == result["accuracy"]["overall"] / result["unigram"]["overall"]
    assert 0 < result["unigram"]["overall"] < 0.1 and set(result["accuracy"]) == set(result["unigram"])
    assert json.loads((tmp_path / "tiny" / budget.RESULT_FILE).read_text()) == result
    again = budget.run_variant("tiny", tmp_path)
    assert again == result  # the finished run reused: the same model, scores and recorded wall time
    table = budget.to_markdown([result])
    assert "| tiny | 6 updates | 6 |" in table and f"**{result['ratio']:.2f}x** | none |" in table
    assert result["reading_heads"] == []  # 6 updates: no head reads a neighbour yet


def test_teacher_budget_refuses_an_unknown_variant(tmp_path, monkeypatch, capsys):
    """A misspelt variant is refused before anything runs, naming the flag and the known variants."""
    out = tmp_path / "out"
    monkeypatch.setattr(sys, "argv", ["demo_teacher_budget.py", "--out", str(out), "--variants", "demo,updates_600"])
    with pytest.raises(SystemExit) as exit_info:
        budget.main()
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "--variants: unknown updates_600; known: demo, updates_3000" in err and not out.exists()
