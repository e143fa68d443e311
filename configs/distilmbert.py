"""DistilmBERT: distil bert-base-multilingual-cased (12 layers) into a 6-layer DistilBERT, the reference recipe.

    distil distill --config distilmbert --workdir runs/distilmbert --config.teacher.checkpoint=~/models/mbert
    distil distill --config distilmbert:runlocal --workdir runs/local      # embedded corpus, ~1 min on a CPU

The recipe is Hugging Face's `examples/research_projects/distillation` (Sanh et al. 2019) as used for
distilbert-base-multilingual-cased: student = teacher layers 0, 2, 4, 7, 9, 11; loss 5·ce + 2·mlm + 1·cos at T = 2;
MLM masking 15% (80/10/10) with token probabilities ∝ count^-0.7; AdamW (0.9, 0.98), eps 1e-6, no weight decay,
peak lr 5e-4, 5% warmup then linear decay, gradient clipping at 5.0; 3 epochs of Wikipedia in mBERT's languages,
sampled ∝ lines^0.7 (mBERT's exponent), sequences of at most 512 tokens.

Effective batch: the reference runs 5 sequences per GPU x 50 accumulation steps on 8 (DistilBERT) or 16 GPUs, i.e.
2,000-4,000 sequences per update, each micro-batch length-grouped; measured on the embedded corpus' lengths that is
72K-88K real tokens per update (coefficient of variation 0.026). distil packs sequences into rows of 512 tokens
(`batching.composition = "packed"`: attention stays within each sequence, positions restart, so every sequence is
encoded as it would be alone): 160 rows = ~81K real tokens in every update (CV 0.001, 0.8% padding; ~2,000
sequences at the embedded corpus' lengths, fewer of Wikipedia's longer ones), as 10 micro-batches of 16 rows (2 per
device on 8 devices). `composition = "micro_batch"` keeps the reference's length-grouped micro-batches (global_batch
then counts sequences, e.g. 2000 in 50 micro-batches) but pads each update to its longest micro-batch (68% padding
at these lengths: experiments/bench_batch_composition.py). The number of steps is not written here: it is 3 epochs of the
prepared corpus, converted once from its size by the trainer (`num_steps` > 0 overrides).

Hardware variants `:tpu=v4-32` and `:gpu=8xh100` set the mesh, micro-batches and precision for that slice
(`HARDWARE` below). Variants combine (`:runlocal,languages=en,fr,de`). `languages=L1,L2,...`: distil into a student
with a trimmed vocabulary (`distil.trim`): the data are those languages of the corpus, the teacher's (mBERT's)
vocabulary is cut to the tokens they use in memory before distillation, and the student starts from the trimmed
teacher. `runlocal`: the embedded 15-language corpus and its 8,000-token WordPiece vocabulary
(`distil/data/embedded/wordpiece-8k`), sequences of 128 padded to multiples of 32 (4 compiled lengths), a small
random BERT teacher (4 layers, width 64) instead of a checkpoint, a 2-layer student from its layers 0 and 3, 32
sequences per update in 2 micro-batches, 60 steps. It reads no file from outside the repository. With
`languages=` it keeps mBERT's vocabulary (that is what gets trimmed) instead of the 8,000-token one.
"""

import ml_collections

from distil.config import parse_arg
from distil.data.embedded import embedded_wordpiece_vocab
from distil.sharding import STANDARD_LOGICAL_AXIS_RULES


# Hardware variants (`:tpu=v4-32`, `:gpu=8xh100`): mesh, rows per device, accumulation and precision for that slice.
# Per-device memory from `distil distill --config distilmbert --dry_run` (experiments/dry_run_table.py, README).
# vocab_tile 0: each chunk's vocabulary terms in one piece. The tiles (`loss.vocab_tile_size`) keep [chunk, tile]
# blocks in a CPU's cache; an accelerator wants its vocabulary matmuls large, not 37 small ones in a loop.
# data=-1: the data axis takes every device the run has, so one variant serves any number of slices or nodes (the
# micro-batch must still split over them: 80 rows over 16 chips or 8, 16 GPUs; the trainer says so otherwise).
HARDWARE = {
    # 16 TPU v4 chips (32 GiB HBM each), 4 hosts: parameters and Adam moments split 4 ways (fsdp), batch 16 ways;
    # 160 rows / 16 chips = 10 rows per chip per update, in 2 micro-batches of 5 with bf16 activations.
    "tpu=v4-32": dict(data=-1, fsdp=4, tensor=1, micro_batches=2, dtype="bfloat16", vocab_tile=0),
    # 8 H100 (80 GB) per node: plain data parallelism (the student and its moments fit every GPU); on one node 160
    # rows = 20 per GPU per update in 2 micro-batches of 10, on two 10 per GPU; bf16 activations with float32
    # parameters and losses.
    "gpu=8xh100": dict(data=-1, fsdp=1, tensor=1, micro_batches=2, dtype="bfloat16", vocab_tile=0),
}


