"""A two-tower text matcher with optional generated-text embeddings (systems/girl.py: eqs. 9-15).

The text encoder is frozen and run elsewhere; this module sees only embeddings:
  c  [N, D]     CV embedding                      (eq. 9)
  j  [N, D]     JD embedding                      (eq. 9)
  j' [N, S, D]  S generated-JD embeddings         (eq. 12), mean-pooled over S (Fig. 5)

Four predictors, chosen by `MatcherConfig.predictor` and whether j' is given:
  mlp           logit = MLP([c; j])                              (eq. 10)
  dot           logit = (W_c c) . (W_j j) + b                    (eq. 11)
  enhanced mlp  logit = MLP([c; j; j'])                          (eq. 13)
  enhanced dot  c' = MLP([c; j']);  logit = c' . (W_j j) + b     (eqs. 14-15)
The paper writes eq. 11 as a bare c.j; a learned linear projection per tower (and a scalar bias, so
the logit can be calibrated for BCE) is our choice, so that the dot model has something to train.

Params are nested dicts of arrays; which predictor they hold is read from their keys ("mlp" or
"c_tower"/"j_proj"); feeding j' to plain params (or omitting it for enhanced ones) raises.
"""

from __future__ import annotations

import dataclasses
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxprof.recsys import metrics

Params = dict[str, Any]


class MatchData(NamedTuple):
  """A set of (CV, JD) pairs with labels.

  c: [N, D] float; j: [N, D] float; labels: [N] in {0, 1};
  j_gen: [N, S, D] or [N, D] generated-JD embeddings, or None for the plain predictors.
  """
  c: np.ndarray
  j: np.ndarray
  labels: np.ndarray
  j_gen: np.ndarray | None = None


@dataclasses.dataclass(frozen=True)
class MatcherConfig:
  predictor: str = "mlp"  # "mlp" | "dot"
  hidden: tuple[int, ...] = (256, 64)  # MLP hidden widths (eqs. 10, 13, 14)
  proj_dim: int = 64  # tower output width for the dot predictor
  learning_rate: float = 1e-3
  weight_decay: float = 1e-4
  batch_size: int = 256
  max_epochs: int = 50
  patience: int = 5  # epochs without a better validation AUC before stopping
  seed: int = 0


# ------------------------------------------------------------------ layers


def _dense_init(key: jax.Array, fan_in: int, fan_out: int) -> Params:
  w = jax.random.normal(key, (fan_in, fan_out), jnp.float32) * jnp.sqrt(2.0 / fan_in)
  return {"w": w, "b": jnp.zeros((fan_out,), jnp.float32)}


def _mlp_init(key: jax.Array, sizes: list[int]) -> list[Params]:
  keys = jax.random.split(key, len(sizes) - 1)
  return [_dense_init(k, a, b) for k, a, b in zip(keys, sizes[:-1], sizes[1:], strict=True)]


def _mlp_apply(layers: list[Params], x: jax.Array) -> jax.Array:
  """ReLU MLP; no activation after the last layer. x: [N, fan_in] -> [N, fan_out]."""
  for i, layer in enumerate(layers):
    x = x @ layer["w"] + layer["b"]
    if i < len(layers) - 1:
      x = jax.nn.relu(x)
  return x


def pool_generated(j_gen: jax.Array) -> jax.Array:
  """Mean-pool S generated-JD embeddings (Fig. 5): [N, S, D] -> [N, D]; [N, D] passes through."""
  j_gen = jnp.asarray(j_gen)
  if j_gen.ndim == 3:
    return j_gen.mean(axis=1)
  if j_gen.ndim == 2:
    return j_gen
  raise ValueError(f"j_gen must be [N, S, D] or [N, D], got shape {j_gen.shape}")


# ------------------------------------------------------------------ init / apply


def init_matcher(key: jax.Array, dim: int, config: MatcherConfig, enhanced: bool) -> Params:
  """Params for one of the four predictors over D-dimensional embeddings."""
  k1, k2 = jax.random.split(key)
  if config.predictor == "mlp":
    fan_in = dim * (3 if enhanced else 2)
    return {"mlp": _mlp_init(k1, [fan_in, *config.hidden, 1])}
  if config.predictor == "dot":
    if enhanced:
      c_tower = _mlp_init(k1, [2 * dim, *config.hidden, config.proj_dim])
    else:
      c_tower = _mlp_init(k1, [dim, config.proj_dim])
    return {
        "c_tower": c_tower,
        "j_proj": _mlp_init(k2, [dim, config.proj_dim]),
        "bias": jnp.zeros((), jnp.float32),
    }
  raise ValueError(f"MatcherConfig.predictor must be 'mlp' or 'dot', got {config.predictor!r}")


