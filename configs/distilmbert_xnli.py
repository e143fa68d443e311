"""DistilmBERT on XNLI, zero-shot: fine-tune a distilled student on English NLI, evaluate 15 languages.

    distil xnli --config distilmbert_xnli --workdir runs/xnli_student --config.init=runs/distilmbert
    distil xnli --config distilmbert_xnli --workdir runs/xnli_card \
        --config.init=~/models/distilbert-base-multilingual-cased
    distil xnli --config distilmbert_xnli:runlocal --workdir runs/xnli_local   # a small random DistilBERT

`config.init` is a `distil distill` workdir (its student/ export) or any Hugging Face DistilBERT folder. The recipe
and the data options are in `_xnli.py`; the model card's DistilmBERT row (en 78.2, es 69.1, zh 64.0, de 66.3, ar 59.1,
ur 54.7) is what a full run is compared with. `:runlocal`'s random DistilBERT has 2 layers of width 64.
"""

from pathlib import Path

from distil.config import import_file

xnli_config = import_file(Path(__file__).with_name("_xnli.py"), "config").xnli_config  # the shared part


def get_config(arg=None):
    return xnli_config("distilbert", arg)
