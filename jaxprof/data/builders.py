"""TFDS builders (array_record) for movielens100k, job_market and member_sources.

Each builder is built deterministically from `seed` and its sizes, passed as constructor kwargs;
they pick a BuilderConfig named after them (`s{seed}_{hash of sizes}`), so builds with different
settings live side by side under `data_dir` (default `assets.cache_dir() / "tfds"`).
Examples are keyed by row index, and TFDS orders records by key hash, which is deterministic.
"""

from __future__ import annotations

import dataclasses
import fcntl
import hashlib
import json
import pathlib

import numpy as np
import tensorflow_datasets as tfds

from jaxprof import assets
from jaxprof import config as config_lib
from jaxprof.data import job_market, member_sources, movielens

_TEXT = tfds.features.Text()


def default_data_dir() -> pathlib.Path:
  return assets.cache_dir() / "tfds"


def _config(seed: int, sizes: dict) -> tfds.core.BuilderConfig:
  digest = hashlib.sha1(json.dumps(sizes, sort_keys=True).encode()).hexdigest()[:8]
  return tfds.core.BuilderConfig(name=f"s{seed}_{digest}", description=json.dumps(
      {"seed": seed, **sizes}, sort_keys=True))


class _Builder(tfds.core.GeneratorBasedBuilder):
  """Common constructor: seed + sizes -> config; array_record files."""

  VERSION = tfds.core.Version("1.0.0")
  SIZES_CLS = None

  def __init__(self, *, seed: int = 0, data_dir: str | pathlib.Path | None = None, **sizes):
    self.seed = seed
    self.sizes = self.SIZES_CLS(**sizes) if self.SIZES_CLS else None
    if sizes and self.SIZES_CLS is None:
      raise TypeError(f"{type(self).__name__} takes no sizes, got {sorted(sizes)}")
    as_dict = dataclasses.asdict(self.sizes) if self.sizes else {}
    super().__init__(config=_config(seed, as_dict), file_format="array_record",
                     data_dir=str(data_dir or default_data_dir()))

  def _features(self) -> dict:
    raise NotImplementedError

  def _info(self) -> tfds.core.DatasetInfo:
    # DatasetInfo directly: dataset_info_from_configs would scan this package's folder for metadata.
    return tfds.core.DatasetInfo(builder=self, description=type(self).__doc__,
                                 features=tfds.features.FeaturesDict(self._features()))

  def _rows(self, split: str):
    raise NotImplementedError

  def _split_generators(self, dl_manager):
    del dl_manager
    return {split: self._generate_examples(split) for split in self.SPLITS}

  def _generate_examples(self, split: str):
    yield from enumerate(self._rows(split))


_SEEKER = {"seeker_id": np.int64, "cv": _TEXT, "occupation": np.int32,
           "history": tfds.features.Sequence(np.int32),
           "skills": tfds.features.Sequence(np.int32), "seniority": np.int32,
           "location": np.int32}


class Movielens100k(_Builder):
  """MovieLens-100k, leave-last-out by time: one record per user, splits train / validation / test.

  `history_*` is what a model may read: the train history for train and validation records, the
  train history + validation item for test records; `target` is the held-out item.
  """

  SPLITS = ("train", "validation", "test")

  def _features(self):
    return {"user_index": np.int32, "user_text": _TEXT,
            "history_items": tfds.features.Sequence(np.int32),
            "history_ratings": tfds.features.Sequence(np.float32),
            "history_timestamps": tfds.features.Sequence(np.int64),
            "history_text": tfds.features.Sequence(_TEXT),
            "target": np.int32, "target_timestamp": np.int64, "target_text": _TEXT}

  def _rows(self, split):
    ml = movielens.read_ml100k()
    s = movielens.leave_last_out(ml)
    for row, u in enumerate(s.users):
      items, ratings, times = ml.histories[u]
      keep = len(s.train_items[row]) + (1 if split == "test" else 0)
      target = {"train": s.val_item, "validation": s.val_item, "test": s.test_item}[split][row]
      target_time = (s.test_timestamp if split == "test" else s.val_timestamp)[row]
      yield {"user_index": u, "user_text": ml.user_text[u], "history_items": items[:keep],
             "history_ratings": ratings[:keep], "history_timestamps": times[:keep],
             "history_text": [ml.item_text[i] for i in items[:keep]], "target": target,
             "target_timestamp": target_time, "target_text": ml.item_text[target]}


class JobMarket(_Builder):
  """Synthetic job market (see `jaxprof.data.job_market` and the oracle in `jaxprof.data.oracle`).

  One feature set for all splits; fields a split does not use are -1 / "" / nan.
  """

  SPLITS = job_market.SPLITS
  SIZES_CLS = job_market.Sizes
  VERSION = tfds.core.Version("1.1.0")
  RELEASE_NOTES = {"1.1.0": "Disjoint seeker pools per stage (job_market.seeker_pools).",
                   "1.0.0": "First release."}

  def _features(self):
    return {**_SEEKER, "posting_id": np.int64, "jd": _TEXT, "label": np.int32,
            "prob": np.float32, "rejected_posting_id": np.int64, "rejected_jd": _TEXT,
            "rejected_prob": np.float32}

  def _rows(self, split):
    return job_market.split_rows(job_market.build_market(self.seed, self.sizes), split)


class MemberSources(_Builder):
  """Members with profile, professional data, queries and engagements (see `member_sources`)."""

  SPLITS = member_sources.SPLITS
  SIZES_CLS = member_sources.MemberSizes

  def _features(self):
    seq = tfds.features.Sequence
    return {**_SEEKER, "member_id": np.int64, "profile": _TEXT, "professional": _TEXT,
            "queries": seq(_TEXT), "past_posting_ids": seq(np.int64),
            "past_actions": seq(np.int32), "past_times": seq(np.int64),
            "past_titles": seq(_TEXT), "future_posting_ids": seq(np.int64),
            "future_actions": seq(np.int32), "future_times": seq(np.int64),
            "future_jds": seq(_TEXT), "future_probs": seq(np.float32)}

  def _rows(self, split):
    return member_sources.split_rows(self.seed, split, self.sizes)


BUILDERS = {"movielens100k": Movielens100k, "job_market": JobMarket,
            "member_sources": MemberSources}


def get_builder(name: str, *, seed: int = 0, data_dir: str | pathlib.Path | None = None,
                **sizes) -> _Builder:
  if name not in BUILDERS:
    raise config_lib.ConfigError(f"config.data.name={name!r} is not a data set; expected one of "
                                 f"{sorted(BUILDERS)}")
  return BUILDERS[name](seed=seed, data_dir=data_dir, **sizes)


def build(name: str, *, seed: int = 0, data_dir: str | pathlib.Path | None = None,
          **sizes) -> _Builder:
  """Builds (once; later calls reuse the files) and returns the builder.

  Processes sharing the cache (the hosts of a local multi-process run, pytest workers) take a file
  lock, so one builds and the others wait and then read its files.
  """
  builder = get_builder(name, seed=seed, data_dir=data_dir, **sizes)
  if builder.is_prepared():
    return builder
  lock = pathlib.Path(builder.data_dir).parent / "build.lock"
  lock.parent.mkdir(parents=True, exist_ok=True)
  with open(lock, "w") as f:
    fcntl.flock(f, fcntl.LOCK_EX)
    builder = get_builder(name, seed=seed, data_dir=data_dir, **sizes)
    if not builder.is_prepared():
      tfds.disable_progress_bar()
      builder.download_and_prepare()
  return builder
