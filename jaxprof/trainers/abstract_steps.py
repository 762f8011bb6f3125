"""Every jitted step a config's stages run, on abstract inputs: for compiling without weights.

`steps(config, cfg, mesh)` builds, for each training stage the config lists, the same jitted
functions the trainers build (their loss functions, `common.make_update`, `common.jit_update`,
the sampler's `prefill` and `decode_step`), with `jax.ShapeDtypeStruct` arguments carrying the
shardings the config's mesh and rules give them, at the largest shapes the config allows
(max_prompt_len, max_new_tokens, max_target_len). Nothing is allocated: `jax.jit(...).lower(*args)`
and `.compile()` tell what a step needs per device (`jaxprof.compile_check`).
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh

from jaxprof import parallel, perf, sampling
from jaxprof.models import causal_lm, heads, lora
from jaxprof.models.encoder import TextEncoder
from jaxprof.trainers import (
    aux_nll,
    common,
    embedding_rm,
    engagement_rm,
    grpo,
    policy,
    ppo,
    reward_model,
    rollout,
    sft,
)


@dataclasses.dataclass
class Step:
  """One jitted step and what it runs on.

  fn: has `.lower(*args)`; args: abstract arguments (or a function making them); resident: the
  run's other arrays alive while the step runs (optimizer state during sampling, the reference
  during the update, ...), not among its args; tokens: token positions the step processes over
  the whole mesh; flops: its model FLOPs over the whole mesh (`perf.forward_flops` counts; a
  backward pass twice the forward, plus one more forward under full remat).
  """

  name: str
  fn: Callable
  args: tuple | Callable[[], tuple]
  resident: Any = ()
  tokens: int = 0
  flops: float = 0.0


@dataclasses.dataclass
class Skipped:
  """A stage part that has no device step to compile, and why."""

  name: str
  why: str


def _struct(shape, dtype, sharding) -> jax.ShapeDtypeStruct:
  return jax.ShapeDtypeStruct(tuple(shape), dtype, sharding=sharding)


def with_shardings(tree: Any, shardings: Any) -> Any:
  """`tree`'s leaves (arrays or structs) as structs with the matching `shardings` leaves."""
  return jax.tree.map(lambda x, s: _struct(x.shape, x.dtype, s), tree, shardings)


def sharded_params(tree: Any, axes: Any, mesh: Mesh, rules) -> Any:
  """Abstract params with the shardings `parallel.param_shardings` gives them (as
  `common.create_state` and `rollout.place_reference` place the real ones)."""
  return with_shardings(tree, parallel.param_shardings(axes, tree, mesh, rules))


def sharded_fraction(cfg: causal_lm.LMConfig, mesh: Mesh, rules) -> float:
  """Fraction of the model's param bytes that `rules` split over `mesh` (not replicated)."""
  full = jax.eval_shape(functools.partial(causal_lm.init_params, cfg), jax.random.key(0))
  params = jax.tree.leaves(sharded_params(full, causal_lm.param_axes(cfg), mesh, rules))
  split = sum(x.size for x in params if not x.sharding.is_fully_replicated)
  return split / max(sum(x.size for x in params), 1)


def abstract_state(params: Any, axes: Any, tx, mesh: Mesh, rules
                   ) -> tuple[common.TrainState, Any]:
  """(abstract TrainState, its shardings): what `common.create_state` makes, without arrays."""
  param_sh = parallel.param_shardings(axes, params, mesh, rules)
  params = with_shardings(params, param_sh)
  opt = with_shardings(jax.eval_shape(tx.init, params),
                       common.opt_shardings(tx, params, param_sh, mesh))
  scalar = _struct((), jnp.int32, parallel.replicated(mesh))
  state = common.TrainState(step=scalar, params=params, opt_state=opt, skipped=scalar)
  return state, jax.tree.map(lambda x: x.sharding, state)


def batch(mesh: Mesh, **shapes: tuple[tuple[int, ...], Any]) -> dict:
  """{name: struct} of (shape, dtype) pairs, the leading dim split over the batch axes."""
  return {k: _struct(s, d, parallel.batch_sharding(mesh, len(s))) for k, (s, d) in shapes.items()}


def forward_flops(cfg, rows: int, p: int, n: int, group: int, head: bool = True) -> float:
  """`perf.forward_flops` of `rows` full-length [p | n] rows in groups of `group`."""
  return perf.forward_flops(cfg, np.ones((rows, p), bool), np.ones((rows, n), bool), group, head)


