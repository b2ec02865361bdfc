"""Paired model comparison on synthetic score lists and a per_image.csv round trip."""
import dataclasses
import math

import numpy as np
import pytest

from unet_flax import compare
from unet_flax import metrics


def _scores(dice, prefix='benign', label=0):
  return [metrics.ImageScore(f'{prefix} ({i})', label, d, d, 100, 100, 5.0, 2.0, d, d)
          for i, d in enumerate(dice)]


def _dice_spread(n=100, seed=0):
  """Lesion-Dice-like: mostly 0.5-0.95, some misses; the image decides most of the value."""
  rng = np.random.default_rng(seed)
  return np.where(rng.random(n) < 0.1, 0.0, rng.uniform(0.5, 0.95, n))


def test_a_constant_gain_is_found_on_every_image():
  b = _dice_spread()
  result = compare.paired_difference(_scores(b + 0.05), _scores(b))
  assert result['n'] == 100 and result['mean_difference'] == pytest.approx(0.05)
  assert result['ci95'] == pytest.approx([0.05, 0.05])
  assert (result['a_better'], result['b_better'], result['ties']) == (100, 0, 0)
  assert result['mean_a'] - result['mean_b'] == pytest.approx(0.05)


def test_identical_models_differ_by_exactly_zero():
  b = _dice_spread()
  result = compare.paired_difference(_scores(b), _scores(b))
  assert result['mean_difference'] == 0.0 and result['ci95'] == [0.0, 0.0]
  assert result['ties'] == 100


def test_pairing_removes_the_spread_shared_by_both_models():
  b = _dice_spread()
  a = np.clip(b + 0.02 + np.random.default_rng(1).normal(0, 0.02, b.size), 0, 1)
  low, high = compare.paired_difference(_scores(a), _scores(b), seed=3)['ci95']
  unpaired_low, unpaired_high = metrics.bootstrap_ci95(a)
  assert low > 0  # The gain is resolved ...
  assert high - low < 0.5 * (unpaired_high - unpaired_low)  # ... with a much tighter interval.


def test_lower_is_better_for_distances_and_normal_images_are_skipped():
  normal = dataclasses.replace(_scores([math.nan], 'normal', metrics.NORMAL)[0], hd95=math.nan)
  a = _scores([0.8, 0.8]) + [normal]
  b = [dataclasses.replace(s, hd95=s.hd95 + 1) for s in a]
  result = compare.paired_difference(a, b, 'hd95')
  assert result['n'] == 2 and result['mean_difference'] == -1.0 and result['a_better'] == 2
  assert compare.paired_difference(a, b, 'dice')['n'] == 2


def test_dicts_are_accepted_and_mismatched_images_are_named():
  a = [{'image_id': f'benign ({i})', 'dice': 0.5} for i in range(8)]
  b = [{'image_id': f'benign ({i})', 'dice': 0.5} for i in range(1, 9)]
  with pytest.raises(ValueError, match=r"2 only on one side.*'benign \(0\)'.*'benign \(8\)'"):
    compare.paired_difference(a, b)
  assert compare.paired_difference(a[1:], b[:-1])['n'] == 7


def test_normal_empty_rate_is_paired_over_normal_images():
  lesion = _scores([0.7])
  normal_a = [dataclasses.replace(s, pred_area=a) for s, a in
              zip(_scores([math.nan] * 4, 'normal', metrics.NORMAL), (0, 10, 100, 0))]
  normal_b = [dataclasses.replace(s, pred_area=a) for s, a in zip(normal_a, (500, 10, 100, 0))]
  result = compare.paired_empty_rate(lesion + normal_a, lesion + normal_b)
  assert result['n'] == 4 and result['rate_a'] == 0.5 and result['rate_b'] == 0.25
  assert result['difference'] == 0.25
  assert 0.0 <= result['ci95'][0] <= 0.25 <= result['ci95'][1] <= 1.0


def _masks_scored(seed):
  rng = np.random.default_rng(seed)
  truth = np.zeros((40, 40), bool)
  truth[10:30, 8:28] = True
  scores = []
  for i in range(12):
    pred = np.roll(truth, rng.integers(-4, 5, 2), axis=(0, 1)) & (rng.random((40, 40)) < 0.95)
    label = (0, 1, metrics.NORMAL, 3)[i % 4]
    scores.append(metrics.score_image(f'{metrics.CLASS_NAMES[label]} ({i})', label,
                                      pred if i != 5 else np.zeros_like(pred),
                                      truth if label != metrics.NORMAL else np.zeros_like(truth)))
  return scores


