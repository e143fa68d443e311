"""Ablation: the data side of the recipe, the masking's frequency smoothing (token probabilities ∝ count^-s; 0 is
uniform masking) and the language sampling exponent (p(lang) ∝ lines^alpha; 1 samples as the corpus is, 0 evenly).

    distil sweep experiments/data_sweep.py --launcher xpk --cluster my-cluster --device-type v4-32 \
        --docker-image us-docker.pkg.dev/PROJECT/REPO/distil:0.1.0-tpu --workdir /gcs/sweeps/data \
        --config.teacher.checkpoint=/gcs/models/bert-base-multilingual-cased
    distil sweep experiments/data_sweep.py --launcher local --config distilmbert:runlocal --workdir runs/data_local
"""

from distil.launch import product

CONFIG = "distilmbert"
XNLI = "distilmbert_xnli"


def get_sweep():
    smoothing = [{"masking.mlm_smoothing": s} for s in (0.0, 0.7)]
    sampling = [{"data.sampling_alpha": a} for a in (0.3, 0.7, 1.0)]
    return product(smoothing, sampling)
