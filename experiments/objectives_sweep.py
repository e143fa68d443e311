"""Ablation: which teacher signals the student learns from; each point's student is then fine-tuned on English NLI
and evaluated zero-shot on XNLI.

The recipe (5·ce + 2·mlm + 1·cos) against the recipe plus an intermediate-layer objective (TinyBERT's hidden-state
MSE, or attention KL, on the initialisation's layer map), against MiniLM-v2's q/k/v relations of one upper-middle
teacher layer in place of the cosine term, and against mlm alone (the teacher's layers as initialisation only).

    distil sweep experiments/objectives_sweep.py --launcher tpu --tpu my-v4-32 --zone us-central2-b \\
        --config distilmbert:tpu=v4-32 --workdir /mnt/shared/sweeps/objectives \\
        --config.teacher.checkpoint=/mnt/shared/models/bert-base-multilingual-cased
    distil sweep experiments/objectives_sweep.py --launcher local --workdir runs/objectives_local \\
        --config distilmbert:runlocal --xnli distilmbert_xnli:runlocal
    distil report runs/objectives_sweep --out runs/objectives_sweep/report
"""

CONFIG = "distilmbert"
XNLI = "distilmbert_xnli"

RECIPE = {"loss.alpha_ce": 5.0, "loss.alpha_mlm": 2.0, "loss.alpha_cos": 1.0}


def get_sweep(config):
    """Layer maps follow the base config's student: student layer i was initialised from teacher layer
    `teacher_layers[i]` (hidden_states index 0 is the embeddings, so the hidden map is shifted by one)."""
    layers = tuple(config.student.teacher_layers)
    hidden_map = (0, *(layer + 1 for layer in layers))
    minilm_layer = layers[(2 * len(layers)) // 3]  # an upper-middle teacher layer, as MiniLM-v2 chooses
    return [
        {**RECIPE},
        {**RECIPE, "loss.alpha_hidden_mse": 1.0, "loss.hidden_layer_map": hidden_map},
        {**RECIPE, "loss.alpha_attention": 1.0, "loss.attention_layer_map": layers},
        {**RECIPE, "loss.alpha_cos": 0.0, "loss.alpha_minilm": 1.0, "loss.minilm_teacher_layer": minilm_layer},
        {"loss.alpha_ce": 0.0, "loss.alpha_mlm": 1.0, "loss.alpha_cos": 0.0},
    ]
