r"""GIRL: generative job recommendation (CV -> job description), SFT -> reward model -> PPO.

  python -m jaxprof.train --config=configs/girl.py --workdir=runs/girl
  python -m jaxprof.train --config=configs/girl.py:algo=grpo --workdir=runs/girl_grpo
  python -m jaxprof.train --config=configs/girl.py:paper --workdir=runs/girl_paper   # Eq. 3-8
  python -m jaxprof.train --config=configs/girl.py:length=0 --workdir=runs/girl_nolen  # ablation
  python -m jaxprof.train --config=configs/girl.py:tiny --workdir=/tmp/girl_tiny   # seconds

Data: the job_market data set (real O*NET/ESCO text, hidden recruiter oracle). The reward model
reads frozen MiniLM embeddings of the CV prompt and the JD (`reward_model.backbone="embedding"`,
trained on 900 oracle-labelled reference pairs plus pairs of the SFT policy's own JDs ordered by
the oracle, `reward_model.sampled`); a 6-layer SFT-policy backbone with a scalar head
(`--config.reward_model.backbone=policy:6`, from which GIRL would also start the critic) stayed
at chance at this machine's budget. PPO's critic is the first 6 layers of the SFT policy with a
fresh value head that starts at 0. The eval stage compares the base, SFT and PPO policies by
reward-model score and by the oracle's true match probability, so reward hacking shows up as a
reward gain without an oracle gain. Defaults are sized for a CPU run of the packaged
SmolLM2-135M; scale steps and batch sizes up on accelerators.
"""

import ml_collections

