"""`distil xnli`: fine-tune on English NLI, select on English dev only, evaluate every XNLI language; several seeds.

    train_and_evaluate(config, workdir) -> results (also written to workdir/xnli_results.{json,md,png})

Sections, in order: config checks -> the model to start from (a distil workdir's `student/`, any Hugging Face BERT
or DistilBERT folder with or without a head, or a small random model) -> data (training rows, dev and test rows of
every language, all read, checked and encoded before anything is written) -> mesh, the jitted train and eval steps
-> per seed: train state created sharded (encoder copied, new head), restore, loop (English dev at each selection
point), evaluation of the selected parameters, export -> the results files. The config is read here and only here.

The zero-shot protocol (Conneau et al. 2018, XNLI; Wu & Dredze 2019 for mBERT): train on English, choose the
checkpoint on English dev only, and look at the other languages' labels only in the final evaluation. Nothing in the
loop reads a non-English example; the selected step depends on English dev alone (tests/test_xnli.py changes the
other languages' dev labels and checks the selected parameters are the same).

Initialisation follows transformers' `*ForSequenceClassification.from_pretrained(folder)`: every encoder tensor (and
BERT's pretrained pooler, when the folder stores one) is copied; the classification head (BERT: classifier on the
pooled [CLS]; DistilBERT: pre_classifier, ReLU, dropout, classifier) is new, drawn from the seed, so seeds differ in
head initialisation, dropout and data order.

Evaluation counts every example exactly once: the last batch of a split is completed with fill rows of weight 0,
and the eval step returns (correct, count) sums, added up on the host.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import math
import os
import time
from pathlib import Path

import grain
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from flax import nnx

from distil import hf, report, sharding, storage
from distil.atomic import OutputError, make_output_folder, write_text_atomically
from distil.config import ConfigError
from distil.data import nli
from distil.data.batching import batches_per_epoch
from distil.data.embedded import embedded_nli_train, embedded_wordpiece_vocab, embedded_xnli_dir
from distil.data.nli_batches import EvalSet, NliBatches, take_rows
from distil.models import ModelConfig, abstract_model, model_class, parameter_count
from distil.tokenization import default_vocab_path, load_tokenizer
from distil.train import checkpoints
from distil.train.metrics import MetricsWriter, Progress
from distil.train.run import (CHECKPOINT_DIR, RESULTS_FILE, SEED_DIR, SEED_RESULTS_FILE, local_inputs, open_run,
                              read_json, resolve_config)
from distil.train.state import (TrainState, abstract_train_state, create_train_state, learning_rate_schedule,
                                make_optimizer)
from distil.train.step import frozen_paths, zero_frozen
from distil.train.tensorboard import ProfileWindow
from distil.train.trainer import (check_optimizer, configured_device_count, describe_analysis, host_params, log,
                                  mesh_from_config, mesh_size, optimizer_settings, step_analysis,
                                  stop_if_not_finite)

LABEL_NAMES = list(nli.NLI_LABELS)
TRAIN_FORMATS = ("embedded", "multinli_jsonl", "glue_mnli", "xnli_mt", "tfds")
EVAL_FORMATS = ("embedded", "xtreme", "xnli_original", "tfds")
_TOKENIZER_FILES = ("tokenizer.json", "vocab.txt")


# --------------------------------------------------------------------------------------------- config checks


def check_config(config: ml_collections.ConfigDict, *, num_devices: int | None, process_count: int) -> None:
    """Errors that need no model or data, naming the key and what was expected (`num_devices=None`: a launcher, far
    from the devices; every check that does not depend on them)."""
    languages = nli.xnli_languages()
    seeds = tuple(config.seeds)
    if not seeds or len(set(seeds)) != len(seeds) or any(not isinstance(s, int) or s < 0 for s in seeds):
        raise ConfigError(f"config.seeds must be distinct integers >= 0, at least one, got {seeds}")
    if config.train.format not in TRAIN_FORMATS:
        raise ConfigError(f"config.train.format must be one of {list(TRAIN_FORMATS)}, got {config.train.format!r}")
    if config.eval.format not in EVAL_FORMATS:
        raise ConfigError(f"config.eval.format must be one of {list(EVAL_FORMATS)}, got {config.eval.format!r}")
    for section in ("train", "eval"):
        if config[section].format != "embedded" and not config[section].path:
            raise ConfigError(f"config.{section}.path is empty; config.{section}.format="
                              f"{config[section].format!r} reads its data from there")
    unknown = [language for language in config.eval.languages if language not in languages]
    if unknown or "en" not in config.eval.languages:
        raise ConfigError(f"config.eval.languages={tuple(config.eval.languages)}: expected XNLI languages "
                          f"{' '.join(languages)}, including en (the model is selected on English dev)")
    unknown = [language for language in config.train_languages if language not in languages or language == "en"]
    if unknown:
        raise ConfigError(f"config.train_languages: {unknown} are not XNLI languages other than en (English is "
                          "always trained on)")
    if config.train_languages and not config.train.xnli_mt_dir:
        raise ConfigError("config.train_languages is set but config.train.xnli_mt_dir is empty; set it to the "
                          "XNLI-MT-1.0 multinli/ folder holding multinli.train.<lang>.tsv")
    if config.max_length < 4:
        raise ConfigError(f"config.max_length must be >= 4 ([CLS] premise [SEP] hypothesis [SEP]), got "
                          f"{config.max_length}")
    if config.num_steps < 0 or config.num_epochs <= 0 and not config.num_steps:
        raise ConfigError(f"config.num_steps ({config.num_steps}) must be > 0, or config.num_epochs > 0")
    if config.eval_every_steps < 0 or config.log_every_steps <= 0:
        raise ConfigError("config.eval_every_steps must be >= 0 (0: at the end of each epoch) and "
                          "config.log_every_steps > 0")
    check_optimizer(config.optimizer)
    if config.eval.pad_to_multiple < 1:
        raise ConfigError(f"config.eval.pad_to_multiple must be >= 1, got {config.eval.pad_to_multiple}")
    if config.train.max_examples < 0:
        raise ConfigError(f"config.train.max_examples must be >= 0 (0: all), got {config.train.max_examples}")
    data, fsdp, _ = mesh_size(config, num_devices) if num_devices is not None else (1, 1, 1)
    for key in ("batch_size", "eval.batch_size"):
        value = config.batch_size if key == "batch_size" else config.eval.batch_size
        if value <= 0 or value % (data * fsdp) or value % process_count:
            raise ConfigError(f"config.{key}={value} must be a positive multiple of the data x fsdp = {data * fsdp} "
                              f"devices and of the {process_count} processes")


# -------------------------------------------------------------------------------------------- starting model


@dataclasses.dataclass(frozen=True)
class Start:
    """What fine-tuning starts from: the classification model's config, the parameters copied into it (by distil
    path; empty for a random model), the Hugging Face folder read (None for a random model) and a display name."""

    config: ModelConfig
    pretrained: dict[str, np.ndarray]
    folder: storage.Location | None  # as config.init names it (a bucket's, not its local copy)
    name: str

    def describe(self) -> str:
        """Where the parameters come from, as transformers' "newly initialized" warning says it."""
        if self.folder is None:
            return "every parameter random"
        paths = [".".join(map(str, path)) for path, _ in nnx.to_flat_state(nnx.state(abstract_model(self.config),
                                                                                      nnx.Param))]
        new = sorted({path.split(".")[0] for path in paths if path not in self.pretrained})
        return f"{len(self.pretrained)} tensors from {self.folder}, new: {', '.join(new)}"


