"""Reads the Kaggle BUSI download, turning its quirks into plain uint8 arrays.

The download mixes grayscale and RGB images, 1-bit / 8-bit / RGB / RGBA masks and several mask
files per lesion, and users put it anywhere (extracted or zipped). Images and masks are read
by `scan_files`, as every dataset's are. Everything that is wrong is collected first and
reported in one `scan_files.FormatError`, so a user fixes a broken copy in one go instead of
one file per build attempt, and nothing is ever dropped silently.
"""
import dataclasses
import os
import pathlib
import re
import zipfile
from typing import Any, Callable, Union

import numpy as np

from data import scan_files

CLASSES = ('benign', 'malignant', 'normal')
DATASET_DIR = 'Dataset_BUSI_with_GT'
KAGGLE_URL = 'https://www.kaggle.com/datasets/aryashah2k/breast-ultrasound-images-dataset'
DOWNLOAD_STEPS = f"""\
  1. Open {KAGGLE_URL}
     ("Breast Ultrasound Images Dataset", sign in to Kaggle) and click "Download": this gives
     `archive.zip` (~200 MB), which contains `{DATASET_DIR}/{{benign,malignant,normal}}/`.
  2. Put `archive.zip` into the manual dir, or extract it there: the `{DATASET_DIR}` folder
     may sit at any depth below the manual dir, or be the manual dir itself."""

# Files that archivers and file browsers add; they are not part of the dataset.
_IGNORED_PREFIXES = ('.', '__MACOSX')
_FILE_RE = re.compile(rf'^(?P<label>[a-z]+) \((?P<number>\d+)\)'
                      rf'(?P<mask>{scan_files.MASK_STEM_SUFFIX})?\.png$')

# A directory on disk or inside a zip: both offer iterdir / is_dir / name / open.
Source = Union[pathlib.Path, zipfile.Path]


@dataclasses.dataclass(frozen=True)
class Record:
  """One BUSI image and its mask files (in mask-index order), not yet decoded."""
  image_id: str  # e.g. 'benign (12)', unique over the dataset.
  label: str
  image: Source
  masks: tuple[Source, ...]


def locate(manual_dir: Union[str, os.PathLike]) -> Source:
  """Returns the `Dataset_BUSI_with_GT` folder under `manual_dir`, extracted or in a zip.

  An extracted folder wins over zips (users often keep the zip next to what they extracted);
  several distinct copies are an error rather than a silent pick.
  """
  manual_dir = pathlib.Path(manual_dir)
  if _is_dataset_dir(manual_dir):
    return manual_dir
  folders, zips = [], []
  for parent, dirnames, filenames in os.walk(manual_dir):
    dirnames[:] = sorted(d for d in dirnames if not d.startswith(_IGNORED_PREFIXES))
    found = [d for d in dirnames if _is_dataset_dir(pathlib.Path(parent, d))]
    folders += [pathlib.Path(parent, d) for d in found]
    dirnames[:] = [d for d in dirnames if d not in found]  # Do not look inside a copy.
    zips += [pathlib.Path(parent, f) for f in sorted(filenames) if f.lower().endswith('.zip')]
  if not folders:
    folders = [root for path in zips for root in _zip_dataset_dirs(path)]
  if len(folders) == 1:
    return folders[0]
  if folders:
    raise scan_files.FormatError(
        f'Found several copies of BUSI under {manual_dir}; keep exactly one:',
        [(str(f), 'dataset copy') for f in folders])
  looked_at = [(str(z), 'zip without a BUSI folder inside') for z in zips]
  raise scan_files.FormatError(
      f'No BUSI dataset found in the manual dir {manual_dir}. Expected, at any depth below '
      f'it, a folder holding the class folders {", ".join(CLASSES)} (Kaggle names it '
      f'`{DATASET_DIR}/`), or a zip containing one (e.g. Kaggle\'s `archive.zip`). '
      f'To get it:\n{DOWNLOAD_STEPS}', looked_at)


def _is_dataset_dir(path: pathlib.Path) -> bool:
  return path.is_dir() and (
      path.name == DATASET_DIR or any((path / label).is_dir() for label in CLASSES))


