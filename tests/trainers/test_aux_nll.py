"""rl.aux_nll: GRPO's loss + coef * the policy's token NLL of a per-prompt target text.

The NLL rides in the policy's forward pass: after "prompt" as one extra continuation per prompt
group, after "completion" as each completion row's own continuation. Here it is checked against
a separate plain forward of prompt + target (or prompt + completion + target, row by row), its
gradient against that of the hand-computed NLL, and the rest of the loss and of a GRPO step
against the term switched off.
"""

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from configs import blue
from jaxprof import buckets, parallel, perf, systems
from jaxprof import config as config_lib
from jaxprof.models import causal_lm
from jaxprof.trainers import aux_nll, grpo, policy, rollout
from tests import helpers
from tests.trainers import toy
from tests.trainers.test_shared_prefix import BATCH, G, group_batch, model_params, rl_config

CFG = helpers.TINY_LLAMA
TARGET_LENS = [6, 2, 9]  # one target per prompt group of BATCH (3 groups of G = 4)


def with_targets(batch: dict, lens=TARGET_LENS, seed: int = 5, g: int = G) -> dict:
  """`batch` plus each prompt's target as the trainer stores it: [B, L] repeated per row."""
  rng = np.random.default_rng(seed)
  width = buckets.width(max(lens))
  mask = np.arange(width)[None] < np.asarray(lens)[:, None]
  ids = np.where(mask, rng.integers(4, CFG.vocab_size, mask.shape), 0).astype(np.int32)
  return dict(batch, aux_ids=np.repeat(ids, g, 0), aux_mask=np.repeat(mask, g, 0))


def hand_nll(params, batch: dict, g: int = G) -> jax.Array:
  """Mean token NLL of each prompt's target after its prompt: one plain [P + L] forward each."""
  p_ids, p_mask = batch["prompt_ids"][::g], batch["prompt_mask"][::g]
  t_ids, t_mask = batch["aux_ids"][::g], batch["aux_mask"][::g]
  lp = causal_lm.sequence_logprobs(params, CFG, jnp.concatenate([p_ids, t_ids], 1),
                                   jnp.concatenate([p_mask, t_mask], 1))[:, p_ids.shape[1] - 1:]
  return -jnp.sum(lp * t_mask) / jnp.sum(t_mask)


def after_completion(batch: dict) -> dict:
  """`batch` (with targets) as the trainer stores it after "completion": each row's start."""
  return dict(batch, aux_start=batch["comp_mask"].sum(-1).astype(np.int32))


def hand_nll_after(params, batch: dict) -> jax.Array:
  """Mean token NLL of each row's target after its prompt and its own completion: one plain
  [P + n + L] forward per row, no padding."""
  total, count = 0.0, 0
  for r in range(batch["comp_ids"].shape[0]):
    p = batch["prompt_ids"][r][batch["prompt_mask"][r]]
    c = batch["comp_ids"][r][batch["comp_mask"][r]]
    t = batch["aux_ids"][r][batch["aux_mask"][r]]
    seq = np.concatenate([p, c, t])[None]
    lp = causal_lm.sequence_logprobs(params, CFG, jnp.asarray(seq), jnp.ones(seq.shape, bool))
    start = len(p) + len(c) - 1  # lp[:, i] is the log-prob of token i + 1
    total, count = total + jnp.sum(lp[0, start:start + len(t)]), count + len(t)
  return -total / count


def config(coef: float, share: bool = True, after: str = "prompt"):
  c = rl_config(share)
  c.rl.aux_nll.update(coef=coef, column="target", after=after)
  return c


def loss_of(c, params, batch):
  """(loss, metrics) of grpo_loss: its weighted sum over its weight."""
  total, weight, m = grpo.grpo_loss(policy.PolicySpec(cfg=CFG, chunk_size=16), c, True, params,
                                    {}, batch, None)
  return total / weight, m


@pytest.mark.parametrize("share", [True, False])
def test_loss_is_the_loss_without_it_plus_coef_times_the_targets_nll(share):
  params, batch = model_params(CFG), with_targets(BATCH)
  coef = 0.3
  on, m_on = jax.jit(lambda p, b: loss_of(config(coef, share), p, b))(params, batch)
  off, m_off = jax.jit(lambda p, b: loss_of(config(0.0, share), p, b))(params, batch)
  nll = float(hand_nll(params, batch))
  assert 1.0 < nll < 20.0  # a real NLL, not a masked-out zero
  np.testing.assert_allclose(float(m_on["rl/aux_nll"]), nll, rtol=1e-5)
  np.testing.assert_allclose(float(on), float(off) + coef * nll, rtol=1e-5)
  for k in ("rl/kl", "rl/entropy", "rl/clip_fraction"):  # the completions' terms are untouched
    if k in m_off:
      np.testing.assert_allclose(float(m_on[k]), float(m_off[k]), rtol=1e-5, atol=1e-7)
  assert "rl/aux_nll" not in m_off


