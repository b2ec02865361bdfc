"""Dice/IoU, surface distances and the summary against hand-made masks, including empty ones."""
import math

import numpy as np
import pytest
from scipy import ndimage

from unet_flax import metrics


def _box(shape, top, left, height, width):
  mask = np.zeros(shape, bool)
  mask[top:top + height, left:left + width] = True
  return mask


def test_dice_and_iou_of_overlapping_boxes():
  truth = _box((10, 12), 2, 2, 4, 4)  # 16 px
  pred = _box((10, 12), 4, 2, 4, 4)   # 16 px, 8 shared
  score = metrics.score_image('benign (1)', 0, pred, truth)
  assert score.dice == pytest.approx(2 * 8 / 32)
  assert score.iou == pytest.approx(8 / 24)
  assert (score.gt_area, score.pred_area) == (16, 16)


def test_empty_prediction_on_lesion_scores_zero():
  score = metrics.score_image('malignant (3)', 1, np.zeros((5, 5)), _box((5, 5), 0, 0, 2, 2))
  assert score.dice == 0.0 and score.iou == 0.0


def test_both_empty_is_perfect_and_normal_images_get_nan():
  assert metrics.score_image('benign (9)', 0, np.zeros((4, 4)), np.zeros((4, 4))).dice == 1.0
  normal = metrics.score_image('normal (1)', 2, _box((4, 4), 0, 0, 1, 2), np.zeros((4, 4)))
  assert math.isnan(normal.dice) and normal.pred_area == 2


def test_shape_mismatch_names_the_image():
  with pytest.raises(ValueError, match='benign \\(2\\)'):
    metrics.score_image('benign (2)', 0, np.zeros((4, 5)), np.zeros((5, 4)))


def test_summary_per_class_pooled_and_normal_empty_rate():
  truth = _box((10, 10), 0, 0, 5, 5)  # 25 px
  scores = [
      metrics.score_image('benign (1)', 0, truth, truth),                        # Dice 1
      metrics.score_image('benign (2)', 0, _box((10, 10), 0, 0, 5, 1), truth),   # 2*5/30
      metrics.score_image('malignant (1)', 1, np.zeros((10, 10)), truth),        # 0
      metrics.score_image('normal (1)', 2, np.zeros((10, 10)), np.zeros((10, 10))),
      metrics.score_image('normal (2)', 2, _box((10, 10), 0, 0, 3, 3), np.zeros((10, 10))),
  ]
  summary = metrics.summarize(scores)
  benign = [1.0, 10 / 30]
  assert summary['benign']['dice']['mean'] == pytest.approx(np.mean(benign))
  assert summary['benign']['dice']['std'] == pytest.approx(np.std(benign))
  assert summary['malignant']['dice']['mean'] == 0.0
  assert summary['lesion']['dice']['n'] == 3
  assert summary['lesion']['dice']['mean'] == pytest.approx((1 + 10 / 30) / 3)
  # Pooled: intersections 25 + 5 + 0 over areas (50 + 30 + 25).
  assert summary['pooled_dice'] == pytest.approx(2 * 30 / 105)
  # normal (2) predicts 9 px: not empty.
  assert summary['normal'] == {'empty_rate': 0.5, 'n': 2}
  # All images: Dice 1, 1/3, 0 for the lesions; normal (1) empty -> 1, normal (2) -> 0.
  assert summary['all_images_dice'] == pytest.approx((1 + 10 / 30 + 0 + 1 + 0) / 5)
  table = metrics.format_table(summary, 'PROTOCOL LINE')
  assert table.splitlines()[0] == 'PROTOCOL LINE' and 'benign' in table


def _threshold_images():
  truth = _box((10, 10), 2, 2, 4, 4)  # 16 px.
  lesion = np.where(truth, 0.95, 0.05)
  lesion[1, 2:6] = 0.55  # A row above the lesion: inside the mask only at thresholds < 0.55.
  normal = np.where(_box((10, 10), 0, 0, 3, 3), 0.75, 0.02)  # A false 9-px lesion.
  normal[9, 9] = 0.85  # A 1-px speck, under min_fraction at every threshold.
  return [('benign (1)', 0, lesion, truth), ('normal (1)', 2, normal, np.zeros((10, 10)))]


