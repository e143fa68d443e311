"""DistilmBERT: distil bert-base-multilingual-cased (12 layers) into a 6-layer DistilBERT, the reference recipe.

    distil distill --config distilmbert --workdir runs/distilmbert --config.teacher.checkpoint=~/models/mbert
    distil distill --config distilmbert:runlocal --workdir runs/local      # embedded corpus, ~1 min on a CPU

The recipe is Hugging Face's `examples/research_projects/distillation` (Sanh et al. 2019) as used for
distilbert-base-multilingual-cased: student = teacher layers 0, 2, 4, 7, 9, 11; loss 5·ce + 2·mlm + 1·cos at T = 2;
MLM masking 15% (80/10/10) with token probabilities ∝ count^-0.7; AdamW (0.9, 0.98), eps 1e-6, no weight decay,
peak lr 5e-4, 5% warmup then linear decay, gradient clipping at 5.0; 3 epochs of Wikipedia in mBERT's languages,
sampled ∝ lines^0.7 (mBERT's exponent), sequences of at most 512 tokens.

Effective batch: the reference runs 5 sequences per GPU x 50 accumulation steps on 8 (DistilBERT) or 16 GPUs, i.e.
2,000-4,000 sequences per update. We take 4,000 = 50 micro-batches of 80 (10 per device on 8 devices): the larger
end, because a length-grouped update of 4K sequences carries ~80K real tokens at Wikipedia's lengths, which keeps
the update's token count (and so its gradient noise) close to the reference's large-batch regime. The number of
steps is not written here: it is 3 epochs of the prepared corpus, converted once from its size by the trainer
(`num_steps` > 0 overrides).

Variants (`:runlocal`): the embedded 15-language corpus and its 8,000-token WordPiece vocabulary
(`distil/data/embedded/wordpiece-8k`), sequences of 128 padded to multiples of 32 (4 compiled lengths), a small
random BERT teacher (4 layers, width 64) instead of a checkpoint, a 2-layer student from its layers 0 and 3, 32
sequences per update in 2 micro-batches, 60 steps. It reads no file from outside the repository.
"""

import ml_collections

from distil.data.embedded import embedded_wordpiece_vocab
from distil.sharding import STANDARD_LOGICAL_AXIS_RULES


