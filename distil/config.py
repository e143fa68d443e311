"""Reading experiment configs: `file.py[:arg]` plus `--config.KEY=VALUE` overrides, in one place.

A config file defines `get_config(arg=None) -> ml_collections.ConfigDict` (big_vision style: `arg` selects a
variant, e.g. `distilmbert:runlocal`). Overrides address nested fields with dots and are parsed as
Python literals, then checked against the type already in the config, so a typo or a wrong type is an error that
names the key and the file instead of a silently ignored flag.

A spec names either a file (any path, e.g. `my_configs/x.py:runlocal`) or a config shipped with distil in
`configs/` (`demo`, `demo.py`, `distilmbert:runlocal`). The shipped configs are package data, so an installed
distil finds them as a checkout does; `resolve_config_spec` is the one place that decides which file a spec means.
"""

from __future__ import annotations

import ast
import importlib.util
import os
from pathlib import Path
from typing import Sequence

import ml_collections

OVERRIDE_PREFIX = "--config."


class ConfigError(ValueError):
    """A config that cannot be read or an override that does not fit it; names the file and the key."""


_PACKAGE = Path(__file__).resolve().parent
# The configs that ship with distil: `configs/` at the top of a checkout, which the wheel carries as the package
# folder `distil/configs/` (setup.py maps it), so a config is found by name installed or not. One copy of each.
SHIPPED_CONFIGS_DIR = _PACKAGE / "configs" if (_PACKAGE / "configs").is_dir() else _PACKAGE.parent / "configs"


def shipped_configs() -> dict[str, Path]:
    """{name: file} of every shipped config, by name ('demo' -> .../configs/demo.py)."""
    return {path.stem: path for path in sorted(SHIPPED_CONFIGS_DIR.glob("*.py")) if not path.stem.startswith("_")}


def split_spec(spec: str) -> tuple[Path, str | None]:
    """'configs/x.py:runlocal,b=2' -> (Path('configs/x.py'), 'runlocal,b=2')."""
    path, _, arg = spec.partition(":")
    return Path(path), (arg or None)


def resolve_config_spec(spec: str) -> tuple[Path, str | None]:
    """The config file and `get_config` argument a `--config` spec means.

    An existing file is taken as given (as it always was). Otherwise a bare name, with or without `.py` and
    without a folder (`demo`, `demo.py:arg`), is looked up among the shipped configs; anything else is an error
    that lists them.
    """
    path, arg = split_spec(spec)
    if path.is_file():
        return path, arg
    shipped = shipped_configs()
    listing = ", ".join(shipped) or "none"
    is_bare_name = path.parent == Path(".") and path.suffix in ("", ".py")
    if is_bare_name and path.stem in shipped:
        return shipped[path.stem], arg
    if is_bare_name and not path.suffix:
        raise ConfigError(f"{path}: no such config file and no shipped config {path.stem!r}; shipped configs: "
                          f"{listing} (in {SHIPPED_CONFIGS_DIR})")
    raise ConfigError(f"{path}: config file not found (shipped configs, usable by name: {listing}; in "
                      f"{SHIPPED_CONFIGS_DIR})")


def import_file(path: Path, what: str):
    """Imports a Python file (a config or a sweep) as a module; an error inside it names the file."""
    module_spec = importlib.util.spec_from_file_location(f"distil_{what}_{path.stem}", path)
    module = importlib.util.module_from_spec(module_spec)
    try:
        module_spec.loader.exec_module(module)
    except Exception as err:
        raise ConfigError(f"{path}: importing the {what} failed: {type(err).__name__}: {err}") from err
    return module


def parse_arg(arg: str | None, **spec) -> ml_collections.ConfigDict:
    """A config's argument (`--config name:ARG`) as its variants, in the manner of big_vision's `parse_arg`: `spec`
    names every variant with its default. A bool default is a bare word (`runlocal`); any other is a `key=value`
    item of the default's type, a tuple taking the comma-separated items after it that are no variant themselves
    (`runlocal,languages=en,fr,de`). Every config reads its argument this way; an unknown item is an error that
    lists the known ones."""
    values = dict(spec)
    known = ", ".join(name if isinstance(default, bool) else f"{name}=..." for name, default in spec.items())
    collecting = None  # the tuple variant that takes the following items
    for item in filter(None, (arg or "").split(",")):
        name, has_value, value = item.partition("=")
        if has_value and name in spec and not isinstance(spec[name], bool):
            default = spec[name]
            values[name] = tuple(filter(None, (value,))) if isinstance(default, tuple) else type(default)(value)
            collecting = name if isinstance(default, tuple) else None
        elif not has_value and isinstance(spec.get(item), bool):
            values[item], collecting = True, None
        elif not has_value and collecting is not None:
            values[collecting] += (item,)
        else:
            raise ValueError(f"unknown variant {name!r}; known: {known or 'none'}")
    for name, default in spec.items():
        if isinstance(default, tuple) and f"{name}=" in (arg or "").split(",") and not values[name]:
            raise ValueError(f"variant {name}= names no value; e.g. {name}=a,b")
    return ml_collections.ConfigDict(values)


def load_config(spec: str, overrides: Sequence[str] = ()) -> ml_collections.ConfigDict:
    """Imports the config file, calls `get_config(arg)`, applies overrides ('model.hidden_size=64' or
    '--config.model.hidden_size=64') and returns the config, locked against new keys.

    `spec` is `file.py[:arg]` or a shipped config's `name[:arg]` (see `resolve_config_spec`)."""
    path, arg = resolve_config_spec(spec)
    module = import_file(path, "config")
    if not hasattr(module, "get_config"):
        raise ConfigError(f"{path}: defines no get_config(arg)")
    config = module.get_config(arg) if arg is not None else module.get_config()
    if not isinstance(config, ml_collections.ConfigDict):
        raise ConfigError(f"{path}: get_config returned {type(config).__name__}, expected ml_collections.ConfigDict")
    for override in overrides:
        apply_override(config, override, source=path)
    config.lock()
    return config


