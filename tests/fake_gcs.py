"""A fake `gs://` for tests: every `gs://bucket/x` is `<root>/bucket/x` on the local disk.

Two layers write a checkpoint, and both are redirected, so the code under test runs exactly as it
does against a bucket (the URL string `gs://...` reaches epath and orbax unchanged):
  * epath (every file jaxprof writes, and orbax's metadata files) sends `gs://` to fsspec's "gs" /
    "gcs" filesystem: registered here as a `DirFileSystem` rooted at `root`, which, like gcsfs,
    returns paths without the protocol, and which refuses to append (an object cannot be appended
    to; gcsfs refuses too);
  * orbax builds TensorStore's kvstore spec for `gs://` with `gcs_utils.get_kvstore_for_gcs`
    (`{"driver": "gcs", "bucket": ..., "path": ...}`): patched to the `file` driver on the same
    directory. Its check for a hierarchical-namespace bucket (a GCS API call) answers False.
Unlike GCS, the fake has real directories (GCS has only object names).
"""

from __future__ import annotations

import os
import pathlib
import sys

import pytest
from etils.epath import backend as epath_backend
from etils.epath import gpath
from fsspec.implementations.dirfs import DirFileSystem
from fsspec.implementations.local import LocalFileSystem
from orbax.checkpoint._src.path import gcs_utils

_REGISTRY = sys.modules["fsspec.registry"]._registry  # (`fsspec.registry` is the public view)


class FakeGCS(DirFileSystem):
  """`gs://bucket/x` -> `<root>/bucket/x`; `root` is set by `install`."""

  protocol = ("gs", "gcs")
  root: str = ""
  kvstore_paths: list[str] = []  # the gs:// paths orbax built TensorStore specs for

  def __init__(self, **kwargs):  # epath passes finalize_on_close=True, as for gcsfs
    del kwargs
    super().__init__(path=self.root, fs=LocalFileSystem(auto_mkdir=True))

  def open(self, path, mode="rb", *args, **kwargs):
    if "a" in mode:
      raise NotImplementedError(f"{path}: an object store cannot append (mode {mode!r})")
    return super().open(path, mode, *args, **kwargs)


def install(monkeypatch: pytest.MonkeyPatch, root: pathlib.Path) -> pathlib.Path:
  """Points `gs://` at `root` for one test (monkeypatch undoes it); returns `root`."""
  root.mkdir(parents=True, exist_ok=True)
  monkeypatch.setattr(gpath, "_is_tf_installed", lambda: False)  # fsspec, not tf.io.gfile
  monkeypatch.setattr(FakeGCS, "root", str(root))
  for protocol in FakeGCS.protocol:
    # fsspec.register_implementation(protocol, FakeGCS), undone after the test.
    monkeypatch.setitem(_REGISTRY, protocol, FakeGCS)
  FakeGCS.clear_instance_cache()
  epath_backend.fsspec_backend._get_filesystem.cache_clear()  # epath keeps one per protocol
  monkeypatch.setattr(FakeGCS, "kvstore_paths", [])

  def kvstore(path: str) -> dict:
    FakeGCS.kvstore_paths.append(str(path))
    return {"driver": "file", "path": os.path.join(root, str(path).removeprefix("gs://"))}

  monkeypatch.setattr(gcs_utils, "get_kvstore_for_gcs", kvstore)
  monkeypatch.setattr(gcs_utils, "is_hierarchical_namespace_enabled", lambda path: False)
  return root


@pytest.fixture
def bucket(monkeypatch, tmp_path) -> pathlib.Path:
  """The local directory behind `gs://`: `gs://b/x` is `bucket / "b" / "x"`."""
  yield install(monkeypatch, tmp_path / "gcs")
  FakeGCS.clear_instance_cache()
  epath_backend.fsspec_backend._get_filesystem.cache_clear()
