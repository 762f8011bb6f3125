"""MovieLens-100k read from the installed `recbole` package, split leave-last-out by time.

The files are RecBole "atomic" files: tab-separated, first line a typed header such as
`user_id:token  item_id:token  rating:float  timestamp:float`. `read_ml100k` parses them without
importing recbole (importing it imports torch) and never copies them (the licence forbids it).

Indices are 0-based and contiguous: items and users are numbered in increasing order of their
numeric raw ids, so item index `i` is raw item id `ml.item_ids[i]`. Each history is ordered by
timestamp, ties broken by item index, so the order is the same on every run.

Users listed in `ml-100k.user` without any rating are dropped (their raw ids are kept in
`MovieLens.users_without_ratings`); ratings naming an unknown user or item are an error.
`leave_last_out` needs at least 3 ratings per user and drops (and lists) users with fewer.
"""

from __future__ import annotations

import dataclasses
import pathlib
from collections.abc import Callable, Sequence

import numpy as np

from jaxprof import assets

_FILES = {"inter": "ml-100k.inter", "item": "ml-100k.item", "user": "ml-100k.user"}
_COLUMNS = {
    "inter": ("user_id", "item_id", "rating", "timestamp"),
    "item": ("item_id", "movie_title", "release_year", "class"),
    "user": ("user_id", "age", "gender", "occupation", "zip_code"),
}
_GENDER = {"M": "male", "F": "female"}


@dataclasses.dataclass(frozen=True)
class MovieLens:
  """The whole data set; per-item lists have length I, per-user lists length U.

  histories: per user a tuple (items [L] int32, ratings [L] float32, timestamps [L] int64) in
    time order (ties broken by item index).
  item_years: 0 where the release year is unknown.
  """

  item_ids: list[int]
  item_titles: list[str]
  item_years: list[int]
  item_genres: list[tuple[str, ...]]
  item_text: list[str]
  user_ids: list[int]
  user_age: list[int]
  user_gender: list[str]
  user_occupation: list[str]
  user_zip: list[str]
  user_text: list[str]
  histories: list[tuple[np.ndarray, np.ndarray, np.ndarray]]
  users_without_ratings: list[int]

  @property
  def num_items(self) -> int:
    return len(self.item_ids)

  @property
  def num_users(self) -> int:
    return len(self.user_ids)

  @property
  def num_ratings(self) -> int:
    return sum(len(h[0]) for h in self.histories)


@dataclasses.dataclass(frozen=True)
class LeaveLastOut:
  """Per kept user: the history without its last two items, then the validation and test item.

  users: [U] int32 user indices into `MovieLens` (users with < 3 ratings are not here).
  train_items / train_ratings / train_timestamps: per user arrays [L_u - 2], time ordered.
  val_item, test_item: [U] int32 item indices; val_timestamp, test_timestamp: [U] int64.
  dropped_users: user indices left out for having fewer than 3 ratings.
  """

  users: np.ndarray
  train_items: list[np.ndarray]
  train_ratings: list[np.ndarray]
  train_timestamps: list[np.ndarray]
  val_item: np.ndarray
  val_timestamp: np.ndarray
  test_item: np.ndarray
  test_timestamp: np.ndarray
  dropped_users: list[int]


def default_source_dir() -> pathlib.Path:
  """Folder of the ml-100k files inside the installed recbole package."""
  return assets.asset_path(assets.RECBOLE, "dataset_example/ml-100k/ml-100k.inter").parent


def _read_atomic(path: pathlib.Path, columns: Sequence[str],
                 parsers: Sequence[Callable[[str], object]]) -> list[tuple[int, list]]:
  """Rows of one atomic file as (line number, parsed fields); errors name file and line."""
  if not path.is_file():
    raise FileNotFoundError(f"MovieLens source file missing: {path}")
  with open(path, encoding="utf-8", errors="replace") as f:
    lines = f.read().splitlines()
  if not lines:
    raise ValueError(f"{path}:1: empty file, expected a header {columns}")
  header = [h.split(":", 1)[0] for h in lines[0].split("\t")]
  if tuple(header) != tuple(columns):
    raise ValueError(f"{path}:1: header has columns {header}, expected {list(columns)}")
  rows = []
  for line_no, line in enumerate(lines[1:], start=2):
    if not line.strip():
      continue
    fields = line.split("\t")
    if len(fields) != len(columns):
      raise ValueError(
          f"{path}:{line_no}: expected {len(columns)} tab-separated fields, got {len(fields)}: "
          f"{line!r}")
    try:
      rows.append((line_no, [p(x) for p, x in zip(parsers, fields, strict=True)]))
    except ValueError as e:
      raise ValueError(f"{path}:{line_no}: cannot parse {line!r}: {e}") from None
  return rows


def _year(text: str) -> int:
  return int(text) if text.strip().isdigit() else 0


def _item_text(title: str, year: int, genres: Sequence[str]) -> str:
  when = f" ({year})" if year else ""
  return f"{title}{when} - {', '.join(genres)}"


