"""mBERT on XNLI, zero-shot: fine-tune bert-base-multilingual-cased on English NLI, evaluate 15 languages.

    distil xnli --config mbert_xnli --workdir runs/xnli_mbert --config.init=~/models/bert-base-multilingual-cased
    distil xnli --config mbert_xnli:runlocal --workdir runs/xnli_local      # a small random BERT, embedded data

The recipe and the data options are in `_xnli.py`; the model card's mBERT row (en 82.1, es 74.6, zh 69.1, de 72.3,
ar 66.4, ur 58.5) is what a full run is compared with. `:runlocal`'s random BERT has 4 layers of width 64.
"""

from pathlib import Path

from distil.config import import_file

xnli_config = import_file(Path(__file__).with_name("_xnli.py"), "config").xnli_config  # the shared part


def get_config(arg=None):
    return xnli_config("bert", arg)
