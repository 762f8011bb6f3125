"""LoRA on the stacked decoder weights: W + (alpha / rank) * A @ B, merged on the fly.

The adapter is a separate pytree `{"layers": {"q": {"a": [L, I, r], "b": [L, r, O]}, ...}}`; the
base params stay frozen and are never copied. `merge` builds the effective params inside the jitted
step (a rank-r matmul per target, cheap next to the forward pass), so the model code knows nothing
about LoRA and export is just `merge` followed by `hf.save_hf`.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp

# How many leading (after the layer axis) dims of each target weight are its input.
_INPUT_DIMS = {"o": 2}  # o: [L, N, H, D] reads (N, H); every other target reads one dim
LLAMA_TARGETS = ("q", "k", "v", "o", "gate", "up", "down")


def init_lora(base: dict, targets: tuple[str, ...], rank: int, key: jax.Array,
              dtype=jnp.float32) -> dict:
  """Adapters for `targets` (names in base["layers"]); B starts at zero so merge(base) == base."""
  missing = [t for t in targets if t not in base["layers"]]
  if missing:
    raise ValueError(f"LoRA targets {missing} not in the model; available: "
                     f"{sorted(k for k, v in base['layers'].items() if v.ndim >= 3)}")
  if rank <= 0:
    raise ValueError(f"LoRA rank must be positive, got {rank}")
  adapters = {}
  for i, name in enumerate(targets):
    w = base["layers"][name]
    n_in = _INPUT_DIMS.get(name, 1)
    fan_in = math.prod(w.shape[1:1 + n_in])
    fan_out = math.prod(w.shape[1 + n_in:])
    a = jax.random.normal(jax.random.fold_in(key, i), (w.shape[0], fan_in, rank), dtype)
    adapters[name] = {"a": a / math.sqrt(fan_in), "b": jnp.zeros((w.shape[0], rank, fan_out),
                                                                   dtype)}
  return {"layers": adapters}


def lora_axes(adapters: dict) -> dict:
  """Logical axes: the input dim is sharded like the model width; the rank stays whole."""
  return {"layers": {name: {"a": ("layers", "embed", None), "b": ("layers", None, None)}
                     for name in adapters["layers"]}}


def merge(base: dict, adapters: dict, alpha: float, rank: int) -> dict:
  """Effective params: base with W += (alpha / rank) * A @ B on every adapted weight."""
  scale = alpha / rank
  merged = dict(base["layers"])
  for name, ab in adapters["layers"].items():
    w = base["layers"][name]
    delta = jnp.einsum("LIR,LRO->LIO", ab["a"], ab["b"]).reshape(w.shape)
    merged[name] = w + (scale * delta).astype(w.dtype)
  return dict(base, layers=merged)
