"""DistilBERT encoder (the student) with the heads of transformers' DistilBertModel / DistilBertForMaskedLM /
DistilBertForSequenceClassification, chosen by `config.head`."""

from __future__ import annotations

import jax
from flax import nnx

from distil.models.config import ModelConfig
from distil.models.layers import Encoder, EncoderOutput, MlmHead, dense, head_outputs


class DistilBert(nnx.Module):
    """BERT without token types and pooler; classification is pre_classifier -> ReLU -> dropout -> classifier on
    the [CLS] hidden state, with DistilBERT's `seq_classif_dropout` (config.classifier_dropout)."""

    def __init__(self, config: ModelConfig, *, rngs: nnx.Rngs):
        if config.family != "distilbert":
            raise ValueError(f"DistilBert needs a config of family 'distilbert', got {config.family!r}")
        self.config = config
        self.encoder = Encoder(config, rngs=rngs)
        self.mlm_head = MlmHead(config, rngs=rngs) if config.head == "mlm" else None
        if config.head == "classification":
            self.pre_classifier = dense(config, config.hidden_size, config.hidden_size, ("embed", "hidden"), rngs=rngs)
            self.classifier_dropout = nnx.Dropout(config.classifier_dropout_rate)
            self.classifier = dense(config, config.hidden_size, config.num_labels, ("hidden", "classes"), rngs=rngs)
        else:
            self.pre_classifier = self.classifier = None

    def __call__(self, input_ids, attention_mask=None, token_type_ids=None, *, segment_ids=None, position_ids=None,
                 dropout_rngs=None, output_attentions=False, output_qkv=False,
                 output_mlm_hidden=False) -> EncoderOutput:
        """`token_type_ids` is accepted for a uniform call signature and must be None (DistilBERT has none)."""
        if token_type_ids is not None:
            raise ValueError("DistilBERT has no token type embeddings; pass token_type_ids=None")
        encoded = self.encoder(input_ids, attention_mask, segment_ids=segment_ids, position_ids=position_ids,
                               dropout_rngs=dropout_rngs, output_attentions=output_attentions,
                               output_qkv=output_qkv)
        return head_outputs(self, encoded, pool=lambda first: jax.nn.relu(self.pre_classifier(first)), dropout_rngs=dropout_rngs,
                            output_mlm_hidden=output_mlm_hidden)
