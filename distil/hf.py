"""Hugging Face folders (`config.json` + `model.safetensors`) <-> distil models.

The whole name mapping lives in `tensor_table`: one row per tensor, HF name -> distil parameter path, with the
layout change between them (torch `Linear.weight` is [out, in]; our kernels are [in, out], and attention kernels
are split per head as [embed, heads, kv]). Nothing else in distil knows HF names.

Reading accepts the layouts real checkpoints use: with or without the `bert.`/`distilbert.` prefix, the TF-era
`LayerNorm.gamma/beta` names, tied decoder weights stored or omitted, and tensors a head does not use
(`cls.seq_relationship`, a pooler under an MLM head), which are dropped and listed; any other stored tensor is
refused unless the caller accepts it (`read_checkpoint`, the one validation every reader uses). Writing produces
what transformers 5 writes itself, so `AutoModelForMaskedLM.from_pretrained(folder)` and
`pipeline("fill-mask", folder)` work offline.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import re
from pathlib import Path
from typing import Callable

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
from flax import nnx
from safetensors import safe_open
from safetensors.numpy import save_file

from distil import storage
from distil.atomic import write_folder_atomically
from distil.models import Model, ModelConfig, abstract_model

MODEL_CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
WEIGHTS_INDEX_FILE = "model.safetensors.index.json"

ARCHITECTURES = {
    ("bert", None): "BertModel",
    ("bert", "mlm"): "BertForMaskedLM",
    ("bert", "classification"): "BertForSequenceClassification",
    ("distilbert", None): "DistilBertModel",
    ("distilbert", "mlm"): "DistilBertForMaskedLM",
    ("distilbert", "classification"): "DistilBertForSequenceClassification",
}
_HEAD_OF_ARCHITECTURE = {arch: key for key, arch in ARCHITECTURES.items()}
# Pre-training checkpoints (the released mBERT one) carry the MLM head.
_HEAD_OF_ARCHITECTURE["BertForPreTraining"] = ("bert", "mlm")

_LOADABLE_DTYPES = {"F32": np.float32, "F16": np.float16, "BF16": ml_dtypes.bfloat16, "F64": np.float64}


class CheckpointFormatError(ValueError):
    """A Hugging Face folder distil cannot read or write; the message names the file and the tensor or field."""


# --------------------------------------------------------------------------------------------------------------
# The name table.


@dataclasses.dataclass(frozen=True)
class TensorRow:
    hf_name: str
    distil_path: str
    layout: str  # how the HF tensor maps onto ours: see _to_distil / _to_hf


def _linear(hf: str, ours: str) -> list[TensorRow]:
    return [TensorRow(f"{hf}.weight", f"{ours}.kernel", "linear"), TensorRow(f"{hf}.bias", f"{ours}.bias", "same")]


def _layer_norm(hf: str, ours: str) -> list[TensorRow]:
    return [TensorRow(f"{hf}.weight", f"{ours}.scale", "same"), TensorRow(f"{hf}.bias", f"{ours}.bias", "same")]


def _attention(hf_names: dict[str, str], ours: str) -> list[TensorRow]:
    rows = []
    for part in ("query", "key", "value"):
        rows.append(TensorRow(f"{hf_names[part]}.weight", f"{ours}.{part}.kernel", "heads_in"))
        rows.append(TensorRow(f"{hf_names[part]}.bias", f"{ours}.{part}.bias", "heads_bias"))
    rows.append(TensorRow(f"{hf_names['output']}.weight", f"{ours}.output.kernel", "heads_out"))
    rows.append(TensorRow(f"{hf_names['output']}.bias", f"{ours}.output.bias", "same"))
    return rows


def tensor_table(config: ModelConfig) -> list[TensorRow]:
    """Every parameter of a distil model of this config, with its transformers name (prefixed as a model with a
    head saves it)."""
    rows: list[TensorRow] = []
    if config.family == "bert":
        base = "bert." if config.head else ""
        emb = f"{base}embeddings"
        rows.append(TensorRow(f"{emb}.word_embeddings.weight", "encoder.embeddings.word_embeddings.embedding", "same"))
        rows.append(
            TensorRow(f"{emb}.position_embeddings.weight", "encoder.embeddings.position_embeddings.embedding", "same")
        )
        rows.append(
            TensorRow(
                f"{emb}.token_type_embeddings.weight", "encoder.embeddings.token_type_embeddings.embedding", "same"
            )
        )
        rows += _layer_norm(f"{emb}.LayerNorm", "encoder.embeddings.layer_norm")
        for i in range(config.num_hidden_layers):
            hf, ours = f"{base}encoder.layer.{i}", f"encoder.layers.{i}"
            names = {p: f"{hf}.attention.self.{p}" for p in ("query", "key", "value")}
            names["output"] = f"{hf}.attention.output.dense"
            rows += _attention(names, f"{ours}.attention")
            rows += _layer_norm(f"{hf}.attention.output.LayerNorm", f"{ours}.attention_norm")
            rows += _linear(f"{hf}.intermediate.dense", f"{ours}.ffn.intermediate")
            rows += _linear(f"{hf}.output.dense", f"{ours}.ffn.output")
            rows += _layer_norm(f"{hf}.output.LayerNorm", f"{ours}.output_norm")
        if config.add_pooler:
            rows += _linear(f"{base}pooler.dense", "pooler")
        if config.head == "mlm":
            rows += _linear("cls.predictions.transform.dense", "mlm_head.transform")
            rows += _layer_norm("cls.predictions.transform.LayerNorm", "mlm_head.layer_norm")
            rows.append(TensorRow("cls.predictions.bias", "mlm_head.bias", "same"))
        if config.head == "classification":
            rows += _linear("classifier", "classifier")
    else:
        base = "distilbert." if config.head else ""
        emb = f"{base}embeddings"
        rows.append(TensorRow(f"{emb}.word_embeddings.weight", "encoder.embeddings.word_embeddings.embedding", "same"))
        rows.append(
            TensorRow(f"{emb}.position_embeddings.weight", "encoder.embeddings.position_embeddings.embedding", "same")
        )
        rows += _layer_norm(f"{emb}.LayerNorm", "encoder.embeddings.layer_norm")
        for i in range(config.num_hidden_layers):
            hf, ours = f"{base}transformer.layer.{i}", f"encoder.layers.{i}"
            names = {"query": f"{hf}.attention.q_lin", "key": f"{hf}.attention.k_lin", "value": f"{hf}.attention.v_lin"}
            names["output"] = f"{hf}.attention.out_lin"
            rows += _attention(names, f"{ours}.attention")
            rows += _layer_norm(f"{hf}.sa_layer_norm", f"{ours}.attention_norm")
            rows += _linear(f"{hf}.ffn.lin1", f"{ours}.ffn.intermediate")
            rows += _linear(f"{hf}.ffn.lin2", f"{ours}.ffn.output")
            rows += _layer_norm(f"{hf}.output_layer_norm", f"{ours}.output_norm")
        if config.head == "mlm":
            rows += _linear("vocab_transform", "mlm_head.transform")
            rows += _layer_norm("vocab_layer_norm", "mlm_head.layer_norm")
            rows.append(TensorRow("vocab_projector.bias", "mlm_head.bias", "same"))
        if config.head == "classification":
            rows += _linear("pre_classifier", "pre_classifier")
            rows += _linear("classifier", "classifier")
    return rows


def _to_distil(layout: str, tensor: np.ndarray, config: ModelConfig) -> np.ndarray:
    heads, head_dim, hidden = config.num_attention_heads, config.head_dim, config.hidden_size
    if layout == "same":
        return tensor
    if layout == "linear":  # torch [out, in] -> [in, out]
        return tensor.T
    if layout == "heads_in":  # [heads*kv, embed] -> [embed, heads, kv]
        return tensor.T.reshape(hidden, heads, head_dim)
    if layout == "heads_bias":  # [heads*kv] -> [heads, kv]
        return tensor.reshape(heads, head_dim)
    if layout == "heads_out":  # [embed, heads*kv] -> [heads, kv, embed]
        return tensor.T.reshape(heads, head_dim, hidden)
    raise AssertionError(layout)


def _to_hf(layout: str, param: np.ndarray) -> np.ndarray:
    if layout == "same":
        return param
    if layout == "linear":
        return param.T
    if layout == "heads_in":  # [embed, heads, kv] -> [heads*kv, embed]
        return param.reshape(param.shape[0], -1).T
    if layout == "heads_bias":
        return param.reshape(-1)
    if layout == "heads_out":  # [heads, kv, embed] -> [embed, heads*kv]
        return param.reshape(-1, param.shape[-1]).T
    raise AssertionError(layout)


def _hf_shape(layout: str, distil_shape: tuple[int, ...]) -> tuple[int, ...]:
    return _to_hf(layout, np.empty(distil_shape, np.int8)).shape


# --------------------------------------------------------------------------------------------------------------
# config.json


def _read_json(path: Path) -> dict:
    if not path.is_file():
        raise CheckpointFormatError(f"{path}: missing; a Hugging Face model folder needs {path.name}")
    return storage.read_json(path, error=CheckpointFormatError)


_REQUIRED = object()


def _int_field(hf: dict, name: str, path: Path, default=_REQUIRED, minimum: int = 1) -> int:
    value = hf.get(name, default)
    if value is _REQUIRED:
        raise CheckpointFormatError(f"{path}: field {name!r} is missing")
    if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
        raise CheckpointFormatError(f"{path}: field {name!r} must be an integer >= {minimum}, got {value!r}")
    return value


def _number_field(hf: dict, name: str, path: Path, default, check: Callable[[float], bool], expected: str):
    value = hf.get(name, default)
    if not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value) or not check(value):
        raise CheckpointFormatError(f"{path}: field {name!r} must be {expected}, got {value!r}")
    return value


def _probability(hf: dict, name: str, path: Path, default: float | None, optional: bool = False) -> float | None:
    if optional and hf.get(name, default) is None:
        return None
    return _number_field(hf, name, path, default, lambda p: 0 <= p < 1, "a probability in [0, 1)")


def _text_field(hf: dict, name: str, path: Path, default: str) -> str:
    value = hf.get(name, default)
    if not isinstance(value, str):
        raise CheckpointFormatError(f"{path}: field {name!r} must be a string, got {value!r}")
    return value


def config_from_hf(hf: dict, path: Path) -> ModelConfig:
    """Translates a transformers config.json (BERT or DistilBERT) into a `ModelConfig`; every field distil reads
    is checked for its type and range, with an error naming it."""
    if not isinstance(hf, dict):
        raise CheckpointFormatError(f"{path}: expected a JSON object {{...}}, got {type(hf).__name__}")
    model_type = hf.get("model_type")
    architectures = hf.get("architectures") or []
    if model_type not in ("bert", "distilbert"):
        raise CheckpointFormatError(
            f"{path}: field 'model_type' is {model_type!r}; distil reads 'bert' and 'distilbert' checkpoints"
        )
    if not isinstance(architectures, list) or not all(isinstance(a, str) for a in architectures):
        raise CheckpointFormatError(f"{path}: field 'architectures' must be a list of names, got {architectures!r}")
    architecture = architectures[0] if architectures else ARCHITECTURES[(model_type, None)]
    if architecture not in _HEAD_OF_ARCHITECTURE or _HEAD_OF_ARCHITECTURE[architecture][0] != model_type:
        supported = sorted(a for a, (family, _) in _HEAD_OF_ARCHITECTURE.items() if family == model_type)
        raise CheckpointFormatError(
            f"{path}: field 'architectures' is {architectures!r}; expected one of {supported}"
        )
    head = _HEAD_OF_ARCHITECTURE[architecture][1]
    if isinstance(hf.get("id2label"), dict) and hf["id2label"]:
        num_labels = len(hf["id2label"])
    else:
        num_labels = _int_field(hf, "num_labels", path, default=2)
    vocab_size = _int_field(hf, "vocab_size", path)
    if model_type == "bert":
        if hf.get("position_embedding_type", "absolute") != "absolute":
            raise CheckpointFormatError(f"{path}: field 'position_embedding_type' must be 'absolute'")
        if hf.get("is_decoder", False):
            raise CheckpointFormatError(f"{path}: field 'is_decoder' is true; distil encoders are bidirectional")
        activation = _text_field(hf, "hidden_act", path, "gelu")
        fields = dict(
            family="bert",
            vocab_size=vocab_size,
            hidden_size=_int_field(hf, "hidden_size", path),
            num_hidden_layers=_int_field(hf, "num_hidden_layers", path),
            num_attention_heads=_int_field(hf, "num_attention_heads", path),
            intermediate_size=_int_field(hf, "intermediate_size", path),
            max_position_embeddings=_int_field(hf, "max_position_embeddings", path, default=512),
            type_vocab_size=_int_field(hf, "type_vocab_size", path, default=2),
            layer_norm_eps=_number_field(hf, "layer_norm_eps", path, 1e-12, lambda eps: eps > 0, "a number > 0"),
            hidden_dropout=_probability(hf, "hidden_dropout_prob", path, 0.1),
            attention_dropout=_probability(hf, "attention_probs_dropout_prob", path, 0.1),
            classifier_dropout=_probability(hf, "classifier_dropout", path, None, optional=True),
            # BertForMaskedLM drops the pooler; BertModel and the classifier keep it.
            add_pooler=head != "mlm",
        )
    else:
        activation = _text_field(hf, "activation", path, "gelu")
        fields = dict(
            family="distilbert",
            vocab_size=vocab_size,
            hidden_size=_int_field(hf, "dim", path),
            num_hidden_layers=_int_field(hf, "n_layers", path),
            num_attention_heads=_int_field(hf, "n_heads", path),
            intermediate_size=_int_field(hf, "hidden_dim", path),
            max_position_embeddings=_int_field(hf, "max_position_embeddings", path, default=512),
            type_vocab_size=0,
            layer_norm_eps=1e-12,
            hidden_dropout=_probability(hf, "dropout", path, 0.1),
            attention_dropout=_probability(hf, "attention_dropout", path, 0.1),
            classifier_dropout=_probability(hf, "seq_classif_dropout", path, 0.2),
            sinusoidal_pos_embds=bool(hf.get("sinusoidal_pos_embds", False)),
            add_pooler=False,
        )
    if activation != "gelu":
        raise CheckpointFormatError(f"{path}: activation {activation!r} is not supported (only 'gelu')")
    stored_dtype = hf.get("dtype") or hf.get("torch_dtype") or "float32"  # transformers 5 / 4 names
    if stored_dtype not in ("float32", "bfloat16", "float16"):
        raise CheckpointFormatError(
            f"{path}: field 'dtype' is {stored_dtype!r}; expected 'float32', 'bfloat16' or 'float16'"
        )
    pad_token_id = 0 if hf.get("pad_token_id") is None else _int_field(hf, "pad_token_id", path, minimum=0)
    if pad_token_id >= vocab_size:
        raise CheckpointFormatError(
            f"{path}: field 'pad_token_id' is {pad_token_id}, expected an id below vocab_size {vocab_size}"
        )
    fields.update(
        param_dtype=stored_dtype,
        initializer_range=_number_field(hf, "initializer_range", path, 0.02, lambda r: r >= 0, "a number >= 0"),
        pad_token_id=pad_token_id,
        head=head,
        num_labels=num_labels,
    )
    try:
        return ModelConfig(**fields)
    except ValueError as err:
        raise CheckpointFormatError(f"{path}: {err}") from err


def config_to_hf(config: ModelConfig, label_names: list[str] | None = None) -> dict:
    hf: dict = {"architectures": [ARCHITECTURES[(config.family, config.head)]], "model_type": config.family}
    if config.family == "bert":
        hf.update(
            vocab_size=config.vocab_size,
            hidden_size=config.hidden_size,
            num_hidden_layers=config.num_hidden_layers,
            num_attention_heads=config.num_attention_heads,
            intermediate_size=config.intermediate_size,
            max_position_embeddings=config.max_position_embeddings,
            type_vocab_size=config.type_vocab_size,
            layer_norm_eps=config.layer_norm_eps,
            hidden_dropout_prob=config.hidden_dropout,
            attention_probs_dropout_prob=config.attention_dropout,
            classifier_dropout=config.classifier_dropout,
            hidden_act=config.hidden_act,
            position_embedding_type="absolute",
        )
    else:
        hf.update(
            vocab_size=config.vocab_size,
            dim=config.hidden_size,
            n_layers=config.num_hidden_layers,
            n_heads=config.num_attention_heads,
            hidden_dim=config.intermediate_size,
            max_position_embeddings=config.max_position_embeddings,
            dropout=config.hidden_dropout,
            attention_dropout=config.attention_dropout,
            seq_classif_dropout=config.classifier_dropout_rate,
            activation=config.hidden_act,
            sinusoidal_pos_embds=config.sinusoidal_pos_embds,
        )
    hf.update(
        initializer_range=config.initializer_range,
        pad_token_id=config.pad_token_id,
        tie_word_embeddings=True,
        dtype=config.param_dtype,
    )
    if config.head == "classification":
        names = label_names or [f"LABEL_{i}" for i in range(config.num_labels)]
        if len(names) != config.num_labels:
            raise ValueError(f"label_names has {len(names)} names for num_labels={config.num_labels}")
        hf["id2label"] = {str(i): name for i, name in enumerate(names)}
        hf["label2id"] = {name: i for i, name in enumerate(names)}
    return hf


# --------------------------------------------------------------------------------------------------------------
# Loading.


def _weight_files(folder: Path) -> list[Path]:
    single, index = folder / WEIGHTS_FILE, folder / WEIGHTS_INDEX_FILE
    if single.is_file():
        return [single]
    if index.is_file():
        weight_map = _read_json(index).get("weight_map")
        if not isinstance(weight_map, dict):
            raise CheckpointFormatError(f"{index}: field 'weight_map' is missing")
        return [folder / name for name in sorted(set(weight_map.values()))]
    raise CheckpointFormatError(
        f"{folder}: no {WEIGHTS_FILE} (or {WEIGHTS_INDEX_FILE}); distil reads safetensors weights only"
    )


def _legacy_name(name: str) -> str:
    """TF-era names: LayerNorm.gamma/beta -> LayerNorm.weight/bias."""
    if "LayerNorm" in name or "layer_norm" in name:
        if name.endswith(".gamma"):
            return name[: -len("gamma")] + "weight"
        if name.endswith(".beta"):
            return name[: -len("beta")] + "bias"
    return name


@dataclasses.dataclass(frozen=True)
class StoredTensor:
    """Where a tensor is stored and what its safetensors header says about it."""

    file: Path
    name: str  # as stored (a TF-era `gamma` keeps its name here)
    dtype: str  # safetensors name: F32, BF16, I64, ...
    shape: tuple[int, ...]

    def read(self) -> np.ndarray:
        with safe_open(str(self.file), framework="np") as reader:
            return reader.get_tensor(self.name)


def _stored_tensors(files: list[Path]) -> dict[str, StoredTensor]:
    """Canonical HF name -> stored tensor, from the safetensors headers alone."""
    stored: dict[str, StoredTensor] = {}
    for file in files:
        if not file.is_file():
            raise CheckpointFormatError(f"{file}: missing (named by {WEIGHTS_INDEX_FILE})")
        try:
            with safe_open(str(file), framework="np") as reader:
                for name in reader.keys():
                    header = reader.get_slice(name)
                    stored[_legacy_name(name)] = StoredTensor(file, name, header.get_dtype(), tuple(header.get_shape()))
        except Exception as err:  # safetensors raises its own error types for corrupt or truncated files
            raise CheckpointFormatError(f"{file}: not a readable safetensors file ({err})") from err
    return stored


def _resolve_prefix(stored: dict, family: str) -> Callable[[str], str]:
    """A BertModel saved alone has no `bert.` prefix; a head model has it. Accept either for the encoder."""
    prefix = f"{family}."

    def find(name: str) -> str:
        if name in stored:
            return name
        alternative = name[len(prefix):] if name.startswith(prefix) else prefix + name
        return alternative if alternative in stored else name

    return find


def _tied_copies(config: ModelConfig) -> dict[str, str]:
    """Stored copies of tensors an MLM head ties (transformers 5 omits them, older checkpoints store them) -> the
    table tensor each must equal: distil always ties them."""
    if config.head != "mlm":
        return {}
    embeddings = "encoder.embeddings.word_embeddings.embedding"
    table = {row.distil_path: row.hf_name for row in tensor_table(config)}
    if config.family == "bert":
        return {
            "cls.predictions.decoder.weight": table[embeddings],
            "cls.predictions.decoder.bias": table["mlm_head.bias"],
        }
    return {"vocab_projector.weight": table[embeddings]}


def _harmless_extra(name: str, config: ModelConfig) -> str | None:
    """Why a stored tensor outside the table can be dropped without changing the model, or None."""
    local = name[len(config.family) + 1:] if name.startswith(f"{config.family}.") else name
    if name.startswith("cls.seq_relationship."):
        return "next-sentence head of BertForPreTraining"
    if config.family == "bert" and local.startswith("pooler.") and not config.add_pooler:
        return "pooler, unused under an MLM head"
    if local == "embeddings.position_ids":
        return "position_ids buffer (0, 1, 2, ...)"
    return None


_LAYER = re.compile(r"(?:^|\.)(?:encoder|transformer)\.layer\.(\d+)\.")


def _stored_layers(names) -> list[int]:
    return sorted({int(m[1]) for m in map(_LAYER.search, names) if m})


@dataclasses.dataclass(frozen=True)
class Checkpoint:
    """A Hugging Face folder checked against its config.json, from the safetensors headers (and the tied tensors).

    Every tensor of `tensor_table(config)` is present with the expected shape and a float dtype; stored copies of
    tied tensors equal what they are tied to; other stored tensors are `dropped` (known to be harmless: the NSP
    head of BertForPreTraining, a pooler under an MLM head, the position_ids buffer) or `unused`, an error unless
    the caller accepts them.
    """

    folder: Path
    config: ModelConfig
    architecture: str  # as config.json names it (BertForPreTraining loads as BertForMaskedLM)
    tensors: dict[str, StoredTensor]  # table HF name -> stored tensor
    stored: dict[str, StoredTensor]  # everything in the weight files
    dropped: dict[str, str]  # stored name -> why it is not read
    unused: tuple[str, ...]


def read_config(folder: str | os.PathLike) -> ModelConfig:
    """The `ModelConfig` of a Hugging Face folder from its config.json alone: no weight file is opened (the memory
    dry run needs only shapes; `read_checkpoint` validates the weights)."""
    config_path = Path(folder) / MODEL_CONFIG_FILE
    return config_from_hf(_read_json(config_path), config_path)


def read_checkpoint(folder: str | os.PathLike, *, allow_unused: bool = False) -> Checkpoint:
    """The one validation of a checkpoint folder, shared by `load_pretrained` and `describe_pretrained` (so
    `distil inspect` rejects what `distil export` rejects). Errors name the file and the tensor or field."""
    folder = Path(folder)
    if not folder.exists():
        raise CheckpointFormatError(f"{folder}: no such folder; expected a Hugging Face folder ({MODEL_CONFIG_FILE} + "
                                    f"{WEIGHTS_FILE})")
    if not folder.is_dir():
        raise CheckpointFormatError(
            f"{folder}: is a file; expected a Hugging Face folder ({MODEL_CONFIG_FILE} + {WEIGHTS_FILE})"
        )
    config_path = folder / MODEL_CONFIG_FILE
    hf = _read_json(config_path)
    config = config_from_hf(hf, config_path)
    weight_files = _weight_files(folder)
    files = ", ".join(str(f) for f in weight_files)
    stored = _stored_tensors(weight_files)
    find = _resolve_prefix(stored, config.family)
    layers_note = (f" ({config_path.name} says num_hidden_layers={config.num_hidden_layers}; the weights hold layers "
                   f"{_stored_layers(stored)})")

    _, abstract_state = nnx.split(abstract_model(config))
    expected = {".".join(str(part) for part in path): leaf for path, leaf in nnx.to_flat_state(abstract_state)}
    tensors: dict[str, StoredTensor] = {}
    for row in tensor_table(config):
        name = find(row.hf_name)
        if name not in stored:
            layer = _stored_layers([row.hf_name])
            note = layers_note if layer and layer[0] not in _stored_layers(stored) else ""
            raise CheckpointFormatError(f"{files}: tensor {row.hf_name!r} is missing{note}")
        tensor = stored[name]
        if tensor.dtype not in _LOADABLE_DTYPES:
            raise CheckpointFormatError(
                f"{tensor.file}: tensor {row.hf_name!r} has dtype {tensor.dtype}; expected one of "
                f"{sorted(_LOADABLE_DTYPES)}"
            )
        want = _hf_shape(row.layout, expected[row.distil_path].shape)
        if tensor.shape != want:
            raise CheckpointFormatError(
                f"{tensor.file}: tensor {row.hf_name!r} has shape {list(tensor.shape)}, expected {list(want)} "
                f"(from {config_path})"
            )
        tensors[row.hf_name] = tensor
    missing = set(expected) - {row.distil_path for row in tensor_table(config)}
    if missing:  # the table and the model disagree: a bug in distil, not in the checkpoint
        raise AssertionError(f"tensor_table does not cover {sorted(missing)}")

    read_names = {find(row.hf_name) for row in tensor_table(config)}
    for copy, original in _tied_copies(config).items():
        name = find(copy)
        if name in stored:
            read_names.add(name)
            copied, tied = stored[name].read(), tensors[original].read()
            if copied.shape != tied.shape or not np.array_equal(copied.astype(tied.dtype), tied):
                raise CheckpointFormatError(
                    f"{stored[name].file}: tensor {name!r} differs from {original!r}; distil only supports tied "
                    "decoders"
                )
    dropped, unused = {}, []
    for name in sorted(set(stored) - read_names):
        reason = _harmless_extra(name, config)
        if reason is None:
            unused.append(stored[name].name)
        else:
            dropped[stored[name].name] = reason
    if unused and not allow_unused:
        extra_layers = [i for i in _stored_layers(unused) if i >= config.num_hidden_layers]
        note = layers_note if extra_layers else ""
        raise CheckpointFormatError(
            f"{files}: {len(unused)} tensor(s) that a {architecture_name(config)} of this config.json does not have: "
            f"{_short_list(unused)}{note}; accept and drop them with --allow-unused (allow_unused=True)"
        )
    architecture = (hf.get("architectures") or [ARCHITECTURES[(config.family, None)]])[0]
    return Checkpoint(folder, config, architecture, tensors, stored, dropped, tuple(unused))


def architecture_name(config: ModelConfig) -> str:
    """The transformers class a config is written as (BertForMaskedLM, DistilBertModel, ...)."""
    return ARCHITECTURES[(config.family, config.head)]


def _short_list(names, limit: int = 4) -> str:
    names = list(names)
    shown = ", ".join(repr(name) for name in names[:limit])
    return shown + (f" and {len(names) - limit} more" if len(names) > limit else "")


def load_pretrained(
    folder: str | os.PathLike,
    *,
    dtype: str | None = None,
    param_dtype: str | None = None,
    allow_unused: bool = False,
) -> Model:
    """Reads a transformers BERT/DistilBERT folder into a distil model (`distil.models.Bert` or `DistilBert`).

    The result is callable as `model(input_ids, attention_mask=..., token_type_ids=None)` and returns an
    `EncoderOutput` with `.last_hidden_state`, `.hidden_states` and `.logits` (None without a head). Parameters
    are stored in the checkpoint's `dtype` and computed in float32 unless `dtype` / `param_dtype` override the
    compute and storage dtypes ('float32', 'bfloat16', 'float16'). The folder is validated by `read_checkpoint`
    first; `allow_unused` drops stored tensors the model does not have instead of refusing the checkpoint.
    """
    checkpoint = read_checkpoint(folder, allow_unused=allow_unused)
    config = checkpoint.config
    overrides = {k: v for k, v in (("dtype", dtype), ("param_dtype", param_dtype)) if v is not None}
    if overrides:
        config = config.replace(**overrides)
    storage_dtype = jnp.dtype(config.param_dtype)
    graphdef, abstract_state = nnx.split(abstract_model(config))
    values = {
        row.distil_path: _to_distil(row.layout, checkpoint.tensors[row.hf_name].read(), config).astype(storage_dtype)
        for row in tensor_table(config)
    }
    flat = [
        (path, leaf.replace(jax.numpy.asarray(values[".".join(str(p) for p in path)])))
        for path, leaf in nnx.to_flat_state(abstract_state)
    ]
    state = nnx.from_flat_state(flat)
    return nnx.merge(graphdef, state)


def pretrained_parameters(checkpoint: Checkpoint, config: ModelConfig, *,
                          modules: tuple[str, ...] = ("encoder", "pooler")) -> dict[str, np.ndarray]:
    """What transformers' `from_pretrained` copies from a checkpoint into a model with another head: every
    parameter of a model of `config` (the checkpoint's family and sizes, any head) under one of `modules` that the
    checkpoint stores, by distil path (`encoder.layers.0.attention.query.kernel`), in distil's layout and
    `config.param_dtype`.

    Parameters the checkpoint does not store are absent, for the caller to initialise: a new classification head,
    and BERT's pooler when the checkpoint has none (a BertForMaskedLM saved by transformers; BertForPreTraining
    and BertModel folders store it, and `load_pretrained` drops it only because an MLM head does not use it).
    """
    if checkpoint.config.family != config.family:
        raise CheckpointFormatError(f"{checkpoint.folder}: holds a {checkpoint.architecture}, not a {config.family} "
                                    "model")
    find = _resolve_prefix(checkpoint.stored, config.family)
    _, abstract_state = nnx.split(abstract_model(config))
    expected = {".".join(str(part) for part in path): leaf for path, leaf in nnx.to_flat_state(abstract_state)}
    values = {}
    for row in tensor_table(config):
        name = find(row.hf_name)
        if row.distil_path.split(".")[0] not in modules or name not in checkpoint.stored:
            continue
        tensor = checkpoint.stored[name]
        want = _hf_shape(row.layout, expected[row.distil_path].shape)
        if tensor.shape != want or tensor.dtype not in _LOADABLE_DTYPES:
            raise CheckpointFormatError(f"{tensor.file}: tensor {name!r} has shape {list(tensor.shape)} and dtype "
                                        f"{tensor.dtype}, expected {list(want)} and a float dtype")
        values[row.distil_path] = _to_distil(row.layout, tensor.read(), config).astype(jnp.dtype(config.param_dtype))
    return values


def describe_pretrained(folder: str | os.PathLike, *, allow_unused: bool = False) -> dict:
    """A checkpoint's config, parameter counts per module and stored dtypes, after `read_checkpoint`'s validation
    (headers only, plus stored tied copies): what `distil inspect` prints."""
    from distil.models import parameter_count, parameter_counts_by_module

    checkpoint = read_checkpoint(folder, allow_unused=allow_unused)
    config = checkpoint.config
    stored_values_by_dtype: dict[str, int] = {}
    for tensor in checkpoint.stored.values():
        stored_values_by_dtype[tensor.dtype] = stored_values_by_dtype.get(tensor.dtype, 0) + int(np.prod(tensor.shape))
    return {
        "folder": str(checkpoint.folder),
        "architecture": architecture_name(config),
        "stored_architecture": checkpoint.architecture,
        "config": dataclasses.asdict(config),
        "parameters": parameter_count(config),
        "parameters_by_module": parameter_counts_by_module(config),
        "stored_tensors": len(checkpoint.stored),
        "stored_values_by_dtype": stored_values_by_dtype,
        "dropped_tensors": checkpoint.dropped,
        "unused_tensors": list(checkpoint.unused),
    }


def check_tokenizer(
    config: ModelConfig,
    tokenizer,
    *,
    model: str = "the model",
    tokenizer_name: str = "the tokenizer",
    max_length: int | None = None,
    max_length_name: str = "max_length",
) -> None:
    """A model and a tokenizer used together must share one vocabulary, and sequences of `max_length` tokens must
    fit the model's position embeddings: otherwise ids index past the embedding table and losses come out NaN."""
    size = tokenizer.get_vocab_size(with_added_tokens=True)
    if size != config.vocab_size:
        raise ValueError(
            f"{model} has vocab_size {config.vocab_size:,} but {tokenizer_name} has {size:,} tokens; a model needs "
            "the tokenizer of its own vocabulary"
        )
    if max_length is not None and max_length > config.max_position_embeddings:
        raise ValueError(
            f"{max_length_name} is {max_length} but {model} has max_position_embeddings "
            f"{config.max_position_embeddings}; use at most that"
        )


