"""Sweeps and launchers: points from product/zip, the generated commands and scripts checked literally against
golden files, and a two-point local sweep of distilmbert:runlocal run end to end, then rerun (both skipped)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from conftest import REPO
from distil import cli, launch, report
from distil.config import ConfigError

GOLDEN = Path(__file__).parent / "data" / "golden"
SWEEP = REPO / "experiments" / "temperature_sweep.py"
MBERT = "/mnt/models/bert-base-multilingual-cased"  # the teacher folder on the cluster, for the full-size sweeps


def test_product_and_zip():
    temperatures = [{"loss.temperature": 1.0}, {"loss.temperature": 2.0}]
    balance = launch.zip_([{"loss.alpha_ce": 5.0}, {"loss.alpha_ce": 2.0}], [{"loss.alpha_mlm": 2.0},
                                                                               {"loss.alpha_mlm": 5.0}])
    assert balance == [{"loss.alpha_ce": 5.0, "loss.alpha_mlm": 2.0}, {"loss.alpha_ce": 2.0, "loss.alpha_mlm": 5.0}]
    points = launch.product(temperatures, balance)
    assert points[1] == {"loss.temperature": 1.0, "loss.alpha_ce": 2.0, "loss.alpha_mlm": 5.0} and len(points) == 4
    assert launch.point_name({"student.teacher_layers": (0, 3), "data.corpus": "/x/y z"}) == \
        "teacher_layers=0_3-corpus=x_y_z"
    with pytest.raises(ConfigError, match=r"zip_ needs axes of one length, got lengths \[1, 2\]"):
        launch.zip_([{}], [{}, {}])


XPK_IMAGE = "us-docker.pkg.dev/my/distil:0.1.0"


@pytest.mark.parametrize("launcher, extra", [
    ("print", []),
    ("tpu", ["--tpu", "distil-v4-32", "--zone", "us-central2-b"]),
    ("xpk", ["--cluster", "gke-h100", "--device-type", "h100-80gb-8", "--num-nodes", "2",
             "--docker-image", XPK_IMAGE]),
])
def test_launcher_commands_match_the_golden_files(launcher, extra, capsys):
    assert cli.main(["sweep", str(SWEEP), "--launcher", launcher, "--workdir", "/mnt/shared/sweeps/t", *extra]) == 0
    assert capsys.readouterr().out == (GOLDEN / f"sweep_{launcher}.txt").read_text()


def _slurm(tmp_path: Path, *args: str) -> list[Path]:
    assert cli.main(["sweep", *args, "--launcher", "slurm", "--out", str(tmp_path)]) == 0
    return sorted(tmp_path.glob("*.sbatch"))


def _golden_script(path: Path, out: Path) -> str:
    """A written script with the --out folder of this test as `<out>` (the golden files' placeholder)."""
    return path.read_text().replace(str(out), "<out>")


def test_slurm_scripts_match_the_golden_files(tmp_path, capsys):
    written = _slurm(tmp_path, str(SWEEP), "--workdir", "/scratch/sweeps/t", "--nodes", "2", "--gpus-per-node", "8",
                     "--partition", "gpu", "--venv", "/home/me/venvs/distil")
    assert [path.name for path in written] == sorted(path.name for path in GOLDEN.glob("slurm/*.sbatch"))
    for path in written:
        assert _golden_script(path, tmp_path) == (GOLDEN / "slurm" / path.name).read_text(), path.name
    assert capsys.readouterr().out.count("sbatch ") == 4
    assert (tmp_path / "logs").is_dir()  # sbatch opens --output there when the job starts: it must exist at submit


@pytest.mark.parametrize("launcher, extra", [
    ("tpu", ["--tpu", "distil-v4-32", "--zone", "us-central2-b", "--workdir", "/mnt/shared/sweeps/o"]),
    ("xpk", ["--cluster", "gke-v5p", "--device-type", "v5p-128", "--num-slices", "2", "--docker-image", XPK_IMAGE,
             "--storage", "sweeps-bucket", "--workdir", "/gcs/sweeps/o"]),
])
def test_sweeps_with_xnli_run_both_stages_on_every_host(launcher, extra, capsys):
    """A sweep file with XNLI: each point's distillation, then its student's XNLI, each on every host of the slice
    (or every slice: one XNLI run per point); --config replaces the file's CONFIG and the layer maps follow it."""
    assert cli.main(["sweep", str(REPO / "experiments" / "objectives_sweep.py"), "--launcher", launcher, *extra,
                     "--config", "distilmbert:tpu=v4-32", f"--config.teacher.checkpoint={MBERT}"]) == 0
    assert capsys.readouterr().out == (GOLDEN / f"objectives_{launcher}.txt").read_text()


def test_slurm_script_with_xnli_matches_the_golden_file(tmp_path, capsys):
    _slurm(tmp_path, str(REPO / "experiments" / "objectives_sweep.py"), "--workdir", "/scratch/sweeps/o", "--nodes",
           "1", "--gpus-per-node", "8", "--container", "/scratch/images/distil.sqsh", "--config",
           "distilmbert:gpu=8xh100", f"--config.teacher.checkpoint={MBERT}")
    [script] = tmp_path.glob("alpha_ce=5.0-alpha_mlm=2.0-alpha_cos=0.0-alpha_minilm=1.0-minilm_teacher_layer=9-*.sbatch")
    assert _golden_script(script, tmp_path) == (GOLDEN / "objectives_minilm.sbatch").read_text()


def test_slurm_scripts_run_as_written(tmp_path, capsys):
    """Each script passes `bash -n`, and run under SLURM's variables with stand-in `srun` and venv, activates the
    venv and starts both stages on every node (one task each) with the commands `distil sweep --launcher print`
    shows for the point."""
    venv = tmp_path / "venv"
    (venv / "bin").mkdir(parents=True)
    (venv / "bin" / "activate").write_text('export DISTIL_VENV_ACTIVE="$(dirname "${BASH_SOURCE[0]}")"\n')
    stand_ins = tmp_path / "bin"
    stand_ins.mkdir()
    calls = tmp_path / "srun_calls.jsonl"
    (stand_ins / "srun").write_text(
        f"#!{sys.executable}\nimport json, os, sys\nwith open({str(calls)!r}, 'a') as out:\n"
        "    out.write(json.dumps({'argv': sys.argv[1:], 'venv': os.environ.get('DISTIL_VENV_ACTIVE'),"
        " 'mem': os.environ.get('XLA_PYTHON_CLIENT_MEM_FRACTION')}) + '\\n')\n")
    (stand_ins / "srun").chmod(0o755)
    scripts = _slurm(tmp_path / "out", str(REPO / "experiments" / "objectives_sweep.py"), "--workdir", "/scratch/o",
                     "--nodes", "2", "--venv", str(venv), "--config", "distilmbert:gpu=8xh100",
                     f"--config.teacher.checkpoint={MBERT}")
    capsys.readouterr()
    for script in scripts:
        assert subprocess.run(["bash", "-n", str(script)]).returncode == 0, script
        env = {"PATH": f"{stand_ins}:{os.environ['PATH']}", "SLURM_JOB_ID": "1", "HOME": str(tmp_path)}
        done = subprocess.run(["bash", str(script)], env=env, capture_output=True, text=True)
        assert done.returncode == 0, done.stderr
    runs = [json.loads(line) for line in calls.read_text().splitlines()]
    assert len(runs) == 2 * len(scripts)  # distill, then xnli, per point
    for run in runs:
        assert run["venv"] == str(venv / "bin") and run["mem"] == "0.95"
        assert run["argv"][:2] == ["--nodes=2", "--ntasks-per-node=1"] and run["argv"][-1] == "--distributed"
        assert run["argv"][2:5] in (["python", "-m", "distil"],)
    workdirs = {run["argv"][run["argv"].index("--workdir") + 1] for run in runs if "distill" in run["argv"]}
    assert workdirs == {f"/scratch/o/{script.stem}" for script in scripts}


def test_xpk_commands_survive_the_yaml_xpk_writes(capsys):
    """xpk pastes --command into its JobSet YAML (a block scalar under `bash -c`; for GPU types also a
    double-quoted `COMMAND` value): what bash receives there, after YAML parsing, is the printed command, and it
    parses as bash. A value that YAML would break is refused before anything is printed."""
    import shlex

    import yaml

    for device, size in (("v5p-128", ["--num-slices", "2"]), ("h100-80gb-8", ["--num-nodes", "2"])):
        assert cli.main(["sweep", str(REPO / "experiments" / "objectives_sweep.py"), "--launcher", "xpk",
                         "--device-type", device, *size, "--docker-image", XPK_IMAGE, "--workdir", "/gcs/o",
                         "--config", "distilmbert:tpu=v4-32", f"--config.teacher.checkpoint={MBERT}"]) == 0
        for line in capsys.readouterr().out.splitlines():
            command = next(arg for arg in shlex.split(line) if arg.startswith("--command="))[len("--command="):]
            gpu = not device.startswith("v")
            received = yaml.safe_load(_xpk_container_yaml(command, gpu=gpu))[0]
            assert f"({command}) & PID=$!;" in received["command"][2]
            assert subprocess.run(["bash", "-n", "-c", received["command"][2]]).returncode == 0
            if gpu:
                assert received["env"][0]["value"] == command
            assert command.count(" --distributed") == 2 and "distil xnli" in command
    assert cli.main(["sweep", str(SWEEP), "--launcher", "xpk", "--device-type", "h100-80gb-8", "--docker-image",
                     XPK_IMAGE, "--workdir", "/gcs/t", '--config.data.corpus=/gcs/"odd"']) == 2
    assert "holds a double quote, which xpk's YAML cannot carry" in capsys.readouterr().err
    assert cli.main(["sweep", str(SWEEP), "--launcher", "xpk", "--workdir", "/gcs/t"]) == 2
    assert "--launcher xpk needs --docker-image" in capsys.readouterr().err
    assert cli.main(["sweep", str(SWEEP), "--launcher", "tpu", "--workdir", "runs/t"]) == 2
    assert "needs a bucket URL (gs://BUCKET/PATH) or an absolute path that every host sees" in capsys.readouterr().err


def _xpk_container_yaml(command: str, *, gpu: bool) -> str:
    """The main container of the JobSet YAML xpk writes (src/xpk/core/docker_container.py and
    docker_resources.py): --command pasted into a `bash -c` block scalar, and for GPU types into the double-quoted
    value of the COMMAND variable too."""
    indent = " " * 16
    env = f"\n{indent}  - name: COMMAND\n{indent}    value: \"{command}\"" if gpu else ""
    body = ["echo XPK Start: $(date);", "_sigterm() (kill -SIGTERM $! 2>/dev/null;);", "trap _sigterm SIGTERM;",
            f"({command}) & PID=$!;", "while kill -0 $PID 2>/dev/null;", "    do sleep 5;", "done;", "wait $PID;",
            "EXIT_CODE=$?;", "echo XPK End: $(date);", "exit $EXIT_CODE"]
    lines = [" " * 14 + "- name: main", f"{indent}env: {env}", f"{indent}command:", f"{indent}- bash",
             f"{indent}- -c", f"{indent}- |", *(f"{indent}  {line}" for line in body)]
    return "\n".join(lines) + "\n"


@pytest.mark.parametrize("sweep_file", sorted((REPO / "experiments").glob("*_sweep.py")), ids=lambda path: path.stem)
@pytest.mark.parametrize("base", ["distilmbert", "distilmbert:runlocal"])
def test_every_shipped_sweep_point_is_a_valid_config(sweep_file, base, tmp_path):
    """Each point of each shipped sweep, at full size (an mBERT-shaped teacher folder, given on the command line for
    every point) and at runlocal, resolves to a config the trainer accepts, checked against the models' shapes
    (layer maps, widths, heads) as `distil distill` does."""
    import transformers

    from distil.config import load_config
    from distil.train import assembly, distill

    teacher = tmp_path / "mbert"
    teacher.mkdir()
    transformers.BertConfig(vocab_size=119_547, architectures=["BertForMaskedLM"]).to_json_file(
        teacher / "config.json")
    overrides = [] if base.endswith("runlocal") else [f"--config.teacher.checkpoint={teacher}"]
    sweep = launch.load_sweep(sweep_file, base, overrides=overrides)
    assert sweep.config == base and len(sweep.points) >= 2
    for point in sweep.points:
        config = load_config(base, [arg.removeprefix("--config.") for arg in
                                    [*overrides, *launch.override_args(point.overrides)]])
        distill.check_config(config, num_devices=8, process_count=1)
        vocab_size = 119_547
        teacher = assembly.teacher_model_config(config, vocab_size)
        student = assembly.student_model_config(config, teacher, vocab_size)
        distill.check_models(config, assembly.make_objective(config), teacher, student, vocab_size)


def test_bad_sweep_files_name_the_file(tmp_path):
    bad = tmp_path / "bad.py"
    bad.write_text("CONFIG = 'distilmbert'\ndef get_sweep():\n    return [{'a': 1}, {'a': 1}]\n")
    with pytest.raises(ConfigError, match=r"bad.py: points repeat: a=1"):
        launch.load_sweep(bad)
    bad.write_text("def get_sweep():\n    return []\n")
    with pytest.raises(ConfigError, match=r"bad.py: a sweep file defines CONFIG"):
        launch.load_sweep(bad)
    bad.write_text("CONFIG = 'distilmbert:runlocal'\ndef get_sweep():\n    raise RuntimeError('no axes yet')\n")
    with pytest.raises(ConfigError, match=r"bad.py: get_sweep\(\) failed: RuntimeError: no axes yet"):
        launch.load_sweep(bad)
    bad.write_text("CONFIG = 'distilmbert:runlocal'\ndef get_sweep():\n    return [{'loss.alpha_ce': 'five'}]\n")
    with pytest.raises(ConfigError, match=r"point alpha_ce=five: .*config.loss.alpha_ce is float"):
        launch.load_sweep(bad)


def _write_sweep(path: Path, points: str) -> Path:
    path.write_text(
        "CONFIG = 'distilmbert:runlocal'\n"
        "FAST = {'num_steps': 2, 'data.max_length': 64, 'batching.pad_to_multiple': 64, 'batching.global_batch': 16,\n"
        "        'teacher.max_position_embeddings': 64, 'student.max_position_embeddings': 64}\n"
        f"def get_sweep():\n    return {points}\n"
    )
    return path


DIVERGES = "{**FAST, 'loss.temperature': 3.0, 'optimizer.learning_rate': 1e30, 'optimizer.warmup_fraction': 0.0}"


def test_a_local_sweep_runs_skips_what_finished_and_forgets_fixed_points(tmp_path, capsys):
    """Two points finish and one diverges (exit 3); a rerun skips the finished ones; fixing the diverging point makes
    it a new point, and the old one's failure is no longer the sweep's."""
    sweep = _write_sweep(tmp_path / "two.py", f"[{{**FAST, 'loss.temperature': t}} for t in (1.0, 2.0)] + [{DIVERGES}]")
    root = tmp_path / "runs"
    os.environ["PYTHONPATH"] = str(REPO)  # the points run in subprocesses of this checkout
    assert cli.main(["sweep", str(sweep), "--launcher", "local", "--workdir", str(root)]) == 1  # one point fails
    record = json.loads((root / "sweep.json").read_text())
    statuses = {entry["overrides"]["loss.temperature"]: entry["status"] for entry in record.values()}
    assert statuses == {1.0: "finished", 2.0: "finished", 3.0: "failed in distill (exit 3)"}
    for name, entry in record.items():
        assert name.endswith(entry["fingerprint"])
        if entry["status"] == "finished":
            assert (root / name / "student" / "model.safetensors").exists()
            assert json.loads((root / name / "summary.json").read_text())["steps"] == 2
    capsys.readouterr()
    assert cli.main(["sweep", str(sweep), "--launcher", "local", "--workdir", str(root)]) == 1
    out = capsys.readouterr().out
    assert out.count("finished earlier, skipped") == 2 and "2 of 3 point(s) finished" in out
    _check_sweep_report(root, record, tmp_path / "report", capsys)

    fixed = DIVERGES.replace("1e30", "1e-3")
    _write_sweep(sweep, f"[{{**FAST, 'loss.temperature': t}} for t in (1.0, 2.0)] + [{fixed}]")
    assert cli.main(["sweep", str(sweep), "--launcher", "local", "--workdir", str(root)]) == 0
    out = capsys.readouterr().out
    assert out.count("finished earlier, skipped") == 2 and "3 of 3 point(s) finished" in out
    now = json.loads((root / "sweep.json").read_text())
    assert [entry["status"] for entry in now.values()] == ["finished"] * 3
    assert set(now) - set(record) == {next(name for name in now if "learning_rate=0.001" in name)}
    assert len(list(root.glob("*temperature=3.0-*"))) == 2  # the diverged run's folder is left as it was


def test_a_changed_base_config_makes_new_points_and_bad_points_stop_everything(tmp_path, capsys):
    sweep = _write_sweep(tmp_path / "two.py", "[{**FAST, 'loss.temperature': t} for t in (1.0, 2.0)]")
    assert cli.main(["sweep", str(sweep), "--workdir", "R"]) == 0
    names = [line.split()[0] for line in capsys.readouterr().out.splitlines()[1:]]
    assert cli.main(["sweep", str(sweep), "--workdir", "R", "--config.seed=1"]) == 0
    reseeded = [line.split()[0] for line in capsys.readouterr().out.splitlines()[2:]]
    assert [name.rsplit("-", 1)[0] for name in names] == [name.rsplit("-", 1)[0] for name in reseeded]
    assert not set(names) & set(reseeded)  # same overrides, another base config: other points
    # One bad point: nothing runs, nothing is printed, the point and the key are named.
    _write_sweep(sweep, "[{**FAST, 'loss.temperature': t} for t in (1.0, 0.0)]")
    for launcher in ("local", "print", "tpu"):
        assert cli.main(["sweep", str(sweep), "--launcher", launcher, "--workdir", str(tmp_path / "root")]) == 2
        captured = capsys.readouterr()
        assert captured.out == "" and not (tmp_path / "root").exists()
        assert re.search(r"two.py: point \S*temperature=0.0: config.loss.temperature must be > 0, got 0.0$",
                         captured.err.strip()), captured.err


def _xnli_results(test: dict[str, float]) -> dict:
    """What `distil xnli` writes, for one seed (the report reads files only)."""
    per_seed = [{"seed": 0, "selected_step": 8, "test": test, "dev": test}]
    return {"model": "student", "family": "distilbert", **report.aggregate_seeds(per_seed), "seeds": per_seed}


def _check_sweep_report(root: Path, record: dict, out: Path, capsys) -> None:
    """`distil report ROOT`: a row per point in sweep.json's order with the one config field that differs, the final
    loss terms of each summary.json, and XNLI accuracies where a point has them."""
    names = list(record)
    finished = [name for name in names if record[name]["status"] == "finished"]
    (root / finished[1] / "xnli").mkdir()
    (root / finished[1] / "xnli" / report.RESULTS_FILE).write_text(
        json.dumps(_xnli_results({"en": 0.5, "fr": 0.4, "zh": 0.375})))
    assert cli.main(["report", str(root), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    table = (out / "sweep_report.md").read_text()
    assert table in printed
    lines = [line for line in table.splitlines() if line.startswith("| ")]
    header = [cell.strip() for cell in lines[0].strip("|").split("|")]
    assert header[:3] == ["run", "status", "loss.temperature"] and {"step", "mlm", "ce"} <= set(header)
    rows = {cells[0]: dict(zip(header, cells)) for cells in
            ([cell.strip() for cell in line.strip("|").split("|")] for line in lines[1:4])}
    assert list(rows) == names  # sweep.json's order, the failed point with its status and override only
    failed = next(name for name in names if name not in finished)
    assert rows[failed]["status"] == "failed in distill (exit 3)" and rows[failed]["loss.temperature"] == "3.0"
    assert rows[failed]["step"] == rows[failed]["loss"] == ""
    for name in finished:
        final = json.loads((root / name / "summary.json").read_text())["final"]
        assert rows[name]["loss.temperature"] == str(record[name]["overrides"]["loss.temperature"])
        assert rows[name]["status"] == "finished" and rows[name]["step"] == "2"
        for term in ("loss", "ce", "mlm", "cos"):
            assert float(rows[name][term]) == pytest.approx(final[term], rel=1e-3), (name, term)
    xnli_row = next(line for line in lines if line.startswith(f"| {finished[1]} | 42.5 |"))
    assert xnli_row.endswith("| 50.0 | 40.0 | 37.5 |")  # en fr zh, the XNLI paper's order; avg (50+40+37.5)/3
    summary = json.loads((out / "sweep_report.json").read_text())
    assert summary["differing_fields"] == ["loss.temperature", "optimizer.learning_rate", "optimizer.warmup_fraction"]
    assert [run["xnli"] is not None for run in summary["runs"]] == [False, True, False]
    for image in ("loss_curves.png", "xnli_report.png"):
        with Image.open(out / image) as png:
            assert png.format == "PNG"


def test_the_readme_s_one_run_sweep_prints_at_full_size(tmp_path, capsys, monkeypatch):
    """experiments/one_run.py, the README's TPU walk-through as printed there: gs:// workdir and teacher (a fake
    bucket holding an mBERT-shaped teacher config), checked at full size."""
    import transformers

    import object_store

    store = object_store.install(tmp_path / "store", setattr=monkeypatch.setattr)
    teacher = store.local("gs://my-bucket/models/bert-base-multilingual-cased")
    teacher.mkdir(parents=True)
    transformers.BertConfig(vocab_size=119_547, architectures=["BertForMaskedLM"]).to_json_file(
        teacher / "config.json")
    monkeypatch.chdir(tmp_path)
    assert cli.main(["sweep", str(REPO / "experiments" / "one_run.py"), "--launcher", "tpu", "--tpu", "my-v4-32",
                     "--zone", "us-central2-b", "--config", "distilmbert:tpu=v4-32", "--workdir", "gs://my-bucket/runs",
                     "--config.teacher.checkpoint=gs://my-bucket/models/bert-base-multilingual-cased",
                     "--config.data.corpus=gs://my-bucket/corpus/mbert-wiki"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert sum("distil distill" in line for line in lines) == 1 and sum("distil xnli" in line for line in lines) == 1
    assert any("--workdir gs://my-bucket/runs/base-" in line for line in lines)
    assert any("[tpu,gcs]" in line for line in lines) and not (tmp_path / "gs:").exists()
