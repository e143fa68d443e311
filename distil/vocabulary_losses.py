"""The vocabulary terms of the recipe (ce, mlm, mse) in chunks of positions and tiles of the vocabulary, without
[batch, length, vocab] logits: one custom VJP that computes the weighted loss' gradient in its forward pass.

The plain per-term losses (and what "sum, count" means) are in `distil.losses`; this is the same arithmetic,
reorganised for memory and caches. It knows nothing of meshes: the caller says into how many parts the batch and
the vocabulary are split (`distil.train.objective`, from `sharding.shards_of`).
"""

from __future__ import annotations

from collections.abc import Mapping

import flax.linen as nn
import jax
import jax.numpy as jnp

from distil.data.masking import IGNORE_INDEX
from distil.losses import Loss, as_float32, check_weights


VOCABULARY_TERMS = ("ce", "mlm", "mse")
# Padded vocabulary entries (a share that no tile size near the target divides) get this bias: their logits are
# this in both models, so their exps are 0 and their logit difference is 0, and they add nothing to any term.
_PAD_LOGIT = -1e9


def vocabulary_losses(
    student_hidden,
    student_decoder: tuple[jax.Array, jax.Array],
    *,
    coefficients: Mapping[str, float | jax.Array],
    chunk_size: int,
    tile_size: int = 0,
    mlm_labels=None,
    teacher_hidden=None,
    teacher_decoder: tuple[jax.Array, jax.Array] | None = None,
    ce_weights=None,
    mse_weights=None,
    temperature: float = 1.0,
    batch_shards: int = 1,
    vocab_shards: int = 1,
) -> tuple[jax.Array, dict[str, Loss]]:
    """`soft_cross_entropy`, `masked_lm` and `logits_mse` of the logits `hidden @ embeddingᵀ + bias`, computed
    about `chunk_size` positions at a time on each device and, within a chunk, `tile_size` vocabulary entries at a
    time (0: the whole vocabulary at once), so neither model's [batch, length, vocab] logits ever exist, forward or
    backward. A chunk spans every row of the batch and the same slice of the length: the largest divisor of
    `length` that is <= chunk_size / rows (rows per device when the batch is split over devices; at least 1
    position), so no chunk needs padding. A tile is the largest divisor of each device's share of the vocabulary
    that is <= tile_size, if at least half of it (mBERT's 119,547 = 37 x 3,231), else the share is padded to equal
    tiles (`_vocabulary_tiles`).

    Why tiles: with a whole-vocabulary chunk every elementwise pass (bias, max, exp, sums, the gradient, its
    transposed copy) reads and writes [chunk, vocab] arrays of hundreds of MB from main memory; a [chunk, tile]
    block of ~7 MB stays in the CPU's cache between the matmul that makes it and the passes that use it. On a
    2-core CPU at full size the vocabulary terms inside the step go from ~5.2 to ~4.2 s (the four matmuls alone
    ~3.7 s) and the step is 1.16x faster (experiments/PERFORMANCE.md). Tiles are for caches: on accelerators, or
    when the vocabulary is small, 0 keeps the matmuls large and the loop away.

    student_hidden / teacher_hidden: the MLM heads' outputs before the decoder, [batch, length, hidden]
    (`EncoderOutput.mlm_hidden`); *_decoder: (word embedding table [vocab, hidden], bias [vocab]) as stored (the
    tied decoder, `EncoderOutput.mlm_decoder`), cast to the hidden states' dtype for the matmuls, which accumulate
    in float32 (at float32 this is the plain head's arithmetic; in bfloat16 the plain head rounds its logits to
    bfloat16 first, this does not). coefficients: {term: c_t} for the active terms of ("ce", "mlm", "mse");
    weights, labels and temperature as in the plain losses. The teacher's inputs pass through stop_gradient.
    batch_shards / vocab_shards: into how many parts the mesh splits the batch and the vocabulary
    (`sharding.shards_of`; 1 without a mesh): the chunks and tiles are sized for one device's share.

    Returns `(weighted, {term: (sum, count)})` with weighted = Σ_t c_t · sum_t. Only `weighted` carries a gradient
    (the per-term sums are metrics): one custom VJP computes it in the forward pass, as Liger-Kernel's fused
    linear cross-entropy and MaxText's vocabulary tiling (`vocabulary_tiling.py`) do. Per chunk, a first pass over
    the tiles makes each tile's logits and keeps online softmax statistics (running max, normaliser, the KL's
    cross term, the label's logit), storing only the tile's exps; a second pass turns the stored exps, rescaled to
    the final statistics, into d weighted / d logits in closed form (ce: c·w·T·(softmax(s/T) - softmax(t/T)); mlm:
    c·(softmax(s) - onehot); mse: c·w·2(s - t)) and at once into the tile's share of the hidden states', embeddings'
    and bias' gradients, so the backward pass only scales them by the incoming cotangent. This costs the same four
    vocabulary matmuls as plain autodiff (teacher and student logits, d hidden, d embedding), none recomputed. The
    trainer passes c_t = alpha_t / update count_t, so `weighted` is the micro-batch's share of the update's loss
    (see `distil.train.objective`).
    """
    terms = tuple(term for term in VOCABULARY_TERMS if term in coefficients)
    unknown = sorted(set(coefficients) - set(VOCABULARY_TERMS))
    if unknown or not terms:
        raise ValueError(f"coefficients must name some of {VOCABULARY_TERMS}, got {sorted(coefficients)}")
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    if tile_size < 0:
        raise ValueError(f"tile_size must be >= 0 (0 = the whole vocabulary), got {tile_size}")
    if isinstance(temperature, (int, float)) and not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    student_hidden = jnp.asarray(student_hidden)
    batch, length, width = student_hidden.shape
    needs_teacher = "ce" in terms or "mse" in terms
    if needs_teacher:
        if teacher_hidden is None or teacher_decoder is None:
            raise ValueError(f"terms {terms} need teacher_hidden and teacher_decoder")
        teacher_hidden = jax.lax.stop_gradient(jnp.asarray(teacher_hidden))
        teacher_decoder = jax.lax.stop_gradient(tuple(jnp.asarray(x) for x in teacher_decoder))
        if teacher_hidden.shape[:2] != (batch, length):
            raise ValueError(f"student and teacher hidden states differ in [batch, length]: {(batch, length)} vs "
                             f"{teacher_hidden.shape[:2]}")
        if teacher_decoder[0].shape[0] != student_decoder[0].shape[0]:
            raise ValueError(f"student and teacher vocabularies differ: {student_decoder[0].shape[0]} vs "
                             f"{teacher_decoder[0].shape[0]}")
    zeros = jnp.zeros((batch, length), jnp.float32)
    ce_weights = check_weights(ce_weights, (batch, length), "ce_weights") if "ce" in terms else zeros
    mse_weights = check_weights(mse_weights, (batch, length), "mse_weights") if "mse" in terms else zeros
    if "mlm" in terms:
        mlm_labels = jnp.asarray(mlm_labels)
        if mlm_labels.shape != (batch, length):
            raise ValueError(f"mlm_labels must be [batch, length] = {[batch, length]}, got {list(mlm_labels.shape)}")
    else:
        mlm_labels = jnp.full((batch, length), IGNORE_INDEX, jnp.int32)
    if not needs_teacher:  # placeholders the tile functions never read
        teacher_hidden, teacher_decoder = student_hidden, student_decoder
    coefficient_vector = jnp.stack([as_float32(coefficients[term]) for term in terms])

    if batch % batch_shards or student_decoder[0].shape[0] % vocab_shards:
        raise ValueError(f"batch_shards={batch_shards} and vocab_shards={vocab_shards} must divide the batch ({batch}) "
                         f"and the vocabulary ({student_decoder[0].shape[0]})")
    shards = batch_shards
    rows = batch // shards
    chunk = max(divisor for divisor in range(1, length + 1)
                if length % divisor == 0 and divisor <= max(chunk_size // rows, 1))
    vocab = student_decoder[0].shape[0]
    tile, tiles = _vocabulary_tiles(vocab // vocab_shards, tile_size)
    fused = _fused_vocabulary_losses(terms, float(temperature) if isinstance(temperature, (int, float))
                                     else temperature, chunk, shards, vocab_shards, tile, tiles)
    weighted, sums = fused(coefficient_vector, student_hidden, student_decoder[0], student_decoder[1],
                           teacher_hidden, teacher_decoder[0], teacher_decoder[1], ce_weights, mlm_labels,
                           mse_weights)
    counts = {"ce": ce_weights.sum(), "mlm": (mlm_labels != IGNORE_INDEX).sum().astype(jnp.float32),
              "mse": mse_weights.sum()}
    sums = jax.lax.stop_gradient(sums)
    return weighted, {term: (sums[index], counts[term]) for index, term in enumerate(terms)}


def _vocabulary_tiles(share: int, tile_size: int) -> tuple[int, int]:
    """(tile, tiles) for a device's `share` of the vocabulary: the whole share when tile_size is 0 or larger; the
    largest divisor of the share <= tile_size when it is at least tile_size / 2; else the fewest tiles of at most
    tile_size (rounded up to a multiple of 8), the share padded to tiles x tile."""
    if tile_size == 0 or tile_size >= share:
        return share, 1
    divisor = max(d for d in range(1, tile_size + 1) if share % d == 0)
    if 2 * divisor >= tile_size:
        return divisor, share // divisor
    tiles = -(-share // tile_size)
    tile = -(-share // tiles)
    return min(-(-tile // 8) * 8, tile_size), tiles


def _to_chunks(x: jax.Array, chunk: int) -> jax.Array:
    """[batch, length, ...] -> [length / chunk, batch, chunk, ...] (`chunk` divides `length`)."""
    batch, length = x.shape[:2]
    return jnp.moveaxis(x.reshape(batch, length // chunk, chunk, *x.shape[2:]), 1, 0)


def _fused_vocabulary_losses(terms: tuple[str, ...], temperature, chunk: int, shards: int, vocab_shards: int,
                             tile: int, tiles: int):
    """The custom-VJP function behind `vocabulary_losses` for static terms, temperature, chunk length and tiling:
    (coefficients, student hidden, embedding, bias, teacher hidden, embedding, bias, ce_weights, mlm_labels,
    mse_weights) -> (weighted, sums [len(terms)]).

    `shards`: how many ways the batch is split over devices. The scan carries the embedding and bias gradients
    (and the sums) per batch shard, [shards, vocab, hidden], so each device accumulates its own rows' share
    locally and they are summed once after the scan: summing into one [vocab, hidden] carry would all-reduce it
    across the data-parallel devices at every chunk. `vocab_shards`: how many ways the vocabulary is split (the
    `act_vocab` rule); each device's share is cut into `tiles` tiles of `tile` entries, so tile k of every share is
    processed at once and a tile's arrays are [batch x chunk, vocab_shards x tile]: plain row-major matmuls (a
    [batch, chunk, shards, tile] layout made XLA:CPU transpose every table tile before its matmul).

    With e = exp((x - m) / T) against a running max m, z = Σ e per row, and the per-tile maxes kept:
        KL(p_t || p_s) = Σ e_t (t - s) / (T z_t) - log z_t + log z_s - (max t - max s) / T
        -log softmax(s)[y] = log z¹_s + max s - s_y          (z¹ the normaliser at T = 1)
    At the recipe's T = 2 the student's exp((s - m) / 2)² is its exp at T = 1: two exps per vocabulary entry in all,
    gradient included.
    """
    needs_teacher = "ce" in terms or "mse" in terms
    uses = {term: term in terms for term in VOCABULARY_TERMS}
    squared = uses["ce"] and uses["mlm"] and isinstance(temperature, float) and temperature == 2.0
    inverse = 1.0 / temperature

    def run(coefficients, student_hidden, student_embedding, student_bias, teacher_hidden, teacher_embedding,
            teacher_bias, ce_weights, mlm_labels, mse_weights, *, with_gradient: bool):
        batch, length, width = student_hidden.shape
        vocab = student_embedding.shape[0]
        share = vocab // vocab_shards
        compute_dtype = student_hidden.dtype
        coefficient = dict(zip(terms, coefficients))
        student_tables = _tiled_decoder(student_embedding.astype(compute_dtype), student_bias, vocab_shards, tile,
                                        tiles)
        teacher_tables = (_tiled_decoder(teacher_embedding.astype(teacher_hidden.dtype), teacher_bias, vocab_shards,
                                         tile, tiles) if needs_teacher else (None, None))
        # Where each label sits: its tile (-1 for no label) and its column in that tile's [vocab_shards x tile].
        is_target = mlm_labels != IGNORE_INDEX
        label_shard, within_share = jnp.divmod(jnp.where(is_target, mlm_labels, 0), share)
        label_tile, label_column = jnp.divmod(within_share, tile)
        label_tile = jnp.where(is_target, label_tile, -1)
        label_column = label_shard * tile + label_column

        def positions(x):  # [batch, length, ...] -> [chunks, batch x chunk, ...] (batch-major, split like the batch)
            x = _to_chunks(x, chunk)
            return x.reshape(x.shape[0], batch * chunk, *x.shape[3:])

        chunks = tuple(positions(x) for x in (student_hidden, teacher_hidden, ce_weights, is_target, label_tile,
                                               label_column, mse_weights))
        tile_columns = jnp.arange(vocab_shards * tile)
        tile_axes = ("batch", "act_vocab" if vocab_shards > 1 else None)

        def per_shard(x):  # [positions, ...] -> [shards, positions / shards, ...], split like the batch
            x = x.reshape(shards, x.shape[0] // shards, *x.shape[1:])
            return nn.with_logical_constraint(x, ("batch",) + (None,) * (x.ndim - 1))

        def logits(hidden, table, bias):  # -> float32 [positions, vocab_shards x tile]
            out = jnp.einsum("ph,vh->pv", hidden, table, preferred_element_type=jnp.float32) + bias
            return nn.with_logical_constraint(out, tile_axes)

        def expand(x):  # [positions] -> [positions, 1]
            return x[:, None]

        def chunk_body(carry, chunk_inputs):
            sums, d_embedding, d_bias = carry  # [shards, terms], [shards, vocab, hidden], [shards, vocab]
            hidden, teacher_chunk, weights, targets, chunk_label_tile, chunk_label_column, chunk_mse_weights = (
                chunk_inputs)
            label_hit = chunk_label_column[:, None] == tile_columns  # [positions, vocab_shards x tile]

            def statistics(stats, tile_inputs):
                index, student_table, student_tile_bias, teacher_table, teacher_tile_bias = tile_inputs
                student_logits = logits(hidden, student_table, student_tile_bias)
                teacher_logits = (jax.lax.stop_gradient(logits(teacher_chunk, teacher_table, teacher_tile_bias))
                                  if needs_teacher else None)
                new, stored = dict(stats), {}
                if uses["ce"] or uses["mlm"]:
                    new["student_max"] = jnp.maximum(stats["student_max"], student_logits.max(-1))
                    stored["student_max"] = new["student_max"]
                    shifted = student_logits - expand(new["student_max"])
                    drop = stats["student_max"] - new["student_max"]  # rescales the sums so far
                if uses["ce"]:
                    student_exps = jnp.exp(inverse * shifted)
                    new["student_norm"] = stats["student_norm"] * jnp.exp(inverse * drop) + student_exps.sum(-1)
                    new["teacher_max"] = jnp.maximum(stats["teacher_max"], teacher_logits.max(-1))
                    teacher_exps = jnp.exp(inverse * (teacher_logits - expand(new["teacher_max"])))
                    teacher_drop = jnp.exp(inverse * (stats["teacher_max"] - new["teacher_max"]))
                    new["teacher_norm"] = stats["teacher_norm"] * teacher_drop + teacher_exps.sum(-1)
                    new["cross"] = stats["cross"] * teacher_drop + (
                        teacher_exps * (teacher_logits - student_logits)).sum(-1)
                    stored.update(student_exps=student_exps, teacher_exps=teacher_exps,
                                  teacher_max=new["teacher_max"])
                if uses["mlm"]:
                    exps_at_one = student_exps * student_exps if squared else jnp.exp(shifted)
                    new["norm_at_one"] = stats["norm_at_one"] * jnp.exp(drop) + exps_at_one.sum(-1)
                    hit = label_hit & expand(chunk_label_tile == index)
                    new["label_logit"] = stats["label_logit"] + jnp.where(hit, student_logits, 0.0).sum(-1)
                    if not squared:
                        stored["exps_at_one"] = exps_at_one
                if uses["mse"]:
                    difference = student_logits - teacher_logits
                    new["squares"] = stats["squares"] + (difference * difference).sum(-1)
                    stored["difference"] = difference
                return new, (stored if with_gradient else None)

            rows = hidden.shape[:1]
            init = {}
            if uses["ce"] or uses["mlm"]:
                init["student_max"] = jnp.full(rows, -jnp.inf)
            if uses["ce"]:
                init.update(student_norm=jnp.zeros(rows), teacher_max=jnp.full(rows, -jnp.inf),
                            teacher_norm=jnp.zeros(rows), cross=jnp.zeros(rows))
            if uses["mlm"]:
                init.update(norm_at_one=jnp.zeros(rows), label_logit=jnp.zeros(rows))
            if uses["mse"]:
                init["squares"] = jnp.zeros(rows)
            stats, stored = jax.lax.scan(statistics, init, (jnp.arange(tiles), *student_tables, *teacher_tables))

            position_sums = []  # [positions] each
            for term in terms:
                if term == "ce":
                    kl = (inverse * stats["cross"] / stats["teacher_norm"] - jnp.log(stats["teacher_norm"])
                          + jnp.log(stats["student_norm"]) - inverse * (stats["teacher_max"] - stats["student_max"]))
                    position_sums.append(kl * (temperature**2) * weights)
                elif term == "mlm":
                    nll = jnp.log(stats["norm_at_one"]) + stats["student_max"] - stats["label_logit"]
                    position_sums.append(jnp.where(targets, nll, 0.0))
                else:
                    position_sums.append(stats["squares"] * chunk_mse_weights)
            sums = sums + per_shard(jnp.stack(position_sums, axis=-1)).sum(1)  # [shards, terms]
            if not with_gradient:
                return (sums, d_embedding, d_bias), None

            def gradients(d_hidden, tile_inputs):
                index, tile_stored, student_table = tile_inputs
                dlogits = 0.0
                if uses["ce"]:  # d T²·KL / ds = T·(softmax(s/T) - softmax(t/T))
                    student_scale = jnp.exp(inverse * (tile_stored["student_max"] - stats["student_max"]))
                    teacher_scale = jnp.exp(inverse * (tile_stored["teacher_max"] - stats["teacher_max"]))
                    dlogits = expand(coefficient["ce"] * temperature * weights) * (
                        tile_stored["student_exps"] * expand(student_scale / stats["student_norm"])
                        - tile_stored["teacher_exps"] * expand(teacher_scale / stats["teacher_norm"]))
                if uses["mlm"]:  # d -log softmax(s)[y] / ds = softmax(s) - onehot(y)
                    exps_at_one = (tile_stored["student_exps"] * tile_stored["student_exps"] if squared
                                   else tile_stored["exps_at_one"])
                    scale = jnp.exp(tile_stored["student_max"] - stats["student_max"]) / stats["norm_at_one"]
                    hit = label_hit & expand(chunk_label_tile == index)
                    dlogits = dlogits + expand(coefficient["mlm"] * targets) * (exps_at_one * expand(scale) - hit)
                if uses["mse"]:
                    dlogits = dlogits + expand(2.0 * coefficient["mse"] * chunk_mse_weights) * tile_stored["difference"]
                dlogits_compute = dlogits.astype(compute_dtype)
                d_hidden = d_hidden + jnp.einsum("pv,vh->ph", dlogits_compute, student_table,
                                                 preferred_element_type=jnp.float32)
                tile_d_embedding = jnp.einsum("spv,sph->svh", per_shard(dlogits_compute), per_shard(hidden),
                                              preferred_element_type=jnp.float32)
                # Σ over positions as a matrix-vector product: XLA:CPU's column reduction is ~15x slower than a GEMV.
                shard_dlogits = per_shard(dlogits)
                tile_d_bias = jnp.einsum("sp,spv->sv", jnp.ones(shard_dlogits.shape[:2], jnp.float32),
                                         shard_dlogits)
                return d_hidden, (tile_d_embedding, tile_d_bias)

            d_hidden, (tile_d_embedding, tile_d_bias) = jax.lax.scan(
                gradients, jnp.zeros(hidden.shape, jnp.float32), (jnp.arange(tiles), stored, student_tables[0]))
            d_embedding = d_embedding + _untiled(tile_d_embedding, vocab_shards, share)
            d_bias = d_bias + _untiled(tile_d_bias, vocab_shards, share)
            return (sums, d_embedding, d_bias), d_hidden.astype(compute_dtype)

        gradient_init = ((jnp.zeros((shards, vocab, width), jnp.float32), jnp.zeros((shards, vocab), jnp.float32))
                         if with_gradient else (None, None))
        (sums, d_embedding, d_bias), d_hidden = jax.lax.scan(
            chunk_body, (jnp.zeros((shards, len(terms)), jnp.float32), *gradient_init), chunks)
        sums = sums.sum(0)
        weighted = (coefficients * sums).sum()
        if not with_gradient:
            return (weighted, sums), None
        d_hidden = jnp.moveaxis(d_hidden.reshape(-1, batch, chunk, width), 0, 1).reshape(batch, length, width)
        return (weighted, sums), (sums, d_hidden, d_embedding.sum(0).astype(student_embedding.dtype),
                                  d_bias.sum(0).astype(student_bias.dtype))

    @jax.custom_vjp
    def fused(*args):
        return run(*args, with_gradient=False)[0]

    def forward(*args):
        return run(*args, with_gradient=True)

    def backward(residuals, cotangents):
        sums, d_hidden, d_embedding, d_bias = residuals
        scale = cotangents[0]  # d loss / d weighted; the per-term sums are metrics (stop_gradient outside)
        return (scale * sums, (scale * d_hidden).astype(d_hidden.dtype),
                (scale * d_embedding).astype(d_embedding.dtype), (scale * d_bias).astype(d_bias.dtype),
                None, None, None, None, None, None)

    fused.defvjp(forward, backward)
    return fused


def _tiled_decoder(table, bias, vocab_shards: int, tile: int, tiles: int):
    """A decoder's (table [vocab, hidden], bias [vocab]) as the tile scan's inputs: ([tiles, vocab_shards x tile,
    hidden], float32 [tiles, vocab_shards x tile]); tile k holds entries k·tile ... (k+1)·tile - 1 of every device's
    share, which is padded at its end (`_PAD_LOGIT` bias) when tiles x tile exceeds it. Each device keeps its own
    share: only the tile axis moves."""
    vocab, width = table.shape
    share = vocab // vocab_shards
    table, bias = table.reshape(vocab_shards, share, width), bias.astype(jnp.float32).reshape(vocab_shards, share)
    if tiles * tile > share:
        table = jnp.pad(table, ((0, 0), (0, tiles * tile - share), (0, 0)))
        bias = jnp.pad(bias, ((0, 0), (0, tiles * tile - share)), constant_values=_PAD_LOGIT)
    table = jnp.swapaxes(table.reshape(vocab_shards, tiles, tile, width), 0, 1).reshape(tiles, -1, width)
    bias = jnp.swapaxes(bias.reshape(vocab_shards, tiles, tile), 0, 1).reshape(tiles, -1)
    if vocab_shards > 1:
        table = nn.with_logical_constraint(table, (None, "act_vocab", None))
        bias = nn.with_logical_constraint(bias, (None, "act_vocab"))
    return table, bias


def _untiled(per_tile: jax.Array, vocab_shards: int, share: int) -> jax.Array:
    """The tile scan's gradient outputs [tiles, shards, vocab_shards x tile, ...] -> [shards, vocab, ...], padding
    dropped."""
    tiles, shards = per_tile.shape[:2]
    rest = per_tile.shape[3:]
    out = per_tile.reshape(tiles, shards, vocab_shards, -1, *rest)
    out = jnp.moveaxis(out, 0, 2).reshape(shards, vocab_shards, -1, *rest)[:, :, :share]
    return out.reshape(shards, vocab_shards * share, *rest)
