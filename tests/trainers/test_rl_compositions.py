"""RL correctness, as the trainers compose the pieces, each against an independent float64
re-computation (references in rl_refs.py): sampler vs training log-probs (the PPO ratio is 1
at the first minibatch), the critic's value-before-token alignment, exact gradient
accumulation for every loss and aggregation mode, GRPO's single-update shortcut, and the
reward model's chosen/rejected pairing."""

import functools

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest

from configs import common as config_common
from jaxprof import parallel
from jaxprof.models import causal_lm, heads
from jaxprof.rl import losses
from jaxprof.trainers import common, grpo, policy, ppo, reward_model, rollout
from tests import helpers
from tests.trainers import toy
from tests.trainers.rl_refs import (
  CFG,
  PROMPTS,
  G,
  full_sequence,
  group_batch,
  max_abs_diff,
  reference_logprobs,
  rl_config,
)

# ------------------------------------------------------------------ 1. sampler vs training forward


# Tokens the tiny model below emits mid-sequence: as EOS they stop some rows early. One static
# EOS tuple for every draw, so the sampler compiles once.
EOS_IDS = (33, 65)
MAX_NEW = 12


def generate(params, temperature, key):
  """rollout.generate: G samples per prompt with sampling.Sampling(temperature, 0, 1.0)."""
  ro = ml_collections.ConfigDict(dict(temperature=temperature, top_k=0, top_p=1.0,
                                      group_size=G, max_new_tokens=MAX_NEW, share_prefix=True))
  ids, mask = helpers.left_padded(PROMPTS)
  spec = policy.PolicySpec(cfg=CFG, chunk_size=16)
  return rollout.generate(spec, params, {}, np.asarray(ids), np.asarray(mask), key, ro, EOS_IDS,
                          pad_id=0)


def early_stopping_rollout(params, temperature):
  """The first draw (over a few keys) where some row ends on EOS before max_new_tokens and the
  rows' lengths differ."""
  for seed in range(8):
    ro = generate(params, temperature, jax.random.key(seed))
    lengths = ro.comp_mask.sum(-1)
    last = ro.comp_ids[np.arange(len(lengths)), lengths - 1]
    if np.any((lengths < MAX_NEW) & np.isin(last, EOS_IDS)) and len(set(lengths.tolist())) > 1:
      return ro
  raise AssertionError(f"no draw stopped early on {EOS_IDS}: pick tokens the model emits")


@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_training_logprobs_equal_sampler_logprobs(temperature):
  """Shared-prefix and per-row training forwards give the sampler's own log-probs (ratio 1), and
  both equal a float64 log-softmax of one plain forward over prompt + completion."""
  params = helpers.tiny_params(CFG, seed=0, scale=2.0)  # mild: T=1 sampling really samples
  ro = early_stopping_rollout(params, temperature)
  np.testing.assert_array_equal(ro.prompt_ids[::G], np.asarray(helpers.left_padded(PROMPTS)[0]))
  assert np.any(ro.comp_ids[0] != ro.comp_ids[1])  # a group's rows are distinct samples
  mask = ro.comp_mask
  batch = {"prompt_ids": ro.prompt_ids, "prompt_mask": ro.prompt_mask, "comp_ids": ro.comp_ids,
           "comp_mask": mask}
  spec = policy.PolicySpec(cfg=CFG, chunk_size=16)
  ref = reference_logprobs(params, CFG, **batch, temperature=temperature)
  assert np.mean(ref[mask]) < -0.1  # not a near-deterministic model: the check has teeth
  sampler = np.asarray(ro.logprobs)
  # At temperature T != 1 the training forward must be asked for log softmax(logits / T) too.
  tempered = {} if temperature == 1.0 else {"temperature": temperature}
  err = {"sampler": np.abs(sampler - ref)[mask].max()}
  for g in (G, 1):
    lp, _ = jax.jit(functools.partial(rollout.policy_logprobs, spec, g, **tempered))(
        params, {}, batch)
    err[f"train G={g}"] = np.abs(np.asarray(lp) - ref)[mask].max()
    err[f"train G={g} vs sampler"] = np.abs(np.asarray(lp) - sampler)[mask].max()
    if g == G:  # what PPO's first minibatch sees: ratio 1, nothing clipped
      _, m = losses.policy_loss(lp, sampler, np.ones(len(mask), np.float32), mask)
      assert abs(float(m["ratio_mean"]) - 1) < 1e-4 and float(m["clip_fraction"]) == 0
  print("max |log-prob error|:", {k: f"{v:.2e}" for k, v in err.items()})
  for name, e in err.items():
    assert e < 1e-4, (name, e)
  np.testing.assert_array_equal(sampler[~mask], 0.0)