@pytest.mark.parametrize("share", [True, False])
def test_after_completion_the_nll_is_each_rows_target_after_its_own_completion(share):
  params, batch = model_params(CFG), after_completion(with_targets(BATCH, lens=[30, 2, 9]))
  coef = 0.3
  on, m_on = jax.jit(lambda p, b: loss_of(config(coef, share, "completion"), p, b))(params, batch)
  off, m_off = jax.jit(lambda p, b: loss_of(config(0.0, share), p, b))(params, batch)
  nll = float(hand_nll_after(params, batch))
  assert 1.0 < nll < 20.0
  # Not the NLL after the prompt alone: the completion is in the context (the random model's
  # NLLs differ by ~0.01, two hundred times the rtol below).
  assert abs(nll - float(hand_nll(params, batch))) > 1e-3
  np.testing.assert_allclose(float(m_on["rl/aux_nll"]), nll, rtol=1e-5)
  np.testing.assert_allclose(float(on), float(off) + coef * nll, rtol=1e-5)
  for k in ("rl/kl", "rl/entropy", "rl/clip_fraction"):
    np.testing.assert_allclose(float(m_on[k]), float(m_off[k]), rtol=1e-5, atol=1e-7)


def test_after_completion_its_gradient_is_coef_times_the_nlls():
  params = model_params(CFG)
  batch = after_completion(with_targets(dict(BATCH, advantages=np.zeros_like(
      BATCH["advantages"]))))
  c = config(0.5, after="completion")
  c.rl.kl_coef = 0.0
  g_on = jax.jit(jax.grad(lambda p: loss_of(c, p, batch)[0]))(params)
  g_nll = jax.jit(jax.grad(lambda p: hand_nll_after(p, batch)))(params)
  scale = max(float(jnp.abs(x).max()) for x in jax.tree.leaves(g_nll))
  for a, b in zip(jax.tree.leaves(g_on), jax.tree.leaves(g_nll), strict=True):
    np.testing.assert_allclose(np.asarray(a), 0.5 * np.asarray(b), atol=1e-5 * 0.5 * scale)


def test_targets_are_placed_right_after_each_completion():
  comp = np.array([[5, 6, 7, 0], [8, 0, 0, 0], [1, 2, 3, 4]], np.int32)
  target = np.array([[20, 21, 0], [22, 23, 24], [25, 0, 0]], np.int32)
  start = np.array([3, 1, 4], np.int32)
  ids, mask = aux_nll.after_completions(comp, target, target > 0, start)
  assert ids.tolist() == [[5, 6, 7, 20, 21, 0, 0], [8, 22, 23, 24, 0, 0, 0],
                          [1, 2, 3, 4, 25, 0, 0]]
  assert mask.sum(-1).tolist() == [5, 4, 5] and mask.tolist() == (np.arange(7) < [[5], [4], [5]]
                                                                   ).tolist()
  rl = ml_collections.ConfigDict(dict(aux_nll=dict(coef=0.1, column="t", after="completion")))
  rows = aux_nll.batch_rows(({"aux_ids": target[:1], "aux_mask": target[:1] > 0},), rl, 3,
                            comp > 0)
  assert rows["aux_start"].tolist() == [3, 1, 4]
  ro = rollout.Rollout(prompt_ids=np.ones((3, 2), np.int32), prompt_mask=np.ones((3, 2), bool),
                       comp_ids=comp, comp_mask=comp > 0, logprobs=np.zeros((3, 4), np.float32),
                       row_prompt=np.zeros(3, int), prompt_group=3)
  _, longer = aux_nll.after_completions(comp, rows["aux_ids"], rows["aux_mask"], rows["aux_start"])
  assert longer.sum() == (comp > 0).sum() + 3 * 2  # every row gets the first prompt's 2 tokens
  longer = perf.forward_flops(CFG, ro.prompt_mask, longer, 3)
  assert aux_nll.extra_flops(CFG, ro, rows) == pytest.approx(
      longer - perf.forward_flops(CFG, ro.prompt_mask, ro.comp_mask, 3))
  assert aux_nll.extra_flops(CFG, ro, rows) > 0


