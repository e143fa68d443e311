"""The demo end to end on the embedded data (small overrides), and its KL helper against NumPy."""

from __future__ import annotations

import json
import math

import jax.numpy as jnp
import numpy as np

from distil import cli
from distil.demo import _kl_at_temperature


def test_kl_at_temperature_matches_numpy():
    rng = np.random.default_rng(0)
    teacher, student = rng.normal(size=(2, 5, 11)), rng.normal(size=(2, 5, 11))
    mask = np.array([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]])
    t = 2.0

    def softmax(x):
        e = np.exp(x - x.max(-1, keepdims=True))
        return e / e.sum(-1, keepdims=True)

    p, q = softmax(teacher / t), softmax(student / t)
    expected = (np.sum(p * np.log(p / q), -1) * mask).sum() / mask.sum() * t * t
    ours = float(_kl_at_temperature(jnp.asarray(teacher), jnp.asarray(student), jnp.asarray(mask), temperature=t))
    assert math.isclose(ours, expected, rel_tol=1e-5)


def test_demo_runs_on_embedded_data(tmp_path, capsys):
    workdir = tmp_path / "demo"
    argv = ["demo", "--workdir", str(workdir),  # the default config: `demo`, shipped in distil/configs/
            "--config.batching.global_batch=16", "--config.data.max_length=64", "--config.xnli.max_length=64",
            "--config.teacher.hidden_size=32", "--config.teacher.intermediate_size=64"]
    assert cli.main(argv) == 0
    summary = json.loads((workdir / "demo.json").read_text())
    assert (workdir / "demo.md").read_text().startswith("# distil demo")
    assert len(summary["corpus"]["languages"]) == 15
    masking = summary["masking"]
    assert masking["targets"] == math.ceil(0.15 * masking["real_tokens"])
    batching = summary["batching"]
    assert 0 < batching["padding_fraction_grouped"] < batching["padding_fraction_ungrouped"]
    models = summary["models"]
    assert models["export_max_abs_diff"] == 0.0
    assert models["kl_teacher_student_T2"] >= 0.0
    # A random teacher is near-uniform over the 119,547-token vocabulary: loss ≈ ln(V).
    assert abs(models["teacher_mlm_loss"] - math.log(119_547)) < 0.5
    assert [row["examples"] for row in summary["xnli"].values()] == [150] * 15
    assert all(row["labels"] == [50, 50, 50] for row in summary["xnli"].values())
    # A rerun reuses the binarised corpus, says so, and gives the same numbers.
    capsys.readouterr()
    assert cli.main(argv) == 0
    again = json.loads((workdir / "demo.json").read_text())
    assert again["masking"] == masking and again["models"] == models
    out, err = capsys.readouterr()
    assert "padding" in out and "(1 shard(s) reused from an earlier run)" in out
    assert err == f"distil demo: reused 1 of 1 shard(s) of the corpus that an earlier run binarised in {workdir}/data\n"
    # A global batch larger than the corpus is an error naming the config field (the library names its argument).
    too_big = [arg for arg in argv if "global_batch" not in arg] + ["--config.batching.global_batch=100000"]
    assert cli.main(too_big) == 2
    assert "config.batching.global_batch=100000: " in capsys.readouterr().err