def _user_text(age: int, gender: str, occupation: str, zip_code: str) -> str:
  return f"{age}-year-old {_GENDER.get(gender, 'person')}, occupation {occupation}, zip {zip_code}"


def read_ml100k(source_dir: pathlib.Path | None = None) -> MovieLens:
  """Reads ml-100k.{inter,item,user} from `source_dir` (default: the recbole package)."""
  source_dir = pathlib.Path(source_dir) if source_dir is not None else default_source_dir()
  paths = {k: source_dir / v for k, v in _FILES.items()}

  item_rows = _read_atomic(paths["item"], _COLUMNS["item"], (int, str, str, str))
  item_rows.sort(key=lambda r: r[1][0])
  item_ids, titles, years, genres = [], [], [], []
  for _, (item_id, title, year, classes) in item_rows:
    item_ids.append(item_id)
    title = title.strip()
    # One placeholder item in ml-100k is spelled "unkonwn" in both title and year.
    titles.append("Unknown" if title.lower() in ("unkonwn", "unknown", "") else title)
    years.append(_year(year))
    genres.append(tuple(g.capitalize() if g == "unknown" else g for g in classes.split()))
  if len(set(item_ids)) != len(item_ids):
    raise ValueError(f"{paths['item']}: duplicate item ids")
  item_index = {raw: i for i, raw in enumerate(item_ids)}

  user_rows = _read_atomic(paths["user"], _COLUMNS["user"], (int, int, str, str, str))
  user_rows.sort(key=lambda r: r[1][0])
  if len({r[1][0] for r in user_rows}) != len(user_rows):
    raise ValueError(f"{paths['user']}: duplicate user ids")
  user_fields = {r[1][0]: r[1][1:] for r in user_rows}

  per_user: dict[int, list[tuple[int, int, float]]] = {u: [] for u in user_fields}
  inter_rows = _read_atomic(paths["inter"], _COLUMNS["inter"], (int, int, float, float))
  for line_no, (user_id, item_id, rating, timestamp) in inter_rows:
    if user_id not in per_user:
      raise ValueError(f"{paths['inter']}:{line_no}: user id {user_id} not in {paths['user']}")
    if item_id not in item_index:
      raise ValueError(f"{paths['inter']}:{line_no}: item id {item_id} not in {paths['item']}")
    per_user[user_id].append((int(timestamp), item_index[item_id], rating))

  kept = [u for u in sorted(per_user) if per_user[u]]
  histories = []
  for u in kept:
    events = sorted(per_user[u])  # (timestamp, item index): ties broken by item index
    histories.append((np.array([e[1] for e in events], np.int32),
                      np.array([e[2] for e in events], np.float32),
                      np.array([e[0] for e in events], np.int64)))
  ages = [user_fields[u][0] for u in kept]
  sexes = [user_fields[u][1] for u in kept]
  occupations = [user_fields[u][2] for u in kept]
  zips = [user_fields[u][3] for u in kept]
  return MovieLens(
      item_ids=item_ids, item_titles=titles, item_years=years, item_genres=genres,
      item_text=[_item_text(t, y, g) for t, y, g in zip(titles, years, genres, strict=True)],
      user_ids=kept, user_age=ages, user_gender=sexes, user_occupation=occupations,
      user_zip=zips,
      user_text=[_user_text(*f) for f in zip(ages, sexes, occupations, zips, strict=True)],
      histories=histories,
      users_without_ratings=[u for u in sorted(per_user) if not per_user[u]])


def leave_last_out(ml: MovieLens) -> LeaveLastOut:
  """Splits each user's time-ordered history: train = all but the last 2, val, test."""
  users, dropped = [], []
  train_items, train_ratings, train_times = [], [], []
  val_item, val_time, test_item, test_time = [], [], [], []
  for u, (items, ratings, times) in enumerate(ml.histories):
    if len(items) < 3:
      dropped.append(u)
      continue
    users.append(u)
    train_items.append(items[:-2])
    train_ratings.append(ratings[:-2])
    train_times.append(times[:-2])
    val_item.append(items[-2])
    val_time.append(times[-2])
    test_item.append(items[-1])
    test_time.append(times[-1])
  return LeaveLastOut(
      users=np.array(users, np.int32), train_items=train_items, train_ratings=train_ratings,
      train_timestamps=train_times, val_item=np.array(val_item, np.int32),
      val_timestamp=np.array(val_time, np.int64), test_item=np.array(test_item, np.int32),
      test_timestamp=np.array(test_time, np.int64), dropped_users=dropped)


def seen_mask(splits: LeaveLastOut, num_items: int, *, include_val: bool = False) -> np.ndarray:
  """[U, I] bool: items to mask when ranking the full catalogue (train history, optionally val).

  For validation ranking mask the train history; for test ranking pass `include_val=True`.
  """
  mask = np.zeros((len(splits.users), num_items), bool)
  for row, items in enumerate(splits.train_items):
    mask[row, items] = True
  if include_val:
    mask[np.arange(len(splits.users)), splits.val_item] = True
  return mask
