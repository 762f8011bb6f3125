"""The policy as trainers see it: loading, LoRA/full fine-tuning, completion log-probs, export.

Sequences are laid out as [prompt (left-padded, P) | completion (right-padded, N)], the same for
SFT targets and RL samples, so every stage computes log-probs the same way.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging
from etils import epath

from jaxprof import buckets, parallel, paths
from jaxprof.models import causal_lm, hf, layers, lora
from jaxprof.models.layers import RopeConfig
from jaxprof.models.llama import LlamaConfig
from jaxprof.tokenizer import Tokenizer

DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "float16": jnp.float16}


@dataclasses.dataclass(frozen=True)
class PolicySpec:
  """Static facts about the policy (hashable: passed to jit as a static argument)."""

  cfg: causal_lm.LMConfig
  lora_rank: int = 0
  lora_alpha: float = 16.0
  compute_dtype: str = "float32"  # params stay float32 (master); the forward may run in bf16
  remat: bool | str = False  # layers.remat_policy: False/"none", "dots", True/"full"
  chunk_size: int = 512  # tokens per LM-head chunk in log-prob computation

  @property
  def uses_lora(self) -> bool:
    return self.lora_rank > 0


def spec_from_config(cfg: causal_lm.LMConfig, model_config) -> PolicySpec:
  layers.remat_policy(model_config.remat)  # fails early, naming the valid values
  if model_config.compute_dtype not in DTYPES:
    raise ValueError(f"model.compute_dtype={model_config.compute_dtype!r}; "
                     f"expected one of {sorted(DTYPES)}")
  return PolicySpec(cfg=cfg, lora_rank=model_config.lora.rank, lora_alpha=model_config.lora.alpha,
                    compute_dtype=model_config.compute_dtype, remat=model_config.remat,
                    chunk_size=model_config.chunk_size)


def load(model_config, path: str | None = None, seed: int = 0
         ) -> tuple[causal_lm.LMConfig, dict, Tokenizer]:
  """(cfg, float32 params, tokenizer) for `path` (default model_config.path).

  path "tiny" builds a small random Llama that shares the packaged SmolLM2 tokenizer: the shape of
  a real run at a fraction of the cost, for tests and smoke runs.
  """
  path = path or model_config.path
  if path == "tiny":
    tok = load_tokenizer(path)
    t = model_config.tiny
    cfg = LlamaConfig(vocab_size=tok.vocab_size, hidden_size=t.hidden_size,
                      intermediate_size=2 * t.hidden_size, num_layers=t.num_layers,
                      num_heads=t.num_heads, num_kv_heads=t.num_heads, head_dim=t.head_dim,
                      rope=RopeConfig(theta=1e4), tie_embeddings=True,
                      max_position_embeddings=4096)
    return cfg, causal_lm.init_params(cfg, jax.random.key(seed)), tok
  directory = hf.resolve_model_dir(path)
  cfg, params = hf.load_hf(directory)
  return cfg, params, Tokenizer.from_dir(directory)


def load_tokenizer(path: str) -> Tokenizer:
  """The tokenizer of the policy at `path` without its weights ("tiny" shares the packaged one)."""
  return Tokenizer.from_dir(hf.resolve_model_dir(hf.PACKAGED if path == "tiny" else path,
                                                 weights=False))


def init_trainable(spec: PolicySpec, params: dict, model_config, key: jax.Array
                   ) -> tuple[Any, Any, Any]:
  """(trainable, frozen, trainable logical axes): LoRA adapters over a frozen base, or all."""
  if not spec.uses_lora:
    return params, {}, causal_lm.param_axes(spec.cfg)
  targets = tuple(t.strip() for t in model_config.lora.targets.split(",") if t.strip())
  adapters = lora.init_lora(params, targets, spec.lora_rank, key)
  return adapters, {"base": params}, lora.lora_axes(adapters)


def start_dir(config, inputs: Mapping[str, Mapping]) -> str:
  """The policy a stage after SFT starts from: the SFT export if there is one, else model.path."""
  return inputs.get("sft", {}).get("policy_dir") or config.model.path


class Start(NamedTuple):
  """A policy ready to train: what RL trainers take instead of a dozen loose arguments."""

  spec: PolicySpec
  trainable: Any  # the params the optimizer updates (LoRA: the adapters)
  frozen: Any  # {} or {"base": params} under LoRA
  ref: Any  # the reference policy's params (LoRA: the frozen base itself)
  axes: Any  # logical axes of `trainable`
  tok: Tokenizer
  eos_ids: tuple[int, ...]  # tokens that end a completion


def start(config, policy_dir: str) -> Start:
  """Loads `policy_dir` (config.model settings, LoRA adapters seeded from config.seed)."""
  cfg, params, tok = load(config.model, policy_dir, config.seed)
  spec = spec_from_config(cfg, config.model)
  trainable, frozen, axes = init_trainable(spec, params, config.model,
                                           jax.random.key(config.seed + 1))
  ref = frozen["base"] if spec.uses_lora else params
  return Start(spec, trainable, frozen, ref, axes, tok, tuple(tok.eos_ids))


def effective_params(spec: PolicySpec, trainable: Any, frozen: Any) -> dict:
  """Full params for the forward pass, in the compute dtype."""
  params = (lora.merge(frozen["base"], trainable, spec.lora_alpha, spec.lora_rank)
            if spec.uses_lora else trainable)
  return in_compute_dtype(spec, params)


def in_compute_dtype(spec: PolicySpec, params: dict) -> dict:
  """params cast to spec.compute_dtype. The reference runs through this too: KL(pi || ref) is
  then exactly 0 while pi == ref, whatever the compute dtype."""
  dtype = DTYPES[spec.compute_dtype]
  if dtype == jnp.float32:
    return params
  return jax.tree.map(lambda x: x.astype(dtype), params)


def completion_logprobs(spec: PolicySpec, params: dict, prompt_ids: jax.Array,
                        prompt_mask: jax.Array, comp_ids: jax.Array, comp_mask: jax.Array,
                        with_entropy: bool = False, group_size: int = 1,
                        temperature: float = 1.0):
  """log p(completion tokens | prompt and earlier completion tokens): [R, N] float32.

  prompt_ids/mask: [R, P] left-padded; comp_ids/mask: [R, N] right-padded. With group_size=G,
  rows come in groups of G that share one prompt (rollout order), and each prompt runs through the
  network once (`causal_lm.continuation_states`). temperature: of the distribution the tokens
  were sampled from (`causal_lm.token_logprobs`).
  """
  hidden = causal_lm.continuation_states(params, spec.cfg, prompt_ids, prompt_mask, comp_ids,
                                         comp_mask, group_size, spec.remat)
  return causal_lm.token_logprobs(params, spec.cfg, hidden, comp_ids, spec.chunk_size,
                                  with_entropy, temperature)


def export(spec: PolicySpec, trainable: Any, frozen: Any, tokenizer: Tokenizer,
           out_dir: epath.Path) -> epath.Path:
  """Writes the (LoRA-merged) float32 policy as an HF directory that transformers loads (process
  0 writes; every process must call this: the params are gathered from all of them)."""
  params = lora.merge(frozen["base"], trainable, spec.lora_alpha, spec.lora_rank) \
      if spec.uses_lora else trainable
  params = jax.tree.map(lambda x: x.astype(np.float32), parallel.to_host(params))
  if jax.process_index() == 0:  # one writer; run_stages' barrier lets the others read it after
    hf.save_hf(params, spec.cfg, out_dir, tokenizer_dir=tokenizer.path)
    logging.info("exported policy to %s", out_dir)
  # Recorded in DONE.json: must not depend on the working directory.
  return paths.absolute(out_dir, resolve=True)


def finish(start: Start, trainable: Any, stage_dir: epath.Path, last: Mapping) -> dict:
  """An RL stage's outputs: the trained policy exported to stage_dir/export, last metrics."""
  out = export(start.spec, trainable, start.frozen, start.tok, stage_dir / "export")
  return {"policy_dir": str(out), "final_metrics": dict(last)}