CANDIDATES = (0.3, 0.5, 0.6, 0.8, 0.9)


def test_threshold_is_chosen_by_all_image_dice_with_ties_to_the_preferred_one():
  points = metrics.operating_points(_threshold_images(), CANDIDATES, min_fraction=0.05)
  # 0.3 / 0.5: Dice 2*16/36 on the lesion, normal not empty. 0.6: lesion exact, normal not
  # empty. 0.8 / 0.9: both right (all-image Dice 1; the speck is removed); 0.8 is the closer
  # to 0.5. The lesion keeps a mask at every candidate.
  assert {t: p['all_images_dice'] for t, p in points.items()} == pytest.approx(
      {0.3: 16 / 36, 0.5: 16 / 36, 0.6: 0.5, 0.8: 1.0, 0.9: 1.0})
  assert all(p['sensitivity'] == 1.0 for p in points.values())
  assert metrics.choose_threshold({'a': points}, 0.92, preferred=0.5) == 0.8
  # With a minimum region above the false lesion (10 of 100 px), 0.6 already scores 1.
  points = metrics.operating_points(_threshold_images(), CANDIDATES, 0.1)
  assert metrics.choose_threshold({'a': points}, 0.92, preferred=0.5) == 0.6


def test_threshold_keeps_lesion_scans_masked_before_it_clears_normal_scans():
  images = _threshold_images()
  faint = np.where(_box((10, 10), 5, 5, 4, 4), 0.7, 0.01)  # A lesion the gate doubts: 0.7.
  images += [('malignant (1)', 1, faint, _box((10, 10), 5, 5, 4, 4)),
             ('normal (2)', 2, images[1][2], images[1][3])]
  points = metrics.operating_points(images, CANDIDATES, min_fraction=0.05)
  # At 0.8 / 0.9 the normal scans are empty but the faint lesion is lost (sensitivity 1/2):
  # the all-image Dice alone prefers 0.8 ((1 + 0 + 1 + 1) / 4 against 0.6's (1 + 1) / 4).
  assert points[0.8]['sensitivity'] == 0.5 and points[0.6]['sensitivity'] == 1.0
  assert points[0.8]['all_images_dice'] > points[0.6]['all_images_dice']
  assert metrics.choose_threshold({'a': points}, 0.0, preferred=0.5) == 0.8
  # The floor keeps both lesions: the best all-image Dice at sensitivity 1 is 0.6's.
  assert metrics.choose_threshold({'a': points}, 0.92, preferred=0.5) == 0.6
  # A second dataset whose best sensitivity is 0.5 (reached up to 0.6) lowers its own floor
  # only, and a dataset without lesion scans sets none.
  other = {t: {'all_images_dice': 1.0, 'sensitivity': 0.5 if t <= 0.6 else 0.0}
           for t in CANDIDATES}
  normal_only = {t: {'all_images_dice': float(t >= 0.8), 'sensitivity': float('nan')}
                 for t in CANDIDATES}
  assert metrics.choose_threshold({'a': points, 'b': other, 'c': normal_only}, 0.92, 0.5) == 0.6
  other[0.6]['sensitivity'] = 0.0
  assert metrics.choose_threshold({'a': points, 'b': other}, 0.92, 0.5) == 0.5


def test_bootstrap_interval_of_the_mean_matches_its_standard_error():
  rng = np.random.default_rng(1)
  # Lesion-Dice-like: most images 0.6-0.95, about one in ten a miss at 0.
  dice = np.where(rng.random(400) < 0.1, 0.0, rng.uniform(0.6, 0.95, 400))
  low, high = metrics.bootstrap_ci95(dice)
  assert low < dice.mean() < high
  # Width close to the normal approximation 2 * 1.96 * std / sqrt(n).
  assert high - low == pytest.approx(2 * 1.96 * dice.std() / np.sqrt(dice.size), rel=0.1)
  assert metrics.bootstrap_ci95(dice) == [low, high]  # Fixed seed: reports reproduce.
  quarter_low, quarter_high = metrics.bootstrap_ci95(dice[:100])
  assert quarter_high - quarter_low > 1.6 * (high - low)  # 4x fewer images: ~2x wider.
  assert metrics.bootstrap_ci95([0.7, 0.7, 0.7]) == pytest.approx([0.7, 0.7])
  summary = metrics.summarize([metrics.score_image(f'benign ({i})', 0, m, m)
                               for i, m in enumerate([np.ones((2, 2))] * 3)])
  assert summary['lesion']['dice']['ci95'] == pytest.approx([1.0, 1.0])
  assert np.isnan(summary['malignant']['dice']['ci95']).all()


