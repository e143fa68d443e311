"""The demo end to end on the embedded data (every stage shortened): report.md, XNLI of both models in the 15
languages, a student that transformers' fill-mask pipeline loads offline, and a rerun that reuses every stage."""

from __future__ import annotations

import json

import transformers

from distil import cli
from distil.data.nli import xnli_languages

SHORT = ["--config.teacher_steps=6", "--config.student_steps=4", "--config.speed_batch=4",
         "--config.xnli=('num_steps=3', 'seeds=(0,)', 'train.max_examples=64', 'eval.batch_size=512')"]


def test_demo_runs_every_stage_and_reuses_them(tmp_path, capsys):
    workdir = tmp_path / "demo"
    assert cli.main(["demo", "--workdir", str(workdir), *SHORT]) == 0
    report = (workdir / "report.md").read_text()
    for section in ("# distil demo", "## What ran", "## Sizes and speed", "## XNLI", "## What the full recipe needs",
                    "far below the model card", "DistilmBERT", "loss_curves.png"):
        assert section in report, section
    assert "per device" in report  # the full recipe's memory dry run
    for name in ("loss_curves.png", "xnli_results.png", "xnli_results.md"):
        assert (workdir / name).stat().st_size > 0, name
    results = json.loads((workdir / "xnli_results.json").read_text())["runs"]
    assert [run["model"] for run in results] == ["teacher", "student"]
    for run in results:
        assert set(run["test"]) == set(xnli_languages()) and all(0 <= v <= 1 for v in run["test"].values())
    summary = json.loads((workdir / "demo.json").read_text())
    assert summary["speed"]["student"]["layers"] == 2 and summary["speed"]["teacher"]["layers"] == 4
    assert summary["teacher"]["steps"] == 6 and summary["student"]["steps"] == 4

    fill_mask = transformers.pipeline("fill-mask", model=str(workdir / "student" / "student"))
    predictions = fill_mask("Paris is the [MASK] of France.")
    assert len(predictions) == 5 and all("token_str" in p for p in predictions)

    # Finished is final: a rerun changes no file.
    files = {path: path.read_bytes() for path in sorted(workdir.rglob("*")) if path.is_file()}
    capsys.readouterr()
    assert cli.main(["demo", "--workdir", str(workdir), *SHORT]) == 0
    assert f"{workdir}: finished earlier" in capsys.readouterr().out
    assert {path: path.read_bytes() for path in sorted(workdir.rglob("*")) if path.is_file()} == files
    # A demo stopped before its report reuses every finished stage; another demo config is refused.
    record = json.loads((workdir / "run.json").read_text())
    (workdir / "run.json").write_text(json.dumps({**record, "status": "running"}))
    (workdir / "report.md").unlink()
    assert cli.main(["demo", "--workdir", str(workdir), *SHORT]) == 0
    assert capsys.readouterr().out.count("(finished earlier)") == 4 and (workdir / "report.md").is_file()
    assert cli.main(["demo", "--workdir", str(workdir), *SHORT, "--config.student_steps=5"]) == 2
    assert "config.student_steps: 4 -> 5" in capsys.readouterr().err
