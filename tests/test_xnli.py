"""distil xnli: accuracy counted once per example, the head and the initialisation against transformers, a fine-tune
that learns, model selection on English dev only, the readers' labels, and bad input that loses nothing.

The fine-tuning test cannot use real MultiNLI: a small random model does not learn NLI in seconds (on the embedded
3,000 pairs it stays at chance, see the `:runlocal` results). It uses a task of the same shape built from real
premises of the embedded MultiNLI sample, learnable by a small encoder: entailment = the premise repeated,
contradiction = the premise negated ("It is not true that ..."), neutral = the premise hedged ("It may be that
...").
The classifier reads only [CLS], so the encoder's attention must carry the cue there: learning it needs the gradient
to reach the encoder, which the test also checks on the weights.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import transformers
from flax import nnx

from conftest import TEST_DATA
from hf_reference import tiny_hf_config
from distil import cli, hf, report
from distil.config import load_config
from distil.data import nli
from distil.data.embedded import embedded_nli_train, embedded_wordpiece_vocab, embedded_xnli_dir
from distil.data.nli_batches import EvalSet
from distil.models import ModelConfig, create_model
from distil.tokenization import load_tokenizer
from distil.train import xnli
from distil.train.metrics import read_metrics

TOKENIZER = load_tokenizer(embedded_wordpiece_vocab())
VOCAB = TOKENIZER.get_vocab_size()
NEGATION, HEDGE = "It is not true that", "It may be that"  # "not" and "may" are whole tokens of the vocabulary


def _config(*overrides: str, variant: str = "distilmbert_xnli:runlocal"):
    return load_config(variant, list(overrides))


# ---------------------------------------------------------------------------------------------- shared data


def _learnable_rows() -> list[tuple[str, str, str]]:
    """(premise, hypothesis, label) from the real sentences of the embedded MultiNLI sample of at most 12 tokens
    (so that the cue is a fair share of the pair); labels in turn entailment, neutral, contradiction."""
    examples = nli.read_multinli_jsonl(embedded_nli_train())
    sentences = dict.fromkeys([e.premise for e in examples] + [e.hypothesis for e in examples])
    sentences = [s for s in sentences if len(TOKENIZER.encode(s, add_special_tokens=False).ids) <= 12]
    return [(s, [s, f"{HEDGE} {s}", f"{NEGATION} {s}"][i % 3], nli.NLI_LABELS[i % 3])
            for i, s in enumerate(sentences)]


def _write_xtreme(folder: Path, split_rows: dict[tuple[str, str], list]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for (split, language), rows in split_rows.items():
        (folder / f"{split}-{language}.tsv").write_text("".join(f"{p}\t{h}\t{l}\n" for p, h, l in rows),
                                                        encoding="utf-8")


@pytest.fixture(scope="module")
def task(tmp_path_factory):
    """A distil workdir holding a small random DistilBERT student (as `distil distill` exports it), the learnable
    training file, and an XTREME-style folder: held-out English dev and test rows, and 'de'/'fr' rows (English
    text; only their labels matter to the selection test)."""
    root = tmp_path_factory.mktemp("xnli")
    student = ModelConfig(family="distilbert", vocab_size=VOCAB, hidden_size=64, num_hidden_layers=2,
                          num_attention_heads=4, intermediate_size=128, max_position_embeddings=64, type_vocab_size=0,
                          add_pooler=False, classifier_dropout=0.2, head="mlm")
    hf.save_pretrained(create_model(student, seed=3), root / "distill_run" / "student", tokenizer=TOKENIZER)
    rows = _learnable_rows()
    with open(root / "train.jsonl", "w", encoding="utf-8") as handle:
        for premise, hypothesis, label in rows[:480]:
            handle.write(json.dumps({"text_a": premise, "text_b": hypothesis, "label": label}) + "\n")
    held_out = rows[480:]
    assert len(held_out) == 167
    _write_xtreme(root / "eval", {("dev", "en"): held_out[:80], ("test", "en"): held_out[80:],
                                  ("dev", "de"): held_out[:40], ("test", "de"): held_out[80:120],
                                  ("dev", "fr"): held_out[40:80], ("test", "fr"): held_out[120:160]})
    return root


def _task_config(task: Path, *overrides: str):
    return _config("init=" + str(task / "distill_run"), "train.format=multinli_jsonl",
                   f"train.path={task / 'train.jsonl'}", "eval.format=xtreme", f"eval.path={task / 'eval'}",
                   "eval.languages=('en','de','fr')", "max_length=40", "seeds=(0,)", "num_epochs=5",
                   "eval_every_steps=15", "eval.batch_size=64", "optimizer.learning_rate=4e-3",
                   "optimizer.weight_decay=0.0", "log_every_steps=15", *overrides)


@pytest.fixture(scope="module")
def finetuned(task):
    workdir = task / "run"
    return workdir, xnli.train_and_evaluate(_task_config(task), workdir)


# ---------------------------------------------------------------------------------------------- counting


def test_accuracy_and_averages_by_hand():
    """A model that always predicts entailment (0): accuracy is the share of label 0. 13 rows in batches of 8: the
    last batch holds 5 real rows and 3 fill rows, whose label is also 0, so counting them would give 8/16."""
    config = ModelConfig(family="distilbert", vocab_size=VOCAB, hidden_size=32, num_hidden_layers=1,
                         num_attention_heads=4, intermediate_size=64, max_position_embeddings=64, type_vocab_size=0,
                         add_pooler=False, head="classification")
    model = create_model(config, seed=0)
    model.classifier.kernel[...] = jnp.zeros_like(model.classifier.kernel[...])
    model.classifier.bias[...] = jnp.asarray([5.0, 0.0, 0.0])
    labels = {"en": [0, 1, 0, 2, 0, 1, 2], "de": [2, 0, 1, 0, 1, 0]}  # en 3/7, de 3/6
    examples = {language: [nli.NliExample(f"premise {i} " * (i + 1), "hypothesis", label, language)
                           for i, label in enumerate(values)] for language, values in labels.items()}
    encoded = {language: nli.encode_nli(rows, TOKENIZER, max_length=64, with_token_types=False)
               for language, rows in examples.items()}
    eval_set = EvalSet.pool(encoded, ("en", "de"))
    batches = list(eval_set.batches(8, 32))
    assert [int(b["weights"].sum()) for b in batches] == [8, 5] and len(batches[-1]["weights"]) == 8
    assert {b["input_ids"].shape[1] for b in batches} <= {32, 64}  # cut to the longest row, rounded up to 32

    mesh = jax.make_mesh((jax.device_count(),), ("data",), axis_types=(jax.sharding.AxisType.Auto,))
    batch_sharding = jax.NamedSharding(mesh, jax.P("data", None))
    graphdef, params = nnx.split(model)
    step = jax.jit(xnli.make_eval_step(graphdef, 2))
    sums = xnli.evaluate(step, params, eval_set, global_batch=8, pad_to_multiple=32, batch_sharding=batch_sharding)
    assert sums == {"en": (3, 7), "de": (3, 6)}
    accuracies = {language: report.accuracy(*value) for language, value in sums.items()}
    assert accuracies == pytest.approx({"en": 3 / 7, "de": 0.5})
    assert report.language_average(accuracies) == pytest.approx((3 / 7 + 0.5) / 2)

    # Two seeds: mean and sample standard deviation (n - 1) per language, and of the per-seed averages.
    seeds = [{"dev": {"en": 0.5, "de": 0.4}, "test": {"en": 0.6, "de": 0.2}},
             {"dev": {"en": 0.7, "de": 0.4}, "test": {"en": 0.8, "de": 0.6}}]
    aggregated = report.aggregate_seeds(seeds)
    assert aggregated["dev"] == pytest.approx({"en": 0.6, "de": 0.4})
    assert aggregated["std"]["dev"] == pytest.approx({"en": 0.1 * 2 ** 0.5, "de": 0.0})
    assert aggregated["average"] == pytest.approx({"dev": 0.5, "test": 0.55})  # (0.45 + 0.55) / 2, (0.4 + 0.7) / 2
    assert aggregated["std"]["average"]["test"] == pytest.approx(0.3 / 2 ** 0.5)


# ---------------------------------------------------------------------------------------------- transformers


@pytest.mark.parametrize("architecture", ["BertForPreTraining", "DistilBertForMaskedLM"])
def test_initialisation_and_head_match_transformers(architecture, tmp_path):
    """From a pre-training checkpoint: the encoder (and BERT's pretrained pooler) copied as transformers'
    `*ForSequenceClassification.from_pretrained` copies them, and the new head's logits equal transformers' on the
    same weights (real XNLI pairs, token types for BERT, padding in the batch)."""
    family = "bert" if architecture.startswith("Bert") else "distilbert"
    torch.manual_seed(0)
    hf_config = tiny_hf_config(family, vocab_size=VOCAB, max_position_embeddings=64)
    reference = getattr(transformers, architecture)(hf_config)
    with torch.no_grad():
        for parameter in reference.parameters():
            parameter.add_(0.05 * torch.randn_like(parameter))
    reference.save_pretrained(tmp_path / "pretrained")

    variant = "mbert_xnli:runlocal" if family == "bert" else "distilmbert_xnli:runlocal"
    config = _config(f"init={tmp_path / 'pretrained'}", f"tokenizer={embedded_wordpiece_vocab()}", "max_length=64",
                     variant=variant)
    start, _, _ = xnli.starting_model(config)
    assert start.config.head == "classification" and start.config.num_labels == 3
    model = xnli.initial_model(start, seed=1)
    classifier_class = getattr(transformers, architecture.replace("ForPreTraining", "ForSequenceClassification")
                               .replace("ForMaskedLM", "ForSequenceClassification"))
    hf_loaded = classifier_class.from_pretrained(tmp_path / "pretrained", num_labels=3)
    ours = hf.hf_tensors(model)
    theirs = {name: tensor.detach().numpy() for name, tensor in hf_loaded.state_dict().items()}
    head = ("classifier.", "pre_classifier.")
    copied = [name for name in ours if not name.startswith(head)]
    assert any("pooler" in name for name in copied) == (family == "bert")
    for name in copied:
        np.testing.assert_array_equal(ours[name], theirs[name], err_msg=name)

    hf.save_pretrained(model, tmp_path / "initial", label_names=list(nli.NLI_LABELS))
    reference_classifier = classifier_class.from_pretrained(tmp_path / "initial").eval()
    examples = nli.read_xtreme_xnli(embedded_xnli_dir(), split="dev", language="de")[:6]
    encoded = nli.encode_nli(examples, TOKENIZER, max_length=64, with_token_types=family == "bert")
    kwargs = {name: torch.as_tensor(encoded[name], dtype=torch.long)
              for name in ("input_ids", "attention_mask", "token_type_ids") if name in encoded}
    with torch.no_grad():
        expected = reference_classifier(**kwargs).logits.numpy()
    logits = model(jnp.asarray(encoded["input_ids"]), jnp.asarray(encoded["attention_mask"]),
                   None if family == "distilbert" else jnp.asarray(encoded["token_type_ids"])).logits
    assert encoded["attention_mask"].min() == 0  # padding in the batch
    np.testing.assert_allclose(np.asarray(logits), expected, atol=1e-5)
    assert reference_classifier.config.id2label == {0: "entailment", 1: "neutral", 2: "contradiction"}


def test_finetune_learns_and_writes_results(finetuned, task):
    workdir, results = finetuned
    assert results["test"]["en"] > 0.8 and results["dev"]["en"] > 0.8  # chance is 1/3
    assert results["train_examples"] == 480 and results["eval_examples"]["test"] == {"en": 87, "de": 40, "fr": 40}
    for suffix in ("json", "md", "png"):
        assert (workdir / f"xnli_results.{suffix}").stat().st_size > 0
    assert json.loads((workdir / "xnli_results.json").read_text()) == json.loads(json.dumps(results))
    assert (workdir / "xnli_results.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    table = (workdir / "xnli_results.md").read_text()
    assert f"| distill_run | {100 * results['test']['en']:.1f} |" in table
    assert "| DistilmBERT (model card) | 78.2 |  | 66.3 |  | 65.2 |" in table  # en, fr (not on the card), de

    # The gradient reached the encoder and the head: every layer moved away from the student it started from.
    start = hf.load_pretrained(task / "distill_run" / "student")
    tuned = hf.load_pretrained(workdir / "xnli_seed0" / "model")
    assert tuned.config.head == "classification"
    for layer in range(2):
        before = np.asarray(start.encoder.layers[layer].attention.query.kernel[...])
        after = np.asarray(tuned.encoder.layers[layer].attention.query.kernel[...])
        assert np.abs(after - before).max() > 1e-2, layer


def test_exported_model_gives_transformers_the_same_predictions(finetuned, task):
    """The selected model, reloaded by transformers with its own saved tokenizer, predicts what distil predicted:
    its accuracy on the held-out English test rows is the one the run reported (87 rows: a partial last batch)."""
    workdir, results = finetuned
    folder = workdir / "xnli_seed0" / "model"
    model = transformers.AutoModelForSequenceClassification.from_pretrained(folder).eval()
    tokenizer = transformers.AutoTokenizer.from_pretrained(folder)
    rows = nli.read_xtreme_xnli(task / "eval", split="test", language="en")
    inputs = tokenizer([r.premise for r in rows], [r.hypothesis for r in rows], padding="max_length",
                       truncation=True, max_length=40, return_tensors="pt")
    with torch.no_grad():
        logits = model(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"]).logits.numpy()
    ours = hf.load_pretrained(folder)
    encoded = nli.encode_nli(rows, TOKENIZER, max_length=40, with_token_types=False)
    np.testing.assert_array_equal(encoded["input_ids"], inputs["input_ids"].numpy())
    our_logits = np.asarray(ours(jnp.asarray(encoded["input_ids"]), jnp.asarray(encoded["attention_mask"])).logits)
    np.testing.assert_allclose(our_logits, logits, atol=1e-4)
    np.testing.assert_array_equal(our_logits.argmax(-1), logits.argmax(-1))
    labels = [model.config.label2id[nli.NLI_LABELS[r.label]] for r in rows]
    assert (logits.argmax(-1) == labels).sum() / len(rows) == pytest.approx(results["seeds"][0]["test"]["en"])


def test_selection_reads_english_dev_only(finetuned, task, tmp_path):
    """The same run with every non-English dev label changed: the same step is selected, the same parameters are
    exported and the English and test numbers are equal; only de/fr dev accuracy moves (proving the changed labels
    were read, in the final evaluation only)."""
    workdir, results = finetuned
    dev_curve = [row["dev_en_accuracy"] for row in read_metrics(workdir / "xnli_seed0" / "metrics.jsonl")
                 if "dev_en_accuracy" in row]
    assert len(set(dev_curve)) > 1  # the choice is not trivial
    assert results["seeds"][0]["selected_step"] == 15 * (1 + int(np.argmax(dev_curve)))

    changed = tmp_path / "task"
    shutil.copytree(task, changed, ignore=shutil.ignore_patterns("run"))
    for language in ("de", "fr"):
        path = changed / "eval" / f"dev-{language}.tsv"
        lines = [line.split("\t") for line in path.read_text(encoding="utf-8").splitlines()]
        rotated = {label: nli.NLI_LABELS[(nli.NLI_LABELS.index(label) + 1) % 3] for label in nli.NLI_LABELS}
        path.write_text("".join(f"{p}\t{h}\t{rotated[l]}\n" for p, h, l in lines), encoding="utf-8")
    other = xnli.train_and_evaluate(_task_config(changed), tmp_path / "run")
    assert other["seeds"][0]["selected_step"] == results["seeds"][0]["selected_step"]
    assert other["test"] == results["test"] and other["dev"]["en"] == results["dev"]["en"]
    assert other["dev"]["de"] != results["dev"]["de"] and other["dev"]["fr"] != results["dev"]["fr"]
    first = hf.hf_tensors(hf.load_pretrained(workdir / "xnli_seed0" / "model"))
    second = hf.hf_tensors(hf.load_pretrained(tmp_path / "run" / "xnli_seed0" / "model"))
    for name in first:
        np.testing.assert_array_equal(first[name], second[name], err_msg=name)


def test_a_finished_run_is_final_and_more_seeds_reuse_the_finished_ones(finetuned, task, tmp_path, capsys):
    workdir, results = finetuned
    before = _contents(workdir)
    again = xnli.train_and_evaluate(_task_config(task), workdir)
    assert f"{workdir}: finished earlier" in capsys.readouterr().out
    assert _contents(workdir) == before  # every file as it was
    assert {k: again[k] for k in ("dev", "test", "seeds")} == {k: results[k] for k in ("dev", "test", "seeds")}
    # Another seed extends the run: the finished seed's results are reused, not trained again.
    extended = tmp_path / "extended"
    shutil.copytree(workdir, extended)
    seeds = tuple(_task_config(task).seeds)
    more = xnli.train_and_evaluate(_task_config(task, f"seeds={(*seeds, max(seeds) + 1)}"), extended)
    out = capsys.readouterr().out
    assert f"seed {seeds[0]}: reused the finished results" in out and "config.seeds" in out
    assert (extended / "xnli_seed0" / "metrics.jsonl").read_bytes() == before["xnli_seed0/metrics.jsonl"]
    assert [row["seed"] for row in more["seeds"]] == [*seeds, max(seeds) + 1]


# ---------------------------------------------------------------------------------------------- readers


def test_every_reader_maps_labels_on_known_rows(tmp_path, monkeypatch):
    """Each `config.train.format` / `config.eval.format` reaches its reader, with labels in NLI_LABELS order."""
    rows = xnli.read_train_examples(_config("train.max_examples=0"))  # the embedded MultiNLI sample
    assert len(rows) == 3000 and len(xnli.read_train_examples(_config())) == 1000  # runlocal takes the first 1,000
    assert (rows[1].premise, rows[1].label, rows[2].label) == ("yeah or working in the system", 0, 1)
    glue_file = TEST_DATA / "multinli" / "mnli_train_glue_format_kshot_48.tsv"
    glue = xnli.read_train_examples(_config("train.format=glue_mnli", f"train.path={glue_file}"))
    assert (glue[0].premise, glue[0].label) == ("Price caps may sound more attractive with every passing rate case.", 0)
    mt = tmp_path / "mt"
    mt.mkdir()
    for language in ("en", "de"):
        (mt / f"multinli.train.{language}.tsv").write_text(
            f"premise\thypo\tlabel\nA {language}\tB\tcontradictory\nC\tD\tneutral\n", encoding="utf-8")
    translated = xnli.read_train_examples(_config("train.format=xnli_mt", f"train.path={mt}/multinli.train.en.tsv",
                                                  "train_languages=('de',)", f"train.xnli_mt_dir={mt}"))
    assert [(e.premise, e.label, e.language) for e in translated] == [
        ("A en", 2, "en"), ("C", 1, "en"), ("A de", 2, "de"), ("C", 1, "de")]

    embedded = xnli.read_eval_examples(_config())  # XTREME layout; test labels from test-index.tsv
    assert len(embedded) == 30 and {len(v) for (split, _), v in embedded.items()} == {150, 300}
    dev_en = embedded["dev", "en"][0]
    assert (dev_en.premise, dev_en.hypothesis, dev_en.label) == (
        "And he said, Mama, I'm home.", "He called his mom as soon as the school bus dropped him off.", 1)
    assert [e.label for e in embedded["test", "ar"][:3]] == [2, 0, 1]
    original = xnli.read_eval_examples(_config("eval.format=xnli_original", f"eval.path={TEST_DATA}/xnli_original",
                                               "eval.languages=('ar','sw')"))
    assert (original["dev", "ar"][0].hypothesis, original["dev", "ar"][0].label) == (
        "اتصل بأمه حالما أوصلته حافلة المدرسية.", 1)
    assert [len(original[key]) for key in sorted(original)] == [6, 3, 7, 16]  # dev ar, dev sw, test ar, test sw

    calls = []
    monkeypatch.setattr(nli, "read_tfds_nli", lambda name, **kwargs: calls.append((name, kwargs)) or [dev_en])
    xnli.read_train_examples(_config("train.format=tfds", "train.path=/data/tfds"))
    xnli.read_eval_examples(_config("eval.format=tfds", "eval.path=/data/tfds", "eval.languages=('en',)"))
    assert calls == [("multi_nli", {"data_dir": "/data/tfds", "split": "train"}),
                     ("xnli", {"data_dir": Path("/data/tfds"), "split": "validation", "language": "en"}),
                     ("xnli", {"data_dir": Path("/data/tfds"), "split": "test", "language": "en"})]


# ---------------------------------------------------------------------------------------------- bad input


@pytest.fixture
def used_workdir(tmp_path):
    """A workdir holding a user's file and the results of an earlier run: a failed run must leave both as they are."""
    workdir = tmp_path / "workdir"
    workdir.mkdir()
    (workdir / "notes.txt").write_text("mine\n")
    (workdir / "xnli_results.json").write_text('{"earlier": true}\n')
    return workdir


def _contents(folder: Path) -> dict:
    return {str(path.relative_to(folder)): path.read_bytes() for path in sorted(folder.rglob("*")) if path.is_file()}


def _bad_inputs(task: Path, tmp_path: Path) -> dict:
    (tmp_path / "neither").mkdir()
    (tmp_path / "neither" / "weights.bin").write_bytes(b"0")
    (tmp_path / "unfinished" / "checkpoints").mkdir(parents=True)
    partial = tmp_path / "eval"
    shutil.copytree(task / "eval", partial)
    (partial / "dev-fr.tsv").unlink()
    bad_label = tmp_path / "train.jsonl"
    bad_label.write_text(json.dumps({"text_a": "A", "text_b": "B", "label": "neutral"}) + "\n"
                         + json.dumps({"text_a": "C", "text_b": "D", "label": "maybe"}) + "\n", encoding="utf-8")
    return {
        "neither": ([f"init={tmp_path / 'neither'}"],
                    rf"config.init={tmp_path / 'neither'}: neither a distil workdir \(no student/\) nor a Hugging Face "
                    r"folder"),
        "missing": ([f"init={tmp_path / 'missing'}"], rf"config.init={tmp_path / 'missing'}: no such folder"),
        "unfinished": ([f"init={tmp_path / 'unfinished'}"],
                       r"a distil workdir whose distillation has not finished \(no student/ yet\)"),
        "language": ([f"eval.path={partial}"],
                     rf"config.eval.languages: no evaluation file for language 'fr': {partial}/dev-fr.tsv is missing"),
        "label": ([f"train.path={bad_label}"], rf"{bad_label}:2: unknown MultiNLI label 'maybe'; expected one of "
                                               r"\['contradiction', 'entailment', 'neutral'\]"),
        "max_length": (["max_length=65"], rf"config.max_length is 65 but config.init {task}/distill_run/student has "
                                          r"max_position_embeddings 64"),
        "empty_init": (["init=", "allow_random_init=False"], r"config.init is empty"),
        "inside_init": ([], r"is or lies inside the model folder"),
    }


@pytest.mark.parametrize("case", ["neither", "missing", "unfinished", "language", "label", "max_length", "empty_init",
                                  "inside_init"])
def test_bad_input_is_named_and_loses_nothing(case, task, tmp_path, used_workdir):
    overrides, message = _bad_inputs(task, tmp_path)[case]
    workdir = task / "distill_run" / "student" / "xnli" if case == "inside_init" else used_workdir
    before = _contents(used_workdir)
    with pytest.raises((ValueError, OSError), match=message):
        xnli.train_and_evaluate(_task_config(task, *overrides), workdir)
    assert _contents(used_workdir) == before
    assert not (task / "distill_run" / "student" / "xnli").exists()


def test_bad_input_through_the_command(task, tmp_path, used_workdir, capsys):
    """One line naming the path, exit code 2; a config override given to `report` is refused."""
    before = _contents(used_workdir)
    code = cli.main(["xnli", "--config", "distilmbert_xnli:runlocal", "--workdir", str(used_workdir),
                     f"--config.init={tmp_path / 'nowhere'}"])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1
    assert err.startswith(f"distil xnli: error: config.init={tmp_path / 'nowhere'}: no such folder")
    assert _contents(used_workdir) == before
    assert cli.main(["xnli", "--workdir", str(used_workdir), "--config.max_length=-3"]) == 2
    assert "config.max_length must be >= 4" in capsys.readouterr().err
    assert cli.main(["xnli", "--workdir", str(used_workdir), "--config.seeds=(1,1)"]) == 2
    assert "config.seeds must be distinct integers >= 0" in capsys.readouterr().err
    assert _contents(used_workdir) == before
