"""jaxprof.paths: URLs stay URLs, atomic writes, local copies for local-only writers and readers.

The remote cases run against the fake `gs://` of `tests/fake_gcs.py` (a directory on disk).
"""

import json
import os
import pathlib

import pytest

from jaxprof import paths
from tests.fake_gcs import bucket  # noqa: F401  (the fixture)


def test_a_url_keeps_its_scheme():
  path = paths.as_path("gs://b/runs/girl")
  assert str(path) == os.fspath(path) == "gs://b/runs/girl"
  assert str(path / "sft" / "DONE.json") == "gs://b/runs/girl/sft/DONE.json"
  assert str((path / "sft").parent) == "gs://b/runs/girl" and path.name == "girl"
  assert str(paths.as_path(str(path / "tb"))) == "gs://b/runs/girl/tb"  # str round trip
  assert str(paths.absolute(path, resolve=True)) == "gs://b/runs/girl"  # not <cwd>/gs:/b/...
  assert not paths.is_local(path) and paths.is_local("runs/girl")


def test_local_paths_stay_as_given(tmp_path, monkeypatch):
  monkeypatch.chdir(tmp_path)
  assert str(paths.as_path("runs/girl")) == "runs/girl"
  assert paths.as_path(tmp_path / "x") == tmp_path / "x"
  assert paths.absolute("runs") == tmp_path / "runs"


@pytest.mark.parametrize("url", ["memory://b/x", "file:///tmp/x", "gcs://b/x"])
def test_other_schemes_are_an_error_not_a_local_folder(url):
  with pytest.raises(ValueError, match="unsupported URL scheme"):
    paths.as_path(url)


def test_atomic_writes_to_a_bucket(bucket, tmp_path, monkeypatch):  # noqa: F811
  monkeypatch.chdir(tmp_path)
  paths.atomic_write_json("gs://b/run/sft/DONE.json", {"stage": "sft"})
  paths.atomic_write_text("gs://b/run/config.json", "{}")
  paths.atomic_write_text("gs://b/run/config.json", "{\"a\": 1}")  # replaced whole
  assert json.loads((bucket / "b/run/sft/DONE.json").read_text()) == {"stage": "sft"}
  assert (bucket / "b/run/config.json").read_text() == "{\"a\": 1}"
  assert sorted(os.listdir(bucket / "b/run")) == ["config.json", "sft"]  # no temporary objects
  assert not (tmp_path / "gs:").exists()


def test_a_mirror_uploads_what_changed_and_nothing_else(bucket):  # noqa: F811
  (bucket / "b/tb").mkdir(parents=True)
  (bucket / "b/tb/old_events").write_text("an earlier run's")
  (bucket / "b/tb/log.jsonl").write_text("1\n")
  mirror = paths.LocalMirror("gs://b/tb", every_secs=3600)
  assert mirror.local != bucket / "b/tb" and mirror.local.is_dir()
  with open(mirror.pull("log.jsonl"), "a") as f:  # appends to what the earlier run wrote
    f.write("2\n")
  (mirror.local / "events").write_text("new")
  mirror.sync()  # within every_secs: nothing yet
  assert not (bucket / "b/tb/events").exists()
  mirror.sync(force=True)
  assert (bucket / "b/tb/events").read_text() == "new"
  assert (bucket / "b/tb/log.jsonl").read_text() == "1\n2\n"
  (mirror.local / "events").write_text("newer")
  mirror.close()
  assert (bucket / "b/tb/events").read_text() == "newer"
  assert (bucket / "b/tb/old_events").read_text() == "an earlier run's"
  assert not mirror.local.exists()


def test_a_local_mirror_is_the_directory_itself(tmp_path):
  mirror = paths.LocalMirror(tmp_path / "tb")
  assert mirror.local == tmp_path / "tb" and mirror.local.is_dir()
  assert mirror.pull("a.jsonl") == tmp_path / "tb" / "a.jsonl"
  mirror.close()
  assert (tmp_path / "tb").is_dir()


@pytest.mark.parametrize("remote", [False, True])
def test_replaced_dir_swaps_the_whole_directory(bucket, tmp_path, remote):  # noqa: F811
  target = "gs://b/export" if remote else tmp_path / "local" / "export"
  on_disk = bucket / "b/export" if remote else tmp_path / "local" / "export"
  with paths.replaced_dir(target) as tmp:
    (tmp / "old.txt").write_text("old")
  with pytest.raises(RuntimeError), paths.replaced_dir(target) as tmp:
    (tmp / "half.txt").write_text("half")
    raise RuntimeError("failed half way")
  assert os.listdir(on_disk) == ["old.txt"] and not tmp.exists()  # untouched, cleaned up
  with paths.replaced_dir(target) as tmp:
    (tmp / "sub").mkdir()
    (tmp / "sub" / "new.txt").write_text("new")
  assert [p.relative_to(on_disk).as_posix() for p in sorted(on_disk.rglob("*"))] == [
      "sub", "sub/new.txt"]
  assert os.listdir(on_disk.parent) == ["export"]  # no temporary sibling left


def test_local_copy_downloads_a_remote_directory(bucket, tmp_path):  # noqa: F811
  (bucket / "b/model").mkdir(parents=True)
  (bucket / "b/model/config.json").write_text("{}")
  (bucket / "b/model/model.safetensors").write_bytes(b"weights")
  local = paths.local_copy("gs://b/model")
  assert sorted(os.listdir(local)) == ["config.json", "model.safetensors"]
  assert (local / "model.safetensors").read_bytes() == b"weights"
  light = paths.local_copy("gs://b/model", exclude=("*.safetensors",))
  assert os.listdir(light) == ["config.json"] and light != local
  assert paths.local_copy(tmp_path) == pathlib.Path(tmp_path)  # local: the directory itself
  with pytest.raises(FileNotFoundError, match="gs://b/nope"):
    paths.local_copy("gs://b/nope")
