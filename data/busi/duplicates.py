"""Groups duplicate BUSI images and splits whole groups, so no lesion leaks into the test set.

BUSI holds exact copies (even across classes) and near copies: re-saved crops a few pixels
apart, rescaled copies, and frames of the same lesion with or without calipers. Two images are
near duplicates when BOTH agree:
  * layout: a 16x16 thumbnail (zero mean, unit norm) correlates >= 0.85, and
  * detail: the high-pass part of a 32x32 thumbnail correlates >= 0.5.
Thumbnails of the whole image make the check insensitive to small crop shifts and rescaling;
the high-pass part tells the same scan from different scans with a similar layout (the
ultrasound fan makes layouts alike). Calibrated on the 620-image copy: every pair above both
thresholds was checked by eye to show the same scan; the closest different-scan pair seen has
detail 0.44 / layout 0.79.
"""
import collections
import dataclasses
import hashlib
from typing import Mapping, Optional, Sequence

import numpy as np
from PIL import Image, ImageFilter
from scipy.sparse import csgraph

LAYOUT_THRESHOLD = 0.85
DETAIL_THRESHOLD = 0.5
# (name, fraction of the images of each class); whole duplicate groups move together.
SPLIT_FRACTIONS = (('train', 0.7), ('validation', 0.1), ('test', 0.2))
# Normal scans give validation twice their share, taken from train: the normal-image empty
# rate is half of what chooses the checkpoint, and 10 % of BUSI's normals (11 of the 620-image
# copy) measure it only in steps of 0.09. Test keeps the same [0.8, 1) slice, so the test
# images are the same as with SPLIT_FRACTIONS.
CLASS_SPLIT_FRACTIONS = {'normal': (('train', 0.6), ('validation', 0.2), ('test', 0.2))}
# Changing this reshuffles which group lands in which split.
_SPLIT_SALT = 'busi-split-v1'


@dataclasses.dataclass(frozen=True)
class Fingerprint:
  digest: str  # Hash of the decoded pixels: equal for exact duplicates.
  layout: np.ndarray  # (256,) float32, unit norm.
  detail: np.ndarray  # (1024,) float32, unit norm.


def _unit(values: np.ndarray) -> np.ndarray:
  values = values.astype(np.float32).ravel()
  values -= values.mean()
  norm = np.linalg.norm(values)
  return values / norm if norm > 0 else values


def fingerprint(image: np.ndarray) -> Fingerprint:
  """Summarises an (H, W) or (H, W, 1) uint8 image for `group`."""
  image = np.ascontiguousarray(np.squeeze(image, axis=-1) if image.ndim == 3 else image)
  digest = hashlib.sha256(f'{image.shape}'.encode() + image.tobytes()).hexdigest()
  thumb = Image.fromarray(image).resize((64, 64), Image.BOX)
  small = thumb.resize((32, 32), Image.BOX)
  blurred = small.filter(ImageFilter.GaussianBlur(2))
  detail = np.asarray(small, np.float32) - np.asarray(blurred, np.float32)
  return Fingerprint(digest, _unit(np.asarray(thumb.resize((16, 16), Image.BOX))), _unit(detail))


def group(fingerprints: Mapping[str, Fingerprint]) -> dict[str, str]:
  """Returns {image_id: group id}; the group id is the smallest image_id in the group.

  Duplicate pairs are joined transitively (connected components of the "same picture"
  graph), so the result does not depend on the order of `fingerprints`.
  """
  ids = sorted(fingerprints)
  digests = np.array([fingerprints[i].digest for i in ids])
  same = digests[:, None] == digests[None, :]
  if len(ids) > 1:
    layout = np.stack([fingerprints[i].layout for i in ids])
    detail = np.stack([fingerprints[i].detail for i in ids])
    same |= (layout @ layout.T >= LAYOUT_THRESHOLD) & (detail @ detail.T >= DETAIL_THRESHOLD)
  _, components = csgraph.connected_components(same, directed=False)
  first = {}  # Component -> its smallest index (= smallest image_id, since ids are sorted).
  for i, component in enumerate(components):
    first.setdefault(component, i)
  return {image_id: ids[first[c]] for image_id, c in zip(ids, components)}


def _split_key(group_id: str, salt: str = _SPLIT_SALT) -> str:
  return hashlib.sha256(f'{salt}:{group_id}'.encode()).hexdigest()


def assign_splits(labels: Mapping[str, str], groups: Mapping[str, str],
                  fractions: Optional[Sequence[tuple[str, float]]] = None,
                  salt: str = _SPLIT_SALT) -> dict[str, str]:
  """Returns {image_id: split name}, stratified by class, whole groups on one side.

  A group counts for its majority class (ties: the alphabetically first class). Within a class
  the groups are ordered by a hash of their id (not by listing order or a random state, so the
  same files give the same splits on any machine) and laid end to end over [0, 1); a group goes
  to the split its midpoint falls in. This hits the fractions up to one group per boundary.
  A split left empty (tiny datasets only) gets one group from the largest split.

  Args:
    labels: {image_id: class name}.
    groups: {image_id: group id}, as returned by `group`.
    fractions: ((split name, fraction), ...) for every class; None: BUSI's `split_fractions`.
    salt: mixed into the hash, so another dataset's splits do not follow BUSI's.
  """
  members = collections.defaultdict(list)
  for image_id in sorted(labels):
    members[groups[image_id]].append(image_id)
  strata = collections.defaultdict(list)
  for group_id, ids in members.items():
    votes = collections.Counter(labels[i] for i in ids)
    label = min(votes, key=lambda c: (-votes[c], c))
    strata[label].append(group_id)
  group_splits = {}
  for label, group_ids in strata.items():
    total = sum(len(members[g]) for g in group_ids)
    start = 0
    for group_id in sorted(group_ids, key=lambda g: _split_key(g, salt)):
      size = len(members[group_id])
      group_splits[group_id] = _split_at((start + size / 2) / total,
                                         fractions or split_fractions(label))
      start += size
  _fill_empty_splits(group_splits, members,
                     [name for name, _ in fractions or SPLIT_FRACTIONS], salt)
  return {i: group_splits[g] for g, ids in members.items() for i in ids}


def _fill_empty_splits(group_splits: dict[str, str], members: Mapping[str, list[str]],
                       names: Sequence[str], salt: str):
  """Moves one group into each empty split, as TFDS cannot write an empty split.

  Only tiny datasets (tests, subsets) need this: the split with the most groups gives its
  smallest group (ties: by split key).
  """
  for name in names:
    by_split = collections.defaultdict(list)
    for group_id, split in group_splits.items():
      by_split[split].append(group_id)
    donor = max(names, key=lambda s: len(by_split[s]))
    if by_split[name] or len(by_split[donor]) < 2:
      continue
    moved = min(by_split[donor], key=lambda g: (len(members[g]), _split_key(g, salt)))
    group_splits[moved] = name


def split_fractions(label: str) -> tuple[tuple[str, float], ...]:
  """(split name, fraction) for the images of one class."""
  return CLASS_SPLIT_FRACTIONS.get(label, SPLIT_FRACTIONS)


def _split_at(position: float, fractions) -> str:
  end = 0.0
  for name, fraction in fractions:
    end += fraction
    if position < end:
      return name
  return fractions[-1][0]
