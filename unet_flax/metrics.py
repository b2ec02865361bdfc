"""Segmentation metrics at the resolution the clinician sees.

Everything here works on binary numpy masks of one image at its original size, so the
numbers do not depend on the network's working resolution.
"""
import csv
import dataclasses

import numpy as np
from scipy import ndimage
from scipy import stats

from data.classes import CLASS_NAMES, NORMAL
from unet_flax import imaging

# Lesion classes in label order: every class but normal.
LESION_CLASSES = tuple(name for c, name in enumerate(CLASS_NAMES) if c != NORMAL)
# Surface pixels: mask pixels with a 4-neighbour outside the mask (erosion by the 3x3 cross,
# as MedPy does), which gives a thin 8-connected contour.
_CROSS = ndimage.generate_binary_structure(2, 1)


@dataclasses.dataclass(frozen=True)
class ImageScore:
  image_id: str
  label: int
  dice: float  # NaN for normal images (no lesion to overlap).
  iou: float
  gt_area: int
  pred_area: int
  hd95: float  # Pixels; NaN for normal images and when the prediction or truth is empty.
  assd: float  # Pixels; NaN as hd95.
  sensitivity: float  # NaN for normal images and for an empty truth under a non-empty prediction.
  precision: float  # NaN for normal images and for an empty prediction.
  # Image-level "is there a lesion?" probability (the presence head's); NaN if not recorded.
  lesion_probability: float = float('nan')


def surface_distances(pred: np.ndarray, truth: np.ndarray) -> np.ndarray:
  """Distances (pixels) from every surface pixel of each boolean mask to the other's surface.

  Both directed sets, concatenated; both masks must be non-empty. Computed on the bounding box
  of pred | truth padded by 1 px, which is exact (every surface pixel and all its neighbours
  lie inside it, and the Euclidean distance needs nothing outside) and much cheaper than the
  whole image for a lesion of a tenth of it.
  """
  rows = np.flatnonzero((pred | truth).any(axis=1))
  cols = np.flatnonzero((pred | truth).any(axis=0))
  box = (slice(max(rows[0] - 1, 0), rows[-1] + 2), slice(max(cols[0] - 1, 0), cols[-1] + 2))
  pred, truth = pred[box], truth[box]
  pred_surface = pred ^ ndimage.binary_erosion(pred, _CROSS)
  truth_surface = truth ^ ndimage.binary_erosion(truth, _CROSS)
  return np.concatenate([ndimage.distance_transform_edt(~truth_surface)[pred_surface],
                         ndimage.distance_transform_edt(~pred_surface)[truth_surface]])


def score_image(image_id: str, label: int, pred: np.ndarray, truth: np.ndarray,
                distances: bool = True, lesion_probability: float = float('nan')) -> ImageScore:
  """Overlap and boundary metrics of one binary prediction against its ground truth.

  Both empty counts as a perfect Dice/IoU/sensitivity (1.0), the convention that keeps an empty
  ground truth from dividing by zero; a normal image gets NaN since its quality is judged by
  emptiness. HD95 is the 95th percentile of the union of both directed surface-distance sets
  (MedPy `hd95`; MONAI's `percentile=95` instead takes the larger of the two directed 95th
  percentiles), ASSD the mean over that same union (MONAI `symmetric=True`; MedPy's `assd`
  averages the two directed means). Both are NaN when either mask is empty: no surface to
  measure from, and the miss already shows as Dice 0. `distances=False` leaves them NaN, for
  searches that only need the overlap.
  """
  pred = pred.astype(bool)
  truth = truth.astype(bool)
  if pred.shape != truth.shape:
    raise ValueError(f'{image_id}: prediction {pred.shape} and mask {truth.shape} differ.')
  inter = int(np.logical_and(pred, truth).sum())
  pred_area, gt_area = int(pred.sum()), int(truth.sum())
  union = pred_area + gt_area - inter
  nan = float('nan')
  dice = iou = hd95 = assd = sensitivity = precision = nan
  if label != NORMAL:
    dice = 2.0 * inter / (pred_area + gt_area) if union else 1.0
    iou = inter / union if union else 1.0
    sensitivity = inter / gt_area if gt_area else (nan if pred_area else 1.0)
    precision = inter / pred_area if pred_area else nan
    if distances and pred_area and gt_area:
      surface = surface_distances(pred, truth)
      hd95, assd = float(np.percentile(surface, 95)), float(surface.mean())
  return ImageScore(image_id, int(label), dice, iou, gt_area, pred_area, hd95, assd,
                    sensitivity, precision, float(lesion_probability))


