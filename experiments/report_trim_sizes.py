"""Parameters and on-disk size of DistilmBERT and of students trimmed to language sets (the README's table).

    .venv/bin/python experiments/report_trim_sizes.py [--corpus distil/data/embedded/corpus] [--scaling]

Vocabulary sizes come from `distil.trim` on a corpus of `<lang>.txt` files, by default the embedded one (250
sentences per language: far smaller than a Wikipedia, so its vocabularies are far smaller too; `--scaling` prints
how they grow with the number of lines). Parameters are counted from `distil.models.distilmbert_base()` shapes with
an MLM head, without allocating anything; the on-disk size is that of float32 safetensors (4 bytes a parameter, the
header is a few KB) plus the trimmed tokenizer files (written to a temporary folder and measured).
"""

from __future__ import annotations

import argparse
import itertools
import tempfile
from pathlib import Path

import numpy as np

from distil import trim
from distil.data.embedded import EMBEDDED_LANGUAGES, embedded_corpus_dir
from distil.models import distilmbert_base, parameter_count
from distil.tokenization import default_vocab_path, load_tokenizer, save_tokenizer

LANGUAGE_SETS = {"en": ["en"], "en+fr": ["en", "fr"], "15 XNLI languages": list(EMBEDDED_LANGUAGES),
                 "ar+hi+zh": ["ar", "hi", "zh"]}


def _sizes(vocab_size: int) -> tuple[int, float]:
    parameters = parameter_count(distilmbert_base(head="mlm", vocab_size=vocab_size))
    return parameters, parameters * 4 / 1e6


def _tokenizer_megabytes(tokenizer) -> float:
    with tempfile.TemporaryDirectory() as folder:
        save_tokenizer(tokenizer, folder)
        return sum(path.stat().st_size for path in Path(folder).iterdir()) / 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--corpus", default=str(embedded_corpus_dir()), help="a folder of <lang>.txt files")
    parser.add_argument("--scaling", action="store_true", help="also print vocabulary size against corpus lines")
    args = parser.parse_args()

    mbert = load_tokenizer(default_vocab_path())
    parameters, megabytes = _sizes(mbert.get_vocab_size())
    print("| model | languages | vocabulary (corpus tokens + single characters) | parameters | float32 on disk |")
    print("|---|---|---|---|---|")
    print(f"| DistilmBERT | 104 (mBERT) | {mbert.get_vocab_size():,} | {parameters / 1e6:.1f}M | "
          f"{megabytes + _tokenizer_megabytes(mbert):,.0f} MB |")
    counts = trim.corpus_token_counts(args.corpus, mbert)
    for name, languages in LANGUAGE_SETS.items():
        total = np.sum([counts.counts[language] for language in languages], axis=0)
        vocabulary = trim.select_vocabulary(mbert, total)
        reasons = vocabulary.kept_by_reason
        parameters, megabytes = _sizes(vocabulary.vocab_size)
        print(f"| trimmed | {name} | {vocabulary.vocab_size:,} ({reasons['special'] + reasons['corpus']:,} + "
              f"{reasons['single_chars']:,}) | {parameters / 1e6:.1f}M | "
              f"{megabytes + _tokenizer_megabytes(vocabulary.tokenizer):,.0f} MB |")

    if args.scaling:
        print("\n| lines per language | " + " | ".join(LANGUAGE_SETS) + " |")
        print("|---|" + "---|" * len(LANGUAGE_SETS))
        for lines in (50, 100, 150, 200, 250):
            row = []
            for languages in LANGUAGE_SETS.values():
                total = np.zeros(mbert.get_vocab_size(), np.int64)
                for language in languages:
                    chunk = list(itertools.islice((line for line in (Path(args.corpus) / f"{language}.txt")
                                                   .read_text("utf-8").splitlines() if line.strip()), lines))
                    encodings = mbert.encode_batch_fast(chunk, add_special_tokens=False)
                    total += np.bincount(np.concatenate([e.ids for e in encodings]), minlength=len(total))
                corpus_only = trim.select_vocabulary(mbert, total, single_chars=False).vocab_size
                row.append(f"{corpus_only:,}")
            print(f"| {lines} | " + " | ".join(row) + " |")


if __name__ == "__main__":
    main()
