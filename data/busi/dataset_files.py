"""Reads the Kaggle BUSI download, turning its quirks into plain uint8 arrays.

The download mixes grayscale and RGB images, 1-bit / 8-bit / RGB / RGBA masks and several mask
files per lesion, and users put it anywhere (extracted or zipped). Everything that is wrong is
collected first and reported in one `BusiFormatError`, so a user fixes a broken copy in one go
instead of one file per build attempt, and nothing is ever dropped silently.
"""
import dataclasses
import io
import os
import pathlib
import re
import zipfile
from typing import Any, Callable, Iterable, Union

import numpy as np
from PIL import Image

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
_FILE_RE = re.compile(
    r'^(?P<label>[a-z]+) \((?P<number>\d+)\)(?P<mask>_mask(?:_(?P<index>\d+))?)?\.png$')
_IMAGE_MODES = ('1', 'L', 'P', 'LA', 'RGB', 'RGBA')
_MASK_MODES = ('1', 'L', 'I', 'I;16', 'F', 'P', 'LA', 'RGB', 'RGBA')

# A directory on disk or inside a zip: both offer iterdir / is_dir / name / open.
Source = Union[pathlib.Path, zipfile.Path]


class BusiFormatError(ValueError):
  """The manual download is missing or malformed.

  `problems` holds (path, what is wrong) for every bad file, and the message lists them all.
  """

  def __init__(self, summary: str, problems: Iterable[tuple[str, str]] = ()):
    self.problems = sorted(set(problems))
    lines = [summary] + [f'  {path}: {what}' for path, what in self.problems]
    super().__init__('\n'.join(lines))


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
    raise BusiFormatError(
        f'Found several copies of BUSI under {manual_dir}; keep exactly one:',
        [(str(f), 'dataset copy') for f in folders])
  looked_at = [(str(z), 'zip without a BUSI folder inside') for z in zips]
  raise BusiFormatError(
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
    BusiFormatError: listing every missing class folder, unexpected file, image without a mask
      and mask without its image.
  """
  records, problems = _scan(root)
  if problems:
    raise BusiFormatError(f'The BUSI folder {root} is malformed:', problems)
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


def _open(path: Source, modes: tuple[str, ...]) -> Image.Image:
  with path.open('rb') as f:
    data = f.read()
  try:
    image = Image.open(io.BytesIO(data))
    image.load()
  except Image.UnidentifiedImageError as e:
    raise BusiFormatError('', [(str(path), 'unreadable or corrupt PNG (not an image)')]) from e
  except (OSError, SyntaxError, ValueError, EOFError, Image.DecompressionBombError) as e:
    raise BusiFormatError('', [(str(path), f'unreadable or corrupt PNG ({e})')]) from e
  if image.mode not in modes:
    raise BusiFormatError('', [(str(path), f'unsupported PNG mode {image.mode!r}')])
  return image


def read_image(path: Source) -> np.ndarray:
  """Decodes an image as (H, W) uint8 luminance; colour overlays become gray (ITU-R 601)."""
  return np.asarray(_open(path, _IMAGE_MODES).convert('L'))


def read_mask(path: Source) -> np.ndarray:
  """Decodes a mask file as (H, W) bool, True on the lesion.

  Lesion = any non-zero value in the gray or colour channels. With alpha, a constant alpha
  (e.g. BUSI's opaque `benign (54)_mask_1.png`) is ignored; a varying alpha means the lesion was
  painted on a transparent layer, so then alpha > 0 marks the lesion.
  """
  mask = _open(path, _MASK_MODES)
  if mask.mode == 'P':
    mask = mask.convert('RGBA')
  values = np.asarray(mask)
  if values.ndim == 2:
    return values != 0
  if mask.mode in ('LA', 'RGBA'):
    alpha = values[..., -1]
    if alpha.min() != alpha.max():
      return alpha > 0
    values = values[..., :-1]
  return values.any(axis=-1)


def decode(record: Record) -> tuple[np.ndarray, np.ndarray]:
  """Returns the (H, W, 1) uint8 image and its (H, W, 1) uint8 {0, 1} mask (OR of all files).

  Raises:
    BusiFormatError: listing every unreadable file of the record and every mask whose size
      differs from the image.
  """
  problems = []
  try:
    image = read_image(record.image)
  except BusiFormatError as e:
    problems += e.problems
    image = None
  mask = None if image is None else np.zeros(image.shape, bool)
  for path in record.masks:
    try:
      part = read_mask(path)
    except BusiFormatError as e:
      problems += e.problems
      continue
    if image is not None and part.shape != image.shape:
      problems.append((str(path), f'mask is {part.shape[1]}x{part.shape[0]} (WxH) but its image '
                       f'{record.image_id}.png is {image.shape[1]}x{image.shape[0]}'))
    elif mask is not None:
      mask |= part
  if problems:
    raise BusiFormatError(f'Cannot decode {record.image_id}:', problems)
  return image[..., None], mask[..., None].astype(np.uint8)


def read_all(root: Source, fn: Callable[[Record, np.ndarray, np.ndarray], Any]) -> dict[str, Any]:
  """Decodes every image of `root` once, returning {image_id: fn(record, image, mask)}.

  Raises:
    BusiFormatError: after looking at every file, listing all layout and decoding problems.
  """
  records, problems = _scan(root)
  results = {}
  for record in records:
    try:
      image, mask = decode(record)
    except BusiFormatError as e:
      problems += e.problems
      continue
    results[record.image_id] = fn(record, image, mask)
  if problems:
    raise BusiFormatError(
        f'The BUSI folder {root} has {len(set(problems))} bad file(s); fix or replace them '
        f'(e.g. re-download from {KAGGLE_URL}):', problems)
  return results
