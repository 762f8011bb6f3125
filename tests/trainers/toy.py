"""A verifiable toy RL task: a tiny random LM learns to emit a target token."""

import jax
import ml_collections
import numpy as np

from configs import common
from jaxprof import parallel
from jaxprof.models import causal_lm
from jaxprof.models.layers import RopeConfig
from jaxprof.models.llama import LlamaConfig
from jaxprof.trainers import policy

TARGET = 7
EOS = (1,)
CFG = LlamaConfig(vocab_size=32, hidden_size=32, intermediate_size=64, num_layers=2, num_heads=2,
                  num_kv_heads=2, head_dim=16, rope=RopeConfig(theta=1e4), tie_embeddings=True)


def config(algo: str, steps: int) -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.seed = 0
  c.mesh = common.mesh_config(data=1)
  c.checkpoint = common.checkpoint_config(every=1000, keep=1)
  c.log = common.log_config(every=1000)
  c.max_nonfinite = 3
  common.rl_sections(c, algo, steps=steps, lr=1e-2, kl_coef=0.0, prompts_per_step=4,
                     group_size=8, max_new_tokens=8, max_prompt_len=5)
  if algo == "ppo":
    c.ppo.critic_lr = 3e-3
  return c


def target_fraction(ro):
  hits = (ro.comp_ids == TARGET) & ro.comp_mask
  r = hits.sum(-1) / np.maximum(ro.comp_mask.sum(-1), 1)
  return r.astype(np.float32), np.ones(len(r), bool), {}


def prompt_batch(step):
  rng = np.random.default_rng(step)
  ids = rng.integers(2, 32, size=(4, 5)).astype(np.int32)
  return ids, np.ones_like(ids, bool), target_fraction


class _Tokens:
  """The two token facts a trainer asks a tokenizer for."""
  pad_id = 0
  eos_ids = EOS


def start(spec, params, axes) -> policy.Start:
  """Full fine-tuning of `params`, the reference a copy of them."""
  return policy.Start(spec, params, {}, params, axes, _Tokens(), EOS)


def setup():
  params = causal_lm.init_params(CFG, jax.random.key(0))
  spec = policy.PolicySpec(cfg=CFG)
  return spec, params, causal_lm.param_axes(CFG), parallel.make_mesh(data=1)