BOOTSTRAP_RESAMPLES = 2000
GROUP_METRICS = ('dice', 'iou', 'hd95', 'assd', 'sensitivity', 'precision')


def bootstrap_ci95(values, seed: int = 0, resamples: int = BOOTSTRAP_RESAMPLES) -> list[float]:
  """95 % percentile-bootstrap interval of the mean of per-image `values` (fixed seed).

  Why: on ~100 test lesions with a Dice spread of ~0.3, a mean moves by several hundredths
  with the images drawn; the interval says how far a reported mean is from a target.
  """
  values = np.asarray(values, dtype=np.float64)
  if values.size == 0:
    return [float('nan'), float('nan')]
  if np.all(values == values[0]):  # Every resample has the same mean.
    return [float(values[0])] * 2
  interval = stats.bootstrap((values,), np.mean, n_resamples=resamples, method='percentile',
                             rng=np.random.default_rng(seed)).confidence_interval
  return [float(interval.low), float(interval.high)]


def auroc(positive, negative, axis: int = -1):
  """Area under the ROC curve of scores `positive` (lesion scans) against `negative` (normal
  scans): the chance that a random lesion scan scores above a random normal one, ties half.

  It is the Mann-Whitney U statistic of `positive` divided by the number of pairs.
  """
  positive, negative = np.asarray(positive, np.float64), np.asarray(negative, np.float64)
  u = stats.mannwhitneyu(positive, negative, axis=axis, method='asymptotic').statistic
  return u / (positive.shape[axis] * negative.shape[axis])


def auroc_ci95(positive, negative, seed: int = 0,
               resamples: int = BOOTSTRAP_RESAMPLES) -> list[float]:
  """95 % percentile-bootstrap interval of `auroc`, resampling lesion and normal scans apart
  (every resample keeps both classes)."""
  if len(positive) < 2 or len(negative) < 2:
    return [float('nan'), float('nan')]
  interval = stats.bootstrap((np.asarray(positive, np.float64), np.asarray(negative, np.float64)),
                             auroc, n_resamples=resamples, method='percentile', vectorized=True,
                             rng=np.random.default_rng(seed)).confidence_interval
  return [float(interval.low), float(interval.high)]


def _rate(indicators) -> dict:
  """The share of True among `indicators`, their count and its bootstrap interval."""
  values = np.asarray(indicators, np.float64)
  return {'rate': float(values.mean()) if values.size else float('nan'), 'n': int(values.size),
          'ci95': bootstrap_ci95(values)}


def image_level(scores: list[ImageScore]) -> dict:
  """'Is there a lesion in this scan?', the clinician's first question.

  Sensitivity: lesion scans whose mask is not empty; specificity: normal scans left empty
  (both as the written masks say); AUROC of the image-level lesion probability, lesion against
  normal scans, over the scans where it was recorded. NaN where a class is missing.
  """
  lesion = [s for s in scores if s.label != NORMAL]
  normal = [s for s in scores if s.label == NORMAL]
  positive = [s.lesion_probability for s in lesion if np.isfinite(s.lesion_probability)]
  negative = [s.lesion_probability for s in normal if np.isfinite(s.lesion_probability)]
  defined = bool(positive) and bool(negative)
  return {'sensitivity': _rate([s.pred_area > 0 for s in lesion]),
          'specificity': _rate([s.pred_area == 0 for s in normal]),
          'auroc': {'value': float(auroc(positive, negative)) if defined else float('nan'),
                    'n_lesion': len(positive), 'n_normal': len(negative),
                    'ci95': auroc_ci95(positive, negative)}}