def resolve_init(init: str) -> storage.Location:
    """The Hugging Face folder `config.init` means: a distil workdir's `student/` export, or the folder itself
    (local or on an object store)."""
    path = storage.location(init)
    expected = ("expected a distil workdir (holding student/, the exported student) or a Hugging Face BERT / "
                "DistilBERT folder (config.json + model.safetensors)")
    if not path.is_dir():
        raise ConfigError(f"config.init={init}: {'is a file' if path.exists() else 'no such folder'}; {expected}")
    if (path / "student" / hf.MODEL_CONFIG_FILE).is_file():
        return path / "student"
    has_weights = (path / hf.WEIGHTS_FILE).is_file() or (path / hf.WEIGHTS_INDEX_FILE).is_file()
    if (path / hf.MODEL_CONFIG_FILE).is_file() and has_weights:
        return path
    if (path / "checkpoints").is_dir():
        raise ConfigError(f"config.init={init}: a distil workdir whose distillation has not finished (no student/ "
                          "yet); rerun `distil distill` on it to finish and export the student, or pass a Hugging "
                          "Face folder")
    raise ConfigError(f"config.init={init}: neither a distil workdir (no student/) nor a Hugging Face folder (no "
                      f"config.json beside model.safetensors); {expected}")


def _classification_config(base: ModelConfig, config) -> ModelConfig:
    return base.replace(head="classification", num_labels=len(LABEL_NAMES), add_pooler=base.family == "bert",
                        dtype=config.dtype, param_dtype="float32")


