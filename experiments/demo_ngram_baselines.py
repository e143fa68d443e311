"""What the demo's data hold: count-based baselines on the demo's held-out masks (no training, a few seconds).

    .venv/bin/python experiments/demo_ngram_baselines.py

The demo (configs/demo.py) scores its models on fixed masks of held-out lines beside a unigram baseline (each
language's most frequent training token). This sets two count models beside it, on exactly those masks, from the
same training lines:
* left bigram: the token that most often follows the left neighbour in that language's training lines (the
  unigram answer when the neighbour is itself masked or unseen);
* both neighbours: `distil.evaluation.bigram_accuracy`, the demo report's own "bigram counts" row.
They say how much of the held-out accuracy the data allow from local context alone, i.e. how far a model is from
using its neighbours (the demo's teacher, at ~4.6%, mostly does not).
"""

from __future__ import annotations

import collections

import numpy as np

from distil import evaluation
from distil.config import load_config
from distil.tokenization import load_tokenizer, special_token_ids


def main() -> None:
    demo = load_config("demo")
    teacher = demo.teacher  # the teacher stage's config: its tokenizer, corpus and length
    tokenizer = load_tokenizer(teacher.tokenizer)
    special = special_token_ids(tokenizer)
    heldout = evaluation.read_lines(demo.heldout)
    masks = evaluation.heldout_masks(tokenizer, heldout, seed=demo.eval_seed, max_length=teacher.data.max_length)
    train = evaluation.read_lines(teacher.data.corpus, list(heldout))
    unigram = evaluation.unigram_predictions(tokenizer, train)  # the demo's own baselines
    results = {"unigram": evaluation.unigram_accuracy(masks, unigram)["accuracy"]["overall"],
               "both neighbours": evaluation.bigram_accuracy(tokenizer, masks, train, unigram)["accuracy"]["overall"]}
    hits = total = continuation = 0
    for lang, batch in masks.items():
        after = collections.defaultdict(collections.Counter)  # left id (-1: a line's start) -> next ids
        for text in train[lang]:
            ids = [-1, *tokenizer.encode(text, add_special_tokens=False).ids]
            for left, right in zip(ids, ids[1:]):
                after[left][right] += 1
        for row, labels in enumerate(batch["labels"]):
            for position in np.flatnonzero(labels >= 0):
                gold, left = int(labels[position]), int(batch["input_ids"][row, position - 1])
                left = -1 if position == 1 else left
                answer = after[left].most_common(1)[0][0] if left != special.mask and after[left] else unigram[lang]
                hits, total = hits + (answer == gold), total + 1
                continuation += tokenizer.id_to_token(gold).startswith("##")
    results["left bigram"] = hits / total
    print(f"{total:,} masked tokens of {sum(map(len, heldout.values()))} held-out lines; "
          f"{continuation / total:.1%} are word-piece continuations (##...)\n")
    print("| count model | held-out masked-token accuracy |\n|---|---:|")
    for name in ("unigram", "left bigram", "both neighbours"):
        print(f"| {name} | {results[name]:.1%} |")


if __name__ == "__main__":
    main()
