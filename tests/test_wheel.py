"""distil as a user installs it: a wheel built from the repo holds the package, the embedded data and the shipped
configs, and the installed copy runs `distil --help` and `distil demo` from outside the checkout.

The wheel is built offline with the test environment's setuptools (`--no-build-isolation`, so setuptools is in the
test extras) from a copy of the repo: pip builds in the source tree, and a `build/` left there by an earlier build
would put stale files (a deleted module, a moved config) into the wheel.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from conftest import REPO
from distil.data.nli import xnli_languages

NOT_SOURCES = shutil.ignore_patterns(".git", ".venv", "build", "dist", "*.egg-info", "__pycache__", ".pytest_cache",
                                     "runs", ".whl")


def _run(command: list[str], cwd: Path, **kwargs) -> subprocess.CompletedProcess:
    result = subprocess.run(command, cwd=cwd, capture_output=True, text=True, **kwargs)
    assert result.returncode == 0, f"{' '.join(map(str, command))} failed:\n{result.stdout}\n{result.stderr}"
    return result


def _repo_files(folder: str, pattern: str = "**/*") -> set[str]:
    """Paths (relative to the repo, '/'-separated) of the files under `folder` in the checkout."""
    return {path.relative_to(REPO).as_posix() for path in (REPO / folder).glob(pattern)
            if path.is_file() and "__pycache__" not in path.parts}


def _docker_context() -> list[str]:
    """What the Dockerfile COPYs into its image, which `pip install .` builds there: the wheel is built from these
    alone, so a source the image lacks fails here."""
    sources = []
    for line in (REPO / "Dockerfile").read_text(encoding="utf-8").splitlines():
        if line.startswith("COPY "):
            sources += line.split()[1:-1]
    return sources


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("wheel")
    source = root / "source"
    source.mkdir()
    for name in _docker_context():
        if (REPO / name).is_dir():
            shutil.copytree(REPO / name, source / name, ignore=NOT_SOURCES)
        else:
            shutil.copy2(REPO / name, source / name)
    _run([sys.executable, "-m", "pip", "wheel", ".", "--no-deps", "--no-build-isolation", "--no-index", "-q",
          "--disable-pip-version-check", "-w", str(root / "dist")], cwd=source)
    (built,) = (root / "dist").glob("distil-*.whl")
    return built


@pytest.fixture(scope="module")
def site(wheel) -> Path:
    site = wheel.parent.parent / "site"
    _run([sys.executable, "-m", "pip", "install", "--no-deps", "--no-index", "-q", "--disable-pip-version-check",
          "--target", str(site), str(wheel)], cwd=wheel.parent)
    return site


def test_wheel_holds_package_data_and_configs(wheel):
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
        vocab = archive.read("distil/data/embedded/mbert-cased/vocab.txt")
        entry_points = archive.read(f"{wheel.name.split('-py')[0]}.dist-info/entry_points.txt").decode()
    assert {name.split("/")[0] for name in names} == {"distil", f"{wheel.name.split('-py')[0]}.dist-info"}
    assert not [name for name in names if "__pycache__" in name or name.endswith(".pyc")]
    # Every module, every embedded file and every shipped config of the checkout, by name.
    assert _repo_files("distil", "**/*.py") <= names
    assert _repo_files("distil/data/embedded") <= names
    assert {name.replace("configs/", "distil/configs/", 1) for name in _repo_files("configs", "*.py")} <= names
    languages = xnli_languages()
    expected = {
        "distil/configs/demo.py",
        "distil/data/embedded/README.md",
        "distil/data/embedded/mbert-cased/README.md",
        "distil/data/embedded/mbert-cased/vocab.txt",
        "distil/data/embedded/nli/mnli_train_sample_3000.jsonl",
        "distil/data/embedded/xnli/dev-index.tsv",
        "distil/data/embedded/xnli/test-index.tsv",
        *(f"distil/data/embedded/corpus/{language}.txt" for language in languages),
        *(f"distil/data/embedded/xnli/{split}-{language}.tsv" for split in ("dev", "test") for language in languages),
    }
    assert expected <= names, sorted(expected - names)
    assert vocab == (REPO / "distil" / "data" / "embedded" / "mbert-cased" / "vocab.txt").read_bytes()
    assert "distil = distil.cli:main" in entry_points


def test_installed_wheel_runs_outside_the_checkout(site, tmp_path):
    outside = tmp_path / "elsewhere"  # the cwd: not the checkout, nothing importable in it
    outside.mkdir()
    env = {**os.environ, "PYTHONPATH": str(site), "JAX_PLATFORMS": "cpu"}

    help_text = _run([sys.executable, "-m", "distil", "--help"], cwd=outside, env=env).stdout
    for command in ("inspect", "export", "extract", "prepare", "demo"):
        assert command in help_text
    script = site / "bin" / "distil"  # the console script pip wrote from the entry point
    assert "demo" in _run([str(script), "demo", "--help"], cwd=outside, env=env).stdout

    # The demo with its default config (`demo`, shipped in the wheel), small enough to be quick; the same process
    # reports which distil it imported and where the default config and vocabulary were found.
    workdir = tmp_path / "run"
    program = (
        "import sys, distil, distil.cli\n"
        "from distil.config import resolve_config_spec\n"
        "from distil.tokenization import default_vocab_path\n"
        "print(distil.__file__, resolve_config_spec('demo')[0], default_vocab_path(), sep='\\n')\n"
        "sys.exit(distil.cli.main(sys.argv[1:]))\n"
    )
    # The demo's first stage (MLM pre-training with distilmbert:runlocal), shortened: the shipped configs and the
    # embedded corpus and vocabulary are found in the install.
    demo = _run([sys.executable, "-c", program, "distill", "--config", "distilmbert:runlocal", "--workdir",
                 str(workdir), "--config.num_steps=2", "--config.teacher.source=none", "--config.student.init=random",
                 "--config.loss.alpha_ce=0.0", "--config.loss.alpha_cos=0.0", "--config.data.max_length=64",
                 "--config.batching.pad_to_multiple=64", "--config.student.max_position_embeddings=64"],
                cwd=outside, env=env)
    package, config, vocab = (Path(line) for line in demo.stdout.splitlines()[:3])
    assert package == site / "distil" / "__init__.py"
    assert config == site / "distil" / "configs" / "demo.py"
    assert vocab == site / "distil" / "data" / "embedded" / "mbert-cased" / "vocab.txt"
    assert "step 2/2" in demo.stdout
    assert (workdir / "summary.json").is_file() and (workdir / "student" / "model.safetensors").is_file()
    assert (workdir / "student" / "vocab.txt").read_bytes() == (
        site / "distil" / "data" / "embedded" / "wordpiece-8k" / "vocab.txt").read_bytes()


def test_accelerator_extras_pin_the_tested_jax_and_the_dockerfile_uses_one(wheel):
    """`distil[tpu]` / `distil[cuda12]` install the JAX version the suite runs (its accelerator plugins pinned by
    JAX itself); the Dockerfile's base image is pinned to a release and its ACCELERATOR is one of them."""
    import importlib.metadata
    import re

    jax_version = importlib.metadata.version("jax")
    with zipfile.ZipFile(wheel) as archive:
        metadata = archive.read(next(n for n in archive.namelist() if n.endswith(".dist-info/METADATA"))).decode()
    for extra in ("tpu", "cuda12"):
        assert f"Provides-Extra: {extra}" in metadata
        assert re.search(rf"Requires-Dist: jax\[{extra}\]==({re.escape(jax_version)}); extra == \"{extra}\"", metadata)
    dockerfile = (REPO / "Dockerfile").read_text(encoding="utf-8")
    base = re.search(r"^FROM (\S+)$", dockerfile, re.M).group(1)
    assert re.fullmatch(r"python:\d+\.\d+\.\d+-slim-\w+", base), base  # a release, never `latest`
    accelerator = re.search(r"^ARG ACCELERATOR=(\w+)$", dockerfile, re.M).group(1)
    assert accelerator in ("tpu", "cuda12") and 'pip install ".[${ACCELERATOR},gcs]"' in dockerfile
    assert "Provides-Extra: gcs" in metadata and "Requires-Dist: gcsfs==" in metadata  # gs:// workdirs
    ignored = (REPO / ".dockerignore").read_text(encoding="utf-8")
    for name in _docker_context():  # the build context keeps every COPY source
        assert f"!{name}" in ignored or f"!{name}/" in ignored, name