def get_config(arg=None):
    variants = parse_arg(arg, runlocal=False, languages=(), tpu="", gpu="")
    runlocal, languages = variants.runlocal, variants.languages
    hardware = [HARDWARE.get(f"{key}={variants[key]}") for key in ("tpu", "gpu") if variants[key]]
    if None in hardware:
        raise ValueError(f"unknown hardware variant; known: {', '.join(HARDWARE)}")
    if len(hardware) > 1 or (hardware and runlocal):
        raise ValueError("choose at most one of runlocal and the hardware variants")

    config = ml_collections.ConfigDict()
    config.seed = 0
    # vocab.txt / tokenizer.json / folder; "" is the shipped mBERT vocabulary (119,547 tokens). runlocal uses an
    # 8,000-token WordPiece of the embedded corpus: mBERT's rows would be 95% of a width-64 model and its step time.
    # With `languages=`, mBERT's vocabulary is trimmed (below), so runlocal keeps it too.
    config.tokenizer = str(embedded_wordpiece_vocab()) if runlocal and not languages else ""

    config.data = ml_collections.ConfigDict()
    # "embedded", a folder of <lang>.txt, "wikipedia" (prepared into WORKDIR/data by process 0), or a folder that
    # `distil prepare` wrote (used as it is by every host: prepare once, on any machine, into shared storage).
    config.data.corpus = "embedded" if runlocal else "wikipedia"
    config.data.tfds_data_dir = ""  # for corpus="wikipedia"
    config.data.languages = languages  # () keeps every language of the corpus
    config.data.sampling_alpha = 0.7  # p(lang) ∝ lines^alpha, as mBERT
    config.data.max_length = 128 if runlocal else 512

    config.batching = ml_collections.ConfigDict()
    # Rows per optimizer update, all hosts together (packed rows of 512 hold ~25 sequences each: see above).
    config.batching.global_batch = 32 if runlocal else 160
    config.batching.micro_batches = 2 if runlocal else 10  # gradient accumulation steps inside one update
    config.batching.pad_to_multiple = 32 if runlocal else 8  # bounds the number of distinct compiled lengths
    config.batching.group_by_length = True
    # How an update's rows are made (distil.data.batching.epoch_rows): "packed" (several sequences per row, attention
    # within each: ~1% padding and the same number of tokens in every update), "micro_batch" (the reference: each
    # micro-batch length-grouped, the update padded to its longest micro-batch) or "update" (the update grouped).
    config.batching.composition = "micro_batch" if runlocal else "packed"

    # DistilBERT's prepare_batch_mlm: 15% of tokens, 80/10/10, probabilities ∝ count^-0.7.
    config.masking = ml_collections.ConfigDict()
    config.masking.mlm_mask_prop = 0.15
    config.masking.word_mask = 0.8
    config.masking.word_keep = 0.1
    config.masking.word_rand = 0.1
    config.masking.mlm_smoothing = 0.7
    # Rows masked together (ceil(0.15 x their real tokens) targets), as the reference masks each GPU's batch of 5
    # sequences (~200 tokens): one packed row of 512 is the closest unit. A process holds whole groups, so masks do
    # not depend on the number of processes.
    config.masking.group_size = 4 if runlocal else 1

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
    # "none", or a jax.checkpoint_policies name ("nothing_saveable", "dots_saveable", ...): recompute the student's
    # forward in the backward pass instead of keeping its activations (less memory, more FLOPs).
    config.student.remat = "none"

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
    # Equal to full logits up to rounding, faster, and the step's largest buffers shrink to [512, vocab].
    config.loss.vocab_chunk_size = 512
    # Within a chunk, the vocabulary about this many entries at a time (0: all at once): each [chunk, tile] block
    # of logits is used while it is in the CPU's cache (mBERT: 37 tiles of 3,231). The same arithmetic either way;
    # at full size on CPU the step is 1.16x faster (experiments/PERFORMANCE.md). runlocal's 8,000 x 64 decoder is
    # cheap enough that the loop costs more than it saves there (12.8K vs 11.4K tokens/s), so it takes it whole.
    config.loss.vocab_tile_size = 0 if runlocal else 4096

    # Vocabulary trimming (`languages=`): before distillation the teacher is cut to the tokens the training corpus
    # (config.data.corpus in config.data.languages) uses, plus the single characters of its scripts (distil.trim).
    # The student starts from the trimmed teacher, the data are binarised with the trimmed tokenizer, and the KL is
    # over the kept vocabulary: the trimmed teacher's softmax is the full one restricted to it and renormalised.
    config.trim = ml_collections.ConfigDict()
    config.trim.enabled = bool(languages)
    config.trim.min_count = 1  # keep tokens the corpus uses at least this often
    config.trim.single_chars = True  # keep the single-character pieces of the corpus' scripts

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
    # A jax.profiler trace of steps start_step .. start_step + num_steps - 1 into WORKDIR/tensorboard (TensorBoard's
    # profile plugin opens it); num_steps 0: none.
    config.profile = ml_collections.ConfigDict()
    config.profile.start_step = 10
    config.profile.num_steps = 0
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
    for slice_ in hardware:
        config.mesh.data, config.mesh.fsdp, config.mesh.tensor = slice_["data"], slice_["fsdp"], slice_["tensor"]
        config.batching.micro_batches = slice_["micro_batches"]
        config.student.dtype = config.teacher.dtype = slice_["dtype"]
        config.loss.vocab_tile_size = slice_["vocab_tile"]
    return config