def _mean_std(values) -> dict:
  """Mean, std, count and interval over the finite `values` (NaN marks 'undefined here')."""
  values = np.asarray(values, dtype=np.float64)
  values = values[np.isfinite(values)]
  if values.size == 0:
    return {'mean': float('nan'), 'std': float('nan'), 'n': 0, 'ci95': bootstrap_ci95(values)}
  return {'mean': float(values.mean()), 'std': float(values.std()), 'n': int(values.size),
          'ci95': bootstrap_ci95(values)}


def all_images_dice(scores: list[ImageScore]) -> float:
  """One number for every image, what chooses checkpoints and thresholds: the mean of the
  lesion scans' Dice and of the normal scans' 1 when predicted empty, else 0."""
  per_image = [s.dice if s.label != NORMAL else float(s.pred_area == 0) for s in scores]
  return float(np.mean(per_image)) if per_image else float('nan')


def summarize(scores: list[ImageScore]) -> dict:
  """Per-class mean +- std of each metric (with a bootstrap 95 % interval of the mean), pooled
  Dice, the normal-image empty rate, and the all-image Dice that chooses checkpoints.

  `lesion` pools every non-normal image (per-image mean); benign and malignant always get a
  group, other lesion classes only when present. A metric's `n` counts the images where it is
  defined (HD95 skips empty predictions). `pooled_dice` is 2*sum|P&G| / (sum|P| + sum|G|) over
  all lesion images, which weights big lesions more.
  """
  lesion = [s for s in scores if s.label != NORMAL]
  normal = [s for s in scores if s.label == NORMAL]
  summary = {'num_images': len(scores)}
  groups = [('lesion', lesion)] + [
      (CLASS_NAMES[c], [s for s in lesion if s.label == c]) for c in range(len(CLASS_NAMES))
      if c != NORMAL and (c < NORMAL or any(s.label == c for s in lesion))]
  for name, group in groups:
    summary[name] = {metric: _mean_std([getattr(s, metric) for s in group])
                     for metric in GROUP_METRICS}
  # Pooled Dice from areas: |P&G| = (|P| + |G|) * dice / 2 per image.
  inter = sum(s.dice * (s.pred_area + s.gt_area) / 2 for s in lesion)
  total = sum(s.pred_area + s.gt_area for s in lesion)
  summary['pooled_dice'] = float(2 * inter / total) if total else float('nan')
  empty = [s.pred_area == 0 for s in normal]
  summary['normal'] = {'empty_rate': float(np.mean(empty)) if normal else float('nan'),
                       'n': len(normal)}
  summary['all_images_dice'] = all_images_dice(scores)
  summary['image_level'] = image_level(scores)
  return summary


def operating_points(images, candidates, min_fraction: float) -> dict:
  """{threshold: {'all_images_dice', 'sensitivity'}} over `images` for each candidate
  probability threshold; sensitivity (lesion scans given a mask) is NaN without lesion scans.

  `images` holds (image_id, label, probability map, truth) at the original size. Meant for
  the validation split: the gate's product P(pixel | lesion) x P(lesion) puts a false lesion on
  a normal scan at about the presence probability, so a threshold above it clears the scan, at
  the price of shrinking, or emptying, the lesion masks. Masks are made as everywhere else
  (`imaging.lesion_mask`, specks below `min_fraction` of the image removed).
  """
  points = {}
  for threshold in candidates:
    scores = [score_image(image_id, label,
                          imaging.lesion_mask(probability, threshold, min_fraction), truth,
                          distances=False)
              for image_id, label, probability, truth in images]
    lesion = [s.pred_area > 0 for s in scores if s.label != NORMAL]
    points[float(threshold)] = {'all_images_dice': all_images_dice(scores),
                                'sensitivity': float(np.mean(lesion)) if lesion else float('nan')}
  return points