def test_completion_logprobs_of_the_joint_pass_are_the_plain_ones():
  params, batch = model_params(CFG), with_targets(BATCH, lens=[30, 2, 9])  # wider than N = 16
  spec = policy.PolicySpec(cfg=CFG, chunk_size=16)
  ro = rl_config(True).rollout
  lp, ent, target_lp, target_mask = aux_nll.policy_logprobs(spec, ro, params, {}, batch)
  lp0, ent0 = rollout.policy_logprobs(spec, G, params, {}, batch)
  mask = batch["comp_mask"]
  np.testing.assert_allclose(np.asarray(lp)[mask], np.asarray(lp0)[mask], rtol=1e-5)
  np.testing.assert_allclose(np.asarray(ent)[mask], np.asarray(ent0)[mask], rtol=1e-5)
  assert target_lp.shape == target_mask.shape == (3, batch["aux_ids"].shape[1])
  # After "completion" too: every row's target follows its last token, causally invisible.
  lp, ent, target_lp, _ = aux_nll.policy_logprobs(spec, ro, params, {}, after_completion(batch))
  np.testing.assert_allclose(np.asarray(lp)[mask], np.asarray(lp0)[mask], rtol=1e-5)
  np.testing.assert_allclose(np.asarray(ent)[mask], np.asarray(ent0)[mask], rtol=1e-5)
  assert target_lp.shape == (12, batch["aux_ids"].shape[1])


def test_rows_that_are_not_whole_groups_each_carry_their_target():
  """A micro-batch that splits groups (grad_accum) still gets the same NLL."""
  params, batch = model_params(CFG), with_targets(BATCH)
  spec = policy.PolicySpec(cfg=CFG, chunk_size=16)
  ro = rl_config(True).rollout
  ro.group_size = 5  # 12 rows are not whole groups of 5: every row its own target row
  _, _, target_lp, target_mask = aux_nll.policy_logprobs(spec, ro, params, {}, batch)
  assert target_lp.shape[0] == 12
  np.testing.assert_allclose(float(aux_nll.mean_nll(target_lp, target_mask)),
                             float(hand_nll(params, batch)), rtol=1e-5)


def test_its_gradient_is_coef_times_the_nlls_and_off_changes_nothing():
  params = model_params(CFG)
  batch = with_targets(dict(BATCH, advantages=np.zeros_like(BATCH["advantages"])))
  coef = 0.5
  grad = lambda c: jax.jit(jax.grad(lambda p: loss_of(c, p, batch)[0]))(params)
  c0 = config(0.0)
  c0.rl.kl_coef = 0.0
  c1 = config(coef)
  c1.rl.kl_coef = 0.0
  g_on, g_off = grad(c1), grad(c0)
  g_nll = jax.jit(jax.grad(lambda p: hand_nll(p, batch)))(params)
  # Zero advantages and no KL: the policy loss has no gradient, the term all of it.
  assert all(float(jnp.abs(x).max()) == 0 for x in jax.tree.leaves(g_off))
  scale = max(float(jnp.abs(x).max()) for x in jax.tree.leaves(g_nll))
  assert scale > 0
  for a, b in zip(jax.tree.leaves(g_on), jax.tree.leaves(g_nll), strict=True):
    np.testing.assert_allclose(np.asarray(a), coef * np.asarray(b), atol=1e-5 * coef * scale)


def test_off_is_the_loss_as_before_bit_for_bit():
  """coef=0 (the default) with target arrays in the batch, and no aux_nll section at all (a
  config from before it) without them: one code path, the same loss and gradient."""
  params, batch = model_params(CFG), with_targets(BATCH)
  old = rl_config(True)
  del old.rl["aux_nll"]
  default = rl_config(True)
  assert default.rl.aux_nll.coef == 0.0
  step = lambda c, b: jax.jit(jax.value_and_grad(lambda p: loss_of(c, p, b)[0]))(params)
  ref_loss, ref_grad = step(old, BATCH)
  loss, g = step(config(0.0), batch)
  assert float(loss) == float(ref_loss)
  for x, y in zip(jax.tree.leaves(g), jax.tree.leaves(ref_grad), strict=True):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def test_extra_flops_are_those_of_the_target_rows():
  b = group_batch(prompt_lens=[13, 5, 9], comp_lens=[11, 3, 1, 7, 16, 2, 9, 9, 4, 12, 6, 1])
  b = with_targets(b)
  ro = rollout.Rollout(prompt_ids=b["prompt_ids"], prompt_mask=b["prompt_mask"],
                       comp_ids=b["comp_ids"], comp_mask=b["comp_mask"],
                       logprobs=np.zeros(b["comp_mask"].shape, np.float32),
                       row_prompt=np.repeat(np.arange(3), G), prompt_group=G)
  assert aux_nll.extra_flops(CFG, ro, {"comp_mask": b["comp_mask"]}) == 0.0
  # The update's pass: G + 1 rows per prompt (the target last), the prompt once per group.
  comp = aux_nll.with_target_rows(b["comp_mask"], b["aux_mask"][::G], G)
  prompts = np.repeat(b["prompt_mask"][::G], G + 1, 0)
  assert comp.shape == (15, 16) and comp.sum() == b["comp_mask"].sum() + sum(TARGET_LENS)
  joint = perf.forward_flops(CFG, prompts, comp, G + 1)
  plain = perf.forward_flops(CFG, b["prompt_mask"], b["comp_mask"], G)
  assert aux_nll.extra_flops(CFG, ro, b) == pytest.approx(joint - plain)
  # Unshared (share_prefix off): each target row also runs its prompt.
  ro.prompt_group = 1
  assert aux_nll.extra_flops(CFG, ro, b) == pytest.approx(
      perf.forward_flops(CFG, prompts, comp, 1) - perf.forward_flops(
          CFG, b["prompt_mask"], b["comp_mask"], 1))