def _random_config(config, vocab_size: int) -> ModelConfig:
    model = config.model
    bert = model.family == "bert"
    if model.family not in ("bert", "distilbert"):
        raise ConfigError(f"config.model.family must be 'bert' or 'distilbert', got {model.family!r}")
    try:
        return ModelConfig(family=model.family, vocab_size=vocab_size, hidden_size=model.hidden_size,
                           num_hidden_layers=model.num_hidden_layers, num_attention_heads=model.num_attention_heads,
                           intermediate_size=model.intermediate_size,
                           max_position_embeddings=model.max_position_embeddings, type_vocab_size=2 if bert else 0,
                           add_pooler=bert, classifier_dropout=None if bert else 0.2, head="classification",
                           num_labels=len(LABEL_NAMES), dtype=config.dtype)
    except ValueError as err:
        raise ConfigError(f"config.model: {err}") from None


def starting_model(config):
    """(Start, tokenizer, tokenizer path), checked together: one vocabulary, `config.max_length` within the
    model's positions."""
    folder = resolve_init(config.init) if config.init else None
    local_folder = None if folder is None else storage.local_copy(folder, "config.init")
    if folder is None and not config.allow_random_init:
        raise ConfigError("config.init is empty: set it to a distil workdir or a Hugging Face folder (e.g. "
                          "bert-base-multilingual-cased downloaded beforehand), or set config.allow_random_init=True "
                          "to fine-tune a small random model (the :runlocal variants)")
    if config.tokenizer:
        tokenizer_path = config.tokenizer
    elif folder is not None:
        tokenizer_path = (local_folder if any((local_folder / name).is_file() for name in _TOKENIZER_FILES)
                          else default_vocab_path())
    else:
        tokenizer_path = embedded_wordpiece_vocab()
    tokenizer = load_tokenizer(tokenizer_path)
    if folder is None:
        model_config = _random_config(config, tokenizer.get_vocab_size())
        start = Start(model_config, {}, None, config.name or f"random {model_config.family} "
                      f"{model_config.num_hidden_layers}x{model_config.hidden_size}")
        where = "config.model"
    else:
        checkpoint = hf.read_checkpoint(local_folder)
        model_config = _classification_config(checkpoint.config, config)
        pretrained = hf.pretrained_parameters(checkpoint, model_config)
        name = config.name or (folder.parent.name if folder.name == "student" else folder.name)
        start = Start(model_config, pretrained, folder, name)
        where = f"config.init {folder}"
    hf.check_tokenizer(start.config, tokenizer, model=where, tokenizer_name=f"the tokenizer {tokenizer_path}",
                       max_length=config.max_length, max_length_name="config.max_length")
    return start, tokenizer, tokenizer_path


# ------------------------------------------------------------------------------------------------------ data


def _first(examples: list, limit: int) -> list:
    return examples[:limit] if limit else examples


def read_train_examples(config) -> list[nli.NliExample]:
    """English training rows from `config.train` (at most `max_examples` of each file, in file order), then the
    translate-train rows of `config.train_languages` from XNLI-MT."""
    form, path = config.train.format, config.train.path
    if form == "embedded":
        english = nli.read_multinli_jsonl(embedded_nli_train())
    elif form == "multinli_jsonl":
        english = nli.read_multinli_jsonl(path)
    elif form == "glue_mnli":
        english = nli.read_glue_mnli(path)
    elif form == "xnli_mt":
        english = nli.read_xnli_mt(path, language="en")
    else:
        english = nli.read_tfds_nli("multi_nli", data_dir=path, split="train")
    examples = _first(english, config.train.max_examples)
    for language in config.train_languages:
        file = Path(config.train.xnli_mt_dir) / f"multinli.train.{language}.tsv"
        if not file.is_file():
            raise ConfigError(f"config.train_languages: no training file for language {language!r}: {file} is "
                              "missing")
        examples += _first(nli.read_xnli_mt(file, language=language), config.train.max_examples)
    return examples


