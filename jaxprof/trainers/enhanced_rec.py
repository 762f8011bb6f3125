"""GIRL's generation-enhanced recommendation (Tables III and IV): does the generated JD help?

For the job_market rec splits: embed CVs and posting JDs with the frozen MiniLM; train the
two-tower matcher (MLP and dot) on [c; j]; then, for each policy, generate `samples` JDs per CV,
mean-pool their embeddings (Fig. 5) and train the enhanced matcher on [c; j; j']. AUC and LogLoss
on the test split (all seekers) and on the cold-start split (seekers never seen in training).
"""

from __future__ import annotations

import jax
import numpy as np
from absl import logging

from jaxprof.models.encoder import TextEncoder
from jaxprof.recsys import metrics, two_tower
from jaxprof.trainers import policy, rollout

SPLITS = ("rec_train", "rec_val", "rec_test", "cold_start_test")


def generate_jds(config, task, model, rows, samples: int) -> list[list[str]]:
  """`samples` generated JDs per row (sampled at temperature 1 when samples > 1).

  model: (cfg, params, tokenizer) from `policy.load`.
  """
  cfg, params, tok = model
  spec = policy.PolicySpec(cfg=cfg)
  rl = config.rl.copy_and_resolve_references()
  rl.group_size, rl.temperature = samples, (1.0 if samples > 1 else 0.0)
  bs = config.eval.batch_size
  out = []
  for start in range(0, len(rows), bs):
    chunk = rows[start:start + bs]
    prompts = [policy.format_prompt(tok, task.prompt(r)) for r in chunk]
    prompts += [prompts[-1]] * (bs - len(prompts))
    ids, mask = policy.encode_prompts(tok, prompts, config.rl.max_prompt_len)
    ro = rollout.generate(spec, params, {}, ids, mask, jax.random.key(config.seed + start), rl,
                          tok.eos_ids, tok.pad_id)
    texts = tok.decode_batch(ro.comp_ids, ro.comp_mask)
    out += [texts[i * samples:(i + 1) * samples] for i in range(len(chunk))]
  return out


def _scores(params, data: two_tower.MatchData) -> dict[str, float]:
  if len(np.unique(data.labels)) < 2:  # a tiny split with one class: AUC is undefined
    return {"auc": float("nan"), "logloss": float("nan")}
  probs = two_tower.predict(params, data.c, data.j, data.j_gen)
  return {"auc": metrics.auc(data.labels, probs), "logloss": metrics.log_loss(data.labels, probs)}


def run(config, task, policy_dirs: dict[str, str]) -> dict[str, dict[str, float]]:
  """{"plain/mlp": {"rec_test/auc": ..}, "rl/dot": {...}, ...} for each predictor and policy."""
  n = config.eval.enhanced_rec_rows
  from jaxprof.tasks import _rows  # the task's TFDS rows

  rows = {s: _rows(config, s, n) for s in SPLITS}
  encoder = TextEncoder.packaged_minilm()
  base = {s: two_tower.MatchData(encoder.embed([r["cv"] for r in rs]),
                                 encoder.embed([r["jd"] for r in rs]),
                                 np.asarray([r["label"] for r in rs], np.float32))
          for s, rs in rows.items()}
  results = {}
  for predictor in ("mlp", "dot"):
    mc = two_tower.MatcherConfig(predictor=predictor, seed=config.seed)
    params, _ = two_tower.train_matcher(base["rec_train"], base["rec_val"], mc)
    results[f"plain/{predictor}"] = {f"{s}/{k}": v for s in ("rec_test", "cold_start_test")
                                     for k, v in _scores(params, base[s]).items()}
  for name, model_dir in policy_dirs.items():
    logging.info("enhanced rec: generating JDs with the %s policy", name)
    data, model = {}, policy.load(config.model, model_dir, config.seed)
    for s, rs in rows.items():
      jds = generate_jds(config, task, model, rs, config.eval.enhanced_rec_samples)
      emb = encoder.embed([t for group in jds for t in group]).reshape(
          len(rs), config.eval.enhanced_rec_samples, -1)
      data[s] = base[s]._replace(j_gen=emb)
    for predictor in ("mlp", "dot"):
      mc = two_tower.MatcherConfig(predictor=predictor, seed=config.seed)
      params, _ = two_tower.train_matcher(data["rec_train"], data["rec_val"], mc)
      results[f"{name}/{predictor}"] = {f"{s}/{k}": v for s in ("rec_test", "cold_start_test")
                                        for k, v in _scores(params, data[s]).items()}
  return results
