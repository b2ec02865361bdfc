"""Tiny BUSI look-alikes in the Kaggle layout, so tests never need the real download.

Images are smooth random fields (like ultrasound at thumbnail scale), so distinct seeds are
never mistaken for duplicates while shifted crops of one field are.
"""
import dataclasses
import pathlib
import zipfile
from typing import Optional, Sequence

import numpy as np
from PIL import Image

DATASET_DIR = 'Dataset_BUSI_with_GT'
SHAPE = (40, 56)  # (H, W) of the default images.


@dataclasses.dataclass
class Entry:
  """One image of a fixture tree and how to save it."""
  image_id: str  # e.g. 'benign (3)'; the class is the first word.
  image: np.ndarray  # (H, W) uint8 gray, or (H, W, 3) uint8 colour.
  masks: Sequence[np.ndarray]  # (H, W) bool, one file each: `_mask`, `_mask_1`, ...
  image_mode: str = 'L'  # 'L', or 'RGB' (gray stored in three channels, or colour).
  mask_mode: str = '1'  # '1', 'L01' (8-bit 0/1), 'L255', 'RGB' or 'RGBA' (opaque).

  @property
  def label(self) -> str:
    return self.image_id.split(' ')[0]


def smooth_image(seed: int, shape: tuple[int, int] = SHAPE) -> np.ndarray:
  """A (H, W) uint8 random field, smooth at the scale duplicate detection looks at."""
  rng = np.random.default_rng(seed)
  coarse = Image.fromarray(rng.integers(0, 256, (7, 9), dtype=np.uint8))
  field = np.asarray(coarse.resize(shape[::-1], Image.BICUBIC), np.float32)
  field += rng.normal(0, 4, shape)
  return np.clip(field, 0, 255).astype(np.uint8)


def ellipse_mask(shape: tuple[int, int], center: tuple[float, float],
                 radii: tuple[float, float]) -> np.ndarray:
  rows, cols = np.ogrid[:shape[0], :shape[1]]
  return ((rows - center[0]) / radii[0]) ** 2 + ((cols - center[1]) / radii[1]) ** 2 <= 1


def default_spec(per_class: int = 3, shape: tuple[int, int] = SHAPE) -> list[Entry]:
  """`per_class` distinct images per class, one lesion each (normal: one empty RGB mask)."""
  entries = []
  for c, label in enumerate(('benign', 'malignant', 'normal')):
    for n in range(1, per_class + 1):
      image = smooth_image(100 * c + n, shape)
      if label == 'normal':
        entries.append(Entry(f'{label} ({n})', image, [np.zeros(shape, bool)], mask_mode='RGB'))
      else:
        lesion = ellipse_mask(shape, (shape[0] / 2, shape[1] / 2), (shape[0] / 5, shape[1] / 4))
        entries.append(Entry(f'{label} ({n})', image, [lesion]))
  return entries


def encode_mask(mask: np.ndarray, mode: str) -> Image.Image:
  """Saves a bool mask the ways BUSI and other sources store them."""
  if mode == '1':
    return Image.fromarray(mask).convert('1')
  if mode == 'L01':
    return Image.fromarray(mask.astype(np.uint8), 'L')
  if mode == 'L255':
    return Image.fromarray(mask.astype(np.uint8) * 255, 'L')
  if mode == 'RGB':
    return Image.fromarray(np.repeat(mask[..., None].astype(np.uint8) * 255, 3, axis=-1))
  if mode == 'RGBA':
    rgb = np.repeat(mask[..., None].astype(np.uint8) * 255, 3, axis=-1)
    return Image.fromarray(np.concatenate([rgb, np.full_like(rgb[..., :1], 255)], -1), 'RGBA')
  raise ValueError(f'unknown mask mode {mode!r}')


def write_kaggle_tree(root: pathlib.Path, spec: Optional[Sequence[Entry]] = None) -> pathlib.Path:
  """Writes `root/Dataset_BUSI_with_GT/<class>/<class> (N)[_mask[_K]].png`; returns that folder.

  All three class folders are created even when `spec` has no image of a class.
  """
  dataset = pathlib.Path(root) / DATASET_DIR
  for label in ('benign', 'malignant', 'normal'):
    (dataset / label).mkdir(parents=True, exist_ok=True)
  for entry in default_spec() if spec is None else spec:
    folder = dataset / entry.label
    image = entry.image
    if entry.image_mode == 'RGB' and image.ndim == 2:
      image = np.repeat(image[..., None], 3, axis=-1)
    Image.fromarray(image).save(folder / f'{entry.image_id}.png')
    for k, mask in enumerate(entry.masks):
      suffix = '_mask' if k == 0 else f'_mask_{k}'
      encode_mask(mask, entry.mask_mode).save(folder / f'{entry.image_id}{suffix}.png')
  return dataset


def zip_tree(dataset: pathlib.Path, zip_path: pathlib.Path) -> pathlib.Path:
  """Zips a dataset folder like Kaggle's archive.zip (members `Dataset_BUSI_with_GT/...`).

  Only files are stored, no folder entries, as some zip tools do: readers must cope.
  """
  with zipfile.ZipFile(zip_path, 'w') as archive:
    for path in sorted(p for p in pathlib.Path(dataset).rglob('*') if p.is_file()):
      archive.write(path, f'{DATASET_DIR}/{path.relative_to(dataset).as_posix()}')
  return zip_path