def train_factor(remat) -> float:
  """Forward passes a training step costs: forward + backward (2x), + 1 recomputed under full
  remat (layers.remat_policy)."""
  return 4.0 if remat in (True, "full") else 3.0


def _key(mesh: Mesh) -> jax.ShapeDtypeStruct:
  k = jax.eval_shape(lambda: jax.random.key(0))
  return _struct(k.shape, k.dtype, parallel.replicated(mesh))


@dataclasses.dataclass
class Policy:
  """The abstract policy of a run: spec, trainable and frozen params (sharded), their axes."""

  spec: policy.PolicySpec
  params: Any  # full params, sharded (the reference: the LoRA base, or a separate copy)
  trainable: Any  # unsharded structs (abstract_state shards them)
  frozen: Any  # {} or {"base": params}
  axes: Any


def abstract_policy(config, cfg: causal_lm.LMConfig, mesh: Mesh) -> Policy:
  spec = policy.spec_from_config(cfg, config.model)
  rules = config.mesh.rules
  full = jax.eval_shape(functools.partial(causal_lm.init_params, cfg), jax.random.key(0))
  params = sharded_params(full, causal_lm.param_axes(cfg), mesh, rules)
  if spec.uses_lora:
    trainable = jax.eval_shape(
        lambda p: policy.init_trainable(spec, p, config.model, jax.random.key(1))[0], full)
    return Policy(spec, params, trainable, {"base": params}, lora.lora_axes(trainable))
  return Policy(spec, params, full, {}, causal_lm.param_axes(cfg))


def sft_steps(config, pol: Policy, mesh: Mesh) -> list[Step]:
  s, rules = config.sft, config.mesh.rules
  tx = common.make_optimizer(s.optim)
  state, sh = abstract_state(pol.trainable, pol.axes, tx, mesh, rules)
  update = common.jit_update(common.make_update(functools.partial(sft.sft_loss, pol.spec), tx,
                                                s.optim.grad_accum, "sft"), sh, rules)
  b, p, t = s.batch_size, s.max_prompt_len, s.max_target_len
  data = batch(mesh, prompt_ids=((b, p), jnp.int32), prompt_mask=((b, p), bool),
               target_ids=((b, t), jnp.int32), target_mask=((b, t), bool))
  flops = train_factor(pol.spec.remat) * forward_flops(pol.spec.cfg, b, p, t, 1)
  return [Step("sft/update", update, (state, pol.frozen, data, _key(mesh)), tokens=b * (p + t),
               flops=flops)]


def reward_model_steps(config, cfg: causal_lm.LMConfig, mesh: Mesh) -> list[Step | Skipped]:
  rm, rules = config.reward_model, config.mesh.rules
  tx = common.make_optimizer(rm.optim)
  b = rm.batch_size
  if rm.backbone == engagement_rm.BACKBONE:
    return [Skipped("reward_model/update", "the engagement model trains on host features "
                    "(trainers/engagement_rm.py): no mesh step")]
  if rm.backbone == embedding_rm.BACKBONE:
    d = TextEncoder.packaged_minilm().cfg.hidden_size
    params = {"head": {"kernel": jax.ShapeDtypeStruct((d,), jnp.float32),
                       "bias": jax.ShapeDtypeStruct((), jnp.float32)}}
    state, sh = abstract_state(params, {"head": heads.head_axes()}, tx, mesh, rules)
    loss = functools.partial(embedding_rm.pair_loss, rm)
    data = batch(mesh, chosen=((b, d), jnp.float32), rejected=((b, d), jnp.float32))
    tokens = flops = 0
  else:
    if rm.backbone == "encoder":
      rm_cfg = TextEncoder.packaged_minilm().cfg
      width = rm_cfg.max_position_embeddings
    else:
      rm_cfg = dataclasses.replace(cfg, num_layers=_layers(rm.backbone, cfg))
      width = rm.max_prompt_len + rm.max_response_len
    params = jax.eval_shape(lambda: heads.init_scored_model(rm_cfg, jax.random.key(0)))
    state, sh = abstract_state(params, heads.scored_model_axes(rm_cfg), tx, mesh, rules)
    scorer = reward_model.Scorer(rm_cfg, rm.pooling, rm.max_prompt_len, rm.max_response_len,
                                 config.model.remat)
    loss = functools.partial(reward_model.pair_loss, scorer, rm)
    data = batch(mesh, **{f"{k}_{x}": ((b, width), jnp.int32 if x == "ids" else bool)
                          for k in ("chosen", "rejected") for x in ("ids", "mask")})
    tokens = 2 * b * width
    # 2 FLOPs per weight per token (attention scores not counted), forward and backward
    weights = sum(x.size for x in jax.tree.leaves(params["backbone"]))
    flops = train_factor(config.model.remat) * 2.0 * weights * tokens
  update = common.jit_update(common.make_update(loss, tx, rm.optim.grad_accum, "rm"), sh, rules)
  return [Step("reward_model/update", update, (state, {}, data, _key(mesh)), tokens=tokens,
               flops=flops)]


