"""What `mbert_xnli.py` and `distilmbert_xnli.py` share: zero-shot XNLI fine-tuning as the reference does it.

The reference is transformers' `examples/pytorch/text-classification/run_xnli.py` as its README runs it for mBERT
(the numbers of the distilbert-base-multilingual-cased model card come from such runs): train on English MultiNLI,
evaluate on the XNLI languages; learning rate 5e-5, 32 pairs per batch, 2 epochs, pairs cut and padded to 128
tokens, AdamW (β 0.9 / 0.999, eps 1e-8), gradient clipping at 1.0, a linear decay to 0, dropout on (0.1, and
DistilBERT's 0.2 before its classifier). From Google's BERT `run_classifier.py` it takes the 10% linear warmup and
weight decay 0.01 (not on biases and LayerNorm). The zero-shot protocol selects on English dev only; several seeds
give a mean and a standard deviation per language.

Data: by default the embedded samples (3,000 English MultiNLI pairs; 150 dev and 300 test pairs per XNLI language),
so a run needs no download. For the full benchmark, e.g.
    --config.train.format=multinli_jsonl --config.train.path=~/data/multinli_1.0/multinli_1.0_train.jsonl
    --config.eval.format=xnli_original --config.eval.path=~/data/XNLI-1.0
Translate-train (beyond zero-shot):
    --config.train_languages="('de','fr')" --config.train.xnli_mt_dir=~/data/XNLI-MT-1.0/multinli

`:runlocal` fine-tunes a small random model (or `--config.init=DIR`) on the embedded data: a 2-core laptop runs it
in well under a minute. Numbers from a random model are at chance level; it exercises the pipeline, not the method.
"""

import ml_collections

from distil.config import parse_arg
from distil.data.nli import xnli_languages
from distil.sharding import STANDARD_LOGICAL_AXIS_RULES


def xnli_config(family: str, arg=None) -> ml_collections.ConfigDict:
    runlocal = parse_arg(arg, runlocal=False).runlocal

    config = ml_collections.ConfigDict()
    config.name = ""  # the model's name in tables; "" takes the init folder's (its workdir's, for a student/)
    # A distil workdir (its student/ export), or any Hugging Face BERT / DistilBERT folder (with or without a head).
    config.init = ""
    config.allow_random_init = runlocal  # with init "", fine-tune a random model of config.model (laptops, tests)
    # vocab.txt / tokenizer.json / folder; "" takes the init folder's tokenizer, else the shipped mBERT vocabulary
    # (a random model: the embedded 8,000-token WordPiece).
    config.tokenizer = ""
    config.dtype = "float32"  # compute dtype; parameters stay float32

    config.model = ml_collections.ConfigDict()  # the random model (init "" with allow_random_init)
    config.model.family = family
    config.model.hidden_size = 64
    config.model.num_hidden_layers = 4 if family == "bert" else 2
    config.model.num_attention_heads = 4
    config.model.intermediate_size = 256
    config.model.max_position_embeddings = 128

    config.seeds = (0, 1) if runlocal else (0, 1, 2)
    config.max_length = 128

    config.train = ml_collections.ConfigDict()
    # "embedded" (the English MultiNLI sample), "multinli_jsonl", "glue_mnli" (train.tsv), "xnli_mt"
    # (multinli.train.en.tsv), "tfds" (path = the tensorflow-datasets data_dir holding multi_nli).
    config.train.format = "embedded"
    config.train.path = ""
    # At most this many pairs of each training file, in file order (0: all); runlocal takes 1,000 of the 3,000
    # embedded pairs so that two seeds run in well under a minute on 2 CPU cores.
    config.train.max_examples = 1000 if runlocal else 0
    config.train.xnli_mt_dir = ""  # XNLI-MT-1.0/multinli, for train_languages
    config.train_languages = ()  # translate-train: more languages from XNLI-MT (English is always trained on)

    config.eval = ml_collections.ConfigDict()
    # "embedded" (the XNLI samples), "xtreme" (a folder of {dev,test}-<lang>.tsv [+ {split}-index.tsv]),
    # "xnli_original" (the XNLI-1.0 folder: xnli.dev.tsv, xnli.test.tsv), "tfds" (path = data_dir holding xnli).
    config.eval.format = "embedded"
    config.eval.path = ""
    config.eval.languages = xnli_languages()
    config.eval.batch_size = 256 if runlocal else 128
    config.eval.pad_to_multiple = 32  # eval batches (sorted by length) are cut to their longest row, rounded up

    config.batch_size = 32
    config.num_epochs = 2
    config.num_steps = 0  # > 0 overrides num_epochs
    config.eval_every_steps = 0  # English dev (model selection) every this many steps; 0: at each epoch's end

    config.optimizer = ml_collections.ConfigDict()
    config.optimizer.learning_rate = 5e-5
    config.optimizer.b1 = 0.9
    config.optimizer.b2 = 0.999
    config.optimizer.eps = 1e-8
    config.optimizer.weight_decay = 0.01
    config.optimizer.warmup_fraction = 0.1
    config.optimizer.clip_norm = 1.0

    config.log_every_steps = 50 if runlocal else 200
    # A jax.profiler trace of steps start_step .. start_step + num_steps - 1 of each seed into its folder's
    # tensorboard/ (TensorBoard's profile plugin opens it); num_steps 0: none.
    config.profile = ml_collections.ConfigDict()
    config.profile.start_step = 10
    config.profile.num_steps = 0
    config.checkpoint = ml_collections.ConfigDict()  # saved at each selection point, for resuming a seed
    config.checkpoint.async_save = True
    config.export_models = True  # each seed's selected model as a Hugging Face folder, xnli_seed<k>/model/

    config.mesh = ml_collections.ConfigDict()
    config.mesh.data = -1
    config.mesh.fsdp = 1
    config.mesh.tensor = 1
    config.mesh.num_devices = -1
    config.sharding = ml_collections.ConfigDict()
    config.sharding.logical_axis_rules = STANDARD_LOGICAL_AXIS_RULES
    return config
