"""Where a run writes: local directories and object stores (`gs://bucket/runs/x`) through one type.

Every file of run output (config, metrics, TensorBoard events, checkpoints, exports, reports,
plots, DONE.json) is written through this module or through an `etils.epath.Path` from
`as_path`. `pathlib.Path("gs://b/x")` is the local path `gs:/b/x`; `as_path` keeps the URL, and
epath sends it to the object store (for `gs://`, fsspec's gcsfs, or tf.io.gfile where TensorFlow
is installed).

  workdir = paths.as_path(flag)                      # "runs/x" or "gs://bucket/runs/x"
  paths.atomic_write_json(workdir / "sft" / "DONE.json", record)
  with paths.replaced_dir(workdir / "sft" / "export") as tmp:    # writers of local files only
    save_file(tensors, tmp / "model.safetensors")
  mirror = paths.LocalMirror(workdir / "tb" / "sft")  # a local dir copied to the workdir
  local = paths.local_copy(export_dir)               # readers of local files only

Local paths behave as they always did: the same temporary-file-and-rename writes, in place.
"""

from __future__ import annotations

import contextlib
import fnmatch
import json
import os
import pathlib
import re
import shutil
import tempfile
import time
from collections.abc import Iterator, Sequence
from typing import Any

from etils import epath

PathLike = str | os.PathLike
# The URL schemes epath reaches (object stores); any other "x://" is an error, not a local dir.
SCHEMES = ("gs", "s3", "az", "hf")
_URL = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*)://")
_CHUNK = 8 << 20  # bytes per read when copying between filesystems


def as_path(path: PathLike) -> epath.Path:
  """`path` as an `epath.Path`: a local path stays as given (relative stays relative), a
  `gs://` (s3://, az://, hf://) URL keeps its scheme through `str()`, `/` and `.parent`.

  Raises:
    ValueError: a URL of a scheme epath does not reach (e.g. `memory://`, `file://`): it would
      otherwise become a local directory named after the URL.
  """
  if isinstance(path, epath.Path):
    return path
  text = os.fspath(path)
  match = _URL.match(text)
  if match and match.group(1) not in SCHEMES:
    raise ValueError(f"{text}: unsupported URL scheme {match.group(1)!r}; a workdir is a local "
                     f"path or one of {', '.join(s + '://' for s in SCHEMES)}")
  return epath.Path(text)


def is_local(path: PathLike) -> bool:
  """Whether `path` is on a local (or mounted) filesystem rather than an object store."""
  return _URL.match(os.fspath(path)) is None


def absolute(path: PathLike, resolve: bool = False) -> epath.Path:
  """A path that does not depend on the working directory: a local path made absolute (with
  `resolve`, symlinks resolved too), a URL as it is (epath's `absolute` and `resolve` would turn
  `gs://b/x` into `<cwd>/gs:/b/x`)."""
  path = as_path(path)
  if not is_local(path):
    return path
  return path.resolve() if resolve else path.absolute()


# ---------------------------------------------------------------------------------------------
# Atomic writes.
# ---------------------------------------------------------------------------------------------


def atomic_write_bytes(path: PathLike, data: bytes) -> epath.Path:
  """Writes `data` to `path` so readers see the old file or the new one, never a partial one.

  Local: the bytes go to a temporary file in the same directory, are flushed and fsynced, then
  renamed over `path` with `os.replace` (atomic on POSIX). Object stores: one direct write; an
  object appears whole when its upload completes on close (GCS and S3 never show a partial
  object), where a temporary object and a rename would be a copy and a delete, not atomic.
  Parent directories are created.
  """
  path = as_path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  if not is_local(path):
    with path.open("wb") as f:
      f.write(data)
    return path
  fd, tmp = tempfile.mkstemp(dir=os.fspath(path.parent), prefix=f".{path.name}.", suffix=".tmp")
  try:
    with os.fdopen(fd, "wb") as f:
      f.write(data)
      f.flush()
      os.fsync(f.fileno())
    os.replace(tmp, os.fspath(path))
  except BaseException:
    if os.path.exists(tmp):
      os.unlink(tmp)
    raise
  return path


def atomic_write_text(path: PathLike, text: str) -> epath.Path:
  """`atomic_write_bytes` of `text` in UTF-8."""
  return atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: PathLike, obj: Any, indent: int | None = 2) -> epath.Path:
  """`atomic_write_text` of `json.dumps(obj)`; fails before touching `path` if not JSON-able."""
  return atomic_write_text(path, json.dumps(obj, indent=indent, sort_keys=True) + "\n")


# ---------------------------------------------------------------------------------------------
# Copies between a local directory and the workdir, for writers and readers of local files only.
# ---------------------------------------------------------------------------------------------


def copy_file(src: PathLike, dst: PathLike) -> None:
  """Copies one file between any two filesystems (local or remote), streaming in chunks."""
  src, dst = as_path(src), as_path(dst)
  dst.parent.mkdir(parents=True, exist_ok=True)
  with src.open("rb") as fin, dst.open("wb") as fout:
    shutil.copyfileobj(fin, fout, _CHUNK)


