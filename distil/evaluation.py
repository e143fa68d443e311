"""Held-out masked-token accuracy of a saved model folder on fixed masks, its unigram baseline, and fill-mask top-k.

The demo's first table comes from here: does a model predict masked tokens of lines it never trained on better than
a model that ignores context? The training loss cannot say (it is on training lines, with the recipe's masking,
which favours rare tokens), so the evaluation is its own:

* masks: uniform over the real tokens of each held-out line, as BERT's own pre-training picks them (not the
  DistilBERT recipe's count^-0.7 weighting): round(15%) of a line's non-special tokens, at least one, drawn without
  replacement from a generator seeded by (seed, line index), and every picked position replaced by [MASK]
  (predicting it from the rest of the line; the 10% kept / 10% random of training would only blur the measure).
  The masks depend on the tokenizer, the lines and the seed only, so every model of the same vocabulary is scored on
  exactly the same positions (`heldout_masks`).
* accuracy: argmax of the MLM logits at a masked position equals the original token, counted per language and
  over all masked positions of all languages ("overall" = micro average).
* unigram baseline: the same masks answered with the most frequent token of that language's training lines (special
  tokens excluded), i.e. the best a model can do without reading the context. Per language because a model sees
  which language it reads; this is the stronger of the two unigram baselines (a pooled one would guess "." or "," in
  Chinese too).
* bigram counts: for scale, what the neighbouring tokens alone give on the same masks from counts of the same
  training lines, with no training (`bigram_accuracy`); a model that learnt to read its context beats it.
* paired comparison: two models scored on the same targets differ only where they disagree, so the noise of their
  difference is McNemar's, from the targets only one of them gets right (`paired_comparison`), not that of two
  independent accuracies.
* heads that read a neighbour: how much attention each head puts on the tokens next to the query
  (`neighbour_attention`, `reading_heads`); an MLM whose every head spreads evenly reads its lines as bags of words.
"""

from __future__ import annotations

import collections
import os
from collections.abc import Mapping, Sequence

import numpy as np

from distil.data import text as text_sources
from distil.tokenization import special_token_ids


def read_lines(folder: str | os.PathLike, languages: Sequence[str] | None = None) -> dict[str, list[str]]:
    """{language: non-blank lines (stripped) of folder/<language>.txt}, for the given languages or every file there
    (read as the training corpus is, `distil.data.text.language_files`)."""
    files = text_sources.language_files(folder)
    missing = sorted(set(languages or ()) - set(files))
    if missing:
        raise text_sources.TextSourceError(f"{folder}: no <lang>.txt for {missing}; it has {sorted(files)}")
    return {lang: list(files[lang]) for lang in (languages or files)}


def heldout_masks(tokenizer, lines: Mapping[str, Sequence[str]], *, seed: int = 0, mask_prop: float = 0.15,
                  max_length: int = 128) -> dict[str, dict[str, np.ndarray]]:
    """Per language: `input_ids` [n, max_length] with [MASK] at the picked positions, `labels` (the original id
    there, -100 elsewhere; `distil.data.masking.IGNORE_INDEX`) and `attention_mask`, all int32. Lines are encoded as
    [CLS] line [SEP], truncated to max_length. Fixed: the same tokenizer, lines and seed give the same masks."""
    from distil.data.masking import IGNORE_INDEX

    special = special_token_ids(tokenizer)
    specials = {special.pad, special.unk, special.cls, special.sep, special.mask}
    out = {}
    for lang_index, (lang, texts) in enumerate(lines.items()):
        input_ids = np.full((len(texts), max_length), special.pad, np.int32)
        labels = np.full_like(input_ids, IGNORE_INDEX)
        attention = np.zeros_like(input_ids)
        for row, text in enumerate(texts):
            ids = [special.cls, *_encode_plain(tokenizer, text)[:max_length - 2], special.sep]
            input_ids[row, :len(ids)] = ids
            attention[row, :len(ids)] = 1
            candidates = [i for i, token in enumerate(ids) if token not in specials]  # [UNK] is no target either
            if not candidates:
                continue
            rng = np.random.default_rng((seed, lang_index, row))
            count = max(1, round(mask_prop * len(candidates)))
            picked = rng.choice(candidates, size=min(count, len(candidates)), replace=False)
            labels[row, picked] = input_ids[row, picked]
            input_ids[row, picked] = special.mask
        out[lang] = {"input_ids": input_ids, "labels": labels, "attention_mask": attention}
    return out