def read_eval_examples(config) -> dict[tuple[str, str], list[nli.NliExample]]:
    """{(split, language): rows} for dev and test of every language of `config.eval.languages`; a language whose
    file or rows are missing is an error naming it and the file."""
    form, path = config.eval.format, Path(config.eval.path or embedded_xnli_dir())
    out = {}
    for split in ("dev", "test"):
        if form == "xnli_original":
            file = path / f"xnli.{split}.tsv"
            by_language: dict[str, list] = {}
            for example in nli.read_xnli_original(file):
                by_language.setdefault(example.language, []).append(example)
        for language in config.eval.languages:
            if form in ("embedded", "xtreme"):
                file = path / f"{split}-{language}.tsv"
                if not file.is_file():
                    raise ConfigError(f"config.eval.languages: no evaluation file for language {language!r}: "
                                      f"{file} is missing")
                out[split, language] = nli.read_xtreme_xnli(path, split=split, language=language)
            elif form == "xnli_original":
                if language not in by_language:
                    raise ConfigError(f"config.eval.languages: no {split} rows for language {language!r} in {file} "
                                      f"(it has {' '.join(sorted(by_language))})")
                out[split, language] = by_language[language]
            else:
                tfds_split = "validation" if split == "dev" else "test"
                out[split, language] = nli.read_tfds_nli("xnli", data_dir=path, split=tfds_split, language=language)
    return out


def encode(examples, tokenizer, config, model_config: ModelConfig, what: str) -> dict[str, np.ndarray]:
    """`nli.encode_nli` (token types for BERT only), every label checked to be one of the three."""
    encoded = nli.encode_nli(examples, tokenizer, max_length=config.max_length,
                             with_token_types=model_config.type_vocab_size > 0)
    bad = np.flatnonzero((encoded["labels"] < 0) | (encoded["labels"] >= len(LABEL_NAMES)))
    if bad.size:
        raise ConfigError(f"{what}: row {bad[0]} has label {encoded['labels'][bad[0]]}; expected 0..2 "
                          f"({', '.join(LABEL_NAMES)})")
    return encoded


def fingerprint(*arrays: dict[str, np.ndarray]) -> str:
    """A short hash of encoded data, stored with checkpoints and results."""
    digest = hashlib.sha256()
    for encoded in arrays:
        for name in sorted(encoded):
            digest.update(name.encode())
            digest.update(np.ascontiguousarray(encoded[name]).tobytes())
    return digest.hexdigest()[:16]


# ------------------------------------------------------------------------------------------------------ steps


def _logits(model, batch, dropout_rngs=None):
    return model(batch["input_ids"], batch["attention_mask"], batch.get("token_type_ids"),
                 dropout_rngs=dropout_rngs).logits  # [batch, 3]


def make_train_step(graphdef: nnx.GraphDef, tx: optax.GradientTransformation, learning_rate: optax.Schedule, *,
                    frozen: set[tuple] = frozenset()):
    """The pure step `(state, batch) -> (state, metrics)`: cross-entropy averaged over the batch's real rows (fill
    rows weigh 0), dropout keyed by `fold_in(rng, step)`."""

    def loss_fn(params, batch, dropout_key):
        logits = _logits(nnx.merge(graphdef, params), batch, nnx.Rngs(dropout=dropout_key)).astype(jnp.float32)
        weights = batch["weights"].astype(jnp.float32)
        losses = optax.softmax_cross_entropy_with_integer_labels(logits, batch["labels"])
        count = jnp.maximum(weights.sum(), 1.0)
        correct = ((logits.argmax(-1) == batch["labels"]) * weights).sum()
        return (losses * weights).sum() / count, (correct / count, weights.sum())

    def train_step(state: TrainState, batch: dict) -> tuple[TrainState, dict]:
        dropout_key = jax.random.fold_in(jax.random.wrap_key_data(state.rng), state.step)
        (loss, (accuracy, examples)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params, batch,
                                                                                       dropout_key)
        grads = zero_frozen(grads, frozen)
        updates, opt_state = tx.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, zero_frozen(updates, frozen))
        metrics = {"loss": loss, "accuracy": accuracy, "grad_norm": optax.tree.norm(grads),
                   "learning_rate": learning_rate(state.step), "examples": examples,
                   "real_tokens": (batch["attention_mask"] * batch["weights"][:, None]).sum()}
        return TrainState(step=state.step + 1, rng=state.rng, params=params, opt_state=opt_state), metrics

    return train_step


