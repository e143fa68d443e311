"""Hugging Face folders (`config.json` + `model.safetensors`) <-> distil models.

The whole name mapping lives in `tensor_table`: one row per tensor, HF name -> distil parameter path, with the
layout change between them (torch `Linear.weight` is [out, in]; our kernels are [in, out], and attention kernels
are split per head as [embed, heads, kv]). Nothing else in distil knows HF names.

Reading accepts the layouts real checkpoints use: with or without the `bert.`/`distilbert.` prefix, the TF-era
`LayerNorm.gamma/beta` names, tied decoder weights stored or omitted, and tensors a head does not use
(`cls.seq_relationship`, a pooler under an MLM head) which are skipped. Writing produces what transformers 5 writes
itself, so `AutoModelForMaskedLM.from_pretrained(folder)` and `pipeline("fill-mask", folder)` work offline.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Callable, Iterator

import jax
import ml_dtypes
import numpy as np
from flax import nnx
from safetensors import safe_open
from safetensors.numpy import save_file

from distil.models import Model, ModelConfig, abstract_model

CONFIG_FILE = "config.json"
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


def _tied_decoder_names(config: ModelConfig) -> tuple[str, ...]:
    """Decoder weights tied to the word embeddings: transformers 5 omits them, older checkpoints store a copy."""
    return ("cls.predictions.decoder.weight",) if config.family == "bert" else ("vocab_projector.weight",)


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
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise CheckpointFormatError(f"{path}: not valid JSON ({err})") from err


def _field(hf: dict, name: str, path: Path, expected_type=(int, float)):
    if name not in hf:
        raise CheckpointFormatError(f"{path}: field {name!r} is missing")
    value = hf[name]
    if not isinstance(value, expected_type) or isinstance(value, bool):
        raise CheckpointFormatError(f"{path}: field {name!r} should be a number, got {value!r}")
    return value


def config_from_hf(hf: dict, path: Path) -> ModelConfig:
    """Translates a transformers config.json (BERT or DistilBERT) into a `ModelConfig`."""
    model_type = hf.get("model_type")
    architectures = hf.get("architectures") or []
    if model_type not in ("bert", "distilbert"):
        raise CheckpointFormatError(
            f"{path}: field 'model_type' is {model_type!r}; distil reads 'bert' and 'distilbert' checkpoints"
        )
    architecture = architectures[0] if architectures else ARCHITECTURES[(model_type, None)]
    if architecture not in _HEAD_OF_ARCHITECTURE or _HEAD_OF_ARCHITECTURE[architecture][0] != model_type:
        supported = sorted(a for a, (family, _) in _HEAD_OF_ARCHITECTURE.items() if family == model_type)
        raise CheckpointFormatError(
            f"{path}: field 'architectures' is {architectures!r}; expected one of {supported}"
        )
    head = _HEAD_OF_ARCHITECTURE[architecture][1]
    num_labels = len(hf["id2label"]) if isinstance(hf.get("id2label"), dict) else hf.get("num_labels", 2)
    if model_type == "bert":
        if hf.get("position_embedding_type", "absolute") != "absolute":
            raise CheckpointFormatError(f"{path}: field 'position_embedding_type' must be 'absolute'")
        if hf.get("is_decoder", False):
            raise CheckpointFormatError(f"{path}: field 'is_decoder' is true; distil encoders are bidirectional")
        activation = hf.get("hidden_act", "gelu")
        fields = dict(
            family="bert",
            vocab_size=_field(hf, "vocab_size", path),
            hidden_size=_field(hf, "hidden_size", path),
            num_hidden_layers=_field(hf, "num_hidden_layers", path),
            num_attention_heads=_field(hf, "num_attention_heads", path),
            intermediate_size=_field(hf, "intermediate_size", path),
            max_position_embeddings=hf.get("max_position_embeddings", 512),
            type_vocab_size=hf.get("type_vocab_size", 2),
            layer_norm_eps=hf.get("layer_norm_eps", 1e-12),
            hidden_dropout=hf.get("hidden_dropout_prob", 0.1),
            attention_dropout=hf.get("attention_probs_dropout_prob", 0.1),
            classifier_dropout=hf.get("classifier_dropout"),
            # BertForMaskedLM drops the pooler; BertModel and the classifier keep it.
            add_pooler=head != "mlm",
        )
    else:
        activation = hf.get("activation", "gelu")
        fields = dict(
            family="distilbert",
            vocab_size=_field(hf, "vocab_size", path),
            hidden_size=_field(hf, "dim", path),
            num_hidden_layers=_field(hf, "n_layers", path),
            num_attention_heads=_field(hf, "n_heads", path),
            intermediate_size=_field(hf, "hidden_dim", path),
            max_position_embeddings=hf.get("max_position_embeddings", 512),
            type_vocab_size=0,
            layer_norm_eps=1e-12,
            hidden_dropout=hf.get("dropout", 0.1),
            attention_dropout=hf.get("attention_dropout", 0.1),
            classifier_dropout=hf.get("seq_classif_dropout", 0.2),
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
    fields.update(
        param_dtype=stored_dtype,
        initializer_range=hf.get("initializer_range", 0.02),
        pad_token_id=hf.get("pad_token_id") if hf.get("pad_token_id") is not None else 0,
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


def _open_tensors(files: list[Path]) -> dict[str, tuple[Path, str]]:
    """Canonical HF name -> (file, name as stored)."""
    located: dict[str, tuple[Path, str]] = {}
    for file in files:
        if not file.is_file():
            raise CheckpointFormatError(f"{file}: missing (named by {WEIGHTS_INDEX_FILE})")
        try:
            with safe_open(str(file), framework="np") as reader:
                for stored in reader.keys():
                    located[_legacy_name(stored)] = (file, stored)
        except CheckpointFormatError:
            raise
        except Exception as err:  # safetensors raises its own error types for corrupt headers
            raise CheckpointFormatError(f"{file}: not a readable safetensors file ({err})") from err
    return located


def _resolve_prefix(located: dict, family: str) -> Callable[[str], str]:
    """A BertModel saved alone has no `bert.` prefix; a head model has it. Accept either for the encoder."""
    prefix = f"{family}."

    def find(name: str) -> str:
        if name in located:
            return name
        alternative = name[len(prefix):] if name.startswith(prefix) else prefix + name
        return alternative if alternative in located else name

    return find


def _read_tensor(file: Path, stored: str, hf_name: str) -> np.ndarray:
    with safe_open(str(file), framework="np") as reader:
        dtype = reader.get_slice(stored).get_dtype()
        if dtype not in _LOADABLE_DTYPES:
            raise CheckpointFormatError(
                f"{file}: tensor {hf_name!r} has dtype {dtype}; expected one of {sorted(_LOADABLE_DTYPES)}"
            )
        return reader.get_tensor(stored)


def read_config(folder: str | os.PathLike) -> ModelConfig:
    """The `ModelConfig` of a Hugging Face folder, from its config.json alone (no weights are read)."""
    config_path = Path(folder) / CONFIG_FILE
    return config_from_hf(_read_json(config_path), config_path)


def load_pretrained(folder: str | os.PathLike, *, dtype: str | None = None, param_dtype: str | None = None) -> Model:
    """Reads a transformers BERT/DistilBERT folder into a distil model (`distil.models.Bert` or `DistilBert`).

    The result is callable as `model(input_ids, attention_mask=..., token_type_ids=None)` and returns an
    `EncoderOutput` with `.last_hidden_state`, `.hidden_states` and `.logits` (None without a head). Parameters
    are stored in the checkpoint's `dtype` and computed in float32 unless `dtype` / `param_dtype` override the
    compute and storage dtypes ('float32', 'bfloat16', 'float16').
    """
    folder = Path(folder)
    config_path = folder / CONFIG_FILE
    config = config_from_hf(_read_json(config_path), config_path)
    overrides = {k: v for k, v in (("dtype", dtype), ("param_dtype", param_dtype)) if v is not None}
    if overrides:
        config = config.replace(**overrides)
    weight_files = _weight_files(folder)
    located = _open_tensors(weight_files)
    find = _resolve_prefix(located, config.family)
    files = ", ".join(str(f) for f in weight_files)

    graphdef, abstract_state = nnx.split(abstract_model(config))
    expected = {".".join(str(part) for part in path): leaf for path, leaf in nnx.to_flat_state(abstract_state)}
    values: dict[str, np.ndarray] = {}
    for row in tensor_table(config):
        name = find(row.hf_name)
        if name not in located:
            raise CheckpointFormatError(f"{files}: tensor {row.hf_name!r} is missing")
        file, stored = located[name]
        tensor = _read_tensor(file, stored, row.hf_name)
        target = expected[row.distil_path]
        want = _hf_shape(row.layout, target.shape)
        if tensor.shape != want:
            raise CheckpointFormatError(
                f"{file}: tensor {row.hf_name!r} has shape {list(tensor.shape)}, expected {list(want)} "
                f"(from {config_path})"
            )
        values[row.distil_path] = _to_distil(row.layout, tensor, config).astype(jax.numpy.dtype(config.param_dtype))
    _check_tied_decoder(config, located, find, values)

    missing = set(expected) - set(values)
    if missing:  # the table and the model disagree: a bug in distil, not in the checkpoint
        raise AssertionError(f"tensor_table does not cover {sorted(missing)}")
    flat = [
        (path, leaf.replace(jax.numpy.asarray(values[".".join(str(p) for p in path)])))
        for path, leaf in nnx.to_flat_state(abstract_state)
    ]
    state = nnx.from_flat_state(flat)
    return nnx.merge(graphdef, state)


def _check_tied_decoder(config, located, find, values) -> None:
    """A stored decoder weight must equal the word embeddings: distil always ties them."""
    if config.head != "mlm":
        return
    embeddings = values["encoder.embeddings.word_embeddings.embedding"]
    for name in _tied_decoder_names(config):
        name = find(name)
        if name in located:
            file, stored = located[name]
            decoder = _read_tensor(file, stored, name)
            if decoder.shape != embeddings.shape or not np.array_equal(decoder.astype(embeddings.dtype), embeddings):
                raise CheckpointFormatError(
                    f"{file}: tensor {name!r} differs from the word embeddings; distil only supports tied decoders"
                )


def describe_pretrained(folder: str | os.PathLike) -> dict:
    """A checkpoint's config, parameter counts per module and stored dtypes, read from config.json and the
    safetensors headers alone (no tensor is loaded): what `distil inspect` prints."""
    from distil.models import parameter_count, parameter_counts_by_module

    folder = Path(folder)
    config_path = folder / CONFIG_FILE
    config = config_from_hf(_read_json(config_path), config_path)
    stored_values_by_dtype: dict[str, int] = {}
    stored_tensors = 0
    for file in _weight_files(folder):
        with safe_open(str(file), framework="np") as reader:
            for name in reader.keys():
                tensor = reader.get_slice(name)
                dtype = tensor.get_dtype()
                stored_values_by_dtype[dtype] = stored_values_by_dtype.get(dtype, 0) + int(np.prod(tensor.get_shape()))
                stored_tensors += 1
    return {
        "folder": str(folder),
        "architecture": ARCHITECTURES[(config.family, config.head)],
        "config": dataclasses.asdict(config),
        "parameters": parameter_count(config),
        "parameters_by_module": parameter_counts_by_module(config),
        "stored_tensors": stored_tensors,
        "stored_values_by_dtype": stored_values_by_dtype,
    }


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
) -> Path:
    """Writes `config.json` + `model.safetensors` (and the tokenizer files when `tokenizer` is given).

    Everything is first written to a temporary folder beside the target and moved in only once complete, so a
    failed export leaves an existing target folder untouched.
    """
    folder = Path(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{folder.name}.tmp-", dir=folder.parent))
    try:
        tensors = hf_tensors(model)
        save_file(tensors, str(staging / WEIGHTS_FILE), metadata={"format": "pt"})
        config_text = json.dumps(config_to_hf(model.config, label_names), indent=2, sort_keys=True) + "\n"
        (staging / CONFIG_FILE).write_text(config_text, encoding="utf-8")
        if tokenizer is not None:
            from distil.tokenization import save_tokenizer

            save_tokenizer(tokenizer, staging, model_max_length=model.config.max_position_embeddings)
        folder.mkdir(exist_ok=True)
        for item in _files_in(staging):
            os.replace(item, folder / item.name)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return folder


def _files_in(folder: Path) -> Iterator[Path]:
    return (item for item in sorted(folder.iterdir()) if item.is_file())
