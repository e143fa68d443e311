"""The demo on the embedded default data: small enough for a laptop CPU in about a minute.

    distil demo                                       # this config
    distil demo --config demo --config.batching.global_batch=16

To edit it, copy this file anywhere and pass its path: `distil demo --config my_demo.py`.

Everything the demo reads comes from here; `data.corpus = "embedded"` and `xnli.data = "embedded"` name the
multilingual corpus and XNLI samples shipped in distil/data/embedded/.
"""

import ml_collections

from distil.sharding import STANDARD_LOGICAL_AXIS_RULES


def get_config(arg=None):
    del arg  # one variant
    config = ml_collections.ConfigDict()
    config.seed = 0
    # vocab.txt / tokenizer.json / folder; "" is the shipped mBERT vocabulary (119,547 tokens).
    config.tokenizer = ""

    config.data = ml_collections.ConfigDict()
    config.data.corpus = "embedded"  # "embedded", a folder of <lang>.txt files, or "wikipedia" (tfds)
    config.data.tfds_data_dir = ""  # for corpus="wikipedia"
    config.data.languages = ()  # () keeps every language of the corpus
    config.data.sampling_alpha = 0.7  # p(lang) ∝ lines^alpha, as mBERT
    config.data.max_length = 128

    config.batching = ml_collections.ConfigDict()
    config.batching.global_batch = 32
    config.batching.pad_to_multiple = 8

    # DistilBERT's prepare_batch_mlm: 15% of tokens, 80/10/10, probabilities ∝ count^-0.7.
    config.masking = ml_collections.ConfigDict()
    config.masking.mlm_mask_prop = 0.15
    config.masking.word_mask = 0.8
    config.masking.word_keep = 0.1
    config.masking.word_rand = 0.1
    config.masking.mlm_smoothing = 0.7

    # A Hugging Face BERT folder, or "" for a small random teacher of the sizes below.
    config.teacher = ml_collections.ConfigDict()
    config.teacher.checkpoint = ""
    config.teacher.hidden_size = 64
    config.teacher.num_hidden_layers = 4
    config.teacher.num_attention_heads = 4
    config.teacher.intermediate_size = 256

    config.student = ml_collections.ConfigDict()
    config.student.teacher_layers = (0, 3)
    config.student.copy_mlm_transform = True

    config.xnli = ml_collections.ConfigDict()
    config.xnli.data = "embedded"  # "embedded" or an XTREME-format folder ({split}-{lang}.tsv + index)
    config.xnli.split = "dev"
    config.xnli.max_length = 128

    config.sharding = ml_collections.ConfigDict()
    config.sharding.logical_axis_rules = STANDARD_LOGICAL_AXIS_RULES
    return config
