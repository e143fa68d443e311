"""Shared test helpers: tiny transformers reference models and the path to ../shared/data."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

# Eight fake CPU devices for the sharding tests, also when pytest is run without `make test` (set before jax loads).
os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ.setdefault("JAX_PLATFORMS", "cpu")

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"


@pytest.fixture
def shared_data() -> Path:
    if not SHARED_DATA.is_dir():
        pytest.skip(f"{SHARED_DATA} is absent (CI lays shared/ beside the clone)")
    return SHARED_DATA


def padded_batch(vocab_size: int, lengths: list[int], length: int, seed: int = 0):
    """Random token ids with [CLS]-like first token and padding after each row's length, as numpy int32."""
    rng = np.random.default_rng(seed)
    input_ids = rng.integers(5, vocab_size, size=(len(lengths), length)).astype(np.int32)
    attention_mask = (np.arange(length)[None, :] < np.asarray(lengths)[:, None]).astype(np.int32)
    input_ids = np.where(attention_mask == 1, input_ids, 0).astype(np.int32)
    token_type_ids = (np.arange(length)[None, :] >= np.asarray(lengths)[:, None] // 2).astype(np.int32) * attention_mask
    return input_ids, attention_mask, token_type_ids
