"""Every system config and variant builds and validates; bad values at their real paths fail."""

import importlib

import pytest

from jaxprof import config as config_lib
from jaxprof import systems

VARIANTS = {
    "girl": ["", "tiny", "algo=grpo", "tiny,algo=grpo", "lora=4", "seed=3", "paper",
             "tiny,paper", "length=0"],
    "langptune": ["", "tiny", "metric=ndcg", "lora=4", "recommender=trained"],
    "blue": ["", "tiny", "lora=4"],
    "hifi": ["", "tiny", "reward=listwise", "tiny,reward=listwise", "length=none",
             "length=format", "entropy=false"],
}
CASES = [(name, v) for name, variants in VARIANTS.items() for v in variants]


def build(name: str, variant: str):
  return importlib.import_module(f"configs.{name}").get_config(variant or None)


@pytest.mark.parametrize("name,variant", CASES)
def test_config_builds_and_validates(name, variant):
  config = build(name, variant)
  assert config.system == name and name in systems.SYSTEMS
  config_lib.validate(config, reference=build(name, variant))
  assert config.rl.algo in config and config.rollout.share_prefix
  if "tiny" in variant:
    assert config.model.path == "tiny"
  else:  # a length term never rewards running into the generation cap
    for term in config.rewards.values():
      if term.name == "length_penalty":
        assert term.kwargs.target_tokens < config.rollout.max_new_tokens, (name, variant)


def test_hifi_variants_differ_in_their_rule_rewards_and_weighting():
  rewards = {v: set(build("hifi", f"length={v}").rewards) for v in ("none", "format", "penalty")}
  assert rewards == {"none": {"engagement"}, "format": {"engagement", "format"},
                     "penalty": {"engagement", "format", "length"}}
  config = build("hifi", "")
  target = config.rewards.length.kwargs.target_tokens
  assert config.rollout.max_new_tokens >= 2 * target  # room to drift above the target
  assert config.grpo.prompt_weight == "entropy_weight"
  assert build("hifi", "entropy=false").grpo.prompt_weight == ""
  listwise = build("hifi", "reward=listwise").rewards.engagement.kwargs
  assert listwise.entropy_weighting is False  # weighted on the advantages, where it survives


@pytest.mark.parametrize("path,value,message", [
    ("sft.optim.grad_accum", 0, r"sft.optim.grad_accum=0: must be > 0"),
    ("rl.optim.grad_accum", -1, r"rl.optim.grad_accum=-1: must be > 0"),
    ("reward_model.optim.lr", -1e-4, r"reward_model.optim.lr=-0.0001: must be >= 0"),
    ("rollout.group_size", 0, r"rollout.group_size=0: must be > 0"),
    ("rollout.top_p", 1.5, r"rollout.top_p=1.5: must be in \[0, 1\]"),
    ("rollout.temperature", -1.0, r"rollout.temperature=-1.0: must be >= 0"),
    ("rl.kl_coef", float("nan"), r"rl.kl_coef=nan: must be finite"),
    ("ppo.gamma", 1.5, r"ppo.gamma=1.5: must be in \[0, 1\]"),
    ("sft.batch_size", 0, r"sft.batch_size=0: must be > 0"),
    ("mesh.data", 0, r"mesh.data=0: must be -1 or an int > 0"),
])
def test_bad_values_at_real_paths_are_rejected(path, value, message):
  config = build("girl", "tiny")
  section, _, key = path.rpartition(".")
  node = config
  for part in section.split("."):
    node = node[part]
  node[key] = value
  with pytest.raises(config_lib.ConfigError, match=message):
    config_lib.validate(config)


def test_unknown_system_is_one_clear_error():
  config = build("girl", "tiny")
  config.system = "girll"
  with pytest.raises(ValueError, match=r"config.system='girll'; known systems: girl"):
    systems.get(config)


def test_langptune_recommender_is_frozen_or_trained():
  with pytest.raises(ValueError, match="recommender='bogus'"):
    build("langptune", "recommender=bogus")
  trained = build("langptune", "recommender=trained").rewards.ranking.kwargs
  assert trained.recommender == "@text_recommender"
  assert "recommender" not in build("langptune", "").rewards.ranking.kwargs