from configs import common


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  arg = common.parse_arg(arg, algo="ppo", tiny=False, seed=0, lora=0, paper=False, length=0.1)
  config = common.run_config("girl", arg.seed)
  config.stages = ("sft", "reward_model", arg.algo, "eval")

  config.data = ml_collections.ConfigDict(dict(
      name="job_market", seed=arg.seed, data_dir="", max_history=30, include_skipped=False,
      # Seekers: 128 RL, then 61 each for SFT, the reward model and the recommender's warm-start
      # splits, and 55 cold-start ones. rec_test and cold_start_test hold about 110 distinct CVs:
      # the held-out set, each CV generated for once per policy (the eval's main cost).
      sizes=dict(num_seekers=311, num_cold_seekers=55, num_postings=600, sft=320,
                 reward_model=1000, rl=128, rec_train=400, rec_val=100, rec_test=200,
                 cold_start_test=200, candidates=16)))

  config.model = common.model_config("packaged", lora_rank=arg.lora)
  # Sized for a CPU run of the packaged SmolLM2-135M (about 1.6 TFLOP per SFT step at these
  # lengths); on accelerators raise steps, batch sizes and lengths from the command line.
  config.sft = common.sft_config(steps=16, batch_size=4, lr=5e-5, max_prompt_len=224,
                                 max_target_len=128)
  config.reward_model = common.reward_model_config(steps=300, batch_size=32, lr=1e-2,
                                                   backbone="embedding")
  # Also pairs of the SFT policy's own JDs for each reward-model CV (4 each, ordered by the
  # recruiter oracle as the annotator): what PPO asks the reward model to rank.
  config.reward_model.sampled.prompts = 1000
  config.reward_model.max_prompt_len = 224
  config.reward_model.max_response_len = 128
  # PPO: 8 CVs x 2 JDs per step, one pass over each rollout (16 samples for what 8 samples x 2
  # epochs cost), 12 steps: the CPU budget. lr 2e-5: at 1e-5 (results/girl at 859ac51) the
  # training reward was still rising at step 10 with KL 0.007 and no ratio clipped.
  common.rl_sections(config, arg.algo, steps=12, lr=2e-5,
                     kl_coef=0.05 if arg.algo == "ppo" else 0.04,
                     prompts_per_step=8 if arg.algo == "ppo" else 4,
                     group_size=2 if arg.algo == "ppo" else 4, max_new_tokens=96,
                     max_prompt_len=224)
  config.rl.epochs = 1
  # Held out: every distinct CV of rec_test and cold_start_test (about 110), 4 sampled JDs each
  # per policy, shared by both evaluators: Table II's comparison (held_out, the oracle as judge)
  # and Tables III/IV + Fig. 5 (enhanced_rec: all rows of every rec split, N = 1, 2, 4 JDs).
  config.eval.num_examples = 200
  # Rows per generate call: 16 CVs x 4 JDs. 2.33 s per CV's 4 JDs here, against 2.76 at 32 rows
  # and 2.45 at 128 (SFT policy, 96-token cap, one run each).
  config.eval.batch_size = 64
  # JDs for evaluation are drawn at 0.7; rollouts stay at 1, for exploration. At 1 the 135M SFT
  # policy's JDs wander off the CV: the oracle's match on 32 held-out CVs x 2 JDs was 0.145 at 1
  # and 0.314 at 0.7, measured before this default was chosen (results/girl/README.md).
  config.eval.temperature = 0.7
  config.eval.include_base = True  # Table II: GIRL vs GIRL-SFT and vs the base model
  config.eval.probe_every = 3  # the oracle's match on 16 held-out CVs over RL steps (curves)
  config.eval.evaluators.held_out.samples = 4
  config.eval.evaluators.enhanced_rec = dict(rows=400, samples=(1, 2, 4),
                                             policies=("start", "rl"))
  if arg.algo == "ppo":
    config.ppo.critic_init = "policy:6"  # the embedding reward model scores whole texts only
  if arg.paper:
    paper_ppo(config)
  # The trained reward model, plus a mild length term so JDs stay JD-sized: its target (80
  # tokens, near the data's median JD of 89) lies inside the 96-token cap, so it never rewards
  # running into the cap. `:length=0` is the ablation without it.
  config.rewards = dict(
      reward_model=common.reward("trained_reward_model", 1.0, model="@reward_model"))
  if arg.length:
    config.rewards.length = common.reward("length_penalty", arg.length, target_tokens=80,
                                          scale=1.0)
  if arg.tiny:
    common.shrink_for_tests(config)
    config.eval.evaluators.enhanced_rec.rows = 16
    config.eval.probe_every = 2
    config.reward_model.sampled.prompts = 4
    config.data.sizes.update(dict(num_seekers=40, num_cold_seekers=10, num_postings=60, sft=16,
                                  reward_model=16, rl=8, rec_train=16, rec_val=16, rec_test=16,
                                  cold_start_test=16, candidates=4))
    if arg.algo == "ppo":  # tiny's reward model is causal (policy:1): the critic starts from it
      config.ppo.critic_init = "reward_model"
  return config


def paper_ppo(config: ml_collections.ConfigDict) -> None:
  """`:paper`: PPO as GIRL's Section IV-C writes it, instead of the modern default (per-token k1
  KL in the reward, GAE, whitening, clip 0.2/0.28, clipped value loss):
  - Eq. 3: KL per sequence, the length average of rho - 1 - log rho with rho = pi / pi_SFT
    (`rl.kl_estimator="k3_inv"`);
  - Eq. 4-5: r = U - lambda * KL, advantage a = r - V(CV), one scalar per sequence
    (`ppo.advantage="sequence"`), not whitened;
  - Eq. 6-7: the clipped ratio loss averaged over each JD's tokens, one epsilon;
  - Eq. 8: the critic's plain MSE (r - V(CV))^2.
  """
  if config.rl.algo != "ppo":
    raise ValueError("configs/girl.py:paper is GIRL's PPO; it cannot combine with algo=grpo")
  config.rl.kl_estimator = "k3_inv"
  config.rl.agg_mode = "seq_mean_token_mean"
  config.rl.eps_high = config.rl.eps_low
  config.ppo.advantage = "sequence"
  config.ppo.whiten_advantages = False
  config.ppo.value_clip = 0.0