def _parse_value(text: str):
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        lowered = text.lower()
        if lowered in ("true", "false"):
            return lowered == "true"
        if lowered in ("none", "null"):
            return None
        return text  # a bare string: paths, names


def _coerce(value, current, key: str, source: Path):
    """Value of an override, made to fit the field it replaces (ints into floats, lists into tuples)."""
    if current is None or value is None:
        return value
    if isinstance(current, bool):
        if isinstance(value, bool):
            return value
    elif isinstance(current, int):
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif isinstance(current, float):
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
    elif isinstance(current, str):
        return str(value)
    elif isinstance(current, (tuple, list)):
        items = list(value) if isinstance(value, (tuple, list)) else [value]  # 'layers=3': a one-element list
        kinds = {type(item) for item in current}
        if len(kinds) == 1 and kinds <= {int, float, str}:  # the items must fit the current items' type
            kind = kinds.pop()
            items = [_coerce(item, current[0], f"{key}[{index}]", source) if kind is not str or isinstance(item, str)
                     else item for index, item in enumerate(items)]
            if kind is str and not all(isinstance(item, str) for item in items):
                items = None
        if items is not None and all(isinstance(item, (int, float, str, bool, tuple, list)) for item in items):
            return type(current)(items)
    else:
        return value
    raise ConfigError(
        f"{source}: config.{key} is {type(current).__name__} ({current!r}); cannot set it to {value!r}"
    )


def apply_override(config: ml_collections.ConfigDict, override: str, *, source: Path) -> None:
    text = override[len(OVERRIDE_PREFIX):] if override.startswith(OVERRIDE_PREFIX) else override
    key, equals, value_text = text.partition("=")
    if not equals or not key:
        raise ConfigError(f"override {override!r} must look like --config.KEY=VALUE")
    *parents, leaf = key.split(".")
    node = config
    for depth, name in enumerate(parents):
        if name not in node or not isinstance(node[name], ml_collections.ConfigDict):
            raise ConfigError(f"{source}: config has no section config.{'.'.join(parents[:depth + 1])}")
        node = node[name]
    if leaf not in node:
        known = ", ".join(sorted(node.keys()))
        raise ConfigError(f"{source}: config has no field config.{key} (known here: {known})")
    if isinstance(node[leaf], ml_collections.ConfigDict):
        raise ConfigError(f"{source}: config.{key} is a section; set one of its fields")
    if isinstance(node[leaf], str):
        # A string field takes the text as written ('none', '1e-3', a path), unquoted if it was quoted.
        parsed = _parse_value(value_text)
        node[leaf] = parsed if isinstance(parsed, str) and value_text[:1] in "'\"" else value_text
        return
    node[leaf] = _coerce(_parse_value(value_text), node[leaf], key, source)


def with_changes(base: ml_collections.ConfigDict, changes: ml_collections.ConfigDict,
                 where: str) -> ml_collections.ConfigDict:
    """A copy of `base` with the fields of `changes` (a partial config of the same shape, e.g. the demo's ablation
    `loss.alpha_ce = 0.0`) set in it, each fitted to the field it replaces as an override is; a field `base` lacks is
    an error naming `where` (the changes' own key, e.g. 'config.student_mlm'). The copy is locked."""
    config = ml_collections.ConfigDict(base.to_dict())

    def apply(node, section, prefix):
        for key, value in section.items():
            name = f"{prefix}{key}"
            if key not in node:
                raise ConfigError(f"{where}.{name}: no such field in the config it changes (known here: "
                                  f"{', '.join(sorted(node.keys()))})")
            if isinstance(value, ml_collections.ConfigDict) != isinstance(node[key], ml_collections.ConfigDict):
                raise ConfigError(f"{where}.{name}: a section and a field cannot replace each other")
            if isinstance(value, ml_collections.ConfigDict):
                apply(node[key], value, f"{name}.")
            else:
                node[key] = _coerce(value, node[key], name, Path(where))

    apply(config, changes, "")
    config.lock()
    return config


def split_overrides(argv: Sequence[str]) -> tuple[list[str], list[str]]:
    """Separates `--config.KEY=VALUE` arguments (overrides) from the rest (for argparse)."""
    overrides = [arg for arg in argv if arg.startswith(OVERRIDE_PREFIX)]
    rest = [arg for arg in argv if not arg.startswith(OVERRIDE_PREFIX)]
    return overrides, rest


def expand_path(text: str) -> str:
    """`~`, `~user` and `$VAR` / `${VAR}` expanded, as a shell would before handing a path over. An object-store
    URL (gs://, s3://) is kept as it is, once its scheme is one distil can use (`distil.storage`)."""
    from distil import storage

    if text and storage.is_remote(text):
        try:
            storage.check_url(text)
        except storage.StorageError as err:
            raise ConfigError(str(err).removeprefix("path=")) from None
        return text
    return os.path.expanduser(os.path.expandvars(text)) if text else text


def expand_paths(config: ml_collections.ConfigDict, keys: Sequence[str]) -> None:
    """Expands the path values of `keys` ('data.corpus', ...) in place: what config.json records and every reader
    uses. A value naming an unset variable keeps it (`$NOPE/x`), so the error then names the path as written."""
    for key in keys:
        *parents, leaf = key.split(".")
        node = config
        for name in parents:
            node = node[name]
        if isinstance(node[leaf], str):
            try:
                node[leaf] = expand_path(node[leaf])
            except ConfigError as err:
                raise ConfigError(f"config.{key}={err}") from None