def make_eval_step(graphdef: nnx.GraphDef, num_languages: int):
    """`(params, batch) -> (correct, count)`, int32 [num_languages] sums over the batch's real rows (no dropout)."""

    def eval_step(params, batch):
        predictions = _logits(nnx.merge(graphdef, params), batch).argmax(-1)
        weights = batch["weights"][:, None] * jax.nn.one_hot(batch["language"], num_languages, dtype=jnp.int32)
        return ((predictions == batch["labels"])[:, None] * weights).sum(0), weights.sum(0)

    return eval_step


def evaluate(eval_step, params, eval_set: EvalSet, *, global_batch: int, pad_to_multiple: int,
             batch_sharding) -> dict[str, tuple[int, int]]:
    """{language: (correct, count)} over every example of a split."""
    sums = [eval_step(params, sharding.make_global_batch(local, batch_sharding))
            for local in eval_set.batches(global_batch, pad_to_multiple)]
    correct, count = np.asarray(jax.device_get(sums), np.int64).sum(axis=0)
    return {language: (int(correct[index]), int(count[index])) for index, language in enumerate(eval_set.languages)}


@dataclasses.dataclass
class XnliSteps:
    """The fine-tuning steps, built once for every seed (as `distil.train.assembly` builds distill's): the model's
    structure, the optimizer, where the state and the batches live, the train step compiled ahead (its memory and
    FLOPs in `analysis`) and the eval step jitted (compiled per padded length on first use)."""

    graphdef: nnx.GraphDef
    tx: optax.GradientTransformation
    state_shardings: TrainState
    batch_sharding: jax.sharding.NamedSharding  # [batch, length]; make_global_batch fits it to other ranks
    train: object
    eval: object
    analysis: dict


def batch_shardings(batch: dict, batch_sharding: jax.sharding.NamedSharding) -> dict:
    """Each array of `batch` split along its first axis as `batch_sharding` splits [batch, length]."""
    return {name: jax.sharding.NamedSharding(batch_sharding.mesh, jax.P(*tuple(batch_sharding.spec)[: array.ndim]))
            for name, array in batch.items()}


def build_steps(config, model_config: ModelConfig, pretrained: dict[str, np.ndarray], num_steps: int, *,
                example_batch: dict, eval_example: dict, num_languages: int, mesh, rules) -> XnliSteps:
    """The steps for `model_config` started from `pretrained`, compiled against the abstract state (every seed's has
    the same shapes and shardings), before any seed's state exists."""
    settings = optimizer_settings(config.optimizer, num_steps)
    tx = make_optimizer(settings)
    build, init_params = _initializer(model_config, seed=0)
    abstract_pretrained = {key: jax.ShapeDtypeStruct(value.shape, value.dtype) for key, value in pretrained.items()}
    state, state_shardings = abstract_train_state(init_params, (abstract_pretrained,), tx, seed=0, mesh=mesh,
                                                  rules=rules)
    with sharding.activation_rules(mesh, rules):
        graphdef = nnx.graphdef(nnx.eval_shape(build))
    frozen = frozen_paths(state.params) if model_config.sinusoidal_pos_embds else set()
    batch_sharding = sharding.batch_sharding(mesh, rules)
    replicated = jax.sharding.NamedSharding(mesh, jax.P())
    train_shardings = batch_shardings(example_batch, batch_sharding)
    jitted = jax.jit(make_train_step(graphdef, tx, learning_rate_schedule(settings), frozen=frozen),
                     in_shardings=(state_shardings, train_shardings), out_shardings=(state_shardings, replicated),
                     donate_argnums=0)
    abstract_batch = {name: jax.ShapeDtypeStruct(array.shape, jnp.int32, sharding=train_shardings[name])
                      for name, array in example_batch.items()}
    begun = time.perf_counter()
    with sharding.activation_rules(mesh, rules):
        compiled = jitted.lower(state, abstract_batch).compile()
    analysis = step_analysis(compiled)
    log(f"compiled the train step in {time.perf_counter() - begun:.1f}s: {describe_analysis(analysis)}")
    eval_step = jax.jit(make_eval_step(graphdef, num_languages),
                        in_shardings=(state_shardings.params, batch_shardings(eval_example, batch_sharding)),
                        out_shardings=(replicated, replicated))
    return XnliSteps(graphdef, tx, state_shardings, batch_sharding, compiled, eval_step, analysis)