# ------------------------------------------------------------------ 2. critic value alignment


def test_critic_values_are_read_before_each_completion_token():
  """V(s_t) is the head on the state at the last prompt token (t = 0) or at token t - 1."""
  backbone, critic_cfg = heads.truncate_layers(helpers.tiny_params(CFG, seed=1, scale=2.0), CFG, 1)
  head = {"kernel": heads.init_head(jax.random.key(3), CFG.hidden_size)["kernel"],
          "bias": jnp.asarray(0.3, jnp.float32)}
  params = {"backbone": backbone, "head": head}
  batch = group_batch(PROMPTS, [5, 2, 7, 1], CFG.vocab_size, width=8)
  mask, p = batch["comp_mask"], batch["prompt_ids"].shape[1]
  tokens, full_mask = full_sequence(batch["prompt_ids"], batch["prompt_mask"], batch["comp_ids"],
                                    mask)
  hidden = np.asarray(causal_lm.forward(backbone, critic_cfg, tokens, full_mask)[0], np.float64)
  v_all = hidden @ np.asarray(head["kernel"], np.float64) + 0.3  # [R, P + N]: V after each token
  expected = v_all[:, p - 1:p - 1 + mask.shape[1]]
  after = v_all[:, p:]  # the off-by-one alternative: the state after token t
  scale = np.abs(expected[mask]).max()
  assert np.abs(after - expected)[mask].max() > 0.05 * scale  # the alignment is observable
  for g in (G, 1):
    values = np.asarray(jax.jit(functools.partial(ppo.critic_values, critic_cfg, g, False))(
        params, batch))
    err = np.abs(values - expected)[mask].max()
    print(f"critic values G={g}: max |error| {err:.2e} (max |V| {scale:.2f})")
    assert err < 1e-4 * max(scale, 1.0), (g, err)


# ------------------------------------------------------------------ 4. exact gradient accumulation

# Completion lengths: the two micro-batches hold 19 and 14 valid tokens in 4 rows each, so a
# token-level term normalised per micro-batch weighs tokens unequally.
ACC_LENS = [7, 1, 3, 8, 2, 2, 6, 4]
ACC_PROMPTS = [[3, 9, 4, 11, 5], [6, 2], [13, 8, 10], [7, 12, 3, 5]]  # groups of G = 2 rows


@functools.cache
def acc_setup():
  """(spec, params, critic cfg, critic params, batch, current log-probs) on the toy model with
  peaked logits and a ragged batch of 4 groups of G rows."""
  params = causal_lm.init_params(toy.CFG, jax.random.key(0))
  params = jax.tree.map(lambda x: x * 4.0 if x.ndim >= 2 else x, params)
  spec = policy.PolicySpec(cfg=toy.CFG, chunk_size=16)
  backbone, critic_cfg = heads.truncate_layers(params, toy.CFG, 1)
  critic = {"backbone": backbone, "head": heads.init_head(jax.random.key(3), toy.CFG.hidden_size)}
  batch = group_batch(ACC_PROMPTS, ACC_LENS, toy.CFG.vocab_size, width=8, seed=1)
  lp, _ = jax.jit(functools.partial(rollout.policy_logprobs, spec, G))(params, {}, batch)
  lp = np.asarray(lp)
  rng = np.random.default_rng(2)
  shape = batch["comp_mask"].shape
  batch |= {
      "old_logprobs": (lp + rng.normal(0.0, 0.3, shape)).astype(np.float32),  # some clipped
      "ref_logprobs": (lp + rng.normal(0.0, 0.5, shape)).astype(np.float32),
      "token_advantages": rng.normal(0.0, 1.0, shape).astype(np.float32),
      "advantages": rng.normal(0.0, 1.0, len(ACC_LENS)).astype(np.float32),
      "old_values": rng.normal(0.0, 0.5, shape).astype(np.float32),
      "returns": rng.normal(0.0, 1.0, shape).astype(np.float32)}
  return spec, params, critic_cfg, critic, batch, lp


def loss_and_inputs(name, agg_mode):
  """(loss_fn(params, frozen, batch, rng), params, batch) as the trainers build them."""
  spec, params, critic_cfg, critic, batch, _ = acc_setup()
  config = rl_config("grpo" if name == "grpo" else "ppo", agg_mode=agg_mode, kl_coef=0.1,
                     max_new_tokens=batch["comp_mask"].shape[1])
  if name == "grpo":
    return functools.partial(grpo.grpo_loss, spec, config, False), params, dict(batch)
  if name == "ppo_critic":
    return functools.partial(ppo.critic_loss_fn, critic_cfg, config, False), critic, dict(batch)
  config.ppo.entropy_coef = 0.1
  return (functools.partial(ppo.policy_loss_fn, spec, config), params,
          dict(batch, advantages=batch["token_advantages"]))


