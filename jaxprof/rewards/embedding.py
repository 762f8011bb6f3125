"""Embedding rewards: the completion (a text profile) is embedded and compared with item texts.

* `embedding_contrastive`: InfoNCE log-probability of the next item among sampled negatives.
* `retrieval_ranking`: NDCG@k / MRR / Recall@k / log-rank of held-out items, full catalogue.
* `next_item_supervision` (a text-space next-item signal): cosine to the next item's text, plus the
  target text the trainer uses for its auxiliary next-item NLL.

Item embeddings are computed once per reward (`TextEncoder.embed`, [I, D], L2-normalised). Per
batch, completions are tokenised on the host, padded to a bucketed shape ([B', T'] with B' a power
of two and T' a multiple of 32), and one jitted call embeds them and computes the reward for the
whole batch. Invalid completions (see `base`) are replaced by a blank text before the model runs
and get `on_invalid` (default None).

Columns (names configurable): `positive_item` int per row (the next item), `history_items` list of
ints (items the user already has; never sampled as negatives, masked when ranking), `target_items`
int or list of ints (held-out items to rank).
"""

from __future__ import annotations

import functools
import zlib
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from jaxprof.models import bert
from jaxprof.models.encoder import TextEncoder
from jaxprof.recsys import metrics, text_recommender
from jaxprof.rewards.base import (
  ColumnError,
  RewardBatch,
  RewardFn,
  Rewards,
  bucket,
  int_entries,
  to_rewards,
  valid_texts,
)

METRICS = ("ndcg", "mrr", "recall", "log_rank")
_LENGTH_STEP = 32


def item_embeddings(encoder: TextEncoder, item_texts: Sequence[str] | None,
                    precomputed: np.ndarray | None = None) -> jax.Array:
  """[I, D] L2-normalised item embeddings: `precomputed` if given (share one table between
  rewards, it costs a full catalogue pass), else `encoder.embed(item_texts)`."""
  if precomputed is None:
    if item_texts is None or len(item_texts) == 0:
      raise ValueError("item_texts (or precomputed item embeddings) are required")
    return jnp.asarray(encoder.embed_catalog(list(item_texts)))  # disk-cached across runs
  emb = np.asarray(precomputed, np.float32)
  if emb.ndim != 2 or emb.shape[1] != encoder.dim:
    raise ValueError(f"precomputed item embeddings have shape {emb.shape}, expected "
                     f"[I, {encoder.dim}]")
  return jnp.asarray(emb)


