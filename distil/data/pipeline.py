"""The distillation's input pipeline, from a config: the corpus it names, prepared once (binarised), then on every
host its own rows of each step's length-grouped (or packed) batches, MLM-masked per micro-batch by grain workers.

`distil.train.distill` runs it; experiments/bench_input_vs_step.py times it.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
from pathlib import Path

import grain
import numpy as np

from distil.config import ConfigError
from distil.data.batching import GlobalBatchError, GroupedBatchSource
from distil.data.binarize import TokenSequences, load_token_counts, open_binarized, prepare
from distil.data.embedded import embedded_corpus_dir
from distil.data.masking import mask_batch, token_probs_from_counts
from distil.tokenization import special_token_ids



def corpus_path(config) -> str | os.PathLike:
    """What config.data.corpus names: the embedded corpus' folder, 'wikipedia', a folder of <lang>.txt, or a folder
    `distil prepare` wrote."""
    return embedded_corpus_dir() if config.data.corpus == "embedded" else config.data.corpus


def prepare_corpus(config, tokenizer_path, out_dir: Path, *, progress: bool) -> None:
    """Binarises config.data.corpus into `out_dir` (resumable; a finished one is reused)."""
    prepare(corpus_path(config), out_dir, tokenizer_path=tokenizer_path, languages=list(config.data.languages) or None,
            data_dir=config.data.tfds_data_dir or None, sampling_alpha=config.data.sampling_alpha, seed=config.seed,
            max_length=config.data.max_length, progress=progress,
            # tokenizers' own threads, no worker processes: forking after JAX (and jax.distributed) started is
            # unsafe, and in-process was the fastest on small hosts anyway (experiments/bench_binarize.py).
            num_workers=0)


def corpus_fingerprint(sequences, token_counts: np.ndarray) -> str:
    """A short hash of the binarised corpus' content (lengths and token counts), stored with checkpoints."""
    digest = hashlib.sha256(np.asarray(sequences.lengths, np.int64).tobytes())
    digest.update(np.asarray(token_counts, np.int64).tobytes())
    return digest.hexdigest()[:16]


class MaskUpdate:
    """Host-side transform of one step's rows: MLM masking, then `[micro_batches, rows, length]` arrays.

    The reference masks each GPU's batch (5 sequences) on its own: ceil(0.15 x its real tokens) targets. Here a
    micro-batch is masked in groups of `group_size` consecutive rows, each group from its own stream
    (seed, step, micro-batch, global group index). A process holds whole groups of every micro-batch, so the masks
    are the same whatever the number of processes (and a resumed run masks exactly as the uninterrupted one).
    """

    def __init__(self, token_probs, specials, vocab_size: int, masking, *, seed: int, micro_batches: int,
                 group_size: int, first_group: int):
        self.token_probs, self.specials, self.vocab_size = token_probs, specials, vocab_size
        self.masking, self.seed, self.micro_batches = masking, seed, micro_batches
        self.group_size, self.first_group = group_size, first_group

    def __call__(self, step: int, rows: dict) -> dict:
        split = {name: value.reshape(self.micro_batches, -1, *value.shape[1:]) for name, value in rows.items()}
        masked, labels = np.empty_like(split["input_ids"]), np.empty_like(split["input_ids"])
        for micro in range(self.micro_batches):
            for start in range(0, split["input_ids"].shape[1], self.group_size):
                group = slice(start, start + self.group_size)
                masked[micro, group], labels[micro, group] = mask_batch(
                    split["input_ids"][micro, group], split["lengths"][micro, group], self.token_probs,
                    seed=self.seed, step=step * self.micro_batches + micro,
                    process_index=self.first_group + start // self.group_size,  # the stream: the global group
                    mask_id=self.specials.mask, vocab_size=self.vocab_size,
                    mlm_mask_prop=self.masking.mlm_mask_prop, word_mask=self.masking.word_mask,
                    word_keep=self.masking.word_keep, word_rand=self.masking.word_rand,
                )
        batch = {"input_ids": masked, "attention_mask": split["attention_mask"], "mlm_labels": labels}
        batch.update({name: split[name] for name in ("segment_ids", "position_ids") if name in split})
        return batch


@dataclasses.dataclass
class InputPipeline:
    """What the trainer reads each step: the binarised corpus, its token counts, the per-host batch source, the
    masking transform, and the grain dataset that applies it on 2 threads with 4 batches prefetched."""

    sequences: TokenSequences
    token_counts: np.ndarray
    source: GroupedBatchSource
    mask_update: MaskUpdate
    dataset: grain.IterDataset


def input_pipeline(config, data_dir: Path, tokenizer, vocab_size: int) -> InputPipeline:
    """The host side of training over a corpus `prepare_corpus` wrote to `data_dir` (also what
    experiments/bench_input_vs_step.py times)."""
    sequences = open_binarized(data_dir)
    token_counts = load_token_counts(data_dir)
    specials = special_token_ids(tokenizer)
    token_probs = token_probs_from_counts(token_counts, [specials.pad, specials.unk, specials.cls, specials.sep,
                                                         specials.mask], smoothing=config.masking.mlm_smoothing)
    batching = config.batching
    try:
        source = GroupedBatchSource(sequences, global_batch=batching.global_batch,
                                    max_length=config.data.max_length, seed=config.seed,
                                    pad_to_multiple=batching.pad_to_multiple, group_by_length=batching.group_by_length,
                                    micro_batches=batching.micro_batches, composition=batching.composition)
    except GlobalBatchError as err:
        raise ConfigError(f"config.batching.global_batch={batching.global_batch}: {err}") from err
    mask_update = MaskUpdate(token_probs, specials, vocab_size, config.masking, seed=config.seed,
                             micro_batches=batching.micro_batches, group_size=config.masking.group_size,
                             first_group=source.process_index * source.local_micro_rows // config.masking.group_size)
    dataset = grain.MapDataset.source(source).map_with_index(mask_update).to_iter_dataset(
        grain.ReadOptions(num_threads=2, prefetch_buffer_size=4))
    return InputPipeline(sequences, token_counts, source, mask_update, dataset)
