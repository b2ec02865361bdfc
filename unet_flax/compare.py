"""Paired comparison of two models evaluated on the same images: how this project ranks models.

Two models' means on ~100 test lesions each carry a bootstrap interval of several hundredths,
yet most of that spread is which images are hard, shared by both models. Bootstrapping the
per-image difference (resampling images) removes it, so a small but consistent gain shows.
"""
import dataclasses
import json
import os

import numpy as np

from unet_flax import metrics

LOWER_IS_BETTER = frozenset({'hd95', 'assd'})


def _mean(values: np.ndarray) -> float:
  return float(values.mean()) if values.size else float('nan')


def _by_id(scores) -> dict:
  """{image_id: row dict} of ImageScores or dicts; a repeated id would silently pair wrongly."""
  rows = {}
  for score in scores:
    row = dataclasses.asdict(score) if dataclasses.is_dataclass(score) else score
    if row['image_id'] in rows:
      raise ValueError(f"image {row['image_id']!r} is scored twice.")
    rows[row['image_id']] = row
  return rows


def _paired(scores_a, scores_b) -> tuple[dict, dict]:
  a, b = _by_id(scores_a), _by_id(scores_b)
  only = sorted(a.keys() ^ b.keys())
  if only:
    raise ValueError(f'the two score lists cover different images; {len(only)} only on one '
                     f'side, e.g. {only[:5]}')
  return a, b


def paired_difference(scores_a, scores_b, metric: str = 'dice', seed: int = 0,
                      resamples: int = metrics.BOOTSTRAP_RESAMPLES) -> dict:
  """Mean per-image difference a - b of `metric` with a percentile-bootstrap 95 % interval.

  Uses the images where both values are finite (the lesion images for Dice; for HD95 those
  where both predictions are non-empty). `a_better` counts images where a wins, i.e. a higher
  value, or a lower one for the distances in LOWER_IS_BETTER; |difference| < 1e-9 is a tie.
  """
  a, b = _paired(scores_a, scores_b)
  pairs = np.array([(a[i][metric], b[i][metric]) for i in sorted(a)], np.float64).reshape(-1, 2)
  pairs = pairs[np.isfinite(pairs).all(axis=1)]
  diff = pairs[:, 0] - pairs[:, 1]
  wins = -diff if metric in LOWER_IS_BETTER else diff
  ties = np.abs(diff) < 1e-9
  return {'metric': metric, 'n': len(diff), 'mean_a': _mean(pairs[:, 0]),
          'mean_b': _mean(pairs[:, 1]), 'mean_difference': _mean(diff),
          'ci95': metrics.bootstrap_ci95(diff, seed, resamples),
          'a_better': int((~ties & (wins > 0)).sum()), 'b_better': int((~ties & (wins < 0)).sum()),
          'ties': int(ties.sum())}


def _paired_rate(scores_a, scores_b, normal: bool, seed: int, resamples: int) -> dict:
  """Image-level rates of a and b on the same scans and their paired difference a - b (of
  the 0/1 indicators) with its bootstrap 95 % interval: on normal scans (`normal`), the share
  left empty (specificity); on lesion scans, the share with a mask (sensitivity)."""
  a, b = _paired(scores_a, scores_b)
  ids = sorted(i for i in a if (a[i]['label'] == metrics.NORMAL) == normal)

  def indicators(rows):
    return np.array([(rows[i]['pred_area'] == 0) == normal for i in ids], np.float64)

  hits_a, hits_b = indicators(a), indicators(b)
  return {'n': len(ids), 'rate_a': _mean(hits_a), 'rate_b': _mean(hits_b),
          'difference': _mean(hits_a - hits_b),
          'ci95': metrics.bootstrap_ci95(hits_a - hits_b, seed, resamples)}


def paired_empty_rate(scores_a, scores_b, seed: int = 0,
                      resamples: int = metrics.BOOTSTRAP_RESAMPLES) -> dict:
  """Normal scans predicted empty by a and by b (specificity), paired as `_paired_rate`."""
  return _paired_rate(scores_a, scores_b, True, seed, resamples)


def paired_detection_rate(scores_a, scores_b, seed: int = 0,
                          resamples: int = metrics.BOOTSTRAP_RESAMPLES) -> dict:
  """Lesion scans given a mask by a and by b (sensitivity), paired as `_paired_rate`."""
  return _paired_rate(scores_a, scores_b, False, seed, resamples)


