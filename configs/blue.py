r"""BLUE: a profiler LLM rewarded by an embedding model: the profile should sit near the next item.

  python -m jaxprof.train --config=configs/blue.py --workdir=runs/blue
  python -m jaxprof.train --config=configs/blue.py:negatives=uniform,newest=0 --workdir=runs/blue_u
  python -m jaxprof.train --config=configs/blue.py:tiny --workdir=/tmp/blue_tiny

Reward (jaxprof's definition; BLUE does not fix one formula): the InfoNCE log-probability of the
next item among 32 candidates, cos(profile, item) / 1.0 with the frozen MiniLM
(`embedding_contrastive`). The 31 negatives are drawn without replacement from the catalogue
minus the next item and minus every item of the user's history, in proportion to how often each
item is a training user's held-out item (what in-batch negatives do; `:negatives=uniform` for a
uniform draw), with a generator seeded by (seed, prompt, next item): the G profiles of one prompt
face the same negatives, and a prompt faces the same ones at every step. The reward is in
[-inf, 0]; an uninformative profile earns log(1/32) = -3.47. Why held-out negatives: the default
run with uniform ones (results/blue at 7f52025) turned its profiles into catalogue-style lines of
genres and years, and such a line pays under uniform negatives whoever the user is. On the
validation item of 512 training users (`python -m bench.reward_signal --config=configs/blue.py
--separation --users=512`, `--text=...` for a fixed text): one such line given to every user
(LangPTune's 4db364b RL line "- Alien 3 (1997) - Horror, Sci-Fi, ...") vs a generic profile
+0.254 sd of the paired difference with uniform negatives and -0.057 with held-out ones; the
user's last title vs the generic profile +0.420 and +0.435. The
prompt lists the movies most recent first (`:newest=0` for oldest first), as LangPTune's does.

Why temperature 1.0, not the 0.05 usual for training embedders: on the validation item of 512
training users, a profile naming the user's last movie and a generic profile earned the same
reward at 0.05 (mean paired difference / sd -0.002; it was right for 48% of users), +0.33 at
0.2 and +0.42 at 1.0 (127 negatives: -0.08, +0.32, +0.42). At 0.05 the log-softmax is set by
the few nearest random negatives, so the reward could not tell a better profile from a worse
one: the 20-step run at 85244e2 (results/blue at that commit) moved its policy (KL 0.044) and
not its held-out reward. `python -m bench.reward_signal --config=configs/blue.py --separation
--users=512` prints the 1.0 row; the other temperatures change `temperature=` below. At 1.0 the
default run (results/blue at 7f52025) gave NDCG@10 RL - zero-shot +0.002 under the reward's
encoder and +0.004 under paraphrase-MiniLM-L3, both intervals including 0, with profiles turned
into catalogue-style lines of genres and years.

Text-space next-item supervision (BLUE): a token NLL in the GRPO loss, not a reward. After each
sampled profile comes a new line and "Next item: <title (year) - genres>" (`next_item_target` of
the user's held-out training item, ~18 tokens; systems/blue.py); the policy's mean token NLL of
that line given the chat prompt and the profile is added as `loss += rl.aux_nll.coef * nll`
(logged as rl/aux_nll), computed in the update's own forward pass (each completion row extended
by its target, `rl.aux_nll.after="completion"`). The term teaches the policy to read the next
item off its own profiles.

Why after the profile: in the 20-step run at 9c24abd (results/blue) the target followed the
prompt directly (`after="prompt"`), and the term took over: 11 of 12 RL samples answered the
profile prompt with a "Next item: ..." line instead of a profile. After the profile, the target
never stands where the profile should. coef=0.1 was measured with the target after the prompt on
this config's first step (the same rollout with and without the term): the start policy's NLL
is 2.8 nats per token and the term moved the gradient norm from 2.72 to 3.04, a clear share of
the (norm-clipped) update that leaves the reward's gradient the larger part. The cosine
`next_item_supervision` reward that stood for it before is dropped from the default: the
profile-to-next-item cosine is nearly collinear with the contrastive reward's positive term.

The eval stage reports held-out NDCG@10 / Recall@10 on the test item.
"""

import ml_collections

from configs import common

# How the contrastive reward's negatives are drawn (module docstring).
NEGATIVES = {"held_out": dict(negative_weights="@target_counts"), "uniform": {}}


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  arg = common.parse_arg(arg, tiny=False, seed=0, lora=0, negatives="held_out",
                         newest=True)
  if arg.negatives not in NEGATIVES:
    raise ValueError(f"blue negatives={arg.negatives!r}; expected one of {NEGATIVES}")
  config = common.run_config("blue", arg.seed)
  config.stages = ("grpo", "eval")
  config.data = common.movielens_data(arg.seed)
  config.data.newest_first = bool(arg.newest)  # most recent movie first (configs/langptune.py)
  config.model = common.model_config("packaged", lora_rank=arg.lora)
  common.profile_rl(config)
  config.rl.aux_nll.update(coef=0.1, column="next_item_text", after="completion")
  config.rewards = dict(
      contrastive=common.reward("embedding_contrastive", 1.0, encoder="@encoder",
                                item_texts="@item_texts", temperature=1.0, num_negatives=31,
                                seed=arg.seed,
                                **NEGATIVES[arg.negatives]))
  if arg.tiny:
    common.shrink_for_tests(config)
    config.eval.evaluators.recommenders.sasrec_epochs = 1
  return config
