"""Dice + BCE on logits: BCE gives dense per-pixel gradients, Dice counters the heavy
background/lesion imbalance of ultrasound masks."""
import jax
import jax.numpy as jnp
import optax


def soft_dice_loss(logits, masks, smooth: float = 1.0):
  """1 - soft Dice per image, averaged over the batch.

  The smoothing term makes an empty mask well defined: the loss is then
  1 - 1 / (sum(p) + 1), which pushes every probability towards zero.
  """
  probs = jax.nn.sigmoid(logits.astype(jnp.float32))
  masks = masks.astype(jnp.float32)
  axes = tuple(range(1, logits.ndim))
  intersection = jnp.sum(probs * masks, axis=axes)
  total = jnp.sum(probs, axis=axes) + jnp.sum(masks, axis=axes)
  return jnp.mean(1.0 - (2.0 * intersection + smooth) / (total + smooth))


def bce_loss(logits, masks):
  """Mean pixel-wise binary cross-entropy, computed stably from logits."""
  return jnp.mean(optax.sigmoid_binary_cross_entropy(logits.astype(jnp.float32),
                                                     masks.astype(jnp.float32)))


def dice_bce_loss(logits, masks, dice_weight: float = 1.0, bce_weight: float = 1.0):
  """The weighted sum, and its two terms (dice, bce) unweighted, for logging."""
  dice, bce = soft_dice_loss(logits, masks), bce_loss(logits, masks)
  return dice_weight * dice + bce_weight * bce, (dice, bce)


def presence_loss(presence_logits, masks):
  """BCE of the image-level lesion-present logits (B,) against "the mask is not empty"."""
  present = jnp.any(masks > 0, axis=tuple(range(1, masks.ndim)))
  return jnp.mean(optax.sigmoid_binary_cross_entropy(presence_logits.astype(jnp.float32),
                                                     present.astype(jnp.float32)))