# --------------------------------------------------------------------------------------------------------------
# Saving.


def hf_tensors(model: Model) -> dict[str, np.ndarray]:
    """The model's parameters under their transformers names and layouts (numpy, in the parameter dtype)."""
    config = model.config
    params = {
        ".".join(str(p) for p in path): np.asarray(jax.device_get(leaf.get_value()))
        for path, leaf in nnx.to_flat_state(nnx.state(model, nnx.Param))
    }
    return {
        row.hf_name: np.ascontiguousarray(_to_hf(row.layout, params[row.distil_path])) for row in tensor_table(config)
    }


def save_pretrained(
    model: Model,
    folder: str | os.PathLike,
    *,
    tokenizer=None,
    label_names: list[str] | None = None,
    extra_files: dict[str, str] | None = None,
) -> Path:
    """Writes `config.json` + `model.safetensors` (and the tokenizer files when `tokenizer` is given, which must
    have the model's vocabulary). `extra_files` maps further file names to their UTF-8 text (e.g. the
    `kept_ids.json` of a trimmed vocabulary, `distil.trim`), written in the same folder and the same atomic step.

    The folder is written as a whole (`distil.atomic.write_folder_atomically`): it ends up holding exactly the new
    files, or after a failure what it held before, never a mix of both. An existing folder holding files distil
    did not write is refused with an `OutputError`.
    """
    if tokenizer is not None:
        check_tokenizer(model.config, tokenizer)

    def write(staging: Path) -> None:
        save_file(hf_tensors(model), str(staging / WEIGHTS_FILE), metadata={"format": "pt"})
        config_text = json.dumps(config_to_hf(model.config, label_names), indent=2, sort_keys=True) + "\n"
        (staging / MODEL_CONFIG_FILE).write_text(config_text, encoding="utf-8")
        if tokenizer is not None:
            from distil.tokenization import save_tokenizer

            save_tokenizer(tokenizer, staging, model_max_length=model.config.max_position_embeddings)
        for name, text in (extra_files or {}).items():
            if Path(name).name != name or (staging / name).exists():
                raise ValueError(f"extra file name {name!r} must be a plain file name not written otherwise")
            (staging / name).write_text(text, encoding="utf-8")

    return write_folder_atomically(folder, write, what="model folder")
