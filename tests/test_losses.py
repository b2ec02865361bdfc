"""Dice + BCE against hand computations."""
import math

import jax.numpy as jnp
import numpy as np
import pytest

from unet_flax import losses


def _sigmoid(x):
  return 1.0 / (1.0 + math.exp(-x))


def test_bce_matches_hand_computation():
  logits = jnp.array([[[[2.0], [-1.0]], [[0.0], [3.0]]]])  # (1, 2, 2, 1)
  masks = jnp.array([[[[1.0], [0.0]], [[1.0], [0.0]]]])
  expected = -(math.log(_sigmoid(2.0)) + math.log(1 - _sigmoid(-1.0)) +
               math.log(_sigmoid(0.0)) + math.log(1 - _sigmoid(3.0))) / 4
  assert float(losses.bce_loss(logits, masks)) == pytest.approx(expected, rel=1e-6)


def test_bce_is_finite_for_extreme_logits():
  logits = jnp.array([[[[1000.0]], [[-1000.0]]]])
  masks = jnp.array([[[[0.0]], [[1.0]]]])
  assert float(losses.bce_loss(logits, masks)) == pytest.approx(1000.0, rel=1e-6)


def test_soft_dice_matches_hand_computation_per_image():
  logits = jnp.array([[[[2.0], [-1.0]], [[0.0], [3.0]]],
                      [[[0.5], [0.5]], [[0.5], [0.5]]]])
  masks = jnp.array([[[[1.0], [0.0]], [[1.0], [0.0]]],
                     [[[0.0], [0.0]], [[0.0], [0.0]]]])
  p = [_sigmoid(v) for v in (2.0, -1.0, 0.0, 3.0)]
  first = 1 - (2 * (p[0] + p[2]) + 1) / (sum(p) + 2 + 1)
  second = 1 - 1 / (4 * _sigmoid(0.5) + 1)  # Empty mask: only the smoothing term survives.
  expected = (first + second) / 2
  assert float(losses.soft_dice_loss(logits, masks)) == pytest.approx(expected, rel=1e-6)


def test_empty_mask_loss_is_small_for_confident_background_and_large_otherwise():
  masks = jnp.zeros((1, 8, 8, 1))
  assert float(losses.soft_dice_loss(jnp.full((1, 8, 8, 1), -20.0), masks)) < 1e-6
  assert float(losses.soft_dice_loss(jnp.full((1, 8, 8, 1), 20.0), masks)) > 0.98


def test_dice_bce_weights():
  rng = np.random.default_rng(0)
  logits = jnp.asarray(rng.normal(size=(2, 4, 4, 1)), jnp.float32)
  masks = jnp.asarray(rng.random((2, 4, 4, 1)) > 0.5, jnp.float32)
  combined, (dice, bce) = losses.dice_bce_loss(logits, masks, dice_weight=0.3, bce_weight=2.0)
  assert float(dice) == pytest.approx(float(losses.soft_dice_loss(logits, masks)), rel=1e-6)
  assert float(bce) == pytest.approx(float(losses.bce_loss(logits, masks)), rel=1e-6)
  assert float(combined) == pytest.approx(0.3 * float(dice) + 2.0 * float(bce), rel=1e-6)


def test_presence_loss_targets_whether_the_mask_has_any_lesion_pixel():
  masks = jnp.zeros((2, 4, 4, 1)).at[0, 1, 2, 0].set(1.0)  # Image 0: one pixel; image 1: none.
  logits = jnp.array([1.5, 0.5])
  expected = -(math.log(_sigmoid(1.5)) + math.log(1 - _sigmoid(0.5))) / 2
  assert float(losses.presence_loss(logits, masks)) == pytest.approx(expected, rel=1e-6)


def test_deep_supervision_targets_the_average_pooled_mask_weighted_by_inverse_factor():
  masks = jnp.zeros((1, 4, 4, 1)).at[0, :2, :2, 0].set(1.0).at[0, 2, 2, 0].set(1.0)
  half = jnp.array([[[[2.0], [-1.0]], [[0.5], [0.0]]]])  # (1, 2, 2, 1): decoder_1 head.
  quarter = jnp.array([[[[0.3]]]])  # (1, 1, 1, 1): decoder_2 head.
  # Lesion fraction per 2 x 2 cell: [[1, 0], [0, 1/4]]; per 4 x 4 cell: 5/16.
  pooled_half = jnp.array([[[[1.0], [0.0]], [[0.0], [0.25]]]])
  pooled_quarter = jnp.full((1, 1, 1, 1), 5 / 16)
  expected = (losses.dice_bce_loss(half, pooled_half, 0.3, 2.0)[0] / 2 +
              losses.dice_bce_loss(quarter, pooled_quarter, 0.3, 2.0)[0] / 4)
  got = losses.deep_supervision_loss([half, quarter], masks, dice_weight=0.3, bce_weight=2.0)
  assert float(got) == pytest.approx(float(expected), rel=1e-6)
  # Soft BCE by hand for the 1 x 1 head: -(t log s(z) + (1 - t) log(1 - s(z))).
  t, s = 5 / 16, _sigmoid(0.3)
  assert float(losses.bce_loss(quarter, pooled_quarter)) == pytest.approx(
      -(t * math.log(s) + (1 - t) * math.log(1 - s)), rel=1e-6)