def _files(root: epath.Path, exclude: Sequence[str] = ()) -> Iterator[tuple[str, epath.Path]]:
  """(path relative to root, path) of every file under `root`, skipping names that match one of
  the `exclude` glob patterns."""
  for child in sorted(root.iterdir()):
    if any(fnmatch.fnmatch(child.name, p) for p in exclude):
      continue
    if child.is_dir():
      yield from ((f"{child.name}/{rel}", p) for rel, p in _files(child, exclude))
    else:
      yield child.name, child


@contextlib.contextmanager
def replaced_dir(target: PathLike) -> Iterator[pathlib.Path]:
  """A local temporary directory to fill; when the block ends without an error it replaces
  `target` whole (an error leaves `target` as it was and removes the temporary directory).

  Local: the temporary directory is a sibling of `target`, renamed over it after deleting the old
  one. Remote: the files are uploaded after the old ones are deleted; the upload is not atomic
  (an object store has no directory rename), so a reader waits for the stage's DONE.json.
  """
  target = as_path(target)
  local = is_local(target)
  if local:
    target.parent.mkdir(parents=True, exist_ok=True)
  tmp = pathlib.Path(tempfile.mkdtemp(prefix=f".{target.name}.",
                                      dir=os.fspath(target.parent) if local else None))
  try:
    yield tmp
    if target.exists():
      target.rmtree()
    if local:
      os.replace(tmp, os.fspath(target))
    else:
      for rel, src in _files(as_path(tmp)):
        copy_file(src, target / rel)
  finally:
    if tmp.exists():
      shutil.rmtree(tmp)


_DOWNLOADS: list[tempfile.TemporaryDirectory] = []  # removed when the process exits


def local_copy(path: PathLike, exclude: Sequence[str] = ()) -> pathlib.Path:
  """A local directory with the files of directory `path`, for readers of local files only
  (safetensors' `safe_open`, Hugging Face tokenizers).

  Local: `path` itself. Remote: a fresh download (files matching an `exclude` glob pattern, e.g.
  "*.safetensors", left out) into a temporary directory that lives until the process exits, since
  a loaded tokenizer keeps its directory (an export copies its files from there).
  """
  path = as_path(path)
  if is_local(path):
    return pathlib.Path(path)
  if not path.is_dir():
    raise FileNotFoundError(f"{path} is not a directory")
  _DOWNLOADS.append(tempfile.TemporaryDirectory(prefix="jaxprof-download-"))
  local = pathlib.Path(_DOWNLOADS[-1].name) / path.name
  for rel, src in _files(path, exclude):
    copy_file(src, local / rel)
  return local


class LocalMirror:
  """A local directory whose files are copied to directory `target`, for writers that keep a file
  open or append to it (tensorboardX's SummaryWriter, a JSONL log): an object has no append.

  A local `target` is its own mirror: `local` is `target` itself and `sync` does nothing, so a
  local run writes in place as before. A remote `target` gets a fresh temporary directory; `sync`
  uploads each file that changed since the last upload (whole), at most every `every_secs`
  unless forced, and `close` uploads what is left and deletes the temporary directory. Only the
  files written under `local` are uploaded; others already in `target` are left alone.
  """

  def __init__(self, target: PathLike, every_secs: float = 30.0):
    self.target = as_path(target)
    self.remote = not is_local(self.target)
    self.every_secs = every_secs
    self._sent: dict[str, tuple[int, int]] = {}
    self._last = time.monotonic()
    if self.remote:
      self._tmp = tempfile.TemporaryDirectory(prefix=f"jaxprof-{self.target.name}-")
      self.local = pathlib.Path(self._tmp.name)
    else:
      self.local = pathlib.Path(self.target)
      self.local.mkdir(parents=True, exist_ok=True)

  def pull(self, name: str) -> pathlib.Path:
    """`local/name`, first copied from `target/name` if the mirror is remote and that exists
    (a resumed writer appends to what an earlier run wrote)."""
    local = self.local / name
    if self.remote and (self.target / name).exists():
      copy_file(self.target / name, local)
      stat = local.stat()
      self._sent[name] = (stat.st_size, stat.st_mtime_ns)
    return local

  def sync(self, force: bool = False) -> None:
    """Uploads the files changed since the last upload (remote; at most every `every_secs`
    unless `force`)."""
    if not self.remote or not (force or time.monotonic() - self._last >= self.every_secs):
      return
    self._last = time.monotonic()
    for rel, src in _files(as_path(self.local)):
      stat = os.stat(src)
      if self._sent.get(rel) != (stat.st_size, stat.st_mtime_ns):
        copy_file(src, self.target / rel)
        self._sent[rel] = (stat.st_size, stat.st_mtime_ns)

  def close(self) -> None:
    """Uploads what changed and removes the local copy (remote); safe to call twice."""
    if self.remote and self.local.exists():
      self.sync(force=True)
      self._tmp.cleanup()
