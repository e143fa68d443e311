"""Which loss terms a run optimises, with what weights, and each term's denominator over a whole update.

The DistilBERT recipe is `loss = 5·ce + 2·mlm + 1·cos` (Sanh et al. 2019; the reference's alpha_ce, alpha_mlm,
alpha_cos), each term a mean over its own positions. With gradient accumulation an update is many micro-batches of
different numbers of real tokens and MLM targets, so a term's mean must be (Σ sums) / (Σ counts) over the update,
not an average of micro-batch means. Every term's count depends on the batch's masks only (never on the models), so
`Objective.counts` computes the update's denominators before the forward passes; each micro-batch then contributes
`Σ_t alpha_t · sum_t / total_count_t` and the accumulated gradient is exactly the full-batch one, with one
gradient accumulator. `tests/test_distill.py` checks these counts against the ones the losses return.

With `vocab_chunk_size` > 0 the vocabulary terms (ce, mlm, mse) never see [batch, length, vocab] logits: the models
hand over their MLM heads' hidden states and tied decoders (`output_mlm_hidden`) and `vocabulary_losses.vocabulary_losses`
applies the decoders about `vocab_chunk_size` positions and `vocab_tile_size` vocabulary entries at a time, with
the gradient of `Σ alpha_t · sum_t / total_t` fused into its forward pass; `Objective.loss` is the one place that
combines the terms either way.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from distil import losses, sharding, vocabulary_losses
from distil.data.masking import IGNORE_INDEX
from distil.models import EncoderOutput

TERMS = ("ce", "mlm", "cos", "mse", "hidden_mse", "attention", "minilm")
TEACHER_TERMS = ("ce", "cos", "mse", "hidden_mse", "attention", "minilm")


@dataclasses.dataclass(frozen=True)
class Objective:
    """Loss weights (`alpha_<term>`; 0 switches a term off) and the settings of each term.

    hidden_layer_map: student `hidden_states` index -> teacher index (0 = embeddings), for `hidden_mse`.
    attention_layer_map: student layer -> teacher layer, for `attention`.
    minilm_*: the one student / teacher layer whose q-q, k-k, v-v relations are matched, and the relation heads.
    vocab_chunk_size / vocab_tile_size: positions and vocabulary entries at a time for the vocabulary terms (0: full
    logits / the whole vocabulary; `distil.vocabulary_losses`).

    Every field is required: the values, the recipe's included, are said once, in a config's `loss` section
    (`configs/distilmbert.py`), and handed over field by field by `distil.train.assembly.make_objective`.
    """

    alpha_ce: float
    alpha_mlm: float
    alpha_cos: float
    alpha_mse: float
    alpha_hidden_mse: float
    alpha_attention: float
    alpha_minilm: float
    temperature: float
    restrict_ce_to_mask: bool
    hidden_layer_map: tuple[int, ...]
    attention_layer_map: tuple[int, ...]
    minilm_student_layer: int
    minilm_teacher_layer: int
    minilm_relation_heads: int
    vocab_chunk_size: int
    vocab_tile_size: int

    def alpha(self, term: str) -> float:
        return getattr(self, f"alpha_{term}")

    @property
    def terms(self) -> tuple[str, ...]:
        """The terms with a non-zero weight, in `TERMS` order."""
        return tuple(term for term in TERMS if self.alpha(term))

    @property
    def needs_teacher(self) -> bool:
        return any(term in TEACHER_TERMS for term in self.terms)

    @property
    def needs_teacher_logits(self) -> bool:
        return bool(self.alpha_ce or self.alpha_mse)

    @property
    def chunked_vocabulary(self) -> bool:
        """Whether the vocabulary terms run chunked: then the models are asked for `output_mlm_hidden`."""
        return self.vocab_chunk_size > 0 and any(term in vocabulary_losses.VOCABULARY_TERMS for term in self.terms)

    @property
    def needs_attentions(self) -> bool:
        return bool(self.alpha_attention)

    @property
    def needs_qkv(self) -> bool:
        return bool(self.alpha_minilm)

    def _ce_weights(self, attention_mask, mlm_labels):
        """The reference selects all real tokens for ce/mse, or only MLM targets with `restrict_ce_to_mask`."""
        return (mlm_labels != IGNORE_INDEX) if self.restrict_ce_to_mask else attention_mask

    def counts(self, batch: dict[str, jax.Array], *, attention_heads: int) -> dict[str, jax.Array]:
        """Each active term's denominator over `batch` (any leading shape: [accum, micro, length] for an update),
        float32 scalars equal to the `count` the corresponding loss in `distil.losses` returns, summed."""
        mask = batch["attention_mask"].astype(jnp.float32)
        targets = (batch["mlm_labels"] != IGNORE_INDEX).astype(jnp.float32)
        real = mask.sum()
        per_term = {
            "ce": lambda: self._ce_weights(mask, batch["mlm_labels"]).astype(jnp.float32).sum(),
            "mlm": lambda: targets.sum(),
            "cos": lambda: real,
            "mse": lambda: self._ce_weights(mask, batch["mlm_labels"]).astype(jnp.float32).sum(),
            "hidden_mse": lambda: real * len(self.hidden_layer_map),
            "attention": lambda: real * attention_heads * len(self.attention_layer_map),
            "minilm": lambda: real * self.minilm_relation_heads,
        }
        return {term: per_term[term]() for term in self.terms}

    def sums(
        self,
        student: EncoderOutput,
        teacher: EncoderOutput | None,
        batch: dict[str, jax.Array],
        *,
        hidden_projection=None,
        terms: tuple[str, ...] | None = None,
    ) -> dict[str, tuple[jax.Array, jax.Array]]:
        """(sum, count) of every active term (or of `terms`) on one micro-batch ([micro, length] arrays).

        The vocabulary terms come from the logits, or, for outputs with `mlm_hidden` instead (`output_mlm_hidden`),
        from `vocabulary_losses.vocabulary_losses`, whose per-term sums carry no gradient: differentiate `loss`.
        """
        mask, mlm_labels = batch["attention_mask"], batch["mlm_labels"]
        terms = self.terms if terms is None else terms
        out = {}
        chunked = [term for term in terms if term in vocabulary_losses.VOCABULARY_TERMS and student.logits is None]
        if chunked:
            out.update(self._vocabulary_losses(student, teacher, batch, {term: 1.0 for term in chunked})[1])
        for term in terms:
            if term in out:
                continue
            if term == "ce":
                out[term] = losses.soft_cross_entropy(student.logits, teacher.logits,
                                                      self._ce_weights(mask, mlm_labels), self.temperature)
            elif term == "mlm":
                out[term] = losses.masked_lm(student.logits, mlm_labels)
            elif term == "cos":
                out[term] = losses.hidden_cosine(student.last_hidden_state, teacher.last_hidden_state, mask)
            elif term == "mse":
                out[term] = losses.logits_mse(student.logits, teacher.logits, self._ce_weights(mask, mlm_labels))
            elif term == "hidden_mse":
                out[term] = losses.hidden_mse(student.hidden_states, teacher.hidden_states, self.hidden_layer_map,
                                              mask, projection=hidden_projection)
            elif term == "attention":
                out[term] = losses.attention_kl(student.attentions, teacher.attentions, self.attention_layer_map,
                                                mask)
            elif term == "minilm":
                out[term] = losses.minilm_relations(student.qkv[self.minilm_student_layer],
                                                    teacher.qkv[self.minilm_teacher_layer], mask,
                                                    self.minilm_relation_heads)
        return out

    def loss(
        self,
        student: EncoderOutput,
        teacher: EncoderOutput | None,
        batch: dict[str, jax.Array],
        totals: dict[str, jax.Array],
        *,
        hidden_projection=None,
    ) -> tuple[jax.Array, dict[str, jax.Array]]:
        """One micro-batch's share of the update's loss, Σ_t alpha_t · sum_t / max(total_t, 1) with `totals` from
        `counts` over the whole update, and each term's sum (for the metrics).

        Chunked (`chunked_vocabulary`, outputs with `mlm_hidden`), the vocabulary terms' share and its gradient
        come from one `vocabulary_losses.vocabulary_losses` call given the coefficients alpha_t / max(total_t, 1).
        """
        scale = {term: self.alpha(term) / jnp.maximum(totals[term], 1.0) for term in self.terms}
        vocabulary = {term: scale[term] for term in self.terms
                      if term in vocabulary_losses.VOCABULARY_TERMS and student.logits is None}
        loss, sums = jnp.zeros((), jnp.float32), {}
        if vocabulary:
            loss, vocabulary_sums = self._vocabulary_losses(student, teacher, batch, vocabulary)
            sums.update({term: loss_sum for term, (loss_sum, _) in vocabulary_sums.items()})
        others = tuple(term for term in self.terms if term not in vocabulary)
        for term, (loss_sum, _) in self.sums(student, teacher, batch, hidden_projection=hidden_projection,
                                             terms=others).items():
            loss = loss + scale[term] * loss_sum
            sums[term] = loss_sum
        return loss, {term: sums[term] for term in self.terms}

    def _vocabulary_losses(self, student, teacher, batch, coefficients):
        if student.mlm_hidden is None:
            raise ValueError("the chunked vocabulary losses need the student's mlm_hidden and mlm_decoder "
                             "(call the model with output_mlm_hidden=True)")
        mask, mlm_labels = batch["attention_mask"], batch["mlm_labels"]
        weights = self._ce_weights(mask, mlm_labels)
        needs_teacher = "ce" in coefficients or "mse" in coefficients
        return vocabulary_losses.vocabulary_losses(
            student.mlm_hidden, student.mlm_decoder, coefficients=coefficients,
            batch_shards=sharding.shards_of("batch", mask.shape[0]),
            vocab_shards=sharding.shards_of("act_vocab", student.mlm_decoder[0].shape[0]),
            chunk_size=self.vocab_chunk_size if self.vocab_chunk_size > 0 else mask.shape[-1],
            tile_size=self.vocab_tile_size,
            mlm_labels=mlm_labels, teacher_hidden=teacher.mlm_hidden if needs_teacher else None,
            teacher_decoder=teacher.mlm_decoder if needs_teacher else None, ce_weights=weights, mse_weights=weights,
            temperature=self.temperature,
        )