def _zip_dataset_dirs(path: pathlib.Path) -> list[zipfile.Path]:
  """Outermost folders in the zip that hold a class folder (or are named like the dataset)."""
  try:
    names = zipfile.ZipFile(path).namelist()
  except (zipfile.BadZipFile, OSError):
    return []
  roots = set()
  for name in names:
    parts = name.split('/')
    if parts[0].startswith(_IGNORED_PREFIXES):
      continue
    for depth in range(len(parts) - 1):
      if parts[depth] == DATASET_DIR:
        roots.add('/'.join(parts[:depth + 1]) + '/')
      elif parts[depth] in CLASSES:
        roots.add('/'.join(parts[:depth]) + '/' if depth else '')
  outermost = [r for r in roots if not any(r != o and r.startswith(o) for o in roots)]
  return [zipfile.Path(path, at=root) for root in sorted(outermost)]


def scan(root: Source) -> list[Record]:
  """Lists the images of the dataset folder `root`, sorted by image id.

  Raises:
    scan_files.FormatError: listing every missing class folder, unexpected file, image without
      a mask and mask without its image.
  """
  records, problems = _scan(root)
  if problems:
    raise scan_files.FormatError(f'The BUSI folder {root} is malformed:', problems)
  return records


def _scan(root: Source) -> tuple[list[Record], list[tuple[str, str]]]:
  """Like `scan`, but returns the problems (records without masks are kept, to be decoded)."""
  problems = []
  images, masks = {}, {}
  for label in CLASSES:
    folder = root / label
    if not folder.is_dir():
      problems.append((str(folder), 'missing class folder'))
      continue
    for path in sorted(folder.iterdir(), key=lambda p: p.name):
      if path.name.startswith(_IGNORED_PREFIXES):
        continue
      match = _FILE_RE.match(path.name)
      if path.is_dir() or not match:
        problems.append((str(path), f'unexpected {"folder" if path.is_dir() else "file"}; '
                         f'expected "{label} (N).png" or "{label} (N)_mask[_K].png"'))
      elif match['label'] != label:
        problems.append((str(path), f'a {match["label"]} file in the {label} folder'))
      else:
        image_id = f'{label} ({int(match["number"])})'
        if match['mask']:
          masks.setdefault(image_id, []).append((int(match['index'] or 0), path))
        else:
          images[image_id] = (label, path)
  for image_id in sorted(set(masks) - set(images)):
    for _, path in masks[image_id]:
      problems.append((str(path), f'mask without its image "{image_id}.png"'))
  records = []
  for image_id in sorted(images):
    label, path = images[image_id]
    if image_id not in masks:
      problems.append((str(path), f'image without a mask (expected "{image_id}_mask.png")'))
    mask_paths = tuple(p for _, p in sorted(masks.get(image_id, []), key=lambda m: m[0]))
    records.append(Record(image_id, label, path, mask_paths))
  return records, problems


def decode(record: Record) -> tuple[np.ndarray, np.ndarray]:
  """Returns the (H, W, 1) uint8 image and its (H, W, 1) uint8 {0, 1} mask (OR of all files).

  Raises:
    scan_files.FormatError: listing every unreadable file of the record and every mask whose
      size differs from the image.
  """
  return scan_files.read_example(record.image, record.masks, record.image_id)


def read_all(root: Source, fn: Callable[[Record, np.ndarray, np.ndarray], Any]) -> dict[str, Any]:
  """Decodes every image of `root` once, returning {image_id: fn(record, image, mask)}.

  Raises:
    scan_files.FormatError: after looking at every file, listing all layout and decoding
      problems.
  """
  records, problems = _scan(root)
  results = {}
  for record in records:
    try:
      image, mask = decode(record)
    except scan_files.FormatError as e:
      problems += e.problems
      continue
    results[record.image_id] = fn(record, image, mask)
  if problems:
    raise scan_files.FormatError(
        f'The BUSI folder {root} has {len(set(problems))} bad file(s); fix or replace them '
        f'(e.g. re-download from {KAGGLE_URL}):', problems)
  return results