def test_per_image_csv_round_trip_keeps_nans(tmp_path):
  scores = _masks_scored(0)
  assert any(math.isnan(s.hd95) for s in scores if s.label != metrics.NORMAL)
  metrics.write_per_image_csv(scores, tmp_path / 'per_image.csv')
  read = metrics.read_per_image_csv(tmp_path / 'per_image.csv')
  # NaN != NaN, so compare the rows as text.
  assert [repr(s) for s in read] == [repr(s) for s in scores]


def test_compare_reports_and_its_text(tmp_path):
  for name, seed in (('a', 0), ('b', 1)):
    (tmp_path / name).mkdir()
    metrics.write_per_image_csv(_masks_scored(seed), tmp_path / name / 'per_image.csv')
  result = compare.compare_reports(tmp_path / 'a', tmp_path / 'b')
  assert result['dice']['n'] == 9 and result['normal_empty']['n'] == 3
  assert result['hd95']['n'] == 8  # Image 5 (malignant) has an empty prediction.
  text = compare.format_comparison(result, 'crop', 'base')
  assert text.startswith('Dice (lesion images, n=9): crop ')
  assert 'crop-base' in text and 'Normal scans predicted empty (specificity, n=3)' in text
  assert 'Lesion scans given a mask (sensitivity, n=9)' in text
  assert compare.compare_reports(tmp_path / 'a', tmp_path / 'a')['dice']['ci95'] == [0.0, 0.0]


def test_compare_reports_without_normal_images(tmp_path):
  (tmp_path / 'a').mkdir()
  metrics.write_per_image_csv(_scores([0.6, 0.7]), tmp_path / 'a' / 'per_image.csv')
  result = compare.compare_reports(tmp_path / 'a', tmp_path / 'a')
  assert result['normal_empty'] is None
  assert 'Normal scans predicted empty: none' in compare.format_comparison(result, 'A', 'B')


def _image_level_scores(probabilities, labels, areas):
  return [metrics.ImageScore(f'scan ({i})', label, math.nan, math.nan, 0, area, math.nan,
                             math.nan, math.nan, math.nan, p)
          for i, (p, label, area) in enumerate(zip(probabilities, labels, areas))]


def test_sensitivity_is_paired_over_lesion_scans_only():
  labels = [0, 1, 3, metrics.NORMAL]
  a = _image_level_scores([0.9] * 4, labels, (10, 0, 5, 7))
  b = _image_level_scores([0.9] * 4, labels, (10, 10, 0, 0))
  result = compare.paired_detection_rate(a, b)
  assert result['n'] == 3 and result['rate_a'] == pytest.approx(2 / 3)
  assert result['rate_b'] == pytest.approx(2 / 3) and result['difference'] == 0.0


def test_paired_auroc_of_known_rankings():
  labels = [0] * 3 + [metrics.NORMAL] * 3
  perfect = _image_level_scores([0.9, 0.8, 0.7, 0.3, 0.2, 0.1], labels, [1] * 6)
  # One lesion scan (0.25) below two normal scans: 7 of 9 pairs right.
  worse = _image_level_scores([0.9, 0.8, 0.25, 0.3, 0.2, 0.28], labels, [1] * 6)
  result = compare.paired_auroc(perfect, worse)
  assert (result['n_lesion'], result['n_normal']) == (3, 3)
  assert result['auroc_a'] == 1.0 and result['auroc_b'] == pytest.approx(7 / 9)
  assert result['difference'] == pytest.approx(2 / 9)
  assert 0.0 <= result['ci95'][0] <= 2 / 9 <= result['ci95'][1]
  assert compare.paired_auroc(perfect, perfect)['ci95'] == [0.0, 0.0]
  # Without recorded probabilities (reports written before them) there is no AUROC.
  unknown = _image_level_scores([math.nan] * 6, labels, [1] * 6)
  assert compare.paired_auroc(perfect, unknown) is None
