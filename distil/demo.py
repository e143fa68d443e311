"""The demo: every stage that exists today, end to end, on the embedded default data.

1. binarise the multilingual corpus (resumable; a rerun reuses it, and says so) and count token frequencies;
2. draw length-grouped batches and mask them as DistilBERT does; report padding with and without grouping;
3. build (or load) a teacher, initialise a student from its layers, export both as Hugging Face folders and check
   the exported student reproduces distil's logits;
4. run teacher and student on a masked batch: MLM loss of each, and the teacher->student KL at T=2;
5. read and encode the XNLI samples of all 15 languages.

It writes `demo.json` and `demo.md` in the workdir. The trainers (distillation, XNLI fine-tuning) extend it. A teacher
checkpoint is validated, and checked against the tokenizer and `data.max_length`, before anything runs.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from flax import nnx

from distil import hf
from distil.atomic import make_output_folder, refuse_overlap, write_text_atomically
from distil.config import ConfigError
from distil.data import nli
from distil.data.batching import GlobalBatchError, GroupedBatchSource, padding_fraction
from distil.data.binarize import load_token_counts, open_binarized, prepare
from distil.data.embedded import embedded_corpus_dir, embedded_xnli_dir
from distil.data.masking import IGNORE_INDEX, mask_batch, token_probs_from_counts
from distil.models import ModelConfig, create_model, parameter_count
from distil.models.extract import init_student_from_teacher
from distil.tokenization import default_vocab_path, load_tokenizer, special_token_ids

_log = logging.getLogger(__name__)

@nnx.jit
def _mlm_logits(model, input_ids, attention_mask):
    return model(input_ids, attention_mask).logits  # [batch, length, vocab]


@jax.jit
def _masked_lm_loss(logits, labels):
    """Mean cross-entropy over MLM targets (labels != -100). Jitted: [batch, length, vocab] logits are large."""
    weights = (labels != IGNORE_INDEX).astype(jnp.float32)
    losses = optax.softmax_cross_entropy_with_integer_labels(logits.astype(jnp.float32), jnp.maximum(labels, 0))
    return (losses * weights).sum() / weights.sum()


@functools.partial(jax.jit, static_argnames="temperature")
def _kl_at_temperature(teacher_logits, student_logits, attention_mask, temperature: float):
    """KL(teacher || student) of the softened distributions over real tokens, times T² (DistilBERT's loss_ce)."""
    teacher_log_probs = jax.nn.log_softmax(teacher_logits.astype(jnp.float32) / temperature, axis=-1)
    student_log_probs = jax.nn.log_softmax(student_logits.astype(jnp.float32) / temperature, axis=-1)
    kl = (jnp.exp(teacher_log_probs) * (teacher_log_probs - student_log_probs)).sum(-1)
    mask = attention_mask.astype(jnp.float32)
    return (kl * mask).sum() / mask.sum() * temperature**2


def _teacher(config: ml_collections.ConfigDict, vocab_size: int, max_length: int):
    if config.teacher.checkpoint:
        return hf.load_pretrained(config.teacher.checkpoint)
    teacher_config = ModelConfig(
        vocab_size=vocab_size,
        hidden_size=config.teacher.hidden_size,
        num_hidden_layers=config.teacher.num_hidden_layers,
        num_attention_heads=config.teacher.num_attention_heads,
        intermediate_size=config.teacher.intermediate_size,
        max_position_embeddings=max(max_length, 128),
        head="mlm",
        add_pooler=False,
    )
    return create_model(teacher_config, seed=config.seed)


def _check_teacher_checkpoint(config: ml_collections.ConfigDict, tokenizer, tokenizer_path, workdir: Path) -> None:
    """Before anything runs: the teacher folder is valid, is a BERT, is not overwritten by the demo's exports, and
    shares the tokenizer's vocabulary and covers `data.max_length` positions (else the losses come out NaN)."""
    checkpoint_path = config.teacher.checkpoint
    for exported in (workdir / "teacher", workdir / "student"):
        refuse_overlap(checkpoint_path, exported)
    checkpoint = hf.read_checkpoint(checkpoint_path)
    if checkpoint.config.family != "bert":
        raise ValueError(f"config.teacher.checkpoint {checkpoint_path} holds a {checkpoint.architecture}; the "
                         "teacher must be a BERT")
    hf.check_tokenizer(checkpoint.config, tokenizer, model=f"the teacher {checkpoint_path}",
                       tokenizer_name=f"the tokenizer {tokenizer_path}", max_length=config.data.max_length,
                       max_length_name="config.data.max_length")


def run_demo(config: ml_collections.ConfigDict, workdir: str | os.PathLike) -> dict:
    workdir = make_output_folder(workdir, "workdir")
    started = time.perf_counter()
    tokenizer_path = config.tokenizer or default_vocab_path()
    tokenizer = load_tokenizer(tokenizer_path)
    specials = special_token_ids(tokenizer)
    vocab_size = tokenizer.get_vocab_size()
    if config.teacher.checkpoint:
        _check_teacher_checkpoint(config, tokenizer, tokenizer_path, workdir)
    summary: dict = {"workdir": str(workdir)}

    # 1. Corpus -> token shards + counts.
    corpus = embedded_corpus_dir() if config.data.corpus == "embedded" else config.data.corpus
    binarized = prepare(
        corpus,
        workdir / "data",
        tokenizer_path=tokenizer_path,
        languages=list(config.data.languages) or None,
        data_dir=config.data.tfds_data_dir or None,
        sampling_alpha=config.data.sampling_alpha,
        seed=config.seed,
        max_length=config.data.max_length,
        progress=False,
    )
    summary["corpus"] = {"sequences": binarized.sequences, "tokens": binarized.tokens,
                         "languages": binarized.languages, "reused_shards": binarized.skipped_shards}
    if binarized.skipped_shards:
        _log.info("reused %d of %d shard(s) of the corpus that an earlier run binarised in %s",
                  binarized.skipped_shards, binarized.shards, workdir / "data")

    # 2. Length-grouped batches and MLM masking.
    sequences = open_binarized(workdir / "data")
    try:
        sources = {
            grouped: GroupedBatchSource(sequences, global_batch=config.batching.global_batch,
                                        max_length=config.data.max_length, seed=config.seed,
                                        pad_to_multiple=config.batching.pad_to_multiple, group_by_length=grouped,
                                        process_index=0, process_count=1)
            for grouped in (True, False)
        }
    except GlobalBatchError as err:
        raise ConfigError(f"config.batching.global_batch={config.batching.global_batch}: {err}") from None
    steps = sources[True].batches_per_epoch
    summary["batching"] = {
        "global_batch": config.batching.global_batch,
        "steps_per_epoch": steps,
        "padding_fraction_grouped": padding_fraction(sources[True][s] for s in range(steps)),
        "padding_fraction_ungrouped": padding_fraction(sources[False][s] for s in range(steps)),
    }
    token_probs = token_probs_from_counts(load_token_counts(workdir / "data"),
                                          [specials.pad, specials.unk, specials.cls, specials.sep, specials.mask],
                                          smoothing=config.masking.mlm_smoothing)
    batch = sources[True][0]
    masked_ids, mlm_labels = mask_batch(
        batch["input_ids"], batch["lengths"], token_probs, seed=config.seed, step=0, process_index=0,
        mask_id=specials.mask, vocab_size=vocab_size, mlm_mask_prop=config.masking.mlm_mask_prop,
        word_mask=config.masking.word_mask, word_keep=config.masking.word_keep, word_rand=config.masking.word_rand,
    )
    targets = mlm_labels != IGNORE_INDEX
    summary["masking"] = {
        "real_tokens": int(batch["lengths"].sum()),
        "targets": int(targets.sum()),
        "replaced_by_mask": int((masked_ids[targets] == specials.mask).sum()),
        "kept": int((masked_ids[targets] == mlm_labels[targets]).sum()),
    }

    # 3. Teacher -> student -> Hugging Face folders.
    teacher = _teacher(config, vocab_size, config.data.max_length)
    student = init_student_from_teacher(teacher, teacher_layers=config.student.teacher_layers,
                                        copy_mlm_transform=config.student.copy_mlm_transform)
    hf.save_pretrained(teacher, workdir / "teacher", tokenizer=tokenizer)
    hf.save_pretrained(student, workdir / "student", tokenizer=tokenizer)
    exported = hf.load_pretrained(workdir / "student")

    # 4. Both models on the masked batch.
    input_ids, attention_mask = jnp.asarray(masked_ids), jnp.asarray(batch["attention_mask"])
    teacher_logits = _mlm_logits(teacher, input_ids, attention_mask)
    student_logits = _mlm_logits(student, input_ids, attention_mask)
    exported_logits = _mlm_logits(exported, input_ids, attention_mask)
    labels = jnp.asarray(mlm_labels)
    summary["models"] = {
        "teacher_parameters": parameter_count(teacher),
        "student_parameters": parameter_count(student),
        "teacher_layers": list(config.student.teacher_layers),
        "teacher_mlm_loss": float(_masked_lm_loss(teacher_logits, labels)),
        "student_mlm_loss": float(_masked_lm_loss(student_logits, labels)),
        "kl_teacher_student_T2": float(_kl_at_temperature(teacher_logits, student_logits, attention_mask,
                                                          temperature=2.0)),
        "export_max_abs_diff": float(jnp.max(jnp.abs(student_logits - exported_logits))),
    }

    # 5. XNLI samples, 15 languages.
    xnli_dir = embedded_xnli_dir() if config.xnli.data == "embedded" else Path(config.xnli.data)
    xnli_rows = {}
    for language in nli.xnli_languages():
        examples = nli.read_xtreme_xnli(xnli_dir, split=config.xnli.split, language=language)
        encoded = nli.encode_nli(examples, tokenizer, max_length=config.xnli.max_length, with_token_types=False)
        lengths = encoded["attention_mask"].sum(1)
        xnli_rows[language] = {
            "examples": len(examples),
            "labels": np.bincount(encoded["labels"], minlength=3).tolist(),
            "mean_tokens": float(lengths.mean()),
            "truncated": int((lengths == config.xnli.max_length).sum()),
        }
    summary["xnli"] = xnli_rows
    summary["seconds"] = time.perf_counter() - started

    write_text_atomically(workdir / "demo.json", json.dumps(summary, indent=2, ensure_ascii=False) + "\n")
    write_text_atomically(workdir / "demo.md", to_markdown(summary))
    return summary


def to_markdown(summary: dict) -> str:
    corpus, batching, masking, models = (summary[k] for k in ("corpus", "batching", "masking", "models"))
    lines = [
        "# distil demo",
        "",
        f"Corpus: {corpus['sequences']:,} sequences, {corpus['tokens']:,} tokens in "
        f"{len(corpus['languages'])} languages"
        + (f" ({corpus['reused_shards']} shard(s) reused from an earlier run)." if corpus.get("reused_shards") else
           "."),
        "",
        f"Batches of {batching['global_batch']}: {batching['steps_per_epoch']} per epoch; padding "
        f"{batching['padding_fraction_grouped']:.1%} grouped by length vs "
        f"{batching['padding_fraction_ungrouped']:.1%} ungrouped.",
        "",
        f"Masking (first batch): {masking['targets']} targets of {masking['real_tokens']} real tokens, "
        f"{masking['replaced_by_mask']} -> [MASK], {masking['kept']} kept.",
        "",
        "| model | parameters | MLM loss (masked batch) |",
        "|---|---:|---:|",
        f"| teacher | {models['teacher_parameters']:,} | {models['teacher_mlm_loss']:.3f} |",
        f"| student (teacher layers {models['teacher_layers']}) | {models['student_parameters']:,} | "
        f"{models['student_mlm_loss']:.3f} |",
        "",
        f"KL(teacher || student) at T=2, x T²: {models['kl_teacher_student_T2']:.4f}. "
        f"Exported student vs distil logits: max |diff| {models['export_max_abs_diff']:.1e}.",
        "",
        "| XNLI | examples | entail / neutral / contra | mean tokens | truncated |",
        "|---|---:|---:|---:|---:|",
    ]
    for language, row in summary["xnli"].items():
        lines.append(f"| {language} | {row['examples']} | {' / '.join(map(str, row['labels']))} | "
                     f"{row['mean_tokens']:.1f} | {row['truncated']} |")
    lines += ["", f"Ran in {summary['seconds']:.1f}s.", ""]
    return "\n".join(lines)
