r"""High-fidelity member representations (job platform), jaxprof/systems/hifi.py.

  python -m jaxprof.train --config=configs/hifi.py --workdir=runs/hifi
  python -m jaxprof.train --config=configs/hifi.py:reward=listwise --workdir=runs/hifi_listwise
  python -m jaxprof.train --config=configs/hifi.py:length=none --workdir=runs/hifi_no_length
  python -m jaxprof.train --config=configs/hifi.py:tiny --workdir=/tmp/hifi_tiny

Data: member_sources (profile, professional data, searches, 8 past and 8 held-out engagements per
member; 384 training and 128 held-out members). Skipped postings are left out of the prompt
(data.include_skipped=False).

Stages: reward_model fits the frozen engagement model (MiniLM embeddings + MLP) on the logged
actions of the training members, for their raw sources and for one start-policy summary of each
of the first 64 (the text it will score in RL); its accuracy on other members is in
reward_model/DONE.json. grpo: the engagement reward of each summary against the member's
held-out postings, pointwise or listwise (jaxprof/rewards/engagement.py), plus the rule rewards
of `length=`:
  penalty (default)  format + the paper's quadratic length penalty around 150 tokens
  format             the format reward alone (sections Role:, Skills:, Looking for:)
  none               no rule reward: engagement only
The sampling cap (320 tokens) is over twice the target, so length is free to drift either way.
Entropy weighting (`entropy=True`): a member's weight, 0.1 + 0.9 x the normalised entropy of its
held-out actions, scales its group's advantages (grpo.prompt_weight); inside the reward, GRPO's
group normalisation would cancel it. eval: `member_engagement` (the headline comparison against
hidden truth) and `held_out` (rewards, truth and length per policy).
"""

import ml_collections

from configs import common

LENGTHS = ("penalty", "format", "none")


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  arg = common.parse_arg(arg, tiny=False, seed=0, reward="pointwise", length="penalty",
                         entropy=True, lora=0)
  if arg.reward not in ("pointwise", "listwise"):
    raise ValueError(f"hifi reward={arg.reward!r}; expected pointwise or listwise")
  if arg.length not in LENGTHS:
    raise ValueError(f"hifi length={arg.length!r}; expected one of {LENGTHS}")
  config = common.run_config("hifi", arg.seed)
  config.stages = ("reward_model", "grpo", "eval")
  config.data = ml_collections.ConfigDict(dict(
      name="member_sources", seed=arg.seed, data_dir="", max_history=30, include_skipped=False,
      sizes=dict(num_members=512, test_members=128, num_postings=800, events=16, future=8)))
  config.model = common.model_config("packaged", lora_rank=arg.lora)
  config.reward_model = common.reward_model_config(batch_size=256, lr=1e-3,
                                                   backbone="engagement")
  config.reward_model.sampled.prompts = 64  # start-policy summaries among its training text
  config.reward_model.sampled.samples = 1
  common.rl_sections(config, "grpo", steps=20, lr=1e-5, kl_coef=0.04, prompts_per_step=4,
                     group_size=4, max_new_tokens=320, max_prompt_len=512)
  config.grpo.prompt_weight = "entropy_weight" if arg.entropy else ""
  config.eval.probe_every = 5  # the truth on a fixed probe set over RL steps (report curves)
  config.eval.num_examples = 128  # every held-out member
  config.eval.batch_size = 64
  config.eval.evaluators.member_engagement = dict(folds=2)
  engagement = dict(model="@engagement_model")
  if arg.reward == "listwise":
    engagement["entropy_weighting"] = False  # weighted on the advantages instead (see above)
  config.rewards = dict(engagement=common.reward(f"engagement_{arg.reward}", 1.0, **engagement))
  if arg.length in ("penalty", "format"):
    config.rewards.format = common.reward(
        "format_reward", 0.1, required_sections=("Role:", "Skills:", "Looking for:"))
  if arg.length == "penalty":
    config.rewards.length = common.reward("length_penalty", 0.2, target_tokens=150, scale=1.0)
  if arg.tiny:
    common.shrink_for_tests(config)
    config.reward_model.backbone = "engagement"
    config.reward_model.sampled.prompts = 4
    config.data.sizes.update(dict(num_members=24, test_members=8, num_postings=60))
    config.eval.evaluators.member_engagement = dict(folds=2)
  return config