def tokenize_bucketed(encoder: TextEncoder, texts: Sequence[str]
                      ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """(ids [B', T'] int32, mask [B', T'] bool, valid [B] bool) for possibly invalid texts.

  B' = `base.bucket(B)`; T' = the longest row rounded up to a multiple of 32, so
  ~100-token completions cost 128 positions, not the encoder's next power-of-two bucket.
  """
  clean, valid = valid_texts(texts)
  ids, mask = encoder.tokenize(clean)
  longest = int(mask.sum(axis=1).max(initial=1))
  t = min(-(-longest // _LENGTH_STEP) * _LENGTH_STEP, max(ids.shape[1], longest))
  b = bucket(len(clean))
  ids = np.pad(ids[:, :t], ((0, b - len(clean)), (0, max(0, t - ids.shape[1]))))
  mask = np.pad(mask[:, :t], ((0, b - len(clean)), (0, max(0, t - mask.shape[1]))))
  mask[len(clean):, 0] = True  # padding rows see one token, so no row is fully masked
  return ids, mask, valid


# ------------------------------------------------------------------------------- contrastive


def info_nce_logprob(profile: jax.Array, pos_emb: jax.Array, neg_emb: jax.Array,
                     temperature: float | jax.Array) -> jax.Array:
  """log p(pos) = s_pos / tau - logsumexp_{c in {pos} u negs} s_c / tau, s = dot products.

  Args: profile [B, D], pos_emb [B, D], neg_emb [B, K, D] (all L2-normalised: s is a cosine).
  Returns: [B] float32, <= 0; log(1 / (K + 1)) when the profile cannot tell the items apart.
  """
  cands = jnp.concatenate([pos_emb[:, None, :], neg_emb], axis=1)  # [B, 1 + K, D]
  logits = jnp.einsum("bd,bkd->bk", profile, cands).astype(jnp.float32) / temperature
  return jax.nn.log_softmax(logits, axis=-1)[:, 0]


def contrastive_loss(encoder_params: dict, profile_ids: jax.Array, profile_mask: jax.Array,
                     pos_emb: jax.Array, neg_emb: jax.Array, temperature: float, *,
                     cfg: bert.BertConfig) -> jax.Array:
  """Mean InfoNCE loss for training the encoder jointly (a trainable-embedder setting).

  L = -mean_b log p(pos_b), the profile embedded by `bert.embed(encoder_params, cfg, ...)`.
  Args: profile_ids [B, T] int32, profile_mask [B, T] bool, pos_emb [B, D], neg_emb [B, K, D]
  (compute them with the same params inside the loss to train the item tower too).
  Returns: scalar float32, differentiable in encoder_params.
  """
  profile = bert.embed(encoder_params, cfg, profile_ids, profile_mask)
  return -jnp.mean(info_nce_logprob(profile, pos_emb, neg_emb, temperature))


@functools.partial(jax.jit, static_argnames="cfg")
def _contrastive_batch(params, cfg, ids, mask, item_emb, cand, temperature):
  profile = bert.embed(params, cfg, ids, mask)
  cand_emb = item_emb[cand]  # [B', 1 + K, D]
  return info_nce_logprob(profile, cand_emb[:, 0], cand_emb[:, 1:], temperature)


def sample_negatives(num_items: int, positive: int, exclude: np.ndarray, num_negatives: int,
                     seed: int, key: str, row: int = 0, weights: np.ndarray | None = None
                     ) -> np.ndarray:
  """[K] distinct items from the catalogue minus {positive} and `exclude`: drawn uniformly, or
  with probability proportional to `weights` [I] (then, if fewer than K allowed items have a
  positive weight, all of those and the rest uniformly from the other allowed items).

  The generator is seeded by (seed, crc32(key), positive): the same prompt always sees the same
  negatives, so the G completions of one prompt are compared on equal terms.
  """
  allowed = np.ones(num_items, bool)
  allowed[positive] = False
  allowed[exclude] = False
  pool = np.flatnonzero(allowed)
  if len(pool) < num_negatives:
    raise ColumnError(f"row {row}: only {len(pool)} items are left for {num_negatives} negatives "
                      "after removing the positive and history")
  rng = np.random.default_rng([seed, zlib.crc32(key.encode("utf-8", "replace")), positive])
  if weights is None:
    return rng.choice(pool, num_negatives, replace=False)
  w = np.asarray(weights, np.float64)[pool]
  weighted = pool[w > 0]
  if len(weighted) <= num_negatives:
    rest = rng.choice(pool[w <= 0], num_negatives - len(weighted), replace=False)
    return np.concatenate([weighted, rest])
  return rng.choice(weighted, num_negatives, replace=False, p=w[w > 0] / w[w > 0].sum())


def embedding_contrastive(encoder: TextEncoder, item_texts: Sequence[str] | None,
                          temperature: float = 0.05, num_negatives: int = 31, seed: int = 0,
                          positive_column: str = "positive_item",
                          history_column: str | None = "history_items",
                          negatives_column: str | None = None,
                          on_invalid: float | None = None,
                          precomputed_items: np.ndarray | None = None,
                          negative_weights: np.ndarray | None = None) -> RewardFn:
  """Contrastive reward: r = log softmax_{c in {pos} u negs}(cos(e_profile, e_c) / tau) at pos.

  jaxprof's definition (systems/blue.py: the paper does not fix one): K = `num_negatives` items
  sampled uniformly per row from the catalogue minus the positive and the row's history (seeded
  per prompt, see `sample_negatives`), or taken from `negatives_column` when the data set provides
  them. r is in [-inf, 0]; a profile that puts the positive far above every negative earns ~0, an
  uninformative one log(1 / (K + 1)). `precomputed_items` [I, D] replaces embedding `item_texts`.
  `negative_weights` [I] (non-negative) draws the negatives in proportion to them instead of
  uniformly, e.g. from the distribution of held-out items (what in-batch negatives do): then a
  profile cannot win by preferring the kind of item users hold out (popular, recent) over the
  catalogue's long tail, only by preferring this user's item over other users' items.
  """
  if temperature <= 0:
    raise ValueError(f"embedding_contrastive: temperature={temperature} must be > 0")
  item_emb = item_embeddings(encoder, item_texts, precomputed_items)
  num_items = item_emb.shape[0]
  if num_negatives < 1 or num_negatives >= num_items:
    raise ValueError(f"embedding_contrastive: num_negatives={num_negatives} must be in "
                     f"[1, {num_items})")
  name = "embedding_contrastive"
  if negative_weights is not None:
    negative_weights = np.asarray(negative_weights, np.float64)
    if (negative_weights.shape != (num_items,) or (negative_weights < 0).any()
        or negative_weights.sum() <= 0):
      raise ValueError(f"embedding_contrastive: negative_weights must be {num_items} "
                       f"non-negative item weights with a positive sum; got shape "
                       f"{negative_weights.shape}")

  def reward(batch: RewardBatch) -> Rewards:
    pos = int_entries(batch.column(positive_column, name), positive_column, num_items, name)
    hist = (int_entries(batch.column(history_column, name), history_column, num_items, name)
            if history_column else [np.zeros(0, np.int64)] * batch.size)
    given = (int_entries(batch.column(negatives_column, name), negatives_column, num_items, name)
             if negatives_column else None)
    cand = np.zeros((bucket(batch.size), 1 + num_negatives), np.int32)
    memo: dict[tuple[str, int], np.ndarray] = {}  # the G repeats of a prompt share negatives
    for r in range(batch.size):
      if pos[r].size != 1:
        raise ColumnError(f"{name}: column {positive_column!r} row {r}: expected one item, got "
                          f"{pos[r].tolist()}")
      p = int(pos[r][0])
      if given is not None:
        negs = given[r]
        if negs.size != num_negatives or p in negs:
          raise ColumnError(f"{name}: column {negatives_column!r} row {r}: expected "
                            f"{num_negatives} items other than the positive {p}")
      else:
        key = (str(batch.prompts[r]), p)
        if key not in memo:
          memo[key] = sample_negatives(num_items, p, hist[r], num_negatives, seed, key[0], r,
                                       negative_weights)
        negs = memo[key]
      cand[r, 0], cand[r, 1:] = p, negs
    ids, mask, valid = tokenize_bucketed(encoder, batch.completions)
    out = _contrastive_batch(encoder.params, encoder.cfg, ids, mask, item_emb, cand,
                             jnp.float32(temperature))
    return to_rewards(np.asarray(out)[:batch.size], valid, on_invalid)

  return reward


# --------------------------------------------------------------------------------- retrieval


def _metric(ranks: jax.Array, metric: str, k: int, num_items: int) -> jax.Array:
  """[U] the ranking metric of 1-based `ranks` [U] or [U, K] (0 = padding)."""
  if metric == "ndcg":
    return metrics.ndcg_at_k(ranks, k)
  if metric == "recall":
    return metrics.recall_at_k(ranks, k)
  if metric == "log_rank":
    return metrics.log_rank(ranks, num_items)
  return metrics.mrr(ranks)


def _every_rank(scores: jax.Array, exclude: jax.Array) -> jax.Array:
  """[B, I] int32: each item's 1-based rank by `scores` [B, I] among the items not in `exclude`
  [B, I] bool (ties broken by position; excluded items rank below all others)."""
  order = jnp.argsort(-jnp.where(exclude, -jnp.inf, scores), axis=1, stable=True)
  positions = jnp.broadcast_to(jnp.arange(1, scores.shape[1] + 1, dtype=jnp.int32), scores.shape)
  return jnp.zeros_like(positions).at[jnp.arange(scores.shape[0])[:, None], order].set(positions)


@functools.partial(jax.jit, static_argnames=("cfg", "metric", "k"))
def _retrieval_batch(params, cfg, ids, mask, item_emb, targets, exclude, reference, recommender,
                     metric, k):
  profile = bert.embed(params, cfg, ids, mask)
  if recommender is None:
    scores = profile @ item_emb.T  # [B', I] cosine: both sides are L2-normalised
  else:
    scores = text_recommender.scores(recommender, profile, item_emb)
  num_items = item_emb.shape[0]
  own = _metric(metrics.rank_of_targets(scores, targets, exclude), metric, k, num_items)
  if reference is None:
    return own
  # What an average user's item would score: the metric of every item, weighted by `reference`
  # over the items outside the row's history.
  every = _metric(_every_rank(scores, exclude).reshape(-1), metric, k, num_items)
  weights = jnp.where(exclude, 0.0, reference[None, :])
  weights = weights / jnp.maximum(weights.sum(axis=1, keepdims=True), 1e-12)
  return own - jnp.sum(weights * every.reshape(scores.shape), axis=1)


def retrieval_ranking(encoder: TextEncoder, item_texts: Sequence[str] | None,
                      metric: str = "ndcg", k: int = 10, target_column: str = "target_items",
                      history_column: str | None = "history_items",
                      on_invalid: float | None = None,
                      precomputed_items: np.ndarray | None = None,
                      reference: np.ndarray | None = None,
                      recommender: text_recommender.Params | None = None) -> RewardFn:
  """Retrieval reward: rank the full catalogue by cos(e_profile, e_item), history masked, or by
  a trained `recommender` over e_profile (`recsys.text_recommender.scores`).

  r = NDCG@k (binary relevance, ideal DCG of min(n, k) hits), MRR (1 / best rank, no cut-off),
  Recall@k or log_rank (mean of 1 - ln(rank) / ln(I) over targets, `metrics.log_rank`) of the
  row's held-out `target_items`, with ranks from `recsys.metrics.rank_of_targets`
  (pessimistic ties; history items are removed as competitors, targets are always ranked). r is in
  [0, 1]; a held-out item ranked first gives NDCG = MRR = 1. `precomputed_items` [I, D] replaces
  embedding `item_texts`.

  `reference` [I] (non-negative item weights, e.g. how often each item is some user's held-out
  target) makes the reward relative:
  r = m(the row's targets) - sum_i w_i m(item i), with w the reference renormalised over the items
  outside the row's history, in [-1, 1]. The second term is what the profile gives an item drawn
  from the reference (an average user's item), so a text that lifts every item alike (a generic
  or catalogue-like profile) gains nothing and only what singles out this user's item pays.
  """
  if metric not in METRICS:
    raise ValueError(f"retrieval_ranking: metric {metric!r} not in {METRICS}")
  if k < 1:
    raise ValueError(f"retrieval_ranking: k={k} must be >= 1")
  item_emb = item_embeddings(encoder, item_texts, precomputed_items)
  num_items = item_emb.shape[0]
  name = "retrieval_ranking"
  if reference is not None:
    reference = np.asarray(reference, np.float32)
    if reference.shape != (num_items,) or (reference < 0).any() or reference.sum() <= 0:
      raise ValueError(f"retrieval_ranking: reference must be {num_items} non-negative item "
                       f"weights with a positive sum; got shape {reference.shape}")
    reference = jnp.asarray(reference)

  def reward(batch: RewardBatch) -> Rewards:
    tgt = int_entries(batch.column(target_column, name), target_column, num_items, name)
    for r, t in enumerate(tgt):
      if t.size == 0:
        raise ColumnError(f"{name}: column {target_column!r} row {r}: no held-out item")
    b = bucket(batch.size)
    targets = np.full((b, bucket(max(t.size for t in tgt), 1)), -1, np.int32)
    exclude = np.zeros((b, num_items), bool)
    if history_column:
      hist = int_entries(batch.column(history_column, name), history_column, num_items, name)
      for r, h in enumerate(hist):
        exclude[r, h] = True
    for r, t in enumerate(tgt):
      targets[r, :t.size] = t
    targets[batch.size:, 0] = 0  # padding rows rank item 0 (discarded)
    ids, mask, valid = tokenize_bucketed(encoder, batch.completions)
    out = _retrieval_batch(encoder.params, encoder.cfg, ids, mask, item_emb, targets, exclude,
                           reference, recommender, metric, k)
    return to_rewards(np.asarray(out)[:batch.size], valid, on_invalid)

  return reward


# --------------------------------------------------------------------- next-item supervision


@functools.partial(jax.jit, static_argnames="cfg")
def _cosine_batch(params, cfg, ids, mask, target_emb):
  return jnp.sum(bert.embed(params, cfg, ids, mask) * target_emb, axis=-1)


def next_item_target(item_text: str, template: str = "Next item: {item}") -> str:
  """The text the policy is taught to continue a profile with (a text-space next-item signal).

  A system puts it in a column of its RL rows and names that column in `rl.aux_nll.column`; GRPO
  then adds the policy's token NLL of it (after the prompt, or after each sampled profile) to its
  loss (trainers/aux_nll.py). This function only builds the string (the template must contain
  "{item}").
  """
  if "{item}" not in template:
    raise ValueError(f"next_item_target: template {template!r} has no {{item}} field")
  return template.format(item=item_text)


def next_item_supervision(encoder: TextEncoder, item_texts: Sequence[str] | None = None,
                          positive_column: str = "positive_item",
                          text_column: str = "next_item_text",
                          on_invalid: float | None = None,
                          precomputed_items: np.ndarray | None = None) -> RewardFn:
  """r = cos(e_profile, e_next) in [-1, 1], the next item given by index or by text.

  With `item_texts` the row's `positive_column` index selects a precomputed item embedding;
  without, `text_column` holds the next item's text and the batch's distinct texts are embedded
  once per call.
  """
  item_emb = (None if item_texts is None and precomputed_items is None
              else item_embeddings(encoder, item_texts, precomputed_items))
  name = "next_item_supervision"

  def reward(batch: RewardBatch) -> Rewards:
    b = bucket(batch.size)
    if item_emb is not None:
      pos = int_entries(batch.column(positive_column, name), positive_column,
                        item_emb.shape[0], name)
      idx = np.zeros(b, np.int32)
      for r, p in enumerate(pos):
        if p.size != 1:
          raise ColumnError(f"{name}: column {positive_column!r} row {r}: expected one item")
        idx[r] = p[0]
      target = item_emb[idx]
    else:
      texts = batch.column(text_column, name)
      for r, t in enumerate(texts):
        if not isinstance(t, str) or not t.strip():
          raise ColumnError(f"{name}: column {text_column!r} row {r}: expected a non-empty str")
      distinct = sorted(set(texts))
      emb = encoder.embed(distinct)
      where = {t: i for i, t in enumerate(distinct)}
      target = np.zeros((b, emb.shape[1]), np.float32)
      target[:batch.size] = emb[[where[t] for t in texts]]
    ids, mask, valid = tokenize_bucketed(encoder, batch.completions)
    out = _cosine_batch(encoder.params, encoder.cfg, ids, mask, jnp.asarray(target))
    return to_rewards(np.asarray(out)[:batch.size], valid, on_invalid)

  return reward