# ----------------------------------------------------------------------- prompt batches, steps


class _System:
  columns = ("positive",)

  def __init__(self, targets):
    self.targets = targets

  def rl_rows(self, part):
    assert part == "train"
    return [{"positive": i, "target": t, "text": f"user {i}"} for i, t in enumerate(self.targets)]

  def prompt(self, row):
    return [{"role": "user", "content": row["text"]}]


def prompt_config(coef: float, column: str = "target"):
  c = rl_config(True)
  c.seed = 0
  c.rollout.prompts_per_step = 2
  c.rl.aux_nll.update(coef=coef, column=column, max_len=6)
  return c


def test_prompt_batches_tokenise_the_targets_only_when_on():
  tok = policy.load_tokenizer("tiny")
  texts = ["Next item: Heat (1995) - Action", "Next item: Up", "A third, much longer target"]
  system = _System(texts)
  assert len(rollout.prompt_batches(system, tok, lambda b: [0.0] * b.size,
                                    prompt_config(0.0))(0)) == 3  # off: nothing extra
  batches = rollout.prompt_batches(system, tok, lambda b: [0.0] * b.size, prompt_config(0.1))
  ids, mask, _, targets = batches(0)
  assert ids.shape[0] == 2 and set(targets) == {"aux_ids", "aux_mask"}
  # One width for every batch: the longest target of all rows (the third, cut to max_len).
  assert targets["aux_ids"].shape[1] == batches(1)[3]["aux_ids"].shape[1] == 6
  prompts = [tok.encode(policy.format_prompt(tok, system.prompt({"text": f"user {i}"})),
                        add_special_tokens=False) for i in range(3)]
  for row, m, t_ids, t_mask in zip(ids, mask, targets["aux_ids"], targets["aux_mask"],
                                   strict=True):
    i = prompts.index(row[m].tolist())
    want = tok.encode(texts[i], add_special_tokens=False)[:6]  # no BOS, no EOS, max_len
    assert t_ids[t_mask].tolist() == want and t_mask.tolist() == sorted(t_mask, reverse=True)
  with pytest.raises(config_lib.ConfigError, match="'nope' is not a field"):
    rollout.prompt_batches(system, tok, None, prompt_config(0.1, "nope"))
  with pytest.raises(config_lib.ConfigError, match="row 1 holds ''"):
    rollout.prompt_batches(_System(["a", ""]), tok, None, prompt_config(0.1))


def toy_target_batch(step):
  ids, mask, reward = toy.prompt_batch(step)
  target = np.array([[9, 11, 13, 15, 0, 0, 0, 0]] * len(ids), np.int32)
  return ids, mask, reward, {"aux_ids": target, "aux_mask": target > 0}


@pytest.mark.parametrize("after", ["prompt", "completion"])
def test_a_grpo_step_with_the_term_changes_only_the_update(after):
  """Same rollout, rewards and statistics as with the term off; the NLL is logged and falls."""
  spec, params, axes, mesh = toy.setup()
  runs = {}
  for coef in (0.0, 1.0):
    c = toy.config("grpo", steps=6)
    c.rl.aux_nll.update(coef=coef, column="target", after=after)
    state, one_step = grpo.build(c, toy.start(spec, params, axes), toy_target_batch, mesh)
    runs[coef] = []
    for step in range(6):
      state, m = one_step(state, step)
      runs[coef].append(m)
  first_off, first_on = runs[0.0][0], runs[1.0][0]
  for k in ("reward/mean", "reward/std", "rollout/length_mean", "rollout/truncated_fraction",
            "perf/tokens"):
    assert first_on[k] == first_off[k], k
  assert "rl/aux_nll" not in first_off
  nll = [float(m["rl/aux_nll"]) for m in runs[1.0]]
  assert np.log(32) / 2 < nll[0] < 3 * np.log(32) and nll[-1] < nll[0] - 0.5, nll
  np.testing.assert_allclose(float(first_on["rl/entropy"]), float(first_off["rl/entropy"]),
                             rtol=1e-5)


