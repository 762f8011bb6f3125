"""Rewards: one signature, `reward(batch: RewardBatch) -> list[float | None]`, and composites.

`base`: RewardBatch, invalid-text rule, WeightedSum. `text`: length and format rules.
`embedding`: contrastive, retrieval ranking, next-item supervision (a frozen text encoder).
`engagement`: an engagement model and its pointwise / listwise rewards. `registry`: rewards by
name for configs. (A trained reward model's score: `trainers.reward_model.as_reward`.)
"""

from jaxprof.rewards.base import (
    ColumnError,
    RewardBatch,
    RewardFn,
    Rewards,
    WeightedSum,
    clean_text,
    summarize,
    weighted_sum,
)
from jaxprof.rewards.embedding import (
    contrastive_loss,
    embedding_contrastive,
    next_item_supervision,
    next_item_target,
    retrieval_ranking,
)
from jaxprof.rewards.engagement import (
    EngagementConfig,
    EngagementModel,
    engagement_listwise,
    engagement_pointwise,
    train_engagement_head,
)
from jaxprof.rewards.registry import REWARDS, build_rewards, make_reward, register
from jaxprof.rewards.text import format_reward, length_penalty

__all__ = [
    "REWARDS", "ColumnError", "EngagementConfig", "EngagementModel", "RewardBatch", "RewardFn",
    "Rewards", "WeightedSum", "build_rewards", "clean_text", "contrastive_loss",
    "embedding_contrastive", "engagement_listwise", "engagement_pointwise", "format_reward",
    "length_penalty", "make_reward", "next_item_supervision", "next_item_target", "register",
    "retrieval_ranking", "summarize", "train_engagement_head",
    "weighted_sum",
]
