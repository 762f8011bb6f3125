"""RL maths and training steps.

`losses`: masked means and loss aggregation, SFT NLL, pairwise reward-model loss, clipped policy
loss (PPO/GRPO/GSPO, dual clip), clipped value loss, KL estimators, entropy.
`advantages`: GAE, PPO per-token rewards, group-relative advantages (GRPO, Dr.GRPO, RLOO),
whitening.
`kl_control`: fixed and adaptive KL coefficients that live in the train state.
"""
