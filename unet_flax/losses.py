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


def deep_supervision_loss(deep_logits, masks, dice_weight: float = 1.0,
                          bce_weight: float = 1.0):
  """Dice + BCE of each coarse decoder head (B, S/f, S/f, 1) against the mask average-pooled
  by f (a soft target: the lesion fraction of each cell), weighted 1/f as in nnU-Net.

  Why: the coarse decoder blocks get a direct gradient towards where the lesion is, which
  regularises a small network trained on a few hundred scans.
  """
  b, h, w, c = masks.shape
  total = jnp.zeros(())
  for logits in deep_logits:
    f = h // logits.shape[1]
    target = masks.astype(jnp.float32).reshape(b, h // f, f, w // f, f, c).mean(axis=(2, 4))
    total += dice_bce_loss(logits, target, dice_weight, bce_weight)[0] / f
  return total