def pad_to(x: np.ndarray, width: int, left: bool, value: int = 0) -> np.ndarray:
  """Pads or truncates the last axis of [B, T] to `width` (left: keep the last tokens)."""
  if x.shape[1] >= width:
    return x[:, -width:] if left else x[:, :width]
  pad = [(0, 0), (width - x.shape[1], 0) if left else (0, width - x.shape[1])]
  return np.pad(x, pad, constant_values=value)


def format_prompt(tok: Tokenizer, prompt: str | Sequence[Mapping[str, str]]) -> str:
  """A prompt string: chat messages go through the tokenizer's chat template."""
  if isinstance(prompt, str):
    return prompt
  return tok.apply_chat_template([dict(m) for m in prompt], add_generation_prompt=True)


def plain_text(prompt: str | Sequence[Mapping[str, str]]) -> str:
  """The user-visible text of a prompt (for encoders without a chat template)."""
  if isinstance(prompt, str):
    return prompt
  return "\n".join(m["content"] for m in prompt if m["role"] != "system")


def encode_prompts(tokenizer: Tokenizer, prompts: list[str], max_len: int,
                   bucketed: bool = True) -> tuple[np.ndarray, np.ndarray]:
  """Left-padded prompt ids/mask [B, W]; prompts are already chat-formatted strings.

  Prompts longer than `max_len` keep their last `max_len` tokens. W is the longest row rounded up
  to a bucket width (`buckets.width`), or exactly `max_len` with bucketed=False.
  """
  ids, mask = tokenizer.encode_batch(prompts, padding_side="left", add_special_tokens=False)
  w = buckets.width(int(mask.sum(-1).max(initial=1)), max_len) if bucketed else max_len
  return pad_to(ids, w, True, tokenizer.pad_id), pad_to(mask, w, True, False)


def encode_targets(tokenizer: Tokenizer, targets: list[str], max_len: int,
                   bucketed: bool = True) -> tuple[np.ndarray, np.ndarray]:
  """Right-padded target ids/mask [B, W], each ending with EOS (truncated targets do not).

  W is the longest row (at most `max_len`) rounded up to a bucket width, or `max_len` with
  bucketed=False.
  """
  eos = tokenizer.eos_ids[0]
  rows = [(tokenizer.encode(t, add_special_tokens=False) + [eos])[:max_len] for t in targets]
  w = buckets.width(max((len(r) for r in rows), default=1), max_len) if bucketed else max_len
  ids = np.full((len(rows), w), tokenizer.pad_id, np.int32)
  mask = np.zeros((len(rows), w), bool)
  for i, r in enumerate(rows):
    ids[i, :len(r)] = r
    mask[i, :len(r)] = True
  return ids, mask