# -------------------------------------------------------------------------------------------- state and seeds


def _initializer(model_config: ModelConfig, seed: int):
    """(build, init_params): the model with a head drawn from `seed`; its trainable state with every parameter
    of `pretrained` (distil path -> array) put in place, traced inside the sharded init."""

    def build():
        with nnx.use_eager_sharding(False):
            return model_class(model_config)(model_config, rngs=nnx.Rngs(params=seed))

    def init_params(pretrained):
        params = nnx.state(build(), nnx.Param)
        return nnx.from_flat_state([
            (path, variable.replace(pretrained[key].astype(variable.get_value().dtype))
             if (key := ".".join(map(str, path))) in pretrained else variable)
            for path, variable in nnx.to_flat_state(params)
        ])

    return build, init_params


def initial_model(start: Start, seed: int):
    """The classification model before fine-tuning, unsharded on the default device: what the trainer's sharded
    init builds for `seed` (for tests and notebooks)."""
    build, init_params = _initializer(start.config, seed)
    return nnx.merge(nnx.graphdef(nnx.eval_shape(build)),
                     init_params({key: jnp.asarray(value) for key, value in start.pretrained.items()}))


def _place(pretrained: dict[str, np.ndarray], build, mesh, rules) -> dict[str, jax.Array]:
    """The copied parameters as global arrays split like the model's (every process holds the whole file)."""
    abstract = nnx.state(nnx.eval_shape(build), nnx.Param)
    shardings = {".".join(map(str, path)): variable.get_value()
                 for path, variable in nnx.to_flat_state(sharding.state_shardings(abstract, mesh, rules))}
    return {key: jax.make_array_from_callback(value.shape, shardings[key], lambda index, value=value: value[index])
            for key, value in pretrained.items()}


