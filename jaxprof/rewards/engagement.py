"""A frozen engagement model (member text x posting text) and its pointwise / listwise rewards.

Model (jaxprof's choice; systems/hifi.py's paper does not publish one): member text and posting text
are embedded by a frozen MiniLM (m, p: [D], L2-normalised); an MLP on x = [m; p; m * p] ([3D]) with
two GELU hidden layers gives logits over the engagement labels {apply, click, skip}, coded
APPLY=0, CLICK=1, SKIP=2 (the data set's action codes). The engagement probability used by
the rewards and for early stopping is P(engaged) = P(apply) + P(click) = 1 - P(skip).

Training minimises softmax cross-entropy with AdamW (optax) on precomputed embeddings, seeded, and
keeps the parameters of the epoch with the best validation AUC of P(engaged) (engaged vs skipped),
stopping after `patience` epochs without improvement.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax
from absl import logging

from jaxprof.models import bert
from jaxprof.models.encoder import TextEncoder
from jaxprof.recsys import metrics
from jaxprof.rewards.base import ColumnError, RewardBatch, RewardFn, Rewards, bucket, to_rewards
from jaxprof.rewards.embedding import tokenize_bucketed

APPLY, CLICK, SKIP = 0, 1, 2
LABELS = ("apply", "click", "skip")
UTILITY = (1.0, 0.5, -0.5)  # pointwise weight of an observed apply / click / skip
GAIN = (2.0, 1.0, 0.0)  # listwise relevance of an observed apply / click / skip


@dataclasses.dataclass(frozen=True)
class EngagementConfig:
  hidden: int = 256
  learning_rate: float = 1e-3
  weight_decay: float = 1e-4
  batch_size: int = 256
  max_epochs: int = 60
  patience: int = 6
  val_fraction: float = 0.2
  seed: int = 0


def init_mlp(key: jax.Array, dim: int, hidden: int) -> dict:
  """MLP params: [3D] -> [H] -> [H] -> [3] (He-scaled normal kernels, zero biases)."""
  sizes = (3 * dim, hidden, hidden, len(LABELS))
  keys = jax.random.split(key, len(sizes) - 1)
  return {f"dense{i}": {"kernel": jax.random.normal(k, (a, b)) * jnp.sqrt(2.0 / a),
                        "bias": jnp.zeros((b,))}
          for i, (k, a, b) in enumerate(zip(keys, sizes[:-1], sizes[1:], strict=True))}


def logits_fn(mlp: dict, member_emb: jax.Array, posting_emb: jax.Array) -> jax.Array:
  """Logits [..., 3] from member_emb [..., D] and posting_emb [..., D] (broadcasting)."""
  member_emb, posting_emb = jnp.broadcast_arrays(member_emb, posting_emb)
  h = jnp.concatenate([member_emb, posting_emb, member_emb * posting_emb], axis=-1)
  n = len(mlp)
  for i in range(n):
    h = h @ mlp[f"dense{i}"]["kernel"] + mlp[f"dense{i}"]["bias"]
    if i < n - 1:
      h = jax.nn.gelu(h)
  return h


@jax.jit
def p_engaged(mlp: dict, member_emb: jax.Array, posting_emb: jax.Array) -> jax.Array:
  """P(engaged) = 1 - P(skip) [...] of member_emb [..., D] with posting_emb [..., D] (broadcast)."""
  return 1.0 - jax.nn.softmax(logits_fn(mlp, member_emb, posting_emb))[..., SKIP]


def _check_labels(labels: Sequence[int], n: int) -> np.ndarray:
  labels = np.asarray(labels)
  if labels.shape != (n,):
    raise ValueError(f"engagement labels have shape {labels.shape}, expected ({n},)")
  bad = np.flatnonzero((labels < 0) | (labels >= len(LABELS)))
  if bad.size:
    raise ValueError(f"engagement label row {bad[0]} is {labels[bad[0]]}, expected 0 (apply), "
                     "1 (click) or 2 (skip)")
  return labels.astype(np.int32)


def _engaged_auc(labels: np.ndarray, p_engaged: np.ndarray) -> float:
  engaged = labels != SKIP
  if engaged.all() or not engaged.any():
    return float("nan")
  return metrics.auc(engaged, p_engaged)


def train_engagement_head(member_emb: np.ndarray, posting_emb: np.ndarray, labels: Sequence[int],
                          config: EngagementConfig = EngagementConfig(),
                          groups: Sequence | None = None) -> tuple[dict, dict]:
  """Fits the MLP on precomputed embeddings.

  Args:
    member_emb: [N, D], posting_emb: [N, D], labels: [N] in {0, 1, 2}.
    groups: [N] optional group ids (e.g. member ids); validation holds out whole groups.
  Returns:
    (mlp params, stats {"best_epoch", "val_auc", "val_loss", "epochs"}).
  """
  member_emb = np.asarray(member_emb, np.float32)
  posting_emb = np.asarray(posting_emb, np.float32)
  n = member_emb.shape[0]
  labels = _check_labels(labels, n)
  if posting_emb.shape != member_emb.shape:
    raise ValueError(f"member_emb {member_emb.shape} and posting_emb {posting_emb.shape} differ")
  rng = np.random.default_rng(config.seed)
  keys = np.asarray(groups) if groups is not None else np.arange(n)
  uniq = rng.permutation(np.unique(keys))
  val_keys = uniq[:max(1, int(round(config.val_fraction * len(uniq))))]
  is_val = np.isin(keys, val_keys)
  tr, va = np.flatnonzero(~is_val), np.flatnonzero(is_val)
  if len(tr) == 0:
    raise ValueError(f"train_engagement_head: no training rows left (val_fraction="
                     f"{config.val_fraction}, {len(uniq)} groups)")

  opt = optax.adamw(config.learning_rate, weight_decay=config.weight_decay)
  mlp = init_mlp(jax.random.key(config.seed), member_emb.shape[1], config.hidden)
  state = opt.init(mlp)

  def loss_fn(p, m, q, y):
    return optax.softmax_cross_entropy_with_integer_labels(logits_fn(p, m, q), y).mean()

  @jax.jit
  def step(p, s, m, q, y):
    loss, grads = jax.value_and_grad(loss_fn)(p, m, q, y)
    updates, s = opt.update(grads, s, p)
    return optax.apply_updates(p, updates), s, loss

  predict = jax.jit(lambda p, m, q: jax.nn.softmax(logits_fn(p, m, q)))
  bs = min(config.batch_size, len(tr))
  best, best_score, best_epoch, stats = mlp, -np.inf, -1, {}
  for epoch in range(config.max_epochs):
    order = rng.permutation(tr)
    for start in range(0, len(order) - bs + 1, bs):  # fixed batch shape: one compilation
      idx = order[start:start + bs]
      mlp, state, _ = step(mlp, state, member_emb[idx], posting_emb[idx], labels[idx])
    probs = np.asarray(predict(mlp, member_emb[va], posting_emb[va]))
    val_loss = float(-np.mean(np.log(np.maximum(probs[np.arange(len(va)), labels[va]], 1e-7))))
    val_auc = _engaged_auc(labels[va], 1.0 - probs[:, SKIP])
    score = val_auc if np.isfinite(val_auc) else -val_loss  # one-class validation: use the loss
    if score > best_score:
      best, best_score, best_epoch = mlp, score, epoch
      stats = {"best_epoch": epoch, "val_auc": val_auc, "val_loss": val_loss}
    elif epoch - best_epoch >= config.patience:
      break
  stats["epochs"] = epoch + 1
  logging.info("engagement model: best epoch %d, val AUC %.4f, val loss %.4f",
               stats["best_epoch"], stats["val_auc"], stats["val_loss"])
  return best, stats


class EngagementModel:
  """A frozen engagement model: encoder + MLP. Posting embeddings are memoised by text."""

  def __init__(self, mlp: dict, encoder: TextEncoder, max_cache: int = 200_000):
    self.mlp, self.encoder, self.max_cache = mlp, encoder, max_cache
    self._posting_cache: dict[str, np.ndarray] = {}
    self._probs = jax.jit(lambda p, m, q: jax.nn.softmax(logits_fn(p, m, q)))

  def embed_postings(self, texts: Sequence[str]) -> np.ndarray:
    """[N, D] posting embeddings; only texts not seen before run through the encoder."""
    new = sorted({t for t in texts if t not in self._posting_cache})
    if new:
      if len(self._posting_cache) + len(new) > self.max_cache:
        self._posting_cache.clear()  # a simple bound; postings are cheap to re-embed
      for t, e in zip(new, self.encoder.embed(new), strict=True):
        self._posting_cache[t] = e
    if not texts:
      return np.zeros((0, self.encoder.dim), np.float32)
    return np.stack([self._posting_cache[t] for t in texts])

  def score(self, member_texts: Sequence[str], posting_texts: Sequence[str]) -> np.ndarray:
    """Class probabilities [N, 3] (apply, click, skip) of N (member, posting) text pairs."""
    if len(member_texts) != len(posting_texts):
      raise ValueError(f"score: {len(member_texts)} member texts for {len(posting_texts)} "
                       "postings")
    m = self.encoder.embed(list(member_texts))
    return np.asarray(self._probs(self.mlp, m, self.embed_postings(list(posting_texts))))


# ----------------------------------------------------------------------------------- rewards


@functools.partial(jax.jit, static_argnames="cfg")
def _p_engaged(enc_params, cfg, mlp, ids, mask, posting_emb):
  member = bert.embed(enc_params, cfg, ids, mask)  # [B', D]
  probs = jax.nn.softmax(logits_fn(mlp, member[:, None, :], posting_emb))  # [B', F, 3]
  return 1.0 - probs[..., SKIP]


def _engagement_inputs(model: EngagementModel, batch: RewardBatch, postings_column: str,
                       actions_column: str, name: str):
  """p_engaged [B, F], actions [B, F] int, valid_post [B, F] bool, valid_text [B] bool."""
  posts = batch.column(postings_column, name)
  acts = batch.column(actions_column, name)
  for r, (p, a) in enumerate(zip(posts, acts, strict=True)):
    if not (isinstance(p, Sequence) and isinstance(a, Sequence | np.ndarray)):
      raise ColumnError(f"{name}: row {r}: columns {postings_column!r} and {actions_column!r} "
                        f"must hold lists, got {type(p).__name__} and {type(a).__name__}")
    if isinstance(p, str) or len(p) == 0 or len(p) != len(a):
      raise ColumnError(f"{name}: row {r}: column {postings_column!r} must hold a non-empty list "
                        f"of posting texts, one per action in {actions_column!r} "
                        f"(got {len(p) if not isinstance(p, str) else 'a str'} and {len(a)})")
    if any(not isinstance(t, str) for t in p):
      raise ColumnError(f"{name}: column {postings_column!r} row {r}: postings must be str")
    empty = [j for j, t in enumerate(p) if not t.strip()]
    if empty:
      raise ColumnError(f"{name}: column {postings_column!r} row {r}: posting {empty[0]} has no "
                        "text")
    if any(not isinstance(x, int | np.integer) or x not in (APPLY, CLICK, SKIP) for x in a):
      raise ColumnError(f"{name}: column {actions_column!r} row {r}: actions {list(a)} must be "
                        "0 (apply), 1 (click) or 2 (skip)")
  b, f = bucket(batch.size), max(len(p) for p in posts)
  flat = [t for p in posts for t in p]
  emb = model.embed_postings(flat)
  posting_emb = np.zeros((b, f, emb.shape[1]), np.float32)
  actions = np.full((batch.size, f), SKIP, np.int32)
  valid_post = np.zeros((batch.size, f), bool)
  start = 0
  for r, (p, a) in enumerate(zip(posts, acts, strict=True)):
    posting_emb[r, :len(p)] = emb[start:start + len(p)]
    actions[r, :len(a)] = np.asarray(a, np.int32)
    valid_post[r, :len(p)] = True
    start += len(p)
  ids, mask, valid = tokenize_bucketed(model.encoder, batch.completions)
  p_eng = _p_engaged(model.encoder.params, model.encoder.cfg, model.mlp, ids, mask, posting_emb)
  return np.asarray(p_eng, np.float64)[:batch.size], actions, valid_post, valid


def engagement_pointwise(model: EngagementModel, postings_column: str = "future_jds",
                         actions_column: str = "future_actions",
                         utility: tuple[float, float, float] = UTILITY,
                         on_invalid: float | None = None) -> RewardFn:
  """r = (1/F) sum_j u(a_j) P(engaged | completion, posting_j) over the row's F held-out postings.

  u = `utility` for (apply, click, skip), default (+1, +0.5, -0.5): the text earns reward when the
  model predicts engagement with postings the member engaged with, and loses it for skipped ones.
  r is in [min(u), max(u)].
  """
  name = "engagement_pointwise"
  u = np.asarray(utility, np.float64)

  def reward(batch: RewardBatch) -> Rewards:
    p, a, ok, valid = _engagement_inputs(model, batch, postings_column, actions_column, name)
    r = np.sum(np.where(ok, u[a] * p, 0.0), axis=1) / ok.sum(axis=1)
    return to_rewards(r, valid, on_invalid)

  return reward


def engagement_entropy_weight(actions: np.ndarray, valid: np.ndarray,
                              floor: float = 0.1) -> np.ndarray:
  """w = floor + (1 - floor) H(h) / log(min(3, F)), per row of actions [B, F] (valid [B, F]).

  h is the row's empirical label distribution over (apply, click, skip), H its entropy in nats,
  divided by the largest entropy F labels can reach, so Hn is in [0, 1]: 0 when every held-out
  posting got the same label (the list says nothing about order), 1 for the most mixed log.
  F = 1 gives Hn = 0.
  """
  counts = np.stack([np.sum(valid & (actions == c), axis=1) for c in range(3)], axis=1)
  f = valid.sum(axis=1)
  h = counts / np.maximum(f, 1)[:, None]
  ent = -np.sum(np.where(h > 0, h * np.log(np.where(h > 0, h, 1.0)), 0.0), axis=1)
  max_ent = np.log(np.minimum(3, f).astype(np.float64))
  hn = np.where(max_ent > 0, ent / np.where(max_ent > 0, max_ent, 1.0), 0.0)
  return floor + (1.0 - floor) * hn


def engagement_listwise(model: EngagementModel, postings_column: str = "future_jds",
                        actions_column: str = "future_actions", metric: str = "kl",
                        temperature: float = 1.0, entropy_weighting: bool = True,
                        entropy_floor: float = 0.1,
                        on_invalid: float | None = None) -> RewardFn:
  """r = w * agreement(model scores over the row's held-out postings, observed engagement).

  jaxprof's definition (systems/hifi.py: the paper names the ingredients, not the formula).
  Per row with F postings:
  z_j = logit P(engaged | completion, posting_j); g_j = (2, 1, 0) for (apply, click, skip).
  * metric="kl": q = g / sum g (uniform if every posting was skipped), pi = softmax(z / tau);
    agreement = -KL(q || pi) = sum_j q_j (log pi_j - log q_j) <= 0, 0 when pi matches q.
  * metric="ndcg": NDCG of the gains g in the order of decreasing z (0 if all were skipped).
  w = `engagement_entropy_weight` (floor + (1 - floor) * normalised label entropy) when
  `entropy_weighting`, else 1. Note: with per-group std-normalised advantages (GRPO) a per-member
  constant w cancels; it matters for PPO and for mean-only baselines (Dr.GRPO, RLOO). For GRPO
  put the weight on the advantages instead (`grpo.prompt_weight`, a column of the RL rows).
  """
  if metric not in ("kl", "ndcg"):
    raise ValueError(f"engagement_listwise: metric {metric!r} not in ('kl', 'ndcg')")
  if temperature <= 0 or not 0 <= entropy_floor <= 1:
    raise ValueError(f"engagement_listwise: need temperature > 0 and entropy_floor in [0, 1], got "
                     f"{temperature}, {entropy_floor}")
  name = "engagement_listwise"
  gain_of = np.asarray(GAIN)

  def reward(batch: RewardBatch) -> Rewards:
    p, a, ok, valid = _engagement_inputs(model, batch, postings_column, actions_column, name)
    p = np.clip(p, 1e-7, 1 - 1e-7)
    z = np.log(p) - np.log1p(-p)
    g = np.where(ok, gain_of[a], 0.0)
    if metric == "kl":
      q = np.where(g.sum(1, keepdims=True) > 0, g, ok.astype(np.float64))
      q = q / q.sum(axis=1, keepdims=True)
      s = np.where(ok, z / temperature, -np.inf)
      top = s.max(axis=1, keepdims=True)
      log_pi = s - (top + np.log(np.sum(np.exp(s - top), axis=1, keepdims=True)))
      pos = q > 0  # 0 log 0 = 0; padded postings have q = 0 and log_pi = -inf
      terms = q * (np.where(pos, log_pi, 0.0) - np.log(np.where(pos, q, 1.0)))
      agree = np.sum(np.where(pos, terms, 0.0), axis=1)
    else:
      discount = 1.0 / np.log2(np.arange(2, g.shape[1] + 2))
      order = np.argsort(np.where(ok, -z, np.inf), axis=1, kind="stable")
      dcg = np.sum(np.take_along_axis(g, order, axis=1) * discount, axis=1)
      idcg = np.sum(-np.sort(-g, axis=1) * discount, axis=1)
      agree = np.where(idcg > 0, dcg / np.where(idcg > 0, idcg, 1.0), 0.0)
    w = engagement_entropy_weight(a, ok, entropy_floor) if entropy_weighting else 1.0
    return to_rewards(w * agree, valid, on_invalid)

  return reward