@functools.cache
def accumulation_results(name):
  """(initial params, {(agg_mode, num_micro): (params, loss, finite)}) after one
  `common.make_update` step with plain SGD (linear in the gradient). All six updates of a loss
  are one jitted program: one compilation instead of six."""
  tx = optax.sgd(0.5)
  cases = {mode: loss_and_inputs(name, mode) for mode in losses.AGG_MODES}
  _, params, batch = cases["token_mean"]

  def run(params, batch):
    state = common.TrainState(step=jnp.zeros((), jnp.int32), params=params,
                              opt_state=tx.init(params), skipped=jnp.zeros((), jnp.int32))
    out = {}
    for mode in losses.AGG_MODES:
      for num_micro in (1, 2):
        new, m = common.make_update(cases[mode][0], tx, num_micro, "t")(
            state, {}, batch, jax.random.key(0))
        out[mode, num_micro] = new.params, m["t/loss"], m["t/finite"]
    return out

  return params, jax.device_get(jax.jit(run)(params, batch))


@pytest.mark.parametrize("agg_mode", losses.AGG_MODES)
@pytest.mark.parametrize("name", ["ppo_policy", "ppo_critic", "grpo"])
def test_grad_accumulation_is_exact(name, agg_mode):
  """make_update with 2 micro-batches = 1 batch: same loss, same SGD-updated params (PPO's
  entropy bonus on, rows of different lengths)."""
  params, out = accumulation_results(name)
  (p1, loss1, ok1), (p2, loss2, ok2) = out[agg_mode, 1], out[agg_mode, 2]
  assert ok1 and ok2
  others = [float(out[m, 1][1]) for m in losses.AGG_MODES if m != agg_mode]
  assert min(abs(float(loss1) - o) for o in others) > 1e-3  # ragged rows: the modes differ
  moved, diff = max_abs_diff(p1, params), max_abs_diff(p2, p1)
  print(f"{name} {agg_mode}: loss {float(loss1):.7f} vs {float(loss2):.7f}, params moved "
        f"{moved:.2e}, 2 vs 1 micro-batches max |diff| {diff:.2e}")
  assert moved > 1e-3, moved
  assert abs(float(loss2) - float(loss1)) <= 1e-6 * max(1.0, abs(float(loss1))), (loss1, loss2)
  assert diff <= 1e-6, diff


# ------------------------------------------------------------------ 5. GRPO single-update shortcut

SHORTCUT_CASES = [("token_mean", "token"), ("seq_mean_token_sum_norm", "sequence")]


@functools.cache
def shortcut_results():
  """{(agg_mode, ratio_level, single_update): (loss_sum, weight, grads, metrics)} of grpo_loss,
  with stored old log-probs equal to the current policy's; one jitted program."""
  spec, params, _, _, batch, lp = acc_setup()
  stored = dict(batch, old_logprobs=lp)

  def run(params, stored):
    out = {}
    for agg_mode, ratio_level in SHORTCUT_CASES:
      config = rl_config("grpo", agg_mode=agg_mode, kl_coef=0.1,
                         max_new_tokens=lp.shape[1])
      config.rl.ratio_level = ratio_level
      for single in (True, False):
        fn = common.with_weight(functools.partial(grpo.grpo_loss, spec, config, single))
        (loss, (weight, m)), grads = jax.value_and_grad(fn, has_aux=True)(params, {}, stored,
                                                                           None)
        out[agg_mode, ratio_level, single] = loss, weight, grads, m
    return out

  return jax.device_get(jax.jit(run)(params, stored))


@pytest.mark.parametrize("agg_mode,ratio_level", SHORTCUT_CASES)
def test_grpo_single_update_shortcut_equals_general_path(agg_mode, ratio_level):
  """single_update=True (old = stop_gradient of the forward) = the general path with stored old
  log-probs equal to the current policy's: same loss, weight and gradient."""
  out = shortcut_results()
  (l1, w1, g1, m1), (l0, w0, g0, m0) = (out[agg_mode, ratio_level, s] for s in (True, False))
  scale = max(float(np.abs(x).max()) for x in jax.tree.leaves(g0))
  diff = max_abs_diff(g1, g0)
  print(f"shortcut vs general: loss {float(l1):.7f} vs {float(l0):.7f}, grad max |diff| "
        f"{diff:.2e} (max |grad| {scale:.3f})")
  assert scale > 1e-2
  assert float(w1) == float(w0)
  assert abs(float(l1) - float(l0)) <= 1e-6 * max(1.0, abs(float(l0))), (l1, l0)
  assert diff <= 1e-5 * scale, diff
  for m in (m1, m0):
    assert abs(float(m["rl/ratio_mean"]) - 1) < 1e-6 and float(m["rl/clip_fraction"]) == 0