def get_config(arg=None):
    variants = set(filter(None, (arg or "").split(",")))
    unknown = variants - {"runlocal"}
    if unknown:
        raise ValueError(f"unknown variant(s) {sorted(unknown)}; known: runlocal")
    runlocal = "runlocal" in variants

    config = ml_collections.ConfigDict()
    config.seed = 0
    # vocab.txt / tokenizer.json / folder; "" is the shipped mBERT vocabulary (119,547 tokens). runlocal uses an
    # 8,000-token WordPiece of the embedded corpus: mBERT's rows would be 95% of a width-64 model and its step time.
    config.tokenizer = str(embedded_wordpiece_vocab()) if runlocal else ""

    config.data = ml_collections.ConfigDict()
    config.data.corpus = "embedded" if runlocal else "wikipedia"  # "embedded", a folder of <lang>.txt, "wikipedia"
    config.data.tfds_data_dir = ""  # for corpus="wikipedia"
    config.data.languages = ()  # () keeps every language of the corpus
    config.data.sampling_alpha = 0.7  # p(lang) ∝ lines^alpha, as mBERT
    config.data.max_length = 128 if runlocal else 512

    config.batching = ml_collections.ConfigDict()
    config.batching.global_batch = 32 if runlocal else 4000  # sequences per optimizer update, all hosts together
    config.batching.micro_batches = 2 if runlocal else 50  # gradient accumulation steps inside one update
    config.batching.pad_to_multiple = 32 if runlocal else 8  # bounds the number of distinct compiled lengths
    config.batching.group_by_length = True

    # DistilBERT's prepare_batch_mlm: 15% of tokens, 80/10/10, probabilities ∝ count^-0.7.
    config.masking = ml_collections.ConfigDict()
    config.masking.mlm_mask_prop = 0.15
    config.masking.word_mask = 0.8
    config.masking.word_keep = 0.1
    config.masking.word_rand = 0.1
    config.masking.mlm_smoothing = 0.7

    # source: "checkpoint" (a Hugging Face BertForMaskedLM/BertForPreTraining folder), "random" (a BERT of the sizes
    # below; for tests and laptops), or "none" (no teacher: plain MLM pre-training of the student).
    config.teacher = ml_collections.ConfigDict()
    config.teacher.source = "random" if runlocal else "checkpoint"
    config.teacher.checkpoint = ""
    config.teacher.hidden_size = 64
    config.teacher.num_hidden_layers = 4
    config.teacher.num_attention_heads = 4
    config.teacher.intermediate_size = 256
    config.teacher.max_position_embeddings = 512
    config.teacher.dtype = "float32"  # compute dtype of the teacher's forward

    # init: "teacher_layers" (copy the teacher's embeddings and layers `teacher_layers`), or "random" (a model of
    # `family` and the sizes below; with a teacher, hidden-state losses between widths need `loss.hidden_projection`).
    config.student = ml_collections.ConfigDict()
    config.student.init = "teacher_layers"
    config.student.teacher_layers = (0, 3) if runlocal else (0, 2, 4, 7, 9, 11)
    config.student.copy_mlm_transform = True
    config.student.family = "distilbert"
    config.student.hidden_size = 64
    config.student.num_hidden_layers = 2
    config.student.num_attention_heads = 4
    config.student.intermediate_size = 256
    config.student.max_position_embeddings = 512
    config.student.sinusoidal_pos_embds = False
    config.student.dtype = "float32"  # compute dtype; parameters are always float32

    config.loss = ml_collections.ConfigDict()
    config.loss.alpha_ce = 5.0
    config.loss.alpha_mlm = 2.0
    config.loss.alpha_cos = 1.0
    config.loss.alpha_mse = 0.0
    config.loss.alpha_hidden_mse = 0.0
    config.loss.alpha_attention = 0.0
    config.loss.alpha_minilm = 0.0
    config.loss.temperature = 2.0
    config.loss.restrict_ce_to_mask = False
    config.loss.hidden_layer_map = ()  # student hidden_states index -> teacher index (0 = embeddings)
    config.loss.hidden_projection = False  # learn a student->teacher width projection for hidden_mse
    config.loss.attention_layer_map = ()  # student layer -> teacher layer
    config.loss.minilm_student_layer = -1  # MiniLM-v2: the student's last layer ...
    config.loss.minilm_teacher_layer = -1  # ... against one teacher layer (MiniLM-v2 uses an upper-middle one)
    config.loss.minilm_relation_heads = 4 if runlocal else 12
    # > 0: ce / mlm / mse computed about this many positions at a time per device from the MLM heads' hidden states
    # and tied decoders, never building [batch, length, vocab] logits (forward or backward); 0: from full logits.
    # Equal to full logits up to rounding, as fast, and the step's largest buffers shrink to [512, vocab].
    config.loss.vocab_chunk_size = 512

    config.optimizer = ml_collections.ConfigDict()
    config.optimizer.learning_rate = 5e-4
    config.optimizer.b1 = 0.9
    config.optimizer.b2 = 0.98
    config.optimizer.eps = 1e-6
    config.optimizer.weight_decay = 0.0
    config.optimizer.warmup_fraction = 0.05
    config.optimizer.clip_norm = 5.0

    config.num_epochs = 3
    config.num_steps = 60 if runlocal else 0  # > 0 overrides num_epochs

    config.log_every_steps = 5 if runlocal else 50
    config.checkpoint = ml_collections.ConfigDict()
    config.checkpoint.every_steps = 20 if runlocal else 1000
    config.checkpoint.keep = 2 if runlocal else 3
    config.checkpoint.async_save = True

    # Devices: data x fsdp x tensor; -1 takes the remaining devices.
    config.mesh = ml_collections.ConfigDict()
    config.mesh.data = -1
    config.mesh.fsdp = 1
    config.mesh.tensor = 1
    config.mesh.num_devices = -1  # -1: every visible device; n: the first n (e.g. 1 to compare with one device)
    config.sharding = ml_collections.ConfigDict()
    config.sharding.logical_axis_rules = STANDARD_LOGICAL_AXIS_RULES
    return config
