"""MovieLens-100k reader and leave-last-out split against the real recbole files."""

import pathlib
import shutil

import numpy as np
import pytest

from jaxprof.data import movielens


@pytest.fixture(scope="module")
def ml() -> movielens.MovieLens:
  return movielens.read_ml100k()


def test_statistics(ml):
  assert ml.num_users == 943
  assert ml.num_items == 1682
  assert ml.num_ratings == 100_000
  assert ml.item_text[0] == "Toy Story (1995) - Animation, Children's, Comedy"
  assert len(ml.item_text) == len(ml.item_titles) == len(ml.item_genres) == 1682
  assert ml.user_text[0] == "24-year-old male, occupation technician, zip 85711"
  assert ml.user_age[0] == 24 and ml.user_occupation[0] == "technician"


def test_indices_contiguous_and_time_ordered(ml):
  seen = np.zeros(ml.num_items, bool)
  for items, ratings, times in ml.histories:
    assert items.dtype == np.int32 and len(items) == len(ratings) == len(times)
    assert np.all(np.diff(times) >= 0)
    ties = np.diff(times) == 0
    assert np.all(np.diff(items)[ties] > 0)  # ties broken by item index
    seen[items] = True
  assert seen.all()  # every item rated at least once in ml-100k


def test_leave_last_out(ml):
  s = movielens.leave_last_out(ml)
  assert len(s.users) == 943 and not s.dropped_users
  for row, u in enumerate(s.users):
    items, _, times = ml.histories[u]
    assert s.test_timestamp[row] == times.max()
    assert s.val_timestamp[row] <= s.test_timestamp[row]
    assert np.all(s.train_timestamps[row] <= s.val_timestamp[row])
    assert s.test_item[row] == items[-1] and s.val_item[row] == items[-2]
    np.testing.assert_array_equal(s.train_items[row], items[:-2])
  mask = movielens.seen_mask(s, ml.num_items, include_val=True)
  assert mask.sum() == 100_000 - 943


def _copy_sources(tmp_path: pathlib.Path) -> pathlib.Path:
  src = movielens.default_source_dir()
  for name in ("ml-100k.inter", "ml-100k.item", "ml-100k.user"):
    shutil.copy(src / name, tmp_path / name)  # temporary, deleted with tmp_path
  return tmp_path


@pytest.mark.parametrize("broken, match", [
    ("196\t242\tthree\t881250949", "ml-100k.inter:3"),
    ("196\t242", "ml-100k.inter:3"),
    ("196\t99999\t3\t881250949", "ml-100k.inter:3.*item id 99999"),
])
def test_malformed_row_names_file_and_line(tmp_path, broken, match):
  d = _copy_sources(tmp_path)
  lines = (d / "ml-100k.inter").read_text().splitlines()
  lines[2] = broken
  (d / "ml-100k.inter").write_text("\n".join(lines) + "\n")
  with pytest.raises(ValueError, match=match):
    movielens.read_ml100k(d)


def test_user_without_ratings_is_excluded(tmp_path):
  d = _copy_sources(tmp_path)
  with open(d / "ml-100k.user", "a") as f:
    f.write("5000\t30\tF\twriter\t12345\n")
  ml = movielens.read_ml100k(d)
  assert ml.num_users == 943 and ml.users_without_ratings == [5000]


def test_missing_file(tmp_path):
  with pytest.raises(FileNotFoundError, match="ml-100k"):
    movielens.read_ml100k(tmp_path)
