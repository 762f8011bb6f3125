r"""BLUE: a profiler LLM rewarded by an embedding model: the profile should sit near the next item.

  python -m jaxprof.train --config=configs/blue.py --workdir=runs/blue
  python -m jaxprof.train --config=configs/blue.py:tiny --workdir=/tmp/blue_tiny

Reward (jaxprof's definition; BLUE does not fix one formula): InfoNCE log-probability of the next
item among 31 sampled negatives (history excluded) at temperature 0.05 with the frozen MiniLM,
plus BLUE's text-space next-item supervision as a cosine term between the profile and the next
item's text. The eval stage reports held-out NDCG@10 / Recall@10 on the test item.
"""

import ml_collections

from configs import common


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  arg = common.parse_arg(arg, tiny=False, seed=0, lora=0)
  config = common.run_config("blue", arg.seed)
  config.stages = ("grpo", "eval")
  config.data = common.movielens_data(arg.seed)
  config.model = common.model_config("packaged", lora_rank=arg.lora)
  common.profile_rl(config)
  config.rewards = dict(
      contrastive=common.reward("embedding_contrastive", 1.0, encoder="@encoder",
                                item_texts="@item_texts", temperature=0.05, num_negatives=31,
                                seed=arg.seed),
      next_item=common.reward("next_item_supervision", 0.5, encoder="@encoder",
                              item_texts="@item_texts"))
  if arg.tiny:
    common.shrink_for_tests(config)
  return config
