"""Tiny random-init models shared by the tests."""

import jax
import jax.numpy as jnp
import numpy as np

from jaxprof.models import causal_lm
from jaxprof.models.gpt2 import GPT2Config
from jaxprof.models.layers import RopeConfig
from jaxprof.models.llama import LlamaConfig

TINY_LLAMA = LlamaConfig(vocab_size=128, hidden_size=64, intermediate_size=128, num_layers=2,
                         num_heads=4, num_kv_heads=2, head_dim=16, rope=RopeConfig(theta=1e4),
                         tie_embeddings=True, max_position_embeddings=256)
TINY_GPT2 = GPT2Config(vocab_size=128, hidden_size=64, num_layers=2, num_heads=4,
                       max_position_embeddings=256)


def tiny_params(cfg=TINY_LLAMA, seed: int = 0, scale: float = 8.0) -> dict:
  """Random params with weights scaled up so logits are peaked (no argmax near-ties)."""
  params = causal_lm.init_params(cfg, jax.random.key(seed))
  return jax.tree.map(lambda x: x * scale if x.ndim >= 2 else x, params)


def left_padded(prompts: list[list[int]], length: int | None = None):
  """(tokens [B, P] int32, mask [B, P] bool) with each prompt right-aligned."""
  length = length or max(len(p) for p in prompts)
  tokens = np.zeros((len(prompts), length), np.int32)
  mask = np.zeros((len(prompts), length), bool)
  for i, p in enumerate(prompts):
    tokens[i, length - len(p):] = p
    mask[i, length - len(p):] = True
  return jnp.asarray(tokens), jnp.asarray(mask)