# ------------------------------------------------------------------------------------------------------ main


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str | os.PathLike) -> dict:
    """Fine-tunes and evaluates every seed of `config.seeds` in `workdir` (resuming an interrupted seed, reusing a
    finished one) and writes `xnli_results.{json,md,png}`; returns the results."""
    workdir = storage.location(workdir)
    started = time.perf_counter()

    # Config checks, the starting model, the data: everything that can fail on bad input, before any write. Inputs
    # on an object store are read from local copies; the run records the config as given.
    resolve_config("xnli", config)
    recorded, config = config, local_inputs("xnli", config)
    check_config(config, num_devices=configured_device_count(config), process_count=jax.process_count())
    start, tokenizer, tokenizer_path = starting_model(config)
    model_config = start.config
    if start.folder is not None and not storage.is_remote(workdir) and not storage.is_remote(start.folder):
        resolved, folder = workdir.resolve(), start.folder.resolve()
        if resolved == folder or folder in resolved.parents:
            raise OutputError(f"{workdir}: is or lies inside the model folder {start.folder} that config.init "
                              "reads; choose a workdir outside it")
    train = encode(read_train_examples(config), tokenizer, config, model_config, "training data")
    evals = {key: encode(examples, tokenizer, config, model_config, f"{key[0]} {key[1]}")
             for key, examples in read_eval_examples(config).items()}
    languages = tuple(config.eval.languages)
    num_examples = len(train["labels"])
    steps_per_epoch = batches_per_epoch(num_examples, config.batch_size, drop_remainder=False)
    num_steps = config.num_steps or config.num_epochs * steps_per_epoch
    every = config.eval_every_steps or steps_per_epoch
    selection_steps = sorted({step for step in range(every, num_steps + 1, every)} | {num_steps})
    truncated = int((train["attention_mask"][:, -1] == 1).sum())
    log(f"distil xnli: {start.name} ({parameter_count(model_config):,} parameters; {start.describe()})")
    shown = f"{selection_steps[:6]}{' ...' if len(selection_steps) > 6 else ''}"
    log(f"  {num_examples} training pairs ({truncated} cut to config.max_length={config.max_length}); {num_steps} "
        f"steps of {config.batch_size}; English dev at steps {shown}; seeds {tuple(config.seeds)}")
    with open_run(workdir, "xnli", recorded) as run:
        run.report(log)
        if run.finished:
            return read_json(workdir / RESULTS_FILE, "XNLI results")
        # Mesh and the steps (compiled once, for every seed).
        mesh, rules = mesh_from_config(config)
        eval_sets = {split: EvalSet.pool({language: evals[split, language] for language in languages}, languages)
                     for split in ("dev", "test")}
        selection_set = EvalSet.pool({"en": evals["dev", "en"]}, languages)  # the only rows selection ever reads
        replicated = jax.sharding.NamedSharding(mesh, jax.P())
        steps = build_steps(config, model_config, start.pretrained, num_steps,
                            example_batch=take_rows(train, np.zeros(config.batch_size, np.int64)),
                            eval_example=take_rows(selection_set.encoded, np.zeros(1, np.int64)),
                            num_languages=len(languages), mesh=mesh, rules=rules)
        batch_sharding = steps.batch_sharding
        train_settings = {
            "init": str(start.folder) if start.folder else "random", "model": dataclasses.asdict(model_config),
            "train_data": fingerprint(train), "max_length": config.max_length, "batch_size": config.batch_size,
            "num_steps": num_steps, "optimizer": dict(config.optimizer), "process_count": jax.process_count(),
        }
        eval_settings = {"eval_data": fingerprint(*evals.values()), "languages": list(languages),
                         "selection_steps": selection_steps}

        def run_seed(seed: int) -> dict:
            seed_dir = workdir / SEED_DIR.format(seed=seed)
            seed_settings = {"seed": seed, **train_settings, **eval_settings}
            seed_results = seed_dir / SEED_RESULTS_FILE
            finished = read_json(seed_results, "seed results") if seed_results.is_file() else None
            if finished and finished.get("settings") == json.loads(json.dumps(seed_settings)):
                log(f"seed {seed}: reused the finished results in {seed_dir}")
                return finished

            with sharding.activation_rules(mesh, rules):
                build, init_params = _initializer(model_config, seed)
                placed = _place(start.pretrained, build, mesh, rules)
                state, state_shardings = create_train_state(init_params, (placed,), steps.tx, seed=seed, mesh=mesh,
                                                            rules=rules)
                train_step, eval_step, graphdef = steps.train, steps.eval, steps.graphdef

                def accuracies_on(eval_set: EvalSet, params) -> dict[str, tuple[int, int]]:
                    return evaluate(eval_step, params, eval_set, global_batch=config.eval.batch_size,
                                    pad_to_multiple=config.eval.pad_to_multiple, batch_sharding=batch_sharding)

                # Data and checkpoints: resume this seed if its folder holds a checkpoint.
                source = NliBatches(train, global_batch=config.batch_size, seed=seed,
                                    num_epochs=math.ceil(num_steps / steps_per_epoch))
                iterator = iter(grain.MapDataset.source(source).to_iter_dataset(
                    grain.ReadOptions(num_threads=2, prefetch_buffer_size=4)))
                manager = checkpoints.make_manager(seed_dir / CHECKPOINT_DIR, every_steps=num_steps, keep=1,
                                                   async_save=config.checkpoint.async_save)
                selection = {"params": jax.tree.map(lambda x: x.copy(), state.params),
                             "accuracy": jnp.asarray(-1.0, jnp.float32), "step": jnp.asarray(0, jnp.int32)}
                saved = {"train": state, "selected": selection}
                saved_shardings = {"train": state_shardings, "selected": {"params": state_shardings.params,
                                                                          "accuracy": replicated, "step": replicated}}
                abstract = sharding.abstract_with_shardings(jax.eval_shape(lambda: saved), saved_shardings)
                restored, start_step = checkpoints.restore(manager, abstract, iterator,
                                                           {"seed": seed, **train_settings})
                if restored is not None:
                    state, selection = restored["train"], restored["selected"]
                    log(f"seed {seed}: resumed from {manager.directory} at step {start_step}")

                # Loop: English dev at each selection point; the best parameters so far are kept (and checkpointed).
                metrics_writer = MetricsWriter(make_output_folder(seed_dir, "seed folder"), resume_step=start_step)
                progress = Progress(num_steps, start_step)
                profile = ProfileWindow.from_config(seed_dir, config.get("profile"))
                with checkpoints.PreemptionGuard() as guard, contextlib.closing(profile):
                    step = start_step
                    while step < num_steps:
                        local = next(iterator)
                        profile.before_step(step + 1)
                        state, metrics = train_step(state, sharding.make_global_batch(local, batch_sharding))
                        step += 1
                        profile.after_step(step, metrics)
                        metrics = jax.device_get(metrics)
                        stop_if_not_finite(metrics, (), step, manager, where=f"seed {seed}, ")
                        progress.add_tokens(float(metrics["real_tokens"]))
                        row = None
                        if step in selection_steps:
                            accuracy = report.accuracy(*accuracies_on(selection_set, state.params)["en"])
                            row = {"dev_en_accuracy": accuracy}
                            if accuracy > float(selection["accuracy"]):
                                selection = {"params": jax.tree.map(lambda x: x.copy(), state.params),
                                             "accuracy": jnp.asarray(accuracy, jnp.float32),
                                             "step": jnp.asarray(step, jnp.int32)}
                        if row is not None or step % config.log_every_steps == 0 or step == num_steps:
                            steps_per_sec, tokens_per_sec = progress.rates(step)
                            row = {"step": step, "seed": seed, **{k: float(v) for k, v in metrics.items()},
                                   "steps_per_sec": steps_per_sec, "tokens_per_sec": tokens_per_sec, **(row or {})}
                            run.check_held()
                            metrics_writer.write(row)
                            progress.report(row, ("accuracy", *(("dev_en_accuracy",) if "dev_en_accuracy" in row
                                                                else ())))
                        stop = guard.should_stop(manager, step)
                        if step in selection_steps or stop:
                            checkpoints.save(manager, step, {"train": state, "selected": selection}, iterator,
                                             {"seed": seed, **train_settings}, force=True)
                        if stop:
                            manager.wait_until_finished()
                            metrics_writer.close()
                            log(f"seed {seed}: saved a checkpoint at step {step} before stopping; rerun the same "
                                "command to resume")
                            return {"stopped_at": step}
                manager.wait_until_finished()
                metrics_writer.close()

                # The selected parameters on dev and test of every language.
                params = selection["params"]
                selected_step = int(selection["step"])
                accuracies = {"seed": seed, "selected_step": selected_step,
                              "selected_dev_en": float(selection["accuracy"])}
                for split in ("dev", "test"):
                    sums = accuracies_on(eval_sets[split], params)
                    accuracies[split] = {language: report.accuracy(*sums[language]) for language in languages}
                    accuracies.setdefault("average", {})[split] = report.language_average(accuracies[split])
                model = nnx.merge(graphdef, host_params(params))
            if jax.process_index() == 0:
                if config.export_models:
                    hf.save_pretrained(model, seed_dir / "model", tokenizer=tokenizer, label_names=LABEL_NAMES)
                write_text_atomically(seed_results,
                                      json.dumps({**accuracies, "settings": seed_settings}, indent=2) + "\n")
            averages = accuracies["average"]
            log(f"seed {seed}: selected step {selected_step} (English dev {100 * accuracies['selected_dev_en']:.1f}%);"
                f" average dev {100 * averages['dev']:.1f}%, test {100 * averages['test']:.1f}%")
            return accuracies

        per_seed = []
        for seed in config.seeds:
            outcome = run_seed(seed)
            if "stopped_at" in outcome:
                return outcome
            per_seed.append({key: value for key, value in outcome.items() if key != "settings"})

        # Results: per seed and aggregated, as JSON, Markdown beside the model card, and a bar plot.
        results = {
            "model": start.name, "family": model_config.family, "architecture": hf.architecture_name(model_config),
            "init": str(start.folder) if start.folder else "", "parameters": parameter_count(model_config),
            **report.aggregate_seeds(per_seed),
            "seeds": per_seed,
            "train_examples": num_examples,
            "train_languages": ["en", *config.train_languages],
            "eval_examples": {split: {language: len(evals[split, language]["labels"]) for language in languages}
                              for split in ("dev", "test")},
            "tokenizer": str(tokenizer_path), "max_length": config.max_length, "steps": num_steps,
            "step_analysis": steps.analysis, "seconds": time.perf_counter() - started,
        }
        if jax.process_index() == 0:
            report.write_files([results], workdir, RESULTS_FILE.removesuffix(".json"), results)
            log(f"wrote {workdir / RESULTS_FILE}, .md, .png")
        run.mark_finished()
        return results