# ------------------------------------------------------------------------------- configuration


def test_blue_trains_with_the_next_item_nll_and_no_cosine_reward():
  c = blue.get_config()
  assert c.rl.aux_nll.coef == 0.1 and c.rl.aux_nll.column == "next_item_text"
  assert c.rl.aux_nll.after == "completion"
  assert set(c.rewards) == {"contrastive"}
  config_lib.validate(c)


@pytest.mark.slow
def test_blue_training_rows_carry_the_next_item_text_and_nothing_else_does():
  system = systems.get(blue.get_config("tiny"))
  train, held_out = system.rl_rows("train"), system.rl_rows("eval")
  assert all(r["next_item_text"] == f"\nNext item: {r['target_text']}" for r in train)
  assert all(system.item_texts[r["target"]] == r["target_text"] for r in train[:50])
  assert not any("next_item_text" in r for r in held_out)  # the test item never becomes a target
  assert "next_item_text" not in system.columns  # no reward reads it


@pytest.mark.parametrize("change, words", [
    (lambda c: c.rl.aux_nll.update(column=""), ["rl.aux_nll.column"]),
    (lambda c: c.rl.aux_nll.update(coef=-0.1), ["rl.aux_nll.coef=-0.1", ">= 0"]),
    (lambda c: c.rl.aux_nll.update(after="profile"), ["rl.aux_nll.after='profile'", "completion"]),
])
def test_bad_settings_are_rejected_in_one_line(change, words):
  c = blue.get_config("tiny")
  change(c)
  with pytest.raises(config_lib.ConfigError) as e:
    config_lib.validate(c)
  problems = str(e.value).splitlines()[1:]
  assert len(problems) == 1 and all(w in problems[0] for w in words), problems


def test_ppo_with_the_term_is_rejected():
  c = toy.config("ppo", steps=1)
  c.rl.aux_nll.update(coef=0.1, column="target")
  with pytest.raises(config_lib.ConfigError, match="GRPO only"):
    config_lib.validate(c)
  with pytest.raises(config_lib.ConfigError, match="GRPO only"):
    rollout.check_config(c, "ppo")


def test_the_batch_carries_targets_per_row():
  targets = {"aux_ids": np.arange(6).reshape(2, 3), "aux_mask": np.ones((2, 3), bool)}
  rl = ml_collections.ConfigDict(dict(aux_nll=dict(coef=0.1, column="t", max_len=4)))
  comp_mask = np.ones((6, 4), bool)
  rows = aux_nll.batch_rows((targets,), rl, 3, comp_mask)
  np.testing.assert_array_equal(rows["aux_ids"], np.repeat(targets["aux_ids"], 3, 0))
  assert "aux_start" not in rows  # after "prompt", the default
  off = ml_collections.ConfigDict(dict(aux_nll=dict(coef=0.0)))
  assert aux_nll.batch_rows((), off, 3, comp_mask) == {}
  with pytest.raises(ValueError, match="no target texts"):
    aux_nll.batch_rows((), rl, 3, comp_mask)


def test_a_sharded_step_matches_one_device():
  """The extra rows keep whole groups per device: loss and NLL as on one device."""
  params = model_params(CFG)
  batch = with_targets(group_batch(prompt_lens=[13, 5, 9, 2],
                                   comp_lens=[11, 3, 1, 7, 16, 2, 9, 9], seed=1),
                       lens=[6, 2, 9, 3], g=2)  # 4 groups of 2 over data=2 x fsdp=2
  c = config(0.2)
  c.rollout.group_size = 2
  loss = jax.jit(lambda p, b: loss_of(c, p, b))
  mesh = parallel.make_mesh(data=2, fsdp=2, tensor=2)
  shardings = parallel.param_shardings(causal_lm.param_axes(CFG), params, mesh, "fsdp_tp")
  one, m_one = loss(params, batch)
  sharded, m = loss(jax.device_put(params, shardings), parallel.shard_batch(batch, mesh))
  assert abs(float(sharded) / float(one) - 1) <= 1e-5
  np.testing.assert_allclose(float(m["rl/aux_nll"]), float(hand_nll(params, batch, g=2)),
                             rtol=1e-5)
