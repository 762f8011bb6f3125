"""Scalar heads on any backbone: a reward model (one score per text) and a critic (one per token).

A scored model's params are `{"backbone": <LM or BERT params>, "head": {"kernel", "bias"}}`.
A critic or reward model that must share the policy's tokenizer can start from the first N layers
of the policy checkpoint (`truncate_layers`): a smaller network, not a silent copy of the actor.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from jaxprof.models import bert, causal_lm, layers
from jaxprof.models.bert import BertConfig

BackboneConfig = causal_lm.LMConfig | BertConfig
POOLINGS = ("last", "mean")


def init_head(key: jax.Array, hidden_size: int, dtype=jnp.float32, scale: float = 1.0) -> dict:
  """A linear map D -> 1: kernel ~ N(0, scale^2 / D), zero bias.

  scale=0 starts every score at 0 (a reward model then begins unbiased instead of with large
  random scores from a backbone whose final hidden states are big, which saturates the pairwise
  loss on half the pairs).
  """
  kernel = scale * jax.random.normal(key, (hidden_size,), dtype) / jnp.sqrt(hidden_size)
  return {"kernel": kernel.astype(dtype), "bias": jnp.zeros((), dtype)}


def head_axes() -> dict:
  return {"kernel": ("embed",), "bias": ()}


def truncate_layers(params: dict, cfg: causal_lm.LMConfig,
                    num_layers: int) -> tuple[dict, causal_lm.LMConfig]:
  """The first `num_layers` decoder layers of a causal LM (embeddings and final norm kept)."""
  if not 0 < num_layers <= cfg.num_layers:
    raise ValueError(f"num_layers={num_layers} must be in [1, {cfg.num_layers}]")
  small = dict(params, layers=jax.tree.map(lambda x: x[:num_layers], params["layers"]))
  return small, dataclasses.replace(cfg, num_layers=num_layers)


def backbone_states(params: dict, cfg: BackboneConfig, tokens: jax.Array, mask: jax.Array,
                    remat: bool | str = False) -> jax.Array:
  """Hidden states [B, T, D] from either backbone kind."""
  if isinstance(cfg, BertConfig):
    return bert.encode(params, cfg, tokens, mask)
  return causal_lm.forward(params, cfg, tokens, mask, remat=remat)[0]


def last_valid(hidden: jax.Array, mask: jax.Array) -> jax.Array:
  """The state at each row's last real token: hidden [B, T, D], mask [B, T] -> [B, D]."""
  t = mask.shape[1]
  last = t - 1 - jnp.argmax(mask[:, ::-1], axis=1)  # works for left and right padding
  return jnp.take_along_axis(hidden, last[:, None, None], axis=1)[:, 0]


def sequence_scores(params: dict, cfg: BackboneConfig, tokens: jax.Array, mask: jax.Array,
                    pooling: str = "last", remat: bool | str = False) -> jax.Array:
  """One scalar per text [B] from tokens [B, T], mask [B, T] (reward-model score)."""
  if pooling not in POOLINGS:
    raise ValueError(f"pooling {pooling!r} not in {POOLINGS}")
  hidden = backbone_states(params["backbone"], cfg, tokens, mask, remat)
  if pooling == "last":
    pooled = last_valid(hidden, mask)
  else:
    pooled = bert.mean_pool(hidden, mask, normalize=False)
  return pooled.astype(jnp.float32) @ params["head"]["kernel"] + params["head"]["bias"]


def continuation_scores(params: dict, cfg: causal_lm.LMConfig, prompt_ids: jax.Array,
                        prompt_mask: jax.Array, ids: jax.Array, mask: jax.Array,
                        group_size: int) -> jax.Array:
  """`sequence_scores(concat(prompt, response))` with "last" pooling, each prompt run once.

  prompt_ids/mask: [R, P] left-padded, the same prompt in each group of `group_size` consecutive
  rows; ids/mask: [R, T] right-padded responses. Returns [R] float32. A causal backbone only: the
  prompt's states must not depend on the response (a BERT encoder reads both ways).
  """
  prompt_last, hidden = causal_lm.continue_prompts(params["backbone"], cfg, prompt_ids,
                                                   prompt_mask, ids, mask, group_size)
  pooled = jnp.where(jnp.any(mask, axis=1)[:, None], last_valid(hidden, mask), prompt_last)
  return pooled.astype(jnp.float32) @ params["head"]["kernel"] + params["head"]["bias"]


def token_values(params: dict, cfg: causal_lm.LMConfig, tokens: jax.Array, mask: jax.Array,
                 remat: bool | str = False) -> jax.Array:
  """Per-token values [B, T] (the critic's estimate after reading each token)."""
  hidden = backbone_states(params["backbone"], cfg, tokens, mask, remat)
  return hidden.astype(jnp.float32) @ params["head"]["kernel"] + params["head"]["bias"]


def scored_model_axes(cfg: BackboneConfig) -> dict:
  """Logical axes of {"backbone", "head"} params, for sharding."""
  backbone = (bert.param_axes(cfg) if isinstance(cfg, BertConfig)
              else causal_lm.param_axes(cfg))
  return {"backbone": backbone, "head": head_axes()}


def init_scored_model(cfg: BackboneConfig, key: jax.Array, dtype=jnp.float32) -> dict:
  """Random backbone and head (for tests; real runs start the backbone from a checkpoint)."""
  k1, k2 = jax.random.split(key)
  backbone = (bert.init_params(cfg, k1, dtype) if isinstance(cfg, BertConfig)
              else layers.init_from_specs(causal_lm.param_specs(cfg), k1, dtype))
  return {"backbone": backbone, "head": init_head(k2, cfg.hidden_size, dtype)}
