r"""High-fidelity member representation (job platform): many sources -> one compact text.

  python -m jaxprof.train --config=configs/hifi.py --workdir=runs/hifi
  python -m jaxprof.train --config=configs/hifi.py:reward=listwise --workdir=runs/hifi_listwise
  python -m jaxprof.train --config=configs/hifi.py:tiny --workdir=/tmp/hifi_tiny

Data: member_sources (profile, professional data, searches, engagement log; future engagements
held out). A frozen engagement model (MiniLM embeddings + MLP trained on logged engagements)
scores the member text against the held-out postings, pointwise or listwise with entropy
weighting (definitions in jaxprof/rewards/engagement.py). Rule rewards keep the text in format and
near 150 tokens (the paper's quadratic length penalty; without it length grew until training was
stopped). Skipped postings are left out of the prompt (data.include_skipped=False).
"""

import ml_collections

from configs import common


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  arg = common.parse_arg(arg, tiny=False, seed=0, reward="pointwise", lora=0)
  if arg.reward not in ("pointwise", "listwise"):
    raise ValueError(f"hifi reward={arg.reward!r}; expected pointwise or listwise")
  config = common.run_config("hifi", arg.seed)
  config.stages = ("grpo", "eval")
  config.data = ml_collections.ConfigDict(dict(
      name="member_sources", seed=arg.seed, data_dir="", max_history=30, include_skipped=False,
      sizes=dict(num_members=300, test_members=60, num_postings=800, events=12, future=4)))
  config.model = common.model_config("packaged", lora_rank=arg.lora)
  common.rl_sections(config, "grpo", steps=20, lr=2e-6, kl_coef=0.04, prompts_per_step=4,
                     group_size=4, max_new_tokens=160, max_prompt_len=512)
  config.eval.probe_every = 5  # the truth on a fixed probe set over RL steps (report curves)
  config.rewards = dict(
      engagement=common.reward(f"engagement_{arg.reward}", 1.0, model="@engagement_model"),
      length=common.reward("length_penalty", 0.2, target_tokens=150, scale=1.0),
      format=common.reward("format_reward", 0.1, required_sections=("Role:", "Skills:")))
  if arg.tiny:
    common.shrink_for_tests(config)
    config.data.sizes.update(dict(num_members=24, test_members=8, num_postings=60))
  return config