def _encode_plain(tokenizer, text: str) -> list[int]:
    """Token ids of `text` without [CLS]/[SEP], whatever the tokenizer's post-processor adds."""
    return tokenizer.encode(text, add_special_tokens=False).ids


def unigram_predictions(tokenizer, train_lines: Mapping[str, Sequence[str]]) -> dict[str, int]:
    """{language: its most frequent non-special token id in `train_lines`} (ties: the smaller id)."""
    special = special_token_ids(tokenizer)
    specials = [special.pad, special.unk, special.cls, special.sep, special.mask]
    out = {}
    for lang, texts in train_lines.items():
        counts = np.zeros(tokenizer.get_vocab_size(), np.int64)
        for text in texts:
            np.add.at(counts, np.asarray(_encode_plain(tokenizer, text), np.int64), 1)
        counts[specials] = -1
        out[lang] = int(np.argmax(counts))
    return out


def bigram_accuracy(tokenizer, masks: Mapping[str, Mapping[str, np.ndarray]],
                    train_lines: Mapping[str, Sequence[str]], fallback: Mapping[str, int]) -> dict:
    """A count model on `masks`, for scale: what local context alone gives, with no training. Each masked token is
    answered with the x maximising count(left, x) x count(x, right) in that language's training lines (left / right:
    the unmasked neighbours; a line's start and end count as neighbours; ties go to the more frequent pair with
    the left neighbour); with one neighbour masked or unseen, the other side's most frequent pair; with neither,
    `fallback` (the unigram answer). {"accuracy": {lang..., "overall"}, "targets": ...} as `unigram_accuracy`."""
    special = special_token_ids(tokenizer)
    start, end = -1, -2  # line boundaries in the count tables
    correct, total = {}, {}
    for lang, batch in masks.items():
        after = collections.defaultdict(collections.Counter)  # left id -> Counter of the ids that follow it
        before = collections.defaultdict(collections.Counter)  # right id -> Counter of the ids before it
        for text in train_lines[lang]:
            ids = [start, *_encode_plain(tokenizer, text), end]
            for left, right in zip(ids, ids[1:]):
                after[left][right] += 1
                before[right][left] += 1
        hits = count = 0
        for row, labels in enumerate(batch["labels"]):
            ids, length = batch["input_ids"][row], int(batch["attention_mask"][row].sum())
            for position in np.flatnonzero(labels >= 0):
                left = start if position == 1 else int(ids[position - 1])
                right = end if position == length - 2 else int(ids[position + 1])
                nexts = after.get(left, {}) if left != special.mask else {}
                previous = before.get(right, {}) if right != special.mask else {}
                if nexts and previous:
                    scores = {x: n * previous.get(x, 0) + n / 1000 for x, n in nexts.items()}
                else:
                    scores = nexts or previous
                answer = max(scores, key=scores.get) if scores else fallback[lang]
                hits += int(answer == labels[position])
                count += 1
        correct[lang], total[lang] = hits, count
    return _summarise(correct, total)


def _summarise(correct: dict[str, int], total: dict[str, int]) -> dict:
    result = {lang: correct[lang] / max(total[lang], 1) for lang in total}
    result["overall"] = sum(correct.values()) / max(sum(total.values()), 1)
    return {"accuracy": result, "targets": {**total, "overall": sum(total.values())}}


def unigram_accuracy(masks: Mapping[str, Mapping[str, np.ndarray]], predictions: Mapping[str, int]) -> dict:
    """The unigram baseline on `masks`: {"accuracy": {lang..., "overall"}, "targets": {lang..., "overall"}}."""
    correct, total = {}, {}
    for lang, batch in masks.items():
        targets = batch["labels"][batch["labels"] >= 0]
        correct[lang], total[lang] = int((targets == predictions[lang]).sum()), int(targets.size)
    return _summarise(correct, total)


