"""Ablation: the student's depth (which teacher layers it starts from) and width (a narrower student trained from
scratch, with a learned projection for the hidden-state loss since the cosine term needs equal widths).

    distil sweep experiments/student_shape_sweep.py --launcher slurm --nodes 1 --gpus-per-node 8 \\
        --venv /shared/venvs/distil --config distilmbert:gpu=8xh100 --workdir /shared/sweeps/shape \\
        --config.teacher.checkpoint=/shared/models/bert-base-multilingual-cased
    distil sweep experiments/student_shape_sweep.py --launcher local --config distilmbert:runlocal \\
        --workdir runs/student_shape_local
"""

CONFIG = "distilmbert"
XNLI = "distilmbert_xnli"


def get_sweep(config):
    """Depths: the recipe's layers, every other one of those, and the bottom and top layers only; width: half the
    teacher's (random init, the heads' width kept)."""
    recipe = tuple(config.student.teacher_layers)
    depths = dict.fromkeys([recipe, recipe[::2], (recipe[0], recipe[-1])])  # (small configs repeat some)
    points = [{"student.teacher_layers": layers} for layers in depths]
    width, heads = config.student.hidden_size, config.student.num_attention_heads
    if config.teacher.source == "checkpoint":  # the teacher's width comes from its folder: mBERT's 768
        width, heads = 768, 12
    points.append({"student.init": "random", "student.num_hidden_layers": len(recipe),
                   "student.hidden_size": width // 2, "student.num_attention_heads": heads // 2,
                   "student.intermediate_size": 2 * width,
                   "loss.alpha_cos": 0.0, "loss.alpha_hidden_mse": 1.0,
                   "loss.hidden_layer_map": (0, *(layer + 1 for layer in recipe)), "loss.hidden_projection": True})
    return points
