"""Real occupation and skill texts for the synthetic job market (O*NET + ESCO, read in place).

* O*NET `Occupation Data.txt` (tab-separated: code, title, description; 1,016 rows) gives the
  occupations and the SOC hierarchy: major group = `code[:2]` ("15"), minor = `code[:4]` ("15-1"),
  broad = `code[:6]` ("15-125"), detailed = `code[:7]` ("15-1252"), and the full O*NET code.
* ESCO `skills.csv` (id, description; 13,939 rows) gives the skills. Its description is the
  preferred label, the alternative labels and the definition run together; `_short_label` recovers a
  short label with a heuristic (a label ends where a word that often starts ESCO labels, a
  repeat of its first words, or an -ing form begins).

Skills are linked to occupations by text similarity: TF-IDF (scikit-learn, English stop words,
sublinear tf) fitted on both corpora; each occupation gets the `skills_per_occupation` skills whose
texts have the highest cosine with its title + description. Only linked skills are kept.
"""

from __future__ import annotations

import collections
import csv
import dataclasses
import functools
import pathlib
import re

import numpy as np
from scipy import sparse
from sklearn.feature_extraction.text import TfidfVectorizer

from jaxprof import assets

_CODE = re.compile(r"^\d{2}-\d{4}\.\d{2}$")
_STOP = {"of", "and", "the", "for", "to", "with", "in", "on", "a", "an", "or", "at", "by"}
_KEEP_PLURAL = {"sales", "series", "species", "news", "physics", "mathematics", "economics",
                "logistics", "athletics", "statistics", "gas", "glass", "business", "press",
                "arts", "sciences", "operations", "services", "systems", "relations", "affairs",
                "goods", "parts", "products", "materials", "works", "resources", "communications",
                "analysis", "diagnosis", "crisis", "corps", "aids", "graphics", "electronics"}
# Prefix lengths of the SOC levels, most specific first: full O*NET code, detailed, broad, minor,
# major. `soc_distance` counts the levels two codes do not share (0 = same code .. 5 = unrelated).
SOC_PREFIXES = (10, 7, 6, 4, 2)
MAX_SOC_DISTANCE = len(SOC_PREFIXES)


@dataclasses.dataclass(frozen=True, eq=False)
class Catalog:
  """Occupations [O] and linked skills [S].

  occ_skills: [O, K] int32 skill indices per occupation, most similar first.
  occ_levels: [O, 5] int32 ids of each SOC level (full, detailed, broad, minor, major).
  occ_matrix: [O, V] sparse l2-normalised TF-IDF rows of the occupation texts (for text scoring).
  """

  codes: list[str]
  titles: list[str]
  singular_titles: list[str]
  descriptions: list[str]
  skill_labels: list[str]
  skill_ids: list[str]
  occ_skills: np.ndarray
  occ_levels: np.ndarray
  vectorizer: TfidfVectorizer
  occ_matrix: sparse.csr_matrix

  @property
  def num_occupations(self) -> int:
    return len(self.codes)

  def soc_distance(self, a: np.ndarray | int, b: np.ndarray | int) -> np.ndarray:
    """Number of SOC levels not shared, 0 (same code) .. 5 (different major group); broadcasts."""
    same = self.occ_levels[np.asarray(a)] == self.occ_levels[np.asarray(b)]
    return MAX_SOC_DISTANCE - same.sum(-1)


def read_onet(path: pathlib.Path) -> tuple[list[str], list[str], list[str]]:
  """(codes, titles, descriptions) from O*NET `Occupation Data.txt`; errors name file and line."""
  if not path.is_file():
    raise FileNotFoundError(f"O*NET source file missing: {path}")
  codes, titles, descriptions = [], [], []
  with open(path, encoding="utf-8", errors="replace") as f:
    for line_no, line in enumerate(f, start=1):
      fields = line.rstrip("\r\n").split("\t")
      if line_no == 1:
        if fields[:2] != ["O*NET-SOC Code", "Title"]:
          raise ValueError(f"{path}:1: unexpected header {fields}")
        continue
      if not line.strip():
        continue
      if (len(fields) != 3 or not _CODE.match(fields[0]) or not fields[1].strip()
          or not fields[2].strip()):  # an occupation without text cannot make a posting
        raise ValueError(f"{path}:{line_no}: expected 'NN-NNNN.NN<TAB>title<TAB>description', "
                         f"got {line.rstrip()[:120]!r}")
      codes.append(fields[0])
      titles.append(fields[1].strip())
      descriptions.append(fields[2].strip())
  if len(set(codes)) != len(codes):
    raise ValueError(f"{path}: duplicate O*NET codes")
  return codes, titles, descriptions


