"""BERT encoder (the teacher) with the heads of transformers' BertModel / BertForMaskedLM /
BertForSequenceClassification, chosen by `config.head`."""

from __future__ import annotations

import jax.numpy as jnp
from flax import nnx

from distil.models.config import ModelConfig
from distil.models.layers import Encoder, EncoderOutput, MlmHead, dense, head_outputs


class Bert(nnx.Module):
    """mBERT-style encoder with token types; an optional pooler (dense + tanh on [CLS]); an MLM or
    classification head.

    As in transformers, BertForMaskedLM has no pooler, and BertForSequenceClassification classifies the pooled [CLS]
    after dropout (`classifier_dropout`, defaulting to the hidden dropout).
    """

    def __init__(self, config: ModelConfig, *, rngs: nnx.Rngs):
        if config.family != "bert":
            raise ValueError(f"Bert needs a config of family 'bert', got {config.family!r}")
        if config.head == "classification" and not config.add_pooler:
            raise ValueError("a BERT classification head needs the pooler (config.add_pooler=True)")
        self.config = config
        self.encoder = Encoder(config, rngs=rngs)
        self.pooler = (
            dense(config, config.hidden_size, config.hidden_size, ("embed", "hidden"), rngs=rngs)
            if config.add_pooler
            else None
        )
        self.mlm_head = MlmHead(config, rngs=rngs) if config.head == "mlm" else None
        if config.head == "classification":
            self.classifier_dropout = nnx.Dropout(config.classifier_dropout_rate)
            self.classifier = dense(config, config.hidden_size, config.num_labels, ("hidden", "classes"), rngs=rngs)
        else:
            self.classifier = None

    def __call__(self, input_ids, attention_mask=None, token_type_ids=None, *, segment_ids=None, position_ids=None,
                 dropout_rngs=None, output_attentions=False, output_qkv=False,
                 output_mlm_hidden=False) -> EncoderOutput:
        encoded = self.encoder(input_ids, attention_mask, token_type_ids, segment_ids=segment_ids,
                               position_ids=position_ids, dropout_rngs=dropout_rngs,
                               output_attentions=output_attentions, output_qkv=output_qkv)
        return head_outputs(self, encoded, pool=lambda first: jnp.tanh(self.pooler(first)), dropout_rngs=dropout_rngs,
                            output_mlm_hidden=output_mlm_hidden)