def _load(model_or_folder):
    from distil import hf

    return hf.load_pretrained(model_or_folder) if isinstance(model_or_folder, (str, os.PathLike)) else model_or_folder


def _padded_batches(masks: Mapping[str, Mapping[str, np.ndarray]], batch_size: int):
    """(lang, input_ids, attention_mask, rows) per batch of each language's lines, padded to `batch_size`
    rows so one shape compiles; padding rows attend to one position (no all-masked softmax)."""
    for lang, batch in masks.items():
        for start in range(0, len(batch["input_ids"]), batch_size):
            ids, mask = (np.asarray(batch[key][start:start + batch_size]) for key in ("input_ids", "attention_mask"))
            rows, pad = len(ids), batch_size - len(ids)
            ids, mask = (np.pad(array, ((0, pad), (0, 0))) for array in (ids, mask))
            mask[rows:, 0] = 1
            yield lang, ids, mask, rows


def masked_answers(model_or_folder, masks: Mapping[str, Mapping[str, np.ndarray]], *,
                   batch_size: int = 64) -> dict[str, np.ndarray]:
    """A model's answer (its most likely token) at every target of `masks`, per language, in the order of
    `labels[labels >= 0]`. The model: a distil model, or an exported folder `distil.hf.load_pretrained` reads."""
    import jax.numpy as jnp
    from flax import nnx

    model = _load(model_or_folder)

    @nnx.jit
    def predict(model, input_ids, attention_mask):
        return jnp.argmax(model(input_ids, attention_mask).logits, axis=-1)

    predicted = {lang: [] for lang in masks}
    for lang, ids, mask, rows in _padded_batches(masks, batch_size):
        predicted[lang].append(np.asarray(predict(model, jnp.asarray(ids), jnp.asarray(mask)))[:rows])
    return {lang: np.concatenate(predicted[lang])[batch["labels"] >= 0] for lang, batch in masks.items()}


def answers_accuracy(masks: Mapping[str, Mapping[str, np.ndarray]], answers: Mapping[str, np.ndarray]) -> dict:
    """The accuracy of `masked_answers`: {"accuracy": {lang..., "overall"}, "targets": {lang..., "overall"}}."""
    correct, total = {}, {}
    for lang, batch in masks.items():
        targets = batch["labels"][batch["labels"] >= 0]
        correct[lang], total[lang] = int((answers[lang] == targets).sum()), int(targets.size)
    return _summarise(correct, total)


def masked_accuracy(model_or_folder, masks: Mapping[str, Mapping[str, np.ndarray]], *, batch_size: int = 64) -> dict:
    """Masked-token accuracy of a model on `masks`: {"accuracy": {lang..., "overall"}, "targets": {...}}."""
    return answers_accuracy(masks, masked_answers(model_or_folder, masks, batch_size=batch_size))


def paired_comparison(masks: Mapping[str, Mapping[str, np.ndarray]], first: Mapping[str, np.ndarray],
                      second: Mapping[str, np.ndarray]) -> dict:
    """Two models' `masked_answers` on the same targets: {"difference": first's accuracy - second's, "first_only" /
    "second_only": targets only that one gets right, "targets", "two_se": two standard errors of the difference}.

    Both are scored on the same masked tokens, so only the targets where they disagree make the difference vary:
    per target d = right(first) - right(second), and the standard error of its mean is
    sqrt(first_only + second_only - (first_only - second_only)^2 / n) / n (McNemar's view), far below that of two
    independent accuracies when the models agree on most targets (a student and its ablation from the same
    teacher layers)."""
    labels = np.concatenate([batch["labels"][batch["labels"] >= 0] for batch in masks.values()])
    right_first, right_second = (np.concatenate([answers[lang] for lang in masks]) == labels
                                 for answers in (first, second))
    first_only, second_only = int((right_first & ~right_second).sum()), int((~right_first & right_second).sum())
    n = max(labels.size, 1)
    spread = max(first_only + second_only - (first_only - second_only) ** 2 / n, 0.0)
    return {"difference": (first_only - second_only) / n, "first_only": first_only, "second_only": second_only,
            "targets": int(labels.size), "two_se": 2 * spread ** 0.5 / n}


