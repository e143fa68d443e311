"""The demo: the whole pipeline at laptop scale on the embedded default data (`distil demo`, the README's first
command; 3 min 40 s on 2 idle CPU cores).

    distil demo [--workdir runs/demo] [--config.teacher_steps=200 ...]

Stages (each in its own folder of the workdir, reused when finished, resumed when interrupted):
  1. teacher/        MLM pre-training of a small BERT (4 layers, width 128) on the embedded 15-language corpus:
                     `distil distill --config distilmbert:runlocal` with no teacher;
  2. student/        the reference recipe (5·ce + 2·mlm + 1·cos, T = 2) into a 2-layer DistilBERT initialised from
                     teacher layers 0 and 3;
  3. xnli-teacher/, xnli-student/   zero-shot XNLI: fine-tune on the embedded English MultiNLI sample, evaluate the
                     15 languages (`distil xnli`);
  4. report.md (+ loss curves, XNLI bars, the student's speed-up measured in this process, the full recipe's
     memory dry run) and xnli_results.json.
Both models use the embedded corpus' 8,000-token WordPiece (distil/data/embedded/wordpiece-8k): mBERT's 119,547
rows would be 95% of a width-128 model and of its step time. Numbers at this size are far below the model card's.
"""

import ml_collections

from distil.config import parse_arg

# Overrides of distilmbert:runlocal shared by both distillation stages: packed rows of 128 tokens (one compiled
# shape), 8 rows (~1,000 tokens) per update.
_DATA = ("batching.composition=packed", "batching.global_batch=8", "batching.micro_batches=1",
         "masking.group_size=2", "batching.pad_to_multiple=128", "checkpoint.every_steps=100", "log_every_steps=25")
_WIDTH = ("hidden_size=128", "num_hidden_layers=4", "num_attention_heads=4", "intermediate_size=512")


def get_config(arg=None):
    parse_arg(arg)  # no variants
    config = ml_collections.ConfigDict()
    config.seed = 0
    config.teacher_steps = 300  # MLM pre-training: ~2 epochs of the embedded corpus (~150K tokens)
    config.student_steps = 200
    config.teacher = (*_DATA, "teacher.source=none", "student.init=random", "student.family=bert",
                      *(f"student.{field}" for field in _WIDTH), "loss.alpha_ce=0.0", "loss.alpha_cos=0.0",
                      "loss.alpha_mlm=1.0", "optimizer.learning_rate=1e-3")
    config.student = (*_DATA, "teacher.source=checkpoint", "student.teacher_layers=(0, 3)")
    # XNLI fine-tuning of both (configs/_xnli.py runlocal: 1,000 English pairs, 2 seeds, 15 languages).
    config.xnli = ("seeds=(0,)",)  # one seed: the demo shows the pipeline; full runs use three
    config.speed_batch = 32  # sequences of 128 for the teacher/student forward timing
    return config
