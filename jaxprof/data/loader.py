"""Rows of the TFDS array_record builds: random access to a split, and decoding of one record.

Records come back from TFDS as bytes and lists; `decode` turns them into str and numpy arrays.
Training batches are made by the stages from these rows (`trainers.common.Batcher`: seeded,
indexed by step, so resuming needs no iterator state; token widths from `jaxprof.buckets`).
"""

from __future__ import annotations

import pathlib
from typing import Any

import numpy as np

from jaxprof.data import builders


def load(name: str, split: str, *, data_dir: str | pathlib.Path | None = None, seed: int = 0,
         **sizes) -> Any:
  """Random-access TFDS data source of one split (builds the data set first if needed)."""
  builder = builders.build(name, seed=seed, data_dir=data_dir, **sizes)
  if split not in builder.info.splits:
    raise ValueError(f"{name} has no split {split!r}; splits: {sorted(builder.info.splits)}")
  return builder.as_data_source(split)


def decode(record: dict) -> dict:
  """bytes -> str, lists of numbers -> numpy arrays, lists of bytes -> lists of str."""
  out = {}
  for key, value in record.items():
    if isinstance(value, bytes):
      value = value.decode("utf-8")
    elif isinstance(value, list | tuple):
      if value and isinstance(value[0], bytes):
        value = [v.decode("utf-8") for v in value]
      elif not value or not isinstance(value[0], str):
        value = np.asarray(value)
    out[key] = value
  return out