def apply_matcher(
    params: Params, c: jax.Array, j: jax.Array, j_gen: jax.Array | None = None
) -> jax.Array:
  """Matching logits. c, j: [N, D]; j_gen: [N, S, D] | [N, D] | None -> [N] float32."""
  c = jnp.asarray(c, jnp.float32)
  j = jnp.asarray(j, jnp.float32)
  if "mlp" in params:
    parts = [c, j] if j_gen is None else [c, j, pool_generated(j_gen).astype(jnp.float32)]
    x = jnp.concatenate(parts, axis=-1)
    fan_in = params["mlp"][0]["w"].shape[0]
    if x.shape[-1] != fan_in:
      raise ValueError(
          f"mlp predictor expects {fan_in} input features, got {x.shape[-1]} "
          f"(j_gen {'missing' if j_gen is None else 'given'}: was it trained enhanced?)")
    return _mlp_apply(params["mlp"], x)[:, 0]
  tower_in = c if j_gen is None else jnp.concatenate(
      [c, pool_generated(j_gen).astype(jnp.float32)], axis=-1)
  fan_in = params["c_tower"][0]["w"].shape[0]
  if tower_in.shape[-1] != fan_in:
    raise ValueError(
        f"dot predictor's CV tower expects {fan_in} features, got {tower_in.shape[-1]} "
        f"(j_gen {'missing' if j_gen is None else 'given'}: was it trained enhanced?)")
  c_vec = _mlp_apply(params["c_tower"], tower_in)
  j_vec = _mlp_apply(params["j_proj"], j)
  return jnp.sum(c_vec * j_vec, axis=-1) + params["bias"]


_apply_jit = jax.jit(apply_matcher)


def predict(
    params: Params, c: np.ndarray, j: np.ndarray, j_gen: np.ndarray | None = None,
    batch_size: int = 4096,
) -> np.ndarray:
  """P(match) for each pair, evaluated in batches. c, j: [N, D]; j_gen: [N, S, D] -> [N]."""
  out = []
  for start in range(0, len(c), batch_size):
    sl = slice(start, start + batch_size)
    logits = _apply_jit(params, c[sl], j[sl], None if j_gen is None else j_gen[sl])
    out.append(np.asarray(jax.nn.sigmoid(logits)))
  return np.concatenate(out) if out else np.zeros((0,), np.float32)


# ------------------------------------------------------------------ training


def _bce_loss(params: Params, c, j, j_gen, labels) -> jax.Array:
  logits = apply_matcher(params, c, j, j_gen)
  return optax.sigmoid_binary_cross_entropy(logits, labels).mean()


def _check(data: MatchData, name: str) -> None:
  n = len(data.labels)
  for field in ("c", "j") + (("j_gen",) if data.j_gen is not None else ()):
    arr = getattr(data, field)
    if arr.shape[0] != n:
      raise ValueError(f"{name}.{field} has {arr.shape[0]} rows but {name}.labels has {n}")


def train_matcher(
    train: MatchData, val: MatchData, config: MatcherConfig = MatcherConfig()
) -> tuple[Params, list[dict[str, float]]]:
  """Train with BCE (adamw, shuffled minibatches); keep the params of the best validation AUC.

  The predictor is enhanced iff `train.j_gen` is given. Stops after `config.patience` epochs
  without a better validation AUC.
  Returns:
    (best params, history): one dict per epoch with epoch, train_loss, val_auc, val_logloss.
  """
  _check(train, "train")
  _check(val, "val")
  if (train.j_gen is None) != (val.j_gen is None):
    raise ValueError("train.j_gen and val.j_gen must both be given or both be None")
  enhanced = train.j_gen is not None
  key = jax.random.PRNGKey(config.seed)
  params = init_matcher(key, train.c.shape[-1], config, enhanced)
  optimizer = optax.adamw(config.learning_rate, weight_decay=config.weight_decay)
  opt_state = optimizer.init(params)

  @jax.jit
  def step(params, opt_state, c, j, j_gen, labels):
    loss, grads = jax.value_and_grad(_bce_loss)(params, c, j, j_gen, labels)
    updates, opt_state = optimizer.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, loss

  rng = np.random.default_rng(config.seed)
  n = len(train.labels)
  bs = min(config.batch_size, n)
  labels = np.asarray(train.labels, np.float32)
  best_auc, best_params, since_best = -np.inf, params, 0
  history: list[dict[str, float]] = []
  for epoch in range(config.max_epochs):
    order = rng.permutation(n)
    losses = []
    # Drop the ragged last batch: one compiled shape for the whole run.
    for start in range(0, n - bs + 1, bs):
      idx = order[start:start + bs]
      j_gen = None if train.j_gen is None else train.j_gen[idx]
      params, opt_state, loss = step(
          params, opt_state, train.c[idx], train.j[idx], j_gen, labels[idx])
      losses.append(float(loss))
    probs = predict(params, val.c, val.j, val.j_gen)
    val_auc = metrics.auc(val.labels, probs)
    history.append({"epoch": epoch, "train_loss": float(np.mean(losses)), "val_auc": val_auc,
                    "val_logloss": metrics.log_loss(val.labels, probs)})
    if val_auc > best_auc:
      best_auc, best_params, since_best = val_auc, params, 0
    else:
      since_best += 1
      if since_best >= config.patience:
        break
  return best_params, history