def _layers(backbone: str, cfg) -> int:
  """N of "policy:N" (the reward model's or critic's first N policy layers)."""
  kind, _, n = backbone.partition(":")
  if kind != "policy" or not n.isdigit() or not 0 < int(n) <= cfg.num_layers:
    raise ValueError(f"backbone {backbone!r}: expected 'policy:N' with 1 <= N <= "
                     f"{cfg.num_layers}")
  return int(n)


def rl_steps(config, pol: Policy, mesh: Mesh) -> list[Step]:
  """The RL stage's update(s), reference (and critic) passes and the sampler's two steps."""
  rl, ro, rules = config.rl, config.rollout, config.mesh.rules
  spec, g = pol.spec, rollout.prompt_group(ro)
  tx = common.make_optimizer(rl.optim, rollout.updates_per_step(rl))
  state, sh = abstract_state(pol.trainable, pol.axes, tx, mesh, rules)
  prompts = ro.prompts_per_step // rl.num_minibatches
  r, p, n = prompts * ro.group_size, ro.max_prompt_len, ro.max_new_tokens
  shapes = dict(prompt_ids=((r, p), jnp.int32), prompt_mask=((r, p), bool),
                comp_ids=((r, n), jnp.int32), comp_mask=((r, n), bool),
                old_logprobs=((r, n), jnp.float32), advantages=((r, n), jnp.float32))
  tokens = prompts * p + r * n
  fwd = forward_flops(spec.cfg, r, p, n, g)
  train = train_factor(spec.remat)
  ref = pol.frozen.get("base", pol.params)  # LoRA: the frozen base is the reference
  temperature = rollout.logprob_temperature(ro)
  ref_fn = jax.jit(functools.partial(rollout.ref_logprobs, spec, g, temperature=temperature))
  out: list[Step] = []
  if rl.algo == "grpo":
    if rl.kl_coef > 0:
      shapes["ref_logprobs"] = ((r, n), jnp.float32)
    if aux_nll.enabled(rl):
      shapes |= {k: ((r, rl.aux_nll.max_len), jnp.int32 if k == "aux_ids" else bool)
                 for k in aux_nll.KEYS}
      if rl.aux_nll.get("after", "prompt") == "completion":
        shapes[aux_nll.START] = ((r,), jnp.int32)
    single = rl.epochs == 1 and rl.num_minibatches == 1
    update = common.jit_update(common.make_update(
        functools.partial(grpo.grpo_loss, spec, config, single), tx, rl.optim.grad_accum, "rl"),
        sh, rules)
    data = batch(mesh, **shapes)
    others = (ref,) if rl.kl_coef > 0 and not spec.uses_lora else ()
    out.append(Step("grpo/update", update, (state, pol.frozen, data, _key(mesh)), others,
                    tokens, train * fwd))
    if rl.kl_coef > 0:
      out.append(Step("grpo/reference", ref_fn, (ref, data), (state,), tokens, fwd))
    resident = (state.opt_state, *others)
  else:
    critic_cfg = dataclasses.replace(spec.cfg, num_layers=_layers(_critic_backbone(config),
                                                                  spec.cfg))
    critic_tx = ppo.critic_optimizer(config)
    critic_params = jax.eval_shape(lambda: heads.init_scored_model(critic_cfg, jax.random.key(0)))
    crit, crit_sh = abstract_state(critic_params, heads.scored_model_axes(critic_cfg), critic_tx,
                                   mesh, rules)
    shapes |= dict(returns=((r, n), jnp.float32), old_values=((r, n), jnp.float32),
                   value_mask=((r, n), bool))
    data = batch(mesh, **shapes)
    update_policy = common.jit_update(common.make_update(
        functools.partial(ppo.policy_loss_fn, spec, config), tx, rl.optim.grad_accum, "rl"),
        sh, rules)
    update_critic = common.jit_update(common.make_update(
        functools.partial(ppo.critic_loss_fn, critic_cfg, config, spec.remat), critic_tx,
        rl.optim.grad_accum, "critic"), crit_sh, rules)
    values_fn = jax.jit(functools.partial(ppo.critic_values, critic_cfg, g, False))
    own_ref = () if spec.uses_lora else (ref,)
    critic_fwd = forward_flops(critic_cfg, r, p, n, g, head=False)
    out += [
        Step("ppo/policy_update", update_policy, (state, pol.frozen, data, _key(mesh)),
             (crit, *own_ref), tokens, train * fwd),
        Step("ppo/critic_update", update_critic, (crit, {}, data, _key(mesh)),
             (state, pol.frozen, *own_ref), tokens, train * critic_fwd),
        Step("ppo/reference", ref_fn, (ref, data), (state, crit), tokens, fwd),
        Step("ppo/values", values_fn, (crit.params, data),
             (state, pol.frozen, crit.opt_state, *own_ref),
             tokens, critic_fwd),
    ]
    resident = (state.opt_state, crit, *own_ref)
  return out + sampler_steps(config, pol, state.params, mesh, resident)


