"""grain pipelines over the TFDS array_record builds: decode, shuffle (seeded), batch, resume.

Records come back from TFDS as bytes and lists; `decode` turns them into str and numpy arrays, and
`collate` batches a list of records into a dict of numpy arrays:
* scalars -> [B] arrays (floats as float32); text -> [B] object arrays of str;
* int / float sequences -> [B, L_max] arrays padded with -1 (ints) or nan (floats), plus
  `<name>_len`: [B] int32;
* sequences of text -> [B] object arrays of lists of str.

`batches(...)` returns a `grain.MapDataset`, which is indexable: batch k of epoch e is
`ds[e * len(ds) + k]` for a repeated data set, so the checkpointable position is one integer
(`start=`). `iterator(...)` returns grain's DatasetIterator, whose `get_state()` / `set_state()`
also checkpoint the position.
"""

from __future__ import annotations

import pathlib
from collections.abc import Sequence
from typing import Any

import grain
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


def collate(records: Sequence[dict]) -> dict[str, np.ndarray]:
  """Batches decoded records into a dict of numpy arrays (see the module docstring)."""
  batch = {}
  for key in records[0]:
    values = [r[key] for r in records]
    first = values[0]
    if isinstance(first, str) or isinstance(first, list):
      arr = np.empty(len(values), object)
      arr[:] = values if isinstance(first, str) else [list(v) for v in values]
      batch[key] = arr
    elif isinstance(first, np.ndarray) and first.ndim == 1:
      lengths = np.array([len(v) for v in values], np.int32)
      dtype = np.result_type(*[v.dtype for v in values])
      fill = np.nan if np.issubdtype(dtype, np.floating) else -1
      padded = np.full((len(values), max(int(lengths.max()), 1)), fill, dtype)
      for i, v in enumerate(values):
        padded[i, : len(v)] = v
      batch[key], batch[f"{key}_len"] = padded, lengths
    else:
      arr = np.asarray(values)
      batch[key] = arr.astype(np.float32) if arr.dtype == np.float64 else arr
  return batch


def batches(source: Any, batch_size: int, *, seed: int | None = 0, num_epochs: int | None = 1,
            drop_remainder: bool = False) -> grain.MapDataset:
  """MapDataset of collated batches: per-epoch reshuffle with `seed` (None: keep order).

  num_epochs=None repeats forever (then always drop the remainder for fixed shapes).
  """
  ds = grain.MapDataset.source(source).map(decode)
  if seed is not None:
    ds = ds.shuffle(seed=seed)  # grain reshuffles each repetition (epoch) differently
  if num_epochs != 1:
    ds = ds.repeat(num_epochs)
  return ds.batch(batch_size, drop_remainder=drop_remainder, batch_fn=collate)


def iterator(source: Any, batch_size: int, *, seed: int | None = 0, start: int = 0,
             **kwargs) -> grain.DatasetIterator:
  """Iterator over `batches(...)` starting at batch `start` (a checkpointed position)."""
  ds = batches(source, batch_size, seed=seed, **kwargs)
  if start:
    ds = ds[start:]
  return iter(ds.to_iter_dataset())