def read_esco_skills(path: pathlib.Path) -> tuple[list[str], list[str]]:
  """(ids, descriptions) from ESCO `skills.csv`; errors name file and line."""
  if not path.is_file():
    raise FileNotFoundError(f"ESCO source file missing: {path}")
  ids, texts = [], []
  with open(path, encoding="utf-8", newline="") as f:
    reader = csv.reader(f)
    header = next(reader, None)
    if header != ["id", "description"]:
      raise ValueError(f"{path}:1: expected header ['id', 'description'], got {header}")
    for row in reader:
      if len(row) != 2 or not row[0].strip() or not row[1].strip():
        raise ValueError(f"{path}:{reader.line_num}: expected 2 non-empty fields, got {row!r}")
      ids.append(row[0])
      texts.append(row[1])
  return ids, texts


def singularize_title(title: str) -> str:
  """'First-Line Supervisors of Retail Workers' -> 'First-Line Supervisor of Retail Workers'."""
  head, sep, tail = title.partition(" of ")
  last_comma = head.rfind(", ")
  if last_comma >= 0 and not head[last_comma + 2:].startswith(("and ", "or ")):
    # ", All Other", ", Postsecondary", ", Except ...": a qualifier, not part of the noun phrase.
    head, tail, sep = head[:last_comma], head[last_comma:] + sep + tail, ""
  words = head.split(" ")
  for i, w in enumerate(words):
    if i == len(words) - 1 or words[i + 1] in ("and", "or"):
      words[i] = _singular(w.rstrip(",")) + ("," if w.endswith(",") else "")
  return " ".join(words) + sep + tail


def _singular(word: str) -> str:
  low = word.lower()
  if low in _KEEP_PLURAL or len(low) < 4 or not low.endswith("s") or low.endswith("ss"):
    return word
  if low.endswith("ies"):
    return word[:-3] + "y"
  if low.endswith(("ches", "shes", "xes", "sses")):
    return word[:-2]
  return word[:-1]


def _label_part(text: str) -> list[str]:
  """Words before the definition (which starts at the first capitalised word after the first)."""
  words = text.split()
  for i in range(1, len(words)):
    if words[i][:1].isupper() and not words[0][:1].isupper():
      return words[:i]
  return words


def _short_label(words: list[str], starters: set[str]) -> str:
  for n in range(2, min(7, len(words))):
    w = words[n]
    restart = w in starters or w[:4] == words[0][:4] or w == words[1] or w.endswith("ing")
    if restart and w not in _STOP and words[n - 1] not in _STOP:
      return " ".join(words[:n])
  return " ".join(words[:6])


@functools.cache
def load_catalog(skills_per_occupation: int = 25) -> Catalog:
  """Occupations and linked skills from the installed asset packages (cached per process)."""
  onet = assets.asset_path(assets.ONET, "src_data/Occupation Data.txt")
  codes, titles, descriptions = read_onet(onet)
  skill_ids, skill_texts = read_esco_skills(assets.asset_path(assets.ESCO, "data/skills.csv"))

  parts = [_label_part(t) for t in skill_texts]
  first_words = collections.Counter(p[0] for p in parts if p)
  starters = {w for w, c in first_words.items() if c >= 20 and w not in _STOP}  # mostly verbs

  occ_texts = [f"{t} {t} {d}" for t, d in zip(titles, descriptions, strict=True)]
  vectorizer = TfidfVectorizer(stop_words="english", sublinear_tf=True, min_df=2,
                               token_pattern=r"(?u)\b[a-zA-Z][a-zA-Z]+\b")
  vectorizer.fit(occ_texts + skill_texts)
  occ_matrix = vectorizer.transform(occ_texts).tocsr()
  sim = (occ_matrix @ vectorizer.transform(skill_texts).T).toarray()  # [O, S_all]
  k = skills_per_occupation
  top = np.argpartition(-sim, k, axis=1)[:, :k]
  order = np.argsort(-np.take_along_axis(sim, top, 1), axis=1, kind="stable")
  top = np.take_along_axis(top, order, 1)
  kept, remap = np.unique(top, return_inverse=True)  # keep only linked skills
  occ_skills = remap.reshape(top.shape).astype(np.int32)

  levels = np.zeros((len(codes), len(SOC_PREFIXES)), np.int32)
  for j, n in enumerate(SOC_PREFIXES):
    ids: dict[str, int] = {}
    levels[:, j] = [ids.setdefault(c[:n], len(ids)) for c in codes]
  return Catalog(
      codes=codes, titles=titles, singular_titles=[singularize_title(t) for t in titles],
      descriptions=descriptions,
      skill_labels=[_short_label(parts[i], starters) for i in kept],
      skill_ids=[skill_ids[i] for i in kept], occ_skills=occ_skills, occ_levels=levels,
      vectorizer=vectorizer, occ_matrix=occ_matrix)
