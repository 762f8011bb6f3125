"""The eval Context's generation cache and the held-out evaluator's per-prompt means."""

import pathlib

import numpy as np
import pytest

from configs import girl
from jaxprof import evaluation, systems
from jaxprof.evaluation import held_out
from jaxprof.trainers import rollout


@pytest.fixture
def context(monkeypatch, tmp_path: pathlib.Path):
  """A `:tiny` GIRL Context on the random tiny policy, counting the rows it generates."""
  config = girl.get_config("tiny")
  config.rollout.max_new_tokens = 4
  config.eval.batch_size = 8
  calls = []
  real = rollout.generate

  def counting(spec, trainable, frozen, ids, mask, key, ro, eos, pad):
    calls.append((len(ids), ro.group_size, ro.temperature))
    return real(spec, trainable, frozen, ids, mask, key, ro, eos, pad)

  monkeypatch.setattr(rollout, "generate", counting)
  ev = evaluation.Context(config, systems.get(config), {"a": "tiny"}, {}, tmp_path)
  return ev, calls


def test_fewer_samples_and_repeated_prompts_reuse_the_cached_completions(context):
  ev, calls = context
  rows = ev.system.rl_rows("eval")
  prompts = [ev.system.prompt(r) for r in rows[:3]]
  four = ev.generate("a", prompts, samples=4)
  assert calls == [(2, 4, 1.0), (2, 4, 1.0)]  # 8 rows per call: 2 CVs x 4 JDs, last one padded
  assert [len(t) for t in four] == [4, 4, 4]
  # Two samples at the same temperature are the first two of the four, with no new call; a
  # repeated prompt is its cached completions again.
  two = ev.generate("a", prompts + prompts[:1], samples=2)
  assert two == [t[:2] for t in four] + [four[0][:2]]
  assert len(calls) == 2
  # Greedy is another distribution: generated, 8 prompts per call.
  ev.generate("a", prompts, samples=1, temperature=0.0)
  assert calls[2:] == [(8, 1, 0.0)]


def test_cached_rollouts_carry_each_completions_own_tokens(context):
  ev, _ = context
  prompts = [ev.system.prompt(r) for r in ev.system.rl_rows("eval")[:2]]
  (formatted, ro), = ev.rollouts("a", prompts, samples=4)
  tok = ev.tokenizer("a")
  assert len(formatted) == 2 and ro.comp_ids.shape[0] == 8
  assert list(ro.row_prompt) == [0, 0, 0, 0, 1, 1, 1, 1] and ro.prompt_group == 4
  assert tok.decode_batch(ro.comp_ids, ro.comp_mask) == ro.completions


def test_held_out_truth_is_each_prompts_mean_over_its_defined_samples():
  values = np.array([0.2, 0.4, np.nan, 1.0, np.nan, np.nan])
  np.testing.assert_allclose(held_out._row_means(values, 2), [0.3, 1.0, np.nan])
  np.testing.assert_allclose(held_out._row_means(values, 1), values)


def test_girl_held_out_cvs_are_distinct_and_new_to_every_generator_stage():
  system = systems.get(girl.get_config("tiny"))
  rows = system.rl_rows("eval")
  ids = [r["seeker_id"] for r in rows]
  assert len(ids) == len(set(ids)) == len(rows)
  trained = {r["seeker_id"] for s in ("sft", "reward_model", "rl") for r in system.rows(s)}
  assert not trained & set(ids)


def test_report_tables_write_each_interval_in_its_metrics_cell():
  from jaxprof.evaluation import stage

  lines = stage._table({"a": {"m": 0.5, "m/ci_low": 0.4, "m/ci_high": 0.6, "n": 1.0},
                        "b": {"m": float("nan")}})
  assert lines == ["| | m | n |", "|---|---|---|", "| a | 0.500 [0.400, 0.600] | 1.000 |",
                   "| b | nan |  |"]