def _disc(shape, center, radius):
  yy, xx = np.mgrid[:shape[0], :shape[1]]
  return (yy - center[0]) ** 2 + (xx - center[1]) ** 2 <= radius ** 2


def _full_image_distances(pred, truth):
  """The definition, without the bounding box or the distance transform: every surface pixel
  of one mask to the nearest surface pixel of the other, by brute force."""
  cross = np.array([[0, 1, 0], [1, 1, 1], [0, 1, 0]], bool)
  surfaces = [np.argwhere(m ^ ndimage.binary_erosion(m, cross)) for m in (pred, truth)]
  d = np.sqrt(((surfaces[0][:, None] - surfaces[1][None]) ** 2).sum(-1))
  return np.concatenate([d.min(axis=1), d.min(axis=0)])


def test_identical_masks_are_at_distance_zero():
  square = _box((20, 20), 5, 5, 8, 8)
  score = metrics.score_image('benign (1)', 0, square, square)
  assert (score.hd95, score.assd, score.sensitivity, score.precision) == (0, 0, 1, 1)


def test_square_shifted_by_two_pixels():
  truth = _box((20, 30), 5, 5, 10, 10)
  pred = _box((20, 30), 5, 7, 10, 10)  # Shifted right by k = 2.
  score = metrics.score_image('benign (1)', 0, pred, truth)
  # Each 36-px outline to the other (same in both directions, by mirror symmetry):
  # top and bottom rows: 8 px on the other's row (0), 2 px past its corner (1, 2) -> 2 * 3;
  # the leading side (8 px without corners): k = 2 each -> 16;
  # the trailing side, 2 px inside the other square: min(2, distance to its top/bottom row),
  # 1, 2, 2, 2, 2, 2, 2, 1 -> 14. Mean (6 + 16 + 14) / 36 = 1.
  assert score.assd == pytest.approx(1.0)
  # Over a quarter of the distances equal the maximum k, so the 95th percentile is k.
  assert score.hd95 == pytest.approx(2.0)
  assert _full_image_distances(pred, truth).max() == 2.0
  assert score.sensitivity == score.precision == pytest.approx(80 / 100)


def test_concentric_discs_are_their_radius_difference_apart():
  truth = _disc((101, 101), (50, 50), 20)
  pred = _disc((101, 101), (50, 50), 26)
  score = metrics.score_image('malignant (1)', 1, pred, truth)
  assert score.hd95 == pytest.approx(6, abs=1)
  assert score.assd == pytest.approx(6, abs=1)
  assert score.sensitivity == 1.0 and score.precision == pytest.approx(truth.sum() / pred.sum())


def test_empty_prediction_and_normal_images_have_no_distances():
  missed = metrics.score_image('benign (1)', 0, np.zeros((8, 8)), _box((8, 8), 2, 2, 3, 3))
  assert math.isnan(missed.hd95) and math.isnan(missed.assd) and math.isnan(missed.precision)
  assert missed.sensitivity == 0.0
  normal = metrics.score_image('normal (1)', 2, _box((8, 8), 2, 2, 3, 3), np.zeros((8, 8)))
  assert all(math.isnan(v) for v in (normal.hd95, normal.assd, normal.sensitivity,
                                     normal.precision))


@pytest.mark.parametrize('seed', range(4))
def test_bounding_box_distances_equal_the_full_image_definition(seed):
  rng = np.random.default_rng(seed)
  # Random blobs; the even seeds fill the frame so that masks touch the image border.
  size = (48, 64) if seed % 2 == 0 else (24, 30)
  blobs = [ndimage.gaussian_filter(rng.normal(size=size), 3) > 0.05 for _ in range(2)]
  if seed % 2:
    blobs = [np.pad(b, ((30, 9), (5, 40))) for b in blobs]
  pred, truth = blobs
  assert pred.any() and truth.any()
  expected = _full_image_distances(pred, truth)
  np.testing.assert_allclose(np.sort(metrics.surface_distances(pred, truth)), np.sort(expected))
  score = metrics.score_image('benign (1)', 0, pred, truth)
  assert score.hd95 == pytest.approx(np.percentile(expected, 95))
  assert score.assd == pytest.approx(expected.mean())