# ------------------------------------------------------------------ 7. reward-model pairing

RM_PAIRS = [  # chosen always longer than rejected, and every text distinct
    {"prompt": "CV 0: welder, ten years on pipelines.",
     "chosen": "Senior pipeline welder for a steel plant, night shifts, good pay.",
     "rejected": "Welder."},
    {"prompt": "CV 1: intensive care nurse.",
     "chosen": "ICU nurse for a city hospital ward, weekend rota, permanent contract.",
     "rejected": "Nurse job, any ward."},
    {"prompt": "CV 2: data analyst who writes SQL.",
     "chosen": "Data analyst: SQL dashboards and monthly finance reports.",
     "rejected": "Analyst"},
]


def length_scores(params, cfg, tokens, mask, pooling="last", remat=False):
  """A stand-in reward model: the number of real tokens (the prompts of a pair are equal, so it
  ranks the responses by length)."""
  del params, cfg, tokens, pooling, remat
  return jnp.sum(mask, axis=-1).astype(jnp.float32)


def test_reward_model_pairs_keep_chosen_and_rejected_in_order(monkeypatch):
  """_pair_batch row i holds pair idx[i]'s chosen / rejected text, and pair_loss and
  pairwise_accuracy read r_chosen and r_rejected in that order."""
  from jaxprof.models import hf
  from jaxprof.tokenizer import Tokenizer

  tok = Tokenizer.from_dir(hf.resolve_model_dir(hf.PACKAGED))
  rm = config_common.reward_model_config()
  rm.margin = 0.5
  scorer = reward_model.Scorer(CFG, rm.pooling, rm.max_prompt_len, rm.max_response_len)
  idx = [2, 0, 1]
  batch = reward_model._pair_batch(scorer, tok, RM_PAIRS, idx)
  assert batch["chosen_ids"].shape == batch["rejected_ids"].shape
  for half in ("chosen", "rejected"):
    ids, mask = batch[f"{half}_ids"], batch[f"{half}_mask"].astype(bool)
    for row, i in enumerate(idx):
      prompt, response = policy.format_prompt(tok, RM_PAIRS[i]["prompt"]), RM_PAIRS[i][half]
      expected = (tok.encode(prompt, add_special_tokens=False)
                  + tok.encode(response, add_special_tokens=False) + [tok.eos_ids[0]])
      assert ids[row][mask[row]].tolist() == expected, (half, row)
      assert tok.decode(ids[row][mask[row]]) == prompt + response, (half, row)

  monkeypatch.setattr(heads, "sequence_scores", length_scores)
  lc = batch["chosen_mask"].sum(-1).astype(np.float64)
  lr = batch["rejected_mask"].sum(-1).astype(np.float64)
  assert np.all(lc > lr)
  loss_sum, weight, m = reward_model.pair_loss(scorer, rm, {}, {}, batch, None)
  expected = (np.mean(np.log1p(np.exp(-(lc - lr - rm.margin))))
              + rm.center_coef * np.mean((lc + lr) ** 2))
  np.testing.assert_allclose(float(loss_sum) / float(weight), expected, rtol=1e-6)
  assert float(weight) == len(idx) and float(m["accuracy"]) == 1.0
  np.testing.assert_allclose([float(m["reward_chosen"]), float(m["reward_rejected"])],
                             [lc.mean(), lr.mean()], rtol=1e-6)

  swapped = [dict(p, chosen=p["rejected"], rejected=p["chosen"]) for p in RM_PAIRS]
  _, _, m = reward_model.pair_loss(scorer, rm, {}, {}, reward_model._pair_batch(
      scorer, tok, swapped, idx), None)
  assert float(m["accuracy"]) == 0.0
  mesh = parallel.make_mesh(data=1)
  assert reward_model.pairwise_accuracy(scorer, {}, tok, RM_PAIRS, 2, mesh) == 1.0
  assert reward_model.pairwise_accuracy(scorer, {}, tok, swapped, 2, mesh) == 0.0