def neighbour_attention(model_or_folder, masks: Mapping[str, Mapping[str, np.ndarray]], *,
                        offsets: Sequence[int] = (-2, -1, 1, 2), batch_size: int = 64) -> dict:
    """How much of its attention each head puts on the token at each offset from the query, on the lines of
    `masks` as the model reads them: {"offsets", "weights": [layer][head][offset]}, the mean over every real query
    token ([CLS] .. [SEP]) whose neighbour at that offset is in its line.

    Why: a model that only knows which words a line holds (a bag of words: every head ~1/length on every token)
    cannot tell a masked word-piece from its neighbours; heads that read their neighbours (~1 at -1 or +1) are
    what lets an MLM pass that stage. The demo's teacher grows them only after ~10,000 updates."""
    import jax.numpy as jnp
    from flax import nnx

    model = _load(model_or_folder)

    @nnx.jit
    def attentions(model, input_ids, attention_mask):  # [batch, layers, heads, query, key]
        return jnp.stack(model(input_ids, attention_mask, output_attentions=True).attentions, axis=1)

    total, count = 0.0, np.zeros(len(offsets))
    for _, ids, mask, rows in _padded_batches(masks, batch_size):
        probs, real = np.asarray(attentions(model, jnp.asarray(ids), jnp.asarray(mask)))[:rows], mask[:rows] > 0
        sums = []
        for i, offset in enumerate(offsets):
            query = np.arange(max(0, -offset), ids.shape[1] - max(0, offset))
            valid = real[:, query] & real[:, query + offset]  # [rows, queries]
            sums.append(np.einsum("blhq,bq->lh", probs[..., query, query + offset], valid))
            count[i] += valid.sum()
        total = total + np.stack(sums, axis=-1)
    return {"offsets": list(offsets), "weights": (total / np.maximum(count, 1)).tolist()}


def reading_heads(attention: dict, *, threshold: float = 0.5) -> list[dict]:
    """The heads of `neighbour_attention` that put at least `threshold` of their attention on one offset:
    [{"layer", "head", "offset", "weight"}], strongest first (layers and heads counted from 0)."""
    weights = np.asarray(attention["weights"])
    found = [{"layer": int(layer), "head": int(head), "offset": attention["offsets"][i],
              "weight": float(weights[layer, head, i])} for layer, head, i in zip(*np.nonzero(weights >= threshold))]
    return sorted(found, key=lambda item: -item["weight"])


def fill_mask(folder: str | os.PathLike, texts: Sequence[str], *, top_k: int = 3) -> list[dict]:
    """transformers' fill-mask pipeline on an exported folder (offline): for each text with one [MASK], its
    top_k answers as [{"token": str, "score": float}]. The independent path: what a user of the folder sees."""
    import transformers

    pipe = transformers.pipeline("fill-mask", model=str(folder), top_k=top_k)
    return [{"text": text, "answers": [{"token": answer["token_str"], "score": float(answer["score"])}
                                       for answer in pipe(text)]} for text in texts]


def mask_one_word(tokenizer, text: str, *, seed: int = 0) -> tuple[str, str]:
    """(text with one whole word replaced by [MASK], that word): a word that is a single token of the vocabulary
    and not punctuation, picked by a seeded generator, so the fill-mask examples have one right answer."""
    words = text.split()
    candidates = [i for i, word in enumerate(words)
                  if word.isalpha() and len(_encode_plain(tokenizer, word)) == 1]
    if not candidates:
        return "", ""
    index = candidates[np.random.default_rng(seed).integers(len(candidates))]
    return " ".join([*words[:index], "[MASK]", *words[index + 1:]]), words[index]


def retention(student: float, teacher: float) -> float | None:
    """student / teacher: the share of the teacher's accuracy the student keeps (None when the teacher's is 0)."""
    return student / teacher if teacher else None
