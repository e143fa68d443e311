"""What the demo's data hold: count-based baselines on the demo's held-out masks (no training, a few seconds).

    .venv/bin/python experiments/demo_ngram_baselines.py

The demo (configs/demo.py) scores its models on fixed masks of held-out lines beside a unigram baseline (each
language's most frequent training token). This sets two count models beside it, on exactly those masks, from the
same training lines:
* left bigram: the token that most often follows the left neighbour in that language's training lines (the
  unigram answer when the neighbour is itself masked or unseen);
* both neighbours: the candidate maximising count(left, x) x count(x, right), falling back to one side.
They say how much of the held-out accuracy the data allow from local context alone, i.e. how far a model is from
using its neighbours (the demo's teacher, at ~4.6%, mostly does not).
"""

from __future__ import annotations

import collections

import numpy as np

from distil import evaluation
from distil.config import load_config
from distil.tokenization import load_tokenizer, special_token_ids


def count_tables(tokenizer, lines):
    """(unigram Counter, {left: Counter of next}, {right: Counter of previous}) of one language's lines; line
    boundaries are the ids -1 (start) and -2 (end)."""
    unigram, after, before = collections.Counter(), collections.defaultdict(collections.Counter), \
        collections.defaultdict(collections.Counter)
    for text in lines:
        ids = [-1, *tokenizer.encode(text, add_special_tokens=False).ids, -2]
        unigram.update(ids[1:-1])
        for left, right in zip(ids, ids[1:]):
            after[left][right] += 1
            before[right][left] += 1
    return unigram, after, before


def main() -> None:
    demo = load_config("demo")
    teacher = demo.teacher  # the teacher stage's config: its tokenizer, corpus and length
    tokenizer = load_tokenizer(teacher.tokenizer)
    special = special_token_ids(tokenizer)
    heldout = evaluation.read_lines(demo.heldout)
    masks = evaluation.heldout_masks(tokenizer, heldout, seed=demo.eval_seed, max_length=teacher.data.max_length)
    train = evaluation.read_lines(teacher.data.corpus, list(heldout))
    unigram_answers = evaluation.unigram_predictions(tokenizer, train)  # the demo's own unigram baseline
    correct, total, continuation = collections.Counter(), 0, 0
    for lang, batch in masks.items():
        _, after, before = count_tables(tokenizer, train[lang])
        top = unigram_answers[lang]
        for row, labels in enumerate(batch["labels"]):
            ids = batch["input_ids"][row]
            length = int(batch["attention_mask"][row].sum())
            for position in np.flatnonzero(labels >= 0):
                gold = int(labels[position])
                total += 1
                continuation += tokenizer.id_to_token(gold).startswith("##")
                left = -1 if position == 1 else (None if ids[position - 1] == special.mask else int(ids[position - 1]))
                right = -2 if position == length - 2 else (
                    None if ids[position + 1] == special.mask else int(ids[position + 1]))
                next_counts = after.get(left) if left is not None else None
                left_guess = next_counts.most_common(1)[0][0] if next_counts else top
                scores = collections.Counter(next_counts or {})
                if right is not None and right in before:
                    previous = before[right]
                    scores = collections.Counter({x: n * previous.get(x, 0) + 1e-3 * n for x, n in scores.items()}) \
                        if scores else previous
                both_guess = scores.most_common(1)[0][0] if scores else top
                correct["unigram"] += gold == top
                correct["left bigram"] += gold == left_guess
                correct["both neighbours"] += gold == both_guess
    print(f"{total:,} masked tokens of {sum(map(len, heldout.values()))} held-out lines; "
          f"{continuation / total:.1%} are word-piece continuations (##...)\n")
    print("| count model | held-out masked-token accuracy |\n|---|---:|")
    for name, hits in correct.items():
        print(f"| {name} | {hits / total:.1%} |")


if __name__ == "__main__":
    main()
