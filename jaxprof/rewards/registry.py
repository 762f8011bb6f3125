"""Rewards by name, so a config lists them as data.

    config.rewards = [("length_penalty", 0.1, {"target_tokens": 150}),
                      ("format_reward", 0.2, {"required_sections": ("Skills:", "Experience:")}),
                      ("retrieval_ranking", 1.0, {"encoder": "@encoder",
                                                  "item_texts": "@item_texts", "k": 10})]
    reward = build_rewards(config.rewards, resources={"encoder": enc, "item_texts": texts})

Objects that cannot live in a config (an encoder, item texts, model params) are passed in
`resources` and referred to by "@name" strings. Nothing is injected implicitly: a factory receives
exactly the kwargs the config wrote, with "@name" values replaced.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

from jaxprof import config as config_lib
from jaxprof.rewards import embedding, engagement, text
from jaxprof.rewards.base import RewardFn, WeightedSum, weighted_sum

REWARDS: dict[str, Callable[..., RewardFn]] = {
    "length_penalty": text.length_penalty,
    "format_reward": text.format_reward,
    "embedding_contrastive": embedding.embedding_contrastive,
    "retrieval_ranking": embedding.retrieval_ranking,
    "next_item_supervision": embedding.next_item_supervision,
    "engagement_pointwise": engagement.engagement_pointwise,
    "engagement_listwise": engagement.engagement_listwise,
}


def register(name: str, factory: Callable[..., RewardFn] | None = None):
  """Adds a reward factory under `name` (usable as a decorator). Re-registering a name raises."""
  def add(f: Callable[..., RewardFn]) -> Callable[..., RewardFn]:
    if name in REWARDS and REWARDS[name] is not f:
      raise ValueError(f"reward {name!r} is already registered (to {REWARDS[name].__name__})")
    REWARDS[name] = f
    return f
  return add if factory is None else add(factory)


def _resolve(value: Any, resources: Mapping[str, Any], where: str) -> Any:
  if isinstance(value, str) and value.startswith("@"):
    key = value[1:]
    if key not in resources:
      raise config_lib.UnknownNameError(
          f"{where}: resource {value!r} not provided (resources: {sorted(resources)})")
    return resources[key]
  return value


def make_reward(name: str, resources: Mapping[str, Any] | None = None, **kwargs) -> RewardFn:
  """The reward `name` built with kwargs ("@key" values looked up in `resources`)."""
  if name not in REWARDS:
    raise config_lib.UnknownNameError(
        f"unknown reward {name!r}; registered rewards: {sorted(REWARDS)}")
  resources = resources or {}
  kwargs = {k: _resolve(v, resources, f"reward {name!r} argument {k!r}")
            for k, v in kwargs.items()}
  try:
    return REWARDS[name](**kwargs)
  except TypeError as e:
    raise TypeError(f"reward {name!r}: {e}") from e


def build_rewards(spec: Sequence[tuple], resources: Mapping[str, Any] | None = None
                  ) -> WeightedSum:
  """A `WeightedSum` from [(name, weight, kwargs) or (name, weight, kwargs, log_name), ...].

  Terms are logged as `reward/<log_name>` (default: the reward name; repeat a reward with
  different kwargs by giving distinct log names).
  """
  terms: dict[str, tuple[float, RewardFn]] = {}
  for i, entry in enumerate(spec):
    if not isinstance(entry, tuple | list) or len(entry) not in (3, 4):
      raise ValueError(f"rewards entry {i} must be (name, weight, kwargs[, log_name]); got "
                       f"{entry!r}")
    name, weight, kwargs = entry[:3]
    log_name = entry[3] if len(entry) == 4 else name
    if log_name in terms:
      raise ValueError(f"rewards entry {i}: {log_name!r} appears twice; give it a log name")
    terms[log_name] = (float(weight), make_reward(name, resources, **dict(kwargs)))
  return weighted_sum(terms)