def test_summary_skips_undefined_distances_and_counts_them():
  truth = _box((20, 20), 5, 5, 10, 10)
  scores = [
      metrics.score_image('benign (1)', 0, truth, truth),                           # HD95 0
      metrics.score_image('benign (2)', 0, _box((20, 20), 5, 7, 10, 10), truth),    # HD95 2
      metrics.score_image('malignant (1)', 1, np.zeros((20, 20)), truth),           # NaN
      metrics.score_image('normal (1)', 2, np.zeros((20, 20)), np.zeros((20, 20))),
  ]
  summary = metrics.summarize(scores)
  assert summary['lesion']['hd95']['mean'] == pytest.approx(1.0)
  assert summary['lesion']['hd95']['n'] == 2 and summary['lesion']['dice']['n'] == 3
  assert summary['lesion']['sensitivity']['mean'] == pytest.approx((1 + 0.8 + 0) / 3)
  assert summary['lesion']['precision']['n'] == 2
  assert summary['malignant']['hd95']['n'] == 0 and math.isnan(summary['malignant']['hd95']['mean'])
  assert set(summary['benign']) == {'dice', 'iou', 'hd95', 'assd', 'sensitivity', 'precision'}
  assert 'unspecified' not in summary
  assert 'HD95' in metrics.format_table(summary, 'PROTOCOL LINE')


def test_unspecified_lesions_get_a_group_when_present():
  unspecified = metrics.CLASS_NAMES.index('unspecified')
  truth = _box((10, 10), 2, 2, 4, 4)
  summary = metrics.summarize([metrics.score_image('x (1)', unspecified, truth, truth)])
  assert summary['unspecified']['dice'] == {'mean': 1.0, 'std': 0.0, 'n': 1, 'ci95': [1.0, 1.0]}
  assert summary['lesion']['dice']['n'] == 1 and summary['benign']['dice']['n'] == 0
  assert 'unspecified' in metrics.format_table(summary, 'PROTOCOL LINE')


def test_auroc_of_known_cases():
  assert metrics.auroc([0.9, 0.8, 0.7], [0.1, 0.2]) == 1.0
  assert metrics.auroc([0.1, 0.2], [0.9, 0.8, 0.7]) == 0.0
  # Pairs (0.5, 0.5) tie (1/2), (0.8, 0.5) right, the two against 0.9 wrong: 1.5 of 4.
  assert metrics.auroc([0.5, 0.8], [0.5, 0.9]) == 0.375
  rng = np.random.default_rng(0)
  low, high = metrics.auroc_ci95(rng.random(200) + 0.5, rng.random(200))
  # Uniform scores shifted by half their range: AUROC 1 - 0.5**2 / 2 = 0.875.
  assert low < 0.875 < high and high - low < 0.1


def test_image_level_sensitivity_specificity_and_auroc():
  def scan(label, area, probability):
    return metrics.ImageScore('x', label, math.nan, math.nan, 0, area, math.nan, math.nan,
                              math.nan, math.nan, probability)

  scores = ([scan(0, 50, 0.9), scan(1, 0, 0.4), scan(3, 20, 0.8), scan(0, 30, 0.7)] +
            [scan(metrics.NORMAL, 0, 0.1), scan(metrics.NORMAL, 10, 0.6)])
  level = metrics.summarize(scores)['image_level']
  assert level['sensitivity']['rate'] == 0.75 and level['sensitivity']['n'] == 4
  assert level['specificity']['rate'] == 0.5 and level['specificity']['n'] == 2
  # 0.4 is below 0.6: 7 of the 8 (lesion, normal) pairs are ranked right.
  assert level['auroc']['value'] == 7 / 8
  assert (level['auroc']['n_lesion'], level['auroc']['n_normal']) == (4, 2)
  assert 'sensitivity 0.750' in metrics.format_table(metrics.summarize(scores), 'p')
  no_normal = metrics.summarize(scores[:4])['image_level']
  assert math.isnan(no_normal['auroc']['value']) and no_normal['specificity']['n'] == 0
