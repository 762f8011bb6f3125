"""grpo.prompt_weight: a per-prompt weight on its group's advantages, which normalisation keeps.

A per-prompt factor on the rewards cancels in (r - mean) / std, so the weight goes on the
advantages. Checked: the cancellation itself, the weighted advantages, the policy-loss gradient
(linear in the weights: doubling them doubles it, and groups add up), a GRPO step with weights
vs without, and the RL rows' column with its errors.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxprof import config as config_lib
from jaxprof.rl import advantages as adv_lib
from jaxprof.trainers import grpo, policy, rollout
from tests import helpers
from tests.trainers import toy
from tests.trainers.test_shared_prefix import BATCH, G, model_params, rl_config

CFG = helpers.TINY_LLAMA
REWARDS = np.array([0.1, 0.5, 0.2, 0.9, 1.0, 1.0, 0.0, 0.3, -1.0, 2.0, 0.5, 0.5], np.float32)


def test_a_per_prompt_factor_on_rewards_cancels_and_on_advantages_does_not():
  scale = np.repeat([1.0, 3.0, 0.2], G).astype(np.float32)
  plain = adv_lib.group_advantages(REWARDS, group_size=G)
  np.testing.assert_allclose(adv_lib.group_advantages(REWARDS * scale, group_size=G), plain,
                             rtol=1e-4, atol=1e-5)  # what weighting the reward amounts to
  weighted = adv_lib.weight_groups(plain, np.array([1.0, 3.0, 0.2]), G)
  np.testing.assert_allclose(weighted, np.asarray(plain) * scale, rtol=1e-6)
  with pytest.raises(ValueError, match="group_size=4"):
    adv_lib.weight_groups(plain, np.ones(4), G)


def _grad(advantages):
  spec = policy.PolicySpec(cfg=CFG, chunk_size=16)
  c = rl_config(True)
  c.rl.kl_coef = 0.0  # the policy term alone, which is linear in the advantages at ratio 1
  batch = dict(BATCH, advantages=np.asarray(advantages, np.float32))
  loss = lambda t: grpo.grpo_loss(spec, c, True, t, {}, batch, None)[0]
  return jax.grad(loss)(model_params(CFG))


def _flat(tree):
  return jnp.concatenate([jnp.ravel(x) for x in jax.tree.leaves(tree)])


def test_the_weights_change_the_gradient_linearly():
  plain = adv_lib.group_advantages(REWARDS, group_size=G)
  grad = {w: _flat(_grad(adv_lib.weight_groups(plain, np.array(w, np.float32), G)))
          for w in ((1, 1, 1), (2, 2, 2), (1, 0, 0), (0, 1, 1), (0.1, 1, 3))}
  scale = float(jnp.abs(grad[(1, 1, 1)]).max())
  assert scale > 0
  np.testing.assert_allclose(grad[(2, 2, 2)], 2 * grad[(1, 1, 1)], atol=1e-5 * scale)
  np.testing.assert_allclose(grad[(1, 0, 0)] + grad[(0, 1, 1)], grad[(1, 1, 1)],
                             atol=1e-5 * scale)
  diff = float(jnp.abs(grad[(0.1, 1, 3)] - grad[(1, 1, 1)]).max())
  assert diff > 0.05 * scale, (diff, scale)  # uneven weights move the policy differently


def _weighted_batch(weights):
  def batch(step):
    ids, mask, reward = toy.prompt_batch(step)
    return ids, mask, reward, {rollout.PROMPT_WEIGHT: np.asarray(weights, np.float32)}
  return batch


@pytest.mark.parametrize("weights, same", [((1, 1, 1, 1), True), ((0.1, 2, 0.5, 1), False)])
def test_a_grpo_step_with_weights(weights, same):
  """Same rollout and rewards; unit weights give the unweighted update, others another one."""
  spec, params, axes, mesh = toy.setup()
  out = {}
  for column, batch in (("", toy.prompt_batch), ("w", _weighted_batch(weights))):
    c = toy.config("grpo", steps=1)
    c.grpo.prompt_weight = column
    state, one_step = grpo.build(c, toy.start(spec, params, axes), batch, mesh)
    state, m = one_step(state, 0)
    out[column] = (m, _flat(state.params))
  (m0, p0), (m1, p1) = out[""], out["w"]
  assert m0["reward/mean"] == m1["reward/mean"] and m0["rollout/length_mean"] == (
      m1["rollout/length_mean"])
  assert float(m0["rl/grad_norm"]) > 0
  if same:
    np.testing.assert_allclose(p1, p0, rtol=1e-6, atol=1e-7)
  else:
    assert abs(float(m1["rl/grad_norm"]) / float(m0["rl/grad_norm"]) - 1) > 1e-3


class _System:
  columns = ()

  def __init__(self, weights):
    self.weights = weights

  def rl_rows(self, part):
    return [{"text": f"member {i}", "w": w} for i, w in enumerate(self.weights)]

  def prompt(self, row):
    return [{"role": "user", "content": row["text"]}]


def _prompt_config(column):
  c = rl_config(True)
  c.seed = 0
  c.rollout.prompts_per_step = 2
  c.grpo.prompt_weight = column
  return c


def test_prompt_batches_carry_each_prompts_weight():
  tok = policy.load_tokenizer("tiny")
  weights = [0.5, 2.0, 1.0]
  batches = rollout.prompt_batches(_System(weights), tok, lambda b: [0.0] * b.size,
                                   _prompt_config("w"))
  ids, mask, _, extra = batches(0)
  texts = [tok.decode(row[m].tolist()) for row, m in zip(ids, mask, strict=True)]
  want = [weights[next(i for i in range(3) if f"member {i}" in t)] for t in texts]
  np.testing.assert_allclose(extra[rollout.PROMPT_WEIGHT], want)
  assert len(rollout.prompt_batches(_System(weights), tok, None, _prompt_config(""))(0)) == 3
  with pytest.raises(config_lib.ConfigError, match="'nope'.*row 0 has no such column"):
    rollout.prompt_batches(_System(weights), tok, None, _prompt_config("nope"))
  with pytest.raises(ValueError, match="row 1 has w=-1.0"):
    rollout.prompt_batches(_System([1.0, -1.0]), tok, None, _prompt_config("w"))
