"""A trainable recommender over text embeddings: a profile's embedding in, a score per item out.

The text encoder is frozen and run elsewhere; this module sees only embeddings:
  x  [N, D]  a user's text (a profile) embedded
  v  [I, D]  every catalogue item's text embedded (L2-normalised here)
and scores
  s(x, i) = exp(log_scale) * cos(x + x A, v_i) + b_i
with A [D, D] a residual map (zero at init, so the untrained model ranks exactly as the frozen
cosine recommender does) and b [I] a learned item prior. It is trained with InfoNCE over the whole
catalogue: a softmax over all I items, the input's target the positive and every other item a
negative (no sampling: for ~2k items the full softmax costs little).

Training pairs come from item sequences (`next_item_pairs`): the text of item t-1 as the input,
item t as the target, i.e. one-title "profiles" of what a user watched last, of which a
catalogue's histories give ~100k for free, where generated profiles cost an LLM call each. With
validation pairs, the best epoch by their MRR (the pair's seen items masked) is kept.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from absl import logging

from jaxprof.recsys import metrics

Params = dict[str, Any]


@dataclasses.dataclass(frozen=True)
class TextRecConfig:
  learning_rate: float = 3e-3
  weight_decay: float = 1e-4  # AdamW's, on A and b: both start at 0
  batch_size: int = 512
  epochs: int = 10
  patience: int = 2  # epochs without a better validation MRR before stopping
  init_scale: float = 20.0  # exp(log_scale) at init: the cosine's inverse temperature
  seed: int = 0


class Pairs(NamedTuple):
  """Inputs x [P, D] float32, targets [P] int32 item ids, and optionally exclude [P, I] bool
  (items masked when ranking, e.g. the user's history; validation only)."""
  x: np.ndarray
  targets: np.ndarray
  exclude: np.ndarray | None = None


def _unit(x: jax.Array) -> jax.Array:
  return x / jnp.maximum(jnp.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


def init(dim: int, num_items: int, config: TextRecConfig = TextRecConfig()) -> Params:
  """The untrained recommender: the frozen cosine ranking (A = 0, b = 0)."""
  return {"A": jnp.zeros((dim, dim), jnp.float32), "b": jnp.zeros((num_items,), jnp.float32),
          "log_scale": jnp.asarray(np.log(config.init_scale), jnp.float32)}


@jax.jit
def scores(params: Params, x: jax.Array, items: jax.Array) -> jax.Array:
  """[N, I] scores of every item for each input. x: [N, D] text embeddings; items: [I, D]."""
  u = _unit(x + x @ params["A"])
  return jnp.exp(params["log_scale"]) * u @ _unit(items).T + params["b"]


def infonce_loss(params: Params, x: jax.Array, targets: jax.Array, items: jax.Array
                 ) -> jax.Array:
  """Mean softmax cross-entropy of each target over the whole catalogue. x: [B, D];
  targets: [B] int; items: [I, D]."""
  return optax.softmax_cross_entropy_with_integer_labels(scores(params, x, items), targets).mean()


def next_item_pairs(histories: Sequence[Sequence[int]], item_embeddings: np.ndarray) -> Pairs:
  """(embedding of item t-1, item t) for every consecutive pair of every history (0-based
  item ids, time ordered): [P, D] inputs, [P] targets."""
  prev, nxt = [], []
  for items in histories:
    items = np.asarray(items, np.int64)
    prev.append(items[:-1])
    nxt.append(items[1:])
  prev, nxt = np.concatenate(prev or [[]]).astype(np.int64), np.concatenate(nxt or [[]])
  if not len(prev):
    raise ValueError("next_item_pairs: no history has 2 or more items")
  emb = np.asarray(item_embeddings, np.float32)
  return Pairs(emb[prev], nxt.astype(np.int32))


def score_all(params: Params, x: np.ndarray, item_embeddings: np.ndarray,
              batch_size: int = 256) -> np.ndarray:
  """[N, I] float32 scores for inputs x [N, D], `batch_size` rows per call (the last one padded:
  one compiled shape)."""
  items = jnp.asarray(item_embeddings, jnp.float32)
  out = []
  for start in range(0, len(x), batch_size):
    chunk = np.asarray(x[start:start + batch_size], np.float32)
    pad = batch_size - len(chunk)
    chunk = np.concatenate([chunk, np.zeros((pad, chunk.shape[1]), np.float32)])
    out.append(np.asarray(scores(params, chunk, items))[:batch_size - pad])
  return np.concatenate(out) if out else np.zeros((0, items.shape[0]), np.float32)


def validation_mrr(params: Params, valid: Pairs, item_embeddings: np.ndarray) -> float:
  """Mean reciprocal rank of each validation target, its `exclude` items masked."""
  s = score_all(params, valid.x, item_embeddings)
  ranks = metrics.rank_of_targets(s, valid.targets, valid.exclude)
  return float(metrics.mrr(ranks).mean())


def train(train_pairs: Pairs, item_embeddings: np.ndarray,
          config: TextRecConfig = TextRecConfig(), valid: Pairs | None = None) -> Params:
  """InfoNCE over the whole catalogue on `train_pairs` (minibatches of config.batch_size, a
  fixed shape). With `valid`, returns the params of the epoch with the best validation MRR and
  stops after config.patience epochs without one; progress is logged per epoch."""
  items = jnp.asarray(item_embeddings, jnp.float32)
  x, targets = np.asarray(train_pairs.x, np.float32), np.asarray(train_pairs.targets, np.int32)
  params = init(items.shape[1], items.shape[0], config)
  optimizer = optax.adamw(config.learning_rate, weight_decay=config.weight_decay)
  opt_state = optimizer.init(params)

  @jax.jit
  def step(params, opt_state, xb, tb):
    loss, grads = jax.value_and_grad(infonce_loss)(params, xb, tb, items)
    updates, opt_state = optimizer.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, loss

  rng = np.random.default_rng(config.seed)
  bs = min(config.batch_size, len(x))
  best, best_params, since_best = -1.0, params, 0
  if valid is not None:  # the untrained model (the frozen cosine) is the bar to beat
    best = validation_mrr(params, valid, item_embeddings)
    logging.info("text recommender: %d pairs, validation MRR %.4f untrained", len(x), best)
  for epoch in range(1, config.epochs + 1):
    order = rng.permutation(len(x))
    losses = []
    for start in range(0, len(order) - bs + 1, bs):
      idx = order[start:start + bs]
      params, opt_state, loss = step(params, opt_state, x[idx], targets[idx])
      losses.append(loss)
    if valid is None:
      logging.info("text recommender: epoch %d, loss %.3f", epoch, float(np.mean(losses)))
      continue
    mrr = validation_mrr(params, valid, item_embeddings)
    logging.info("text recommender: epoch %d, loss %.3f, validation MRR %.4f", epoch,
                 float(np.mean(losses)), mrr)
    if mrr > best:
      best, best_params, since_best = mrr, params, 0
    else:
      since_best += 1
      if since_best >= config.patience:
        break
  return params if valid is None else best_params
