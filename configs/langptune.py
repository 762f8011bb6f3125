r"""LangPTune (RLSO): a language profile of a user, rewarded by how well it ranks their next item.

  python -m jaxprof.train --config=configs/langptune.py --workdir=runs/langptune
  python -m jaxprof.train --config=configs/langptune.py:metric=ndcg --workdir=runs/lpt_ndcg
  python -m jaxprof.train --config=configs/langptune.py:relative=0 --workdir=runs/lpt_absolute
  python -m jaxprof.train --config=configs/langptune.py:recommender=trained --workdir=runs/lpt_rec
  python -m jaxprof.train --config=configs/langptune.py:tiny --workdir=/tmp/lpt_tiny

Data: movielens100k, leave-last-out. The policy reads a user's history and writes a profile; the
recommender embeds it with MiniLM and ranks the full catalogue by cosine with the user's history
masked; the reward is the log-rank score of the held-out validation item, 1 - ln(rank) / ln(1682),
minus the same score averaged over an average user's held-out item (`:relative=0` drops that term;
`:metric=ndcg` for the paper's NDCG@10, which stays an evaluation metric; `:metric=mrr`).
Why not NDCG@10: the packaged start policy's 4 profiles for each of 32 users all got NDCG@10 = 0
(32 of 32 groups without spread, so no GRPO advantage at all; NDCG@100: 21 of 32), while MRR and
the log-rank spread every group (`python -m bench.reward_signal`). Why log-rank over MRR: on the
validation item of 512 users, a profile naming the user's last movie beats a generic one by 0.33
standard deviations of the paired difference under log-rank and by 0.17 under MRR (NDCG@10
0.17, NDCG@100 0.25; `python -m bench.reward_signal --separation --users=512`): each GRPO
comparison carries about twice the signal, because MRR hardly moves below the top 50.
lr 2e-5 (profile_rl's 1e-5 left LangPTune's policy a few words from the start in 20 steps,
per-token KL 0.017; results/langptune at 72e470c). 40 steps, not profile_rl's 20: at adb7b2a the
20 steps' RL profiles had begun to name the user's real recent titles (Recall@10 +6.7% over
zero-shot, the training reward still noisy at 4 users a step), and 7acfdee made each step 1.13x
cheaper (bench/bench_long_prompts.py); 40 steps show the policy 160 training users, not 80.
The 40-step run at 466b087: 400 of 512 RL profiles open with the user's latest title, the
held-out reward rose 0.053 -> 0.078, and the truth did not move (Recall@10 -13.3% [-54%, +56%],
+7.7% under the second encoder). The same default again at e882555 (results/langptune), whose
sampler only sums in another order: +26.7% [-25%, +125%] and -38.5% [-75%, +25%]; one seed's
gain swings more than the effect. Seeds 0-2 pooled (`python -m jaxprof.seeds`,
results/langptune/seeds): +20.0% [-21.7%, +106%] under MiniLM, -7.7% under paraphrase-L3.
What the 4db364b default showed (results/langptune in git history): the held-out reward rose (0.188
-> 0.203) and the truth did not, as the profiles turned into catalogue-style "Title (year) - genres"
lines with mostly invented titles, a form that sits near every item in MiniLM's space. Hence the
relative reward: it subtracts
the log-rank the profile gives every item, weighted by how often each is a training user's
held-out item, so one text for everyone earns 0 on average and only what singles out this user's
item pays (the paper's "too generic to tell Star Wars from Interstellar"). Measured with
`bench.reward_signal --separation --users=512 [--text=...]` on training users' validation items:
last title vs generic profile 0.37 sd (absolute log-rank 0.33); two of that run's RL profiles,
given to every user, vs the generic one: +0.015 and -0.037 (absolute log-rank +0.052 and +0.208,
which paid for the form). The run with it at f73445c (results/langptune/ablation_relative)
copied the head of the prompt instead: the user's age and sex, repeated ("24-year-old male,
22-year-old male, ..."), and its truth fell (MRR -0.006 [-0.013, -0.001]). Hence the prompt lists
the movies most recent first, the user's description after them (`:newest=0` for the old
order): what a policy copies from the head of its prompt is then the user's latest movie, the
text that scores 2.8x the zero-shot profile's Recall@10 (results/langptune/README.md). The default
run at adb7b2a (results/langptune): the reordered prompt lifted the zero-shot profile's Recall@10
from 0.016 to 0.029, and RL added +6.7% [-41%, +89%] (+38.5% [-20%, +178%] under the second
encoder), its profiles naming the user's real recent titles; not significant. The eval
stage ranks the held-out *test* item (history + validation item masked) with profiles from the
policy before and after RL. The public LangPTune code uses a sequence-level KL; here the KL is
per token inside the GRPO loss (k3), which has the same fixed point.
"""

import ml_collections

from configs import common


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  arg = common.parse_arg(arg, tiny=False, seed=0, metric="", lora=0, relative=True,
                         newest=True, recommender="frozen")
  if arg.recommender not in ("frozen", "trained"):
    raise ValueError(f"langptune recommender={arg.recommender!r}; expected frozen or trained")
  # NDCG@10 of one item among 1,682 is 0 for almost every profile, so GRPO's updates would all be
  # zero; the log-rank gives every group a spread and twice MRR's signal (module docstring).
  metric = arg.metric or "log_rank"
  config = common.run_config("langptune", arg.seed)
  config.stages = ("grpo", "eval")
  config.data = common.movielens_data(arg.seed)
  config.data.newest_first = bool(arg.newest)  # the prompt lists the most recent movie first
  config.model = common.model_config("packaged", lora_rank=arg.lora)
  common.profile_rl(config, steps=40)  # twice BLUE's 20 (module docstring)
  config.rl.optim.lr = 2e-5
  config.eval.probe_every = 10  # four probes over the 40 steps, as the 20 steps had
  config.rewards = dict(
      ranking=common.reward("retrieval_ranking", 1.0, encoder="@encoder",
                            item_texts="@item_texts", metric=metric, k=10,
                            **(dict(reference="@target_counts") if arg.relative else {}),
                            **(dict(recommender="@text_recommender")
                               if arg.recommender == "trained" else {})))
  # The paper's trainable-recommender variant: the same profiles also ranked by a recommender
  # trained on the training split's next-item pairs (recsys/text_recommender.py) in evaluation,
  # and with `:recommender=trained` in the reward as well.
  config.eval.evaluators.recommenders.trained_epochs = 10
  if arg.tiny:
    common.shrink_for_tests(config)
    config.eval.evaluators.recommenders.sasrec_epochs = 1
    config.eval.evaluators.recommenders.trained_epochs = 1
  return config
