r"""BLUE: a profiler LLM rewarded by an embedding model: the profile should sit near the next item.

  python -m jaxprof.train --config=configs/blue.py --workdir=runs/blue
  python -m jaxprof.train --config=configs/blue.py:tiny --workdir=/tmp/blue_tiny

Reward (jaxprof's definition; BLUE does not fix one formula): the InfoNCE log-probability of the
next item among 32 candidates, cos(profile, item) / 0.05 with the frozen MiniLM
(`embedding_contrastive`). The 31 negatives are drawn uniformly without replacement from the
catalogue minus the next item and minus every item of the user's history, with a generator seeded
by (seed, prompt, next item): the G profiles of one prompt face the same negatives, and a prompt
faces the same ones at every step. The reward is in [-inf, 0]; an uninformative profile earns
log(1/32) = -3.47.

Text-space next-item supervision (BLUE): a token NLL in the GRPO loss, not a reward. The policy's
mean token NLL of "Next item: <title (year) - genres>" (`next_item_target` of the user's held-out
training item, ~18 tokens; systems/blue.py) given the same chat prompt it writes the profile for
is added as `loss += rl.aux_nll.coef * nll` (logged as rl/aux_nll), computed in the update's own
forward pass (one extra continuation per prompt group: 6-10% more update time, one measurement).
coef=0.1, measured on this config's first step (the same rollout with and without the term): the
start policy's NLL is 2.8 nats per token, and the term moved the gradient norm from 2.72 to 3.04
(0.1 x the NLL's gradient has norm ~1.4 if orthogonal to the reward's): a clear share of the
(norm-clipped) update that leaves the reward's gradient the larger part; the NLL fell to 2.35 in
3 steps. A weight near 1 would make the update mostly SFT on one-line item texts right after the
prompt, pulling the policy towards answering with an item line instead of a profile. The cosine
`next_item_supervision` reward that stood for it before is dropped from the default: the
profile-to-next-item cosine is nearly collinear with the contrastive reward's positive term.

In the default's 20-step run (results/blue) the term took over anyway: the RL policy answered
with "Next item: ..." lines instead of profiles. Conditioning the target on the generated profile,
or a smaller coef, is the next thing to try.

The eval stage reports held-out NDCG@10 / Recall@10 on the test item.
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
  config.rl.aux_nll.update(coef=0.1, column="next_item_text")
  config.rewards = dict(
      contrastive=common.reward("embedding_contrastive", 1.0, encoder="@encoder",
                                item_texts="@item_texts", temperature=0.05, num_negatives=31,
                                seed=arg.seed))
  if arg.tiny:
    common.shrink_for_tests(config)
    config.eval.evaluators.recommenders.sasrec_epochs = 1
  return config
