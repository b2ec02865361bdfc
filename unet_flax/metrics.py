"""Segmentation metrics at the resolution the clinician sees.

Everything here works on binary numpy masks of one image at its original size, so the
numbers do not depend on the network's working resolution.
"""
import dataclasses

import numpy as np

CLASS_NAMES = ('benign', 'malignant', 'normal')
NORMAL = 2


@dataclasses.dataclass(frozen=True)
class ImageScore:
  image_id: str
  label: int
  dice: float  # NaN for normal images (no lesion to overlap).
  iou: float
  gt_area: int
  pred_area: int


def score_image(image_id: str, label: int, pred: np.ndarray, truth: np.ndarray) -> ImageScore:
  """Dice and IoU of one binary prediction against its ground truth.

  Both empty counts as a perfect match (1.0), the convention that keeps an empty ground truth
  from dividing by zero; a normal image gets NaN since its quality is judged by emptiness.
  """
  pred = pred.astype(bool)
  truth = truth.astype(bool)
  if pred.shape != truth.shape:
    raise ValueError(f'{image_id}: prediction {pred.shape} and mask {truth.shape} differ.')
  inter = int(np.logical_and(pred, truth).sum())
  pred_area, gt_area = int(pred.sum()), int(truth.sum())
  union = pred_area + gt_area - inter
  if label == NORMAL:
    dice = iou = float('nan')
  elif union == 0:
    dice = iou = 1.0
  else:
    dice = 2.0 * inter / (pred_area + gt_area)
    iou = inter / union
  return ImageScore(image_id, int(label), dice, iou, gt_area, pred_area)


BOOTSTRAP_RESAMPLES = 2000


def bootstrap_ci95(values) -> list[float]:
  """95 % percentile-bootstrap interval of the mean of per-image `values` (fixed seed).

  Why: on ~100 test lesions with a Dice spread of ~0.3, a mean moves by several hundredths
  with the images drawn; the interval says how far a reported mean is from a target.
  """
  values = np.asarray(values, dtype=np.float64)
  if values.size == 0:
    return [float('nan'), float('nan')]
  rng = np.random.default_rng(0)
  means = values[rng.integers(0, values.size, (BOOTSTRAP_RESAMPLES, values.size))].mean(axis=1)
  return [float(q) for q in np.percentile(means, [2.5, 97.5])]


def _mean_std(values) -> dict:
  values = np.asarray(values, dtype=np.float64)
  if values.size == 0:
    return {'mean': float('nan'), 'std': float('nan'), 'n': 0, 'ci95': bootstrap_ci95(values)}
  return {'mean': float(values.mean()), 'std': float(values.std()), 'n': int(values.size),
          'ci95': bootstrap_ci95(values)}


def summarize(scores: list[ImageScore], min_lesion_area: int) -> dict:
  """Per-class mean +- std Dice/IoU (with a bootstrap 95 % interval of the mean), pooled Dice,
  the normal-image empty rate, and the all-image Dice that chooses checkpoints.

  `lesion` pools benign and malignant images (per-image mean); `pooled_dice` is
  2*sum|P&G| / (sum|P| + sum|G|) over all lesion images, which weights big lesions more.
  """
  lesion = [s for s in scores if s.label != NORMAL]
  normal = [s for s in scores if s.label == NORMAL]
  summary = {'num_images': len(scores)}
  for name, group in [('lesion', lesion)] + [
      (CLASS_NAMES[c], [s for s in lesion if s.label == c]) for c in range(NORMAL)]:
    summary[name] = {'dice': _mean_std([s.dice for s in group]),
                     'iou': _mean_std([s.iou for s in group])}
  # Pooled Dice from areas: |P&G| = (|P| + |G|) * dice / 2 per image.
  inter = sum(s.dice * (s.pred_area + s.gt_area) / 2 for s in lesion)
  total = sum(s.pred_area + s.gt_area for s in lesion)
  summary['pooled_dice'] = float(2 * inter / total) if total else float('nan')
  empty = [s.pred_area < min_lesion_area for s in normal]
  summary['normal'] = {'empty_rate': float(np.mean(empty)) if normal else float('nan'),
                       'n': len(normal), 'min_lesion_area': int(min_lesion_area)}
  # One number for every image: a normal scan scores 1 when predicted empty, else 0.
  per_image = [s.dice for s in lesion] + [float(e) for e in empty]
  summary['all_images_dice'] = float(np.mean(per_image)) if per_image else float('nan')
  return summary


def choose_threshold(images, candidates, preferred: float, min_lesion_area: int):
  """The probability threshold with the highest all-image Dice over `images`.

  `images` holds (image_id, label, probability map, truth) at the original size; ties go to
  the candidate closest to `preferred`. Returns (threshold, {threshold: all-image Dice}).
  Meant for the validation split: the gate's product P(pixel | lesion) x P(lesion) puts a
  false lesion on a normal scan at about the presence probability, so a threshold above it
  clears the scan, at the price of shrinking the lesion masks.
  """
  dice_by_threshold = {}
  for threshold in candidates:
    scores = [score_image(image_id, label, probability > threshold, truth)
              for image_id, label, probability, truth in images]
    dice_by_threshold[float(threshold)] = summarize(scores, min_lesion_area)['all_images_dice']
  best = max(dice_by_threshold,
             key=lambda t: (dice_by_threshold[t], -abs(t - preferred)))
  return best, dice_by_threshold


def format_table(summary: dict, protocol: str) -> str:
  """A plain-text table of a summary, with the protocol stated above the numbers."""
  lines = [protocol, f"{'group':<10} {'n':>4} {'Dice mean+-std':>16} {'IoU mean+-std':>16} "
                    f"{'Dice mean 95% CI':>17}"]
  for name in ('lesion',) + CLASS_NAMES[:NORMAL]:
    d, i = summary[name]['dice'], summary[name]['iou']
    lines.append(f"{name:<10} {d['n']:>4} {d['mean']:>8.3f}+-{d['std']:.3f}"
                 f"{i['mean']:>10.3f}+-{i['std']:.3f}"
                 f"{d['ci95'][0]:>11.3f}-{d['ci95'][1]:.3f}")
  lines.append(f"pooled Dice (lesion images): {summary['pooled_dice']:.3f}")
  n = summary['normal']
  lines.append(f"normal images predicted empty (< {n['min_lesion_area']} px): "
               f"{n['empty_rate']:.3f} of {n['n']}")
  lines.append(f"all-image Dice (normal: 1 if empty, else 0): {summary['all_images_dice']:.3f}")
  return '\n'.join(lines)
