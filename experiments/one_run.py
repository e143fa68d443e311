"""One full run as a sweep of one point: the DistilBERT recipe on mBERT, then XNLI of its student. The README's
launch walk-throughs (TPU slice, SLURM, GKE) start it with `distil sweep experiments/one_run.py --launcher ...`,
which prints or writes every command the platform needs, resolved and checked first.

    distil sweep experiments/one_run.py --launcher print --config distilmbert:runlocal \
        --xnli distilmbert_xnli:runlocal                                   # what would run, here
"""

CONFIG = "distilmbert"
XNLI = "distilmbert_xnli"


def get_sweep():
    return [{}]