def _critic_backbone(config) -> str:
  init = config.ppo.critic_init
  return config.reward_model.backbone if init == "reward_model" else init


def sampler_steps(config, pol: Policy, trainable: Any, mesh: Mesh, resident: Any) -> list[Step]:
  """The sampler's prefill over config.rollout's prompts and one decode step of its rows, on the
  params in the compute dtype (`policy.effective_params`, as `rollout.generate` runs it)."""
  ro, spec = config.rollout, pol.spec
  b, p, n, g = ro.prompts_per_step, ro.max_prompt_len, ro.max_new_tokens, ro.group_size
  params = jax.eval_shape(functools.partial(policy.effective_params, spec), trainable,
                          pol.frozen)
  params = sharded_params(params, causal_lm.param_axes(spec.cfg), mesh, config.mesh.rules)
  prefill = jax.jit(lambda params, ids, mask: sampling.prefill(
      params, spec.cfg, ids, mask, max_new_tokens=n, num_samples=g))
  prompts = batch(mesh, ids=((b, p), jnp.int32), mask=((b, p), bool))

  def decode_args():  # the prefill's outputs, on the shardings XLA gives them
    compiled = prefill.lower(params, prompts["ids"], prompts["mask"]).compile()
    prefix, loop = with_shardings(jax.eval_shape(prefill, params, prompts["ids"], prompts["mask"]),
                                  compiled.output_shardings)
    return params, prefix, loop, _key(mesh)
  sampler = sampling.Sampling(ro.temperature, ro.top_k, ro.top_p)
  decode = jax.jit(lambda params, prefix, s, key: sampling.decode_step(
      params, spec.cfg, prefix, s, key, eos_ids=(0,), sampling=sampler), donate_argnums=2)
  # A bf16 forward (or LoRA's merged weights) samples from a copy, while the trained params (and
  # a LoRA base) stay; in float32 without LoRA it is the state's params themselves.
  copy = spec.uses_lora or spec.compute_dtype != "float32"
  resident = (resident, trainable, pol.frozen) if copy else resident
  cfg = spec.cfg
  head = 2.0 * cfg.hidden_size * cfg.vocab_size
  prefill_flops = forward_flops(cfg, b, p, 0, 1, head=False) + head * b
  # one token per row, attending to its prompt and (at most) n earlier completion tokens
  decode_flops = b * g * (2.0 * perf.layer_weights(cfg) + head
                          + 4.0 * cfg.num_layers * cfg.num_heads * cfg.head_dim * (p + n))
  return [
      Step("sampler/prefill", prefill,
           (params, prompts["ids"], prompts["mask"]), resident, b * p, prefill_flops),
      Step("sampler/decode", decode, decode_args, resident, b * g, decode_flops),
  ]


def steps(config, cfg: causal_lm.LMConfig, mesh: Mesh, only: list[str] | None = None
          ) -> list[Step | Skipped]:
  """The steps of config.stages (or `only`) that run on the mesh; "eval" reuses the sampler."""
  pol = abstract_policy(config, cfg, mesh)
  out: list[Step | Skipped] = []
  for stage in only or config.stages:
    if stage == "sft":
      out += sft_steps(config, pol, mesh)
    elif stage == "reward_model":
      out += reward_model_steps(config, cfg, mesh)
    elif stage in ("ppo", "grpo"):
      out += rl_steps(config, pol, mesh)
  return out