def choose_threshold(points_by_dataset: dict, min_sensitivity: float, preferred: float) -> float:
  """The operating point: sensitivity first, up to a floor, then the mean all-image Dice.

  `points_by_dataset` maps each dataset to its `operating_points`. A candidate is admissible
  when every dataset with lesion scans reaches `min_sensitivity` at it, or, where no candidate
  reaches that floor, the highest sensitivity any candidate reaches there: an empty mask on a
  lesion scan is the costlier error, and the all-image Dice alone buys empty normal scans with
  emptied lesion scans. Among the admissible, the highest mean all-image Dice wins; ties go to
  the candidate closest to `preferred`. Sensitivity only falls as the threshold rises, so
  the smallest candidate is always admissible.
  """
  candidates = list(next(iter(points_by_dataset.values())))
  admissible = set(candidates)
  for points in points_by_dataset.values():
    sensitivity = {t: points[t]['sensitivity'] for t in candidates}
    if all(np.isnan(v) for v in sensitivity.values()):
      continue
    floor = min(min_sensitivity, max(v for v in sensitivity.values() if not np.isnan(v)))
    admissible &= {t for t, v in sensitivity.items() if v >= floor}
  mean_dice = {t: np.mean([p[t]['all_images_dice'] for p in points_by_dataset.values()])
               for t in admissible}
  return max(mean_dice, key=lambda t: (mean_dice[t], -abs(t - preferred)))


def write_per_image_csv(scores: list[ImageScore], path: str) -> None:
  """One row per image: the ImageScore fields, the label as its class name."""
  with open(path, 'w', newline='') as f:
    writer = csv.DictWriter(f, fieldnames=[field.name for field in
                                           dataclasses.fields(ImageScore)])
    writer.writeheader()
    for score in scores:
      writer.writerow({**dataclasses.asdict(score), 'label': CLASS_NAMES[score.label]})


def read_per_image_csv(path: str) -> list[ImageScore]:
  """The ImageScores of a `per_image.csv` written by `write_per_image_csv`.

  Float columns missing from reports written before they existed read as NaN, so old and new
  reports still compare on the metrics they share.
  """
  with open(path, newline='') as f:
    rows = list(csv.DictReader(f))
  fields = dataclasses.fields(ImageScore)
  scores = []
  for row in rows:
    values = {}
    for field in fields:
      if field.name == 'label':
        values['label'] = CLASS_NAMES.index(row['label'])
      elif field.type is float:
        values[field.name] = float(row.get(field.name, 'nan'))
      else:
        values[field.name] = field.type(row[field.name])
    scores.append(ImageScore(**values))
  return scores


def format_table(summary: dict, protocol: str) -> str:
  """A plain-text table of a summary, with the protocol stated above the numbers."""
  lines = [protocol, f"{'group':<11} {'n':>4} {'Dice mean+-std':>16} {'IoU mean+-std':>16} "
                    f"{'Dice mean 95% CI':>17} {'HD95 px (n)':>14}"]
  for name in ('lesion',) + LESION_CLASSES:
    if name not in summary:
      continue
    d, i, h = summary[name]['dice'], summary[name]['iou'], summary[name]['hd95']
    lines.append(f"{name:<11} {d['n']:>4} {d['mean']:>8.3f}+-{d['std']:.3f}"
                 f"{i['mean']:>10.3f}+-{i['std']:.3f}"
                 f"{d['ci95'][0]:>11.3f}-{d['ci95'][1]:.3f}"
                 f"{h['mean']:>9.1f} ({h['n']})")
  lines.append(f"pooled Dice (lesion images): {summary['pooled_dice']:.3f}")
  n = summary['normal']
  lines.append(f"normal images predicted empty: {n['empty_rate']:.3f} of {n['n']}")
  lines.append(f"all-image Dice (normal: 1 if empty, else 0): {summary['all_images_dice']:.3f}")
  level = summary['image_level']
  rates = [f"{name} {level[name]['rate']:.3f} ({level[name]['ci95'][0]:.3f}-"
           f"{level[name]['ci95'][1]:.3f}, n={level[name]['n']})"
           for name in ('sensitivity', 'specificity') if level[name]['n']]
  auc = level['auroc']
  if np.isfinite(auc['value']):
    rates.append(f"AUROC {auc['value']:.3f} ({auc['ci95'][0]:.3f}-{auc['ci95'][1]:.3f})")
  lines.append('image level, lesion present (95% CI): ' + ', '.join(rates))
  return '\n'.join(lines)
