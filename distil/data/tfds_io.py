"""Reading a tensorflow-datasets dataset that is already prepared in a `data_dir`, with or without TensorFlow.

One place for what the text sources (`wikipedia`) and the NLI readers (`xnli`, `multi_nli`) share: find the
prepared dataset (never download), check the split, and iterate its examples as NumPy dicts through whichever
reader can open the stored format — `tfds.data_source` for array_record / parquet (random access, no TensorFlow),
`tfds.load` for tfrecord (needs the optional `tf` extra). Errors name the data_dir, the dataset and what to do.
"""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Iterator, Mapping
from typing import Literal

Backend = Literal["auto", "data_source", "tf"]
# Formats `tfds.data_source` reads without TensorFlow; TFRecord needs `tfds.load` and TensorFlow.
RANDOM_ACCESS_FORMATS = ("array_record", "parquet")
_READ_CHUNK = 4096  # examples per batched array_record read


class TfdsDataError(ValueError):
    """A tfds dataset that is unknown, not prepared in data_dir, lacks a split, or cannot be read here."""


def prepared_builder(name: str, data_dir: str | os.PathLike):
    """The tfds builder of `name` ('wikipedia/20230601.sw', 'xnli') in `data_dir`; it must already be prepared."""
    import tensorflow_datasets as tfds  # ~0.3 s to import; only these readers need it

    data_dir = os.fspath(data_dir)
    try:
        builder = tfds.builder(name, data_dir=data_dir)
    except Exception as err:  # tfds raises bare ValueError / KeyError / DatasetNotFoundError for unknown names
        raise TfdsDataError(f"tensorflow-datasets has no dataset {name!r}: {err}") from err
    if not builder.is_prepared():
        raise TfdsDataError(
            f"data_dir {data_dir} holds no prepared dataset {name!r} (looked for {builder.data_dir}/"
            f"dataset_info.json); prepare it first, e.g. `tfds build {name} --data_dir {data_dir} "
            "--file_format array_record`"
        )
    return builder


def file_format(builder) -> str:
    return getattr(builder.info.file_format, "value", str(builder.info.file_format))


def iter_examples(builder, split: str, *, backend: Backend = "auto") -> Iterator[Mapping]:
    """The examples of one split as NumPy dicts (strings as bytes), in the order tfds stored them."""
    name, stored = builder.info.full_name, file_format(builder)
    if split not in builder.info.splits:
        raise TfdsDataError(f"{name} in {builder.data_dir} has no split {split!r}; splits: {sorted(builder.info.splits)}")
    if backend == "auto":
        backend = "data_source" if stored in RANDOM_ACCESS_FORMATS else "tf"
    if backend == "data_source":
        if stored not in RANDOM_ACCESS_FORMATS:
            raise TfdsDataError(
                f"{name} in {builder.data_dir} is stored as {stored}; tfds.data_source reads only "
                f"{'/'.join(RANDOM_ACCESS_FORMATS)}. Re-prepare it with --file_format array_record, or install the "
                "tf extra and use backend='tf'"
            )
        source = builder.as_data_source(split=split)
        for start in range(0, len(source), _READ_CHUNK):
            yield from source.__getitems__(range(start, min(start + _READ_CHUNK, len(source))))
    elif backend == "tf":
        if stored in RANDOM_ACCESS_FORMATS:
            raise TfdsDataError(
                f"{name} in {builder.data_dir} is stored as {stored}; tfds.load reads only tfrecord. "
                "Use backend='data_source' (or 'auto')"
            )
        if importlib.util.find_spec("tensorflow") is None:
            raise TfdsDataError(
                f"{name} in {builder.data_dir} is stored as {stored}, which needs TensorFlow (pip install "
                "'.[tf]'); or re-prepare it with --file_format array_record"
            )
        import tensorflow_datasets as tfds

        yield from tfds.as_numpy(builder.as_dataset(split=split, shuffle_files=False))
    else:
        raise TfdsDataError(f"backend must be 'auto', 'data_source' or 'tf', got {backend!r}")


def text(value: bytes | str) -> str:
    """A tfds Text feature as str (data_source and tfds.load both give bytes)."""
    return value.decode("utf-8") if isinstance(value, bytes) else str(value)