def paired_auroc(scores_a, scores_b, seed: int = 0,
                 resamples: int = metrics.BOOTSTRAP_RESAMPLES) -> dict | None:
  """Image-level AUROC of a and b on the same scans and the difference a - b, with a 95 %
  bootstrap interval that resamples the same lesion and normal scans for both models.

  None when either class is missing or a report lacks the image-level probability.
  """
  a, b = _paired(scores_a, scores_b)
  ids = sorted(a)
  values = np.array([(a[i]['lesion_probability'], b[i]['lesion_probability']) for i in ids],
                    np.float64).reshape(-1, 2)
  lesion = np.array([a[i]['label'] != metrics.NORMAL for i in ids], bool)
  if not np.isfinite(values).all() or lesion.sum() < 2 or (~lesion).sum() < 2:
    return None
  positive, negative = values[lesion], values[~lesion]
  rng = np.random.default_rng(seed)
  pick_p = rng.integers(len(positive), size=(resamples, len(positive)))
  pick_n = rng.integers(len(negative), size=(resamples, len(negative)))
  diff = (metrics.auroc(positive[pick_p, 0], negative[pick_n, 0]) -
          metrics.auroc(positive[pick_p, 1], negative[pick_n, 1]))
  auc_a = float(metrics.auroc(positive[:, 0], negative[:, 0]))
  auc_b = float(metrics.auroc(positive[:, 1], negative[:, 1]))
  return {'n_lesion': len(positive), 'n_normal': len(negative), 'auroc_a': auc_a,
          'auroc_b': auc_b, 'difference': auc_a - auc_b,
          'ci95': [float(q) for q in np.percentile(diff, [2.5, 97.5])]}


def compare_reports(dir_a: str, dir_b: str) -> dict:
  """Paired Dice, IoU, HD95, image-level sensitivity, specificity (normal scans left empty)
  and AUROC of two report folders (each holding the `per_image.csv` of the same split)."""
  a = metrics.read_per_image_csv(os.path.join(dir_a, 'per_image.csv'))
  b = metrics.read_per_image_csv(os.path.join(dir_b, 'per_image.csv'))
  result = {metric: paired_difference(a, b, metric) for metric in ('dice', 'iou', 'hd95')}
  normal, lesion = paired_empty_rate(a, b), paired_detection_rate(a, b)
  result['normal_empty'] = normal if normal['n'] else None
  result['sensitivity'] = lesion if lesion['n'] else None
  result['auroc'] = paired_auroc(a, b)
  return result


def format_comparison(result: dict, name_a: str, name_b: str) -> str:
  """One line per metric: both means, the paired difference with its interval, the wins."""
  titles = {'dice': 'Dice (lesion images', 'iou': 'IoU (lesion images',
            'hd95': 'HD95 px, lower is better (lesion images both predicted non-empty'}
  lines = []
  for metric, title in titles.items():
    r = result[metric]
    digits = 1 if metric in LOWER_IS_BETTER else 3
    lines.append(
        f"{title}, n={r['n']}): {name_a} {r['mean_a']:.{digits}f} vs {name_b} "
        f"{r['mean_b']:.{digits}f}, {name_a}-{name_b} {r['mean_difference']:+.{digits}f} "
        f"(95% CI {r['ci95'][0]:+.{digits}f} .. {r['ci95'][1]:+.{digits}f}); "
        f"{name_a} better on {r['a_better']}, {name_b} on {r['b_better']}, ties {r['ties']}")
  for key, title in (('sensitivity', 'Lesion scans given a mask (sensitivity'),
                     ('normal_empty', 'Normal scans predicted empty (specificity')):
    r = result[key]
    if r is None:
      lines.append(f'{title.split(" (")[0]}: none in these reports.')
    else:
      lines.append(
          f"{title}, n={r['n']}): {name_a} {r['rate_a']:.3f} vs {name_b} {r['rate_b']:.3f}, "
          f"{name_a}-{name_b} {r['difference']:+.3f} "
          f"(95% CI {r['ci95'][0]:+.3f} .. {r['ci95'][1]:+.3f})")
  r = result['auroc']
  if r is None:
    lines.append('Image-level AUROC: needs lesion and normal scans and recorded image-level '
                 'probabilities in both reports.')
  else:
    lines.append(
        f"Image-level AUROC (lesion n={r['n_lesion']}, normal n={r['n_normal']}): {name_a} "
        f"{r['auroc_a']:.3f} vs {name_b} {r['auroc_b']:.3f}, {name_a}-{name_b} "
        f"{r['difference']:+.3f} (95% CI {r['ci95'][0]:+.3f} .. {r['ci95'][1]:+.3f})")
  return '\n'.join(lines)


def write_comparison(dir_a: str, dir_b: str, name_a: str, name_b: str) -> str:
  """Compares two report folders of the same split, saves `comparison.json` in `dir_a`
  (naming both folders) and returns the printable lines."""
  result = compare_reports(dir_a, dir_b)
  with open(os.path.join(dir_a, 'comparison.json'), 'w') as f:
    json.dump({'a': os.path.abspath(dir_a), 'b': os.path.abspath(dir_b), **result}, f,
              indent=2)
  return f'Paired comparison, a = {name_a}, b = {name_b}:\n' + format_comparison(result, 'a', 'b')
