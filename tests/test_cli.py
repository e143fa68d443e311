"""The `distil` command end to end: extract -> export -> inspect, and the exported student in a transformers
fill-mask pipeline agreeing with distil's own logits; then bad input: every error one line with exit 2, Ctrl-C 130,
and no command overwriting, mixing or deleting a user's files."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time

import jax.numpy as jnp
import numpy as np
import pytest
import torch
import transformers
from safetensors.numpy import load_file, save_file

from conftest import REPO
from hf_reference import tiny_hf_config
from distil import atomic, cli, hf
from distil.data import binarize
from distil.data.embedded import embedded_corpus_file
from distil.models import ModelConfig, create_model
from distil.tokenization import default_vocab_path, load_tokenizer

SENTENCES = [
    "Paris is the [MASK] of France.",
    "Der Hund läuft über die [MASK].",
    "北京是中国的[MASK]都。",
    "Ce film est [MASK] bon.",
]


@pytest.fixture(scope="module")
def teacher_folder(tmp_path_factory):
    """A small random BERT MLM teacher with the real mBERT vocabulary, saved with its tokenizer."""
    tokenizer = load_tokenizer(default_vocab_path())
    config = ModelConfig(vocab_size=tokenizer.get_vocab_size(), hidden_size=32, num_hidden_layers=4,
                         num_attention_heads=4, intermediate_size=64, max_position_embeddings=64, head="mlm",
                         add_pooler=False)
    folder = tmp_path_factory.mktemp("cli") / "teacher"
    hf.save_pretrained(create_model(config, seed=11), folder, tokenizer=tokenizer)
    return folder


def test_extract_then_fill_mask_pipeline_agrees(teacher_folder, tmp_path):
    student_folder = tmp_path / "student"
    assert cli.main(["extract", str(teacher_folder), str(student_folder), "--layers", "0,3",
                     "--tokenizer", str(default_vocab_path())]) == 0
    student = hf.load_pretrained(student_folder)
    assert student.config.num_hidden_layers == 2
    teacher = hf.load_pretrained(teacher_folder)
    np.testing.assert_array_equal(np.asarray(student.encoder.layers[1].attention.key.kernel[...]),
                                  np.asarray(teacher.encoder.layers[3].attention.key.kernel[...]))

    tokenizer = load_tokenizer(student_folder)
    fill_mask = transformers.pipeline("fill-mask", model=str(student_folder), tokenizer=str(student_folder),
                                      top_k=5, device="cpu")
    mask_id = tokenizer.token_to_id("[MASK]")
    for sentence in SENTENCES:
        ids = tokenizer.encode(sentence).ids
        position = ids.index(mask_id)
        logits = np.asarray(student(jnp.asarray([ids], jnp.int32)).logits[0, position])
        ours_top = list(np.argsort(-logits)[:5])
        theirs = fill_mask(sentence)
        assert [row["token"] for row in theirs] == ours_top, sentence
        probs = np.exp(logits - logits.max()) / np.exp(logits - logits.max()).sum()
        np.testing.assert_allclose([row["score"] for row in theirs], probs[ours_top], rtol=1e-4)


def test_export_converts_dtype_and_inspect_reports_it(teacher_folder, tmp_path, capsys):
    destination = tmp_path / "bf16"
    assert cli.main(["export", str(teacher_folder), str(destination), "--dtype", "bfloat16"]) == 0
    report = hf.describe_pretrained(destination)
    assert report["architecture"] == "BertForMaskedLM"
    assert report["config"]["param_dtype"] == "bfloat16"
    vocab, hidden, inner, layers = 119_547, 32, 64, 4
    embeddings = vocab * hidden + 64 * hidden + 2 * hidden + 2 * hidden
    layer = 4 * (hidden * hidden + hidden) + 4 * hidden + 2 * hidden * inner + inner + hidden
    mlm_head = hidden * hidden + hidden + 2 * hidden + vocab
    assert report["parameters_by_module"] == {"embeddings": embeddings, **{f"layers.{i}": layer for i in range(4)},
                                              "mlm_head": mlm_head}
    assert report["parameters"] == embeddings + layers * layer + mlm_head
    assert report["stored_values_by_dtype"] == {"BF16": report["parameters"]}

    capsys.readouterr()
    assert cli.main(["inspect", str(destination), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["parameters"] == report["parameters"]


def test_errors_name_the_file_and_exit_2(tmp_path, capsys):
    assert cli.main(["inspect", str(tmp_path)]) == 2
    assert f"{tmp_path}/config.json: missing" in capsys.readouterr().err


def test_console_entry_point_lists_subcommands():
    out = subprocess.run([sys.executable, "-m", "distil", "--help"], capture_output=True, text=True, check=True).stdout
    for command in ("inspect", "export", "extract", "prepare", "demo", "bench"):
        assert command in out


def test_bench_runs_a_checkout_benchmark_and_names_unknown_ones(tmp_path, capsys, monkeypatch):
    """`distil bench NAME ARGS` runs experiments/bench_NAME.py (here the inference benchmark, tiny, with its
    transformers reference in a second fresh process) and writes its JSON; an unknown NAME lists the known ones."""
    out = tmp_path / "inference.json"
    bench = subprocess.run([sys.executable, "-m", "distil", "bench", "inference", "--size", "small", "--lengths", "32",
                            "--tokens", "64", "--steps", "1", "--out", str(out)], cwd=REPO, capture_output=True,
                           text=True, timeout=600)
    assert bench.returncode == 0, bench.stderr
    assert "| 32 | 2 x 32 | teacher (BERT, 4 layers) | float32 |" in bench.stdout
    result = json.loads(out.read_text())
    assert {"distil/teacher/32/float32", "torch/student/32/float32"} <= set(result["best"])
    assert all(entry["median_s"] > 0 for entry in result["best"].values())
    monkeypatch.chdir(REPO)
    code = cli.main(["bench", "nope"])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "no benchmark 'nope'" in err and "step" in err and "scaling" in err
    monkeypatch.chdir(tmp_path)  # not a checkout
    assert cli.main(["bench", "step"]) == 2
    assert "no experiments/ here; `distil bench` runs a distil checkout's benchmarks" in capsys.readouterr().err


# ---------------------------------------------------------------------------------------------- bad input


def run(argv, capsys) -> tuple[int, str, str]:
    capsys.readouterr()
    code = cli.main([str(arg) for arg in argv])
    out, err = capsys.readouterr()
    return code, out, err


def assert_one_line_error(code, err, command, match):
    assert code == 2, err
    assert err.count("\n") == 1 and "Traceback" not in err, err
    assert err.startswith(f"distil {command}: error: ") or err.startswith(f"distil {command}: error: argument"), err
    assert match in err, err


def tiny_bert(folder, *, layers=4, vocab_size=97, seed=0):
    """A small random BertForMaskedLM written by distil (so it may later be replaced by an export)."""
    config = ModelConfig(vocab_size=vocab_size, hidden_size=32, num_hidden_layers=layers, num_attention_heads=4,
                         intermediate_size=48, max_position_embeddings=40, head="mlm", add_pooler=False)
    return hf.save_pretrained(create_model(config, seed=seed), folder)


@pytest.fixture(scope="module")
def small_folders(tmp_path_factory):
    """A distil-written tiny BERT, a tiny DistilBERT, and a BertForPreTraining as transformers saves it (pooler and
    next-sentence head beside the MLM head)."""
    root = tmp_path_factory.mktemp("small")
    tiny_bert(root / "bert")
    cli.main(["extract", str(root / "bert"), str(root / "distilbert"), "--layers", "0,2"])
    torch.manual_seed(0)
    transformers.BertForPreTraining(tiny_hf_config("bert", layers=2)).save_pretrained(root / "pretraining")
    return root


def test_export_refuses_its_own_source_and_says_what_it_drops(small_folders, tmp_path, capsys):
    source = small_folders / "pretraining"
    before = {p.name: p.read_bytes() for p in source.iterdir()}
    for destination, message in [(source, "is the source folder"), (source / "bf16", "lies inside the source"),
                                 (small_folders, "contains the source folder")]:
        code, _, err = run(["export", source, destination, "--dtype", "bfloat16"], capsys)
        assert_one_line_error(code, err, "export", f"{destination}: {message}")
    assert {p.name: p.read_bytes() for p in source.iterdir()} == before

    code, out, err = run(["export", source, tmp_path / "bf16", "--dtype", "bfloat16"], capsys)
    assert code == 0
    assert out.splitlines() == [
        f"wrote {tmp_path / 'bf16'} (BertForMaskedLM, bfloat16): config.json, model.safetensors",
        f"  converted from {source} (BertForPreTraining, float32)",
    ]
    assert err == (f"distil export: warning: left out 4 tensor(s) of {source}: bert.pooler.dense.bias, "
                   "bert.pooler.dense.weight, cls.seq_relationship.bias, cls.seq_relationship.weight (next-sentence "
                   "head of BertForPreTraining; pooler, unused under an MLM head)\n")


def test_an_export_replaces_the_destination_as_a_whole_never_a_mix(teacher_folder, small_folders, tmp_path, capsys):
    destination = tmp_path / "model"
    assert run(["export", teacher_folder, destination, "--tokenizer", default_vocab_path()], capsys)[0] == 0
    assert {"vocab.txt", "tokenizer.json"} < {p.name for p in destination.iterdir()}
    # Another model without a tokenizer: the old 119,547-token tokenizer files must not stay beside it.
    assert run(["export", small_folders / "bert", destination], capsys)[0] == 0
    assert sorted(p.name for p in destination.iterdir()) == [atomic.MANIFEST, "config.json", "model.safetensors"]
    assert hf.read_checkpoint(destination).config.vocab_size == 97

    (destination / "notes.txt").write_text("mine")
    before = {p.name: p.read_bytes() for p in destination.iterdir()}
    code, _, err = run(["export", teacher_folder, destination], capsys)
    assert_one_line_error(code, err, "export", f"{destination}: holds files distil did not write (notes.txt)")
    assert {p.name: p.read_bytes() for p in destination.iterdir()} == before
    code, _, err = run(["export", teacher_folder, small_folders / "pretraining"], capsys)  # transformers wrote it
    assert_one_line_error(code, err, "export", "holds files distil did not write (config.json, model.safetensors)")


def test_a_vocabulary_or_length_mismatch_is_caught_before_running(teacher_folder, small_folders, tmp_path, capsys):
    code, _, err = run(["export", small_folders / "bert", tmp_path / "out", "--tokenizer", default_vocab_path()],
                       capsys)
    assert_one_line_error(code, err, "export", f"{small_folders / 'bert'} (config.json) has vocab_size 97 but "
                          f"--tokenizer {default_vocab_path()} has 119,547 tokens")
    assert not (tmp_path / "out").exists()
    distill = ["distill", "--workdir", tmp_path / "demo", "--config", "distilmbert:runlocal",
               "--config.teacher.source=checkpoint"]
    code, _, err = run([*distill, f"--config.teacher.checkpoint={small_folders / 'bert'}"], capsys)
    assert_one_line_error(code, err, "distill", "config.tokenizer has 8000 tokens but the teacher has vocab_size=97")
    code, _, err = run([*distill, f"--config.teacher.checkpoint={teacher_folder}", "--config.tokenizer="], capsys)
    assert_one_line_error(code, err, "distill", "config.data.max_length=128 exceeds the teacher's "
                          "max_position_embeddings=64")
    assert not (tmp_path / "demo" / "data").exists()  # nothing ran


def _drop(name):
    def change(folder):
        tensors = load_file(folder / "model.safetensors")
        tensors.pop(name)
        save_file(tensors, str(folder / "model.safetensors"))
    return change


def _set_tensor(name, value):
    def change(folder):
        tensors = load_file(folder / "model.safetensors")
        tensors[name] = value(tensors.get(name))
        save_file(tensors, str(folder / "model.safetensors"))
    return change


def _set_config(**fields):
    def change(folder):
        config = json.loads((folder / "config.json").read_text())
        (folder / "config.json").write_text(json.dumps({**config, **fields}))
    return change


def _truncate(folder):
    data = (folder / "model.safetensors").read_bytes()
    (folder / "model.safetensors").write_bytes(data[: len(data) // 2])


BROKEN_CHECKPOINTS = {
    "missing tensor": (_drop("bert.encoder.layer.1.output.dense.bias"),
                       "tensor 'bert.encoder.layer.1.output.dense.bias' is missing"),
    "mis-shaped tensor": (_set_tensor("cls.predictions.bias", lambda t: np.zeros(96, np.float32)),
                          "tensor 'cls.predictions.bias' has shape [96], expected [97]"),
    "int32 tensor": (_set_tensor("cls.predictions.bias", lambda t: t.astype(np.int32)),
                     "tensor 'cls.predictions.bias' has dtype I32"),
    "2 layers in config.json over weights of 4": (_set_config(num_hidden_layers=2),
                                                  "config.json says num_hidden_layers=2; the weights hold layers "
                                                  "[0, 1, 2, 3]"),
    "unused tensor": (_set_tensor("bert.extra.weight", lambda t: np.zeros(3, np.float32)),
                      "1 tensor(s) that a BertForMaskedLM of this config.json does not have: 'bert.extra.weight'"),
    "truncated safetensors": (_truncate, "model.safetensors: not a readable safetensors file"),
    "config.json is []": (lambda folder: (folder / "config.json").write_text("[]"),
                          "config.json: expected a JSON object {...}, got list"),
    "vocab_size=-3": (_set_config(vocab_size=-3), "config.json: field 'vocab_size' must be an integer >= 1, got -3"),
    "hidden_size=32.0": (_set_config(hidden_size=32.0),
                         "config.json: field 'hidden_size' must be an integer >= 1, got 32.0"),
}


@pytest.mark.parametrize("case", BROKEN_CHECKPOINTS)
def test_inspect_rejects_what_export_rejects_in_one_line(case, small_folders, tmp_path, capsys):
    change, message = BROKEN_CHECKPOINTS[case]
    folder = tmp_path / "broken"
    shutil.copytree(small_folders / "bert", folder)
    change(folder)
    errors = {}
    for command in (["inspect", folder], ["export", folder, tmp_path / "out"], ["extract", folder, tmp_path / "out"]):
        code, _, err = run(command, capsys)
        assert_one_line_error(code, err, command[0], message)
        errors[command[0]] = err.split(": error: ", 1)[1]
    assert len(set(errors.values())) == 1, errors
    assert not (tmp_path / "out").exists()


@pytest.fixture
def read_only(tmp_path, monkeypatch):
    """A read-only folder (root ignores permission bits: then os.access reports it as such)."""
    folder = tmp_path / "read-only"
    folder.mkdir()
    folder.chmod(0o555)
    if os.geteuid() == 0:
        real_access = os.access
        monkeypatch.setattr(os, "access", lambda path, mode: str(path) != str(folder) and real_access(path, mode))
    yield folder
    folder.chmod(0o755)


CORPUS = embedded_corpus_file("en").parent
USAGE_ERRORS = {
    "OUT is a file": (["prepare", CORPUS, "{tmp}/file"], "{tmp}/file: exists and is a file, so it cannot be the "
                      "output folder"),
    "OUT under a file": (["prepare", CORPUS, "{tmp}/file/out"], "{tmp}/file/out: {tmp}/file is a file, so no output "
                         "folder can be created under it"),
    "OUT read-only": (["prepare", CORPUS, "{read_only}"], "{read_only}: the output folder is not writable"),
    "DST is a file": (["export", "{small}/bert", "{tmp}/file"], "{tmp}/file: exists and is a file, so it cannot be "
                      "the model folder"),
    "DST under a file": (["export", "{small}/bert", "{tmp}/file/out"], "{tmp}/file/out: {tmp}/file is a file, so no "
                         "model folder can be created under it"),
    "DST in a read-only folder": (["extract", "{small}/bert", "{read_only}/student", "--layers", "0"],
                                  "{read_only}/student: the folder {read_only} is not writable"),
    "--num-lines -1": (["prepare", CORPUS, "{tmp}/out", "--num-lines", "-1"],
                       "argument --num-lines: expected an integer >= 1, got '-1'"),
    "--seed -1": (["prepare", CORPUS, "{tmp}/out", "--seed", "-1"], "argument --seed: expected an integer >= 0, "
                  "got '-1'"),
    "--sampling-alpha inf": (["prepare", CORPUS, "{tmp}/out", "--sampling-alpha", "inf"],
                             "argument --sampling-alpha: expected a finite number >= 0, got 'inf'"),
    "--layers -1,2": (["extract", "{small}/bert", "{tmp}/out", "--layers", "-1,2"],
                      "--layers: teacher layer(s) [-1] out of range; {small}/bert has 4 layers (0..3)"),
    "extract from a DistilBERT": (["extract", "{small}/distilbert", "{tmp}/out"], "{small}/distilbert: holds a "
                                  "DistilBertForMaskedLM; distil extract needs a BERT teacher"),
    "--config.* without a config": (["export", "{small}/bert", "{tmp}/out", "--config.seed=1"],
                                    "--config.seed=1: distil export takes no config"),
    "a corpus without language files": (["prepare", "{small}", "{tmp}/out"], "folder {small} holds no <lang>.txt"),
    "inspect a file": (["inspect", "{tmp}/file"], "{tmp}/file: is a file; expected a Hugging Face folder"),
}


@pytest.mark.parametrize("case", USAGE_ERRORS)
def test_bad_input_is_one_line_with_exit_2(case, small_folders, read_only, tmp_path, capsys):
    argv, message = USAGE_ERRORS[case]
    (tmp_path / "file").write_text("")
    names = dict(tmp=tmp_path, small=small_folders, read_only=read_only)
    code, _, err = run([str(arg).format(**names) for arg in argv], capsys)
    assert_one_line_error(code, err, argv[0], message.format(**names))
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("command", ["inspect", "export", "extract"])
def test_ctrl_c_is_one_line_with_exit_130(command, small_folders, tmp_path, capsys, monkeypatch):
    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(hf, "read_checkpoint", interrupted)
    code, _, err = run([command, small_folders / "bert"] + ([tmp_path / "out"] if command != "inspect" else []),
                       capsys)
    assert code == 130
    assert err == {"inspect": "distil inspect: interrupted\n"}.get(
        command, f"distil {command}: interrupted; the destination is unchanged\n")


def test_layer_maps_that_repeat_or_reorder_are_allowed_with_a_warning(small_folders, tmp_path, capsys):
    code, out, err = run(["extract", small_folders / "bert", tmp_path / "repeat", "--layers", "1,1,1"], capsys)
    assert code == 0 and "3-layer student from teacher layers 1,1,1" in out
    assert err == ("distil extract: warning: --layers 1,1,1 repeats teacher layer(s) [1]: the student gets copies of "
                   "the same layer\n")
    code, _, err = run(["extract", small_folders / "bert", tmp_path / "reverse", "--layers", "3,1"], capsys)
    assert code == 0 and "--layers 3,1 is not increasing" in err


def test_prepare_prints_a_summary_and_names_skipped_files(tmp_path, capsys):
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    for lang in ("en", "sw"):
        shutil.copy(embedded_corpus_file(lang), corpus / f"{lang}.txt")
    (corpus / "README.txt").write_text("Where these files come from.\n")
    code, out, err = run(["prepare", corpus, tmp_path / "out", "--num-workers", "0"], capsys)
    assert code == 0
    assert err == (f"distil prepare: warning: {corpus}: skipped 1 file(s) not named <lang>.txt with a language code: "
                   "README.txt\n")
    summary = binarize.TokenSequences(tmp_path / "out").index
    lines = out.splitlines()
    assert lines[0] == (f"wrote {tmp_path / 'out'}: {summary['sequences']:,} sequences, {summary['tokens']:,} tokens "
                        "in 1 shard(s), from 500 lines in 2 language(s)")
    assert lines[1].startswith("  sequences per language: en ") and ", sw " in lines[1]
    assert lines[3].startswith("  tokenised 500 lines in ")


def test_ctrl_c_during_prepare_exits_130_and_a_rerun_finishes_identically(tmp_path, capsys):
    """A real `distil prepare` with a worker process, interrupted as a terminal does (SIGINT to the process group).
    The corpus is large enough (~240 shards, seconds of work) that the signal lands before the last shard even on a
    fast idle machine."""
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    for lang in ("en", "de"):
        (corpus / f"{lang}.txt").write_text(embedded_corpus_file(lang).read_text(encoding="utf-8") * 240,
                                            encoding="utf-8")
    argv = ["prepare", str(corpus), str(tmp_path / "out"), "--shard-size", "500"]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    # SIGINT handled as in a terminal even where pytest itself runs with it ignored (a `make test &` in a script: a
    # non-interactive shell's background jobs ignore SIGINT, and Python then leaves it ignored in every child).
    process = subprocess.Popen([sys.executable, "-m", "distil", *argv, "--num-workers", "1"], env=env,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True,
                               preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    index = tmp_path / "out" / "index.json"
    deadline = time.monotonic() + 60
    while not (index.exists() and json.loads(index.read_text())["shards"]):
        assert process.poll() is None and time.monotonic() < deadline, process.communicate()
        time.sleep(0.01)
    seen = json.loads(index.read_text())
    os.killpg(process.pid, signal.SIGINT)
    out, err = process.communicate(timeout=60)
    # Said in full if it fails: how far prepare was when the signal was sent, and what it printed.
    assert process.returncode == 130, (len(seen["shards"]), seen["complete"], out, err)
    assert err == "distil prepare: interrupted; finished shards are kept, rerun the same command to resume\n"
    interrupted = json.loads(index.read_text())
    assert len(interrupted["shards"]) > 0 and not interrupted["complete"]

    code, out, _ = run([*argv, "--num-workers", "0"], capsys)
    assert code == 0 and f"reused {len(interrupted['shards'])} shard(s) of an earlier run" in out
    binarize.prepare(corpus, tmp_path / "fresh", num_workers=0, shard_size=500, progress=False)
    fresh = {p.name: p.read_bytes() for p in (tmp_path / "fresh").iterdir()}
    assert {p.name: p.read_bytes() for p in (tmp_path / "out").iterdir()} == fresh
