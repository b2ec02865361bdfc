"""The Predictor that every evaluation, validation and threshold choice runs through."""
import numpy as np

from configs import default
from unet_flax import evaluate
from unet_flax import model as model_lib
from unet_flax import sharding


def test_a_short_last_batch_reuses_the_full_batch_program_and_keeps_its_logits():
  config = default.get_config().model
  config.update(base_features=4, depth=2, deep_supervision=0)
  model = model_lib.create_model(config)
  variables = model_lib.init_variables(model, 0, 32)
  predictor = evaluate.Predictor(model, sharding.create_mesh(), batch_size=4, flip_tta=True)
  images = np.random.default_rng(0).uniform(size=(4, 32, 32, 1)).astype(np.float32)
  full = predictor.logits(variables, images)
  short = predictor.logits(variables, images[:3])
  assert full.shape == (4, 32, 32) and short.shape == (3, 32, 32)
  np.testing.assert_allclose(short, full[:3], atol=1e-6)
  assert predictor._apply._cache_size() == 1  # pylint: disable=protected-access
  assert np.ptp(full) > 0  # Real logits, not a constant.


def test_protocol_note_says_whether_the_threshold_was_chosen_on_validation():
  best = {'epoch': 18, 'val_all_images_dice': 0.8014}
  assert evaluate.best_note(best).endswith("eval.threshold, not chosen on validation")
  chosen = evaluate.best_note({**best, 'threshold': 0.4, 'val_all_images_dice_by_threshold': {
      '0.3': 0.79, '0.4': 0.8014}})
  assert 'threshold 0.4 chosen on validation all-image Dice 0.8014 among 0.3: 0.7900' in chosen
  assert 'not chosen' not in chosen
  floored = evaluate.best_note({**best, 'threshold': 0.3, 'min_sensitivity': 0.92,
                                'val_all_images_dice_by_threshold': {'0.3': 0.79, '0.4': 0.8014},
                                'val_operating_points': {
                                    'busi': {'0.3': {'sensitivity': 0.96}, '0.4': {'sensitivity': 0.9}},
                                    'busbra': {'0.3': {'sensitivity': 1.0}, '0.4': {'sensitivity': 1.0}},
                                    'normals': {'0.3': {'sensitivity': float('nan')},
                                                '0.4': {'sensitivity': float('nan')}}}})
  assert ('threshold 0.3 chosen on validation (image-level sensitivity up to 0.92 on every '
          'dataset first, then all-image Dice; lowest sensitivity / all-image Dice: '
          '0.3: 0.960 / 0.7900, 0.4: 0.900 / 0.8014)') in floored
