"""Seg-Grad-CAM (Vinogradova, Dibrov & Myers, AAAI 2020) with plain `jax.grad`.

A segmentation net has no class score to explain, so Seg-Grad-CAM explains the sum of the
output logits over a region M of pixels (by default the predicted lesion). The gradient of
that target with respect to a block's activations A comes from the model's 'perturbations'
collection: a zero tensor added to A (`nn.Module.perturb`) whose gradient is dTarget/dA, so
the model needs no rewriting. Channel weights w_k are the spatial means of dTarget/dA_k; the
map ReLU(sum_k w_k A_k) is upsampled (bilinear) to the input and divided by its maximum, so 0
keeps meaning "no evidence".
"""
import functools
from typing import NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np


class LayerGradients(NamedTuple):
  activations: jax.Array  # (B, h, w, C) float32: the layer's output A.
  gradients: jax.Array  # (B, h, w, C) float32: dTarget/dA, per image.
  logits: jax.Array  # (B, H, W) float32.
  region: jax.Array  # (B, H, W) float32 in {0, 1}: the pixels whose logits are summed.


class GradCamResult(NamedTuple):
  cam: np.ndarray  # (B, H, W) float32 in [0, 1].
  logits: np.ndarray  # (B, H, W) float32.
  empty_target: np.ndarray  # (B,) bool: empty region, so the map is all zero.


@functools.partial(jax.jit, static_argnames=('model', 'layer'))
def _gradients(model: nn.Module, layer: str, variables, images, region, threshold):
  """LayerGradients; `region` None means the prediction, logit > logit(threshold)."""
  _, shapes = jax.eval_shape(
      functools.partial(model.apply, train=False, mutable=['perturbations']),
      variables, images)
  # Flax wants every perturbation present once the collection is; only `layer`'s varies.
  zeros = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), shapes['perturbations'])
  if layer not in zeros:
    raise ValueError(f'Unknown layer {layer!r}; this model has {sorted(zeros)}.')

  def target(delta):
    logits, state = model.apply(
        {**variables, 'perturbations': {**zeros, layer: {'activation': delta}}},
        images, train=False, mutable=['intermediates'])
    logits = logits[..., 0]
    if region is None:
      mask = jax.lax.stop_gradient(logits > jax.scipy.special.logit(threshold))
    else:
      mask = region
    mask = mask.astype(jnp.float32)
    activations = state['intermediates'][layer]['activation'][0]
    return jnp.sum(logits * mask), (activations, logits, mask)

  grads, (activations, logits, mask) = jax.grad(target, has_aux=True)(
      zeros[layer]['activation'])
  return LayerGradients(activations.astype(jnp.float32), grads.astype(jnp.float32), logits,
                        mask)


def _region_array(region, images: jax.Array) -> jax.Array | None:
  """'prediction' -> None; 'image' -> ones; a mask of (H, W) or (B, H, W[, 1]) -> (B, H, W)."""
  shape = images.shape[:3]
  if isinstance(region, str):
    if region == 'prediction':
      return None
    if region == 'image':
      return jnp.ones(shape, jnp.float32)
    raise ValueError(f"region must be 'prediction', 'image' or a mask, got {region!r}.")
  mask = np.asarray(region)
  if mask.ndim == 4 and mask.shape[-1] == 1:
    mask = mask[..., 0]
  try:
    return jnp.asarray(np.broadcast_to(mask > 0, shape), jnp.float32)
  except ValueError as e:
    raise ValueError(f'Region mask of shape {mask.shape} does not fit images {shape}.') from e


def layer_gradients(model: nn.Module, variables, images, layer: str = 'bottleneck',
                    region='prediction', threshold: float = 0.5) -> LayerGradients:
  """Activations of `layer` and the gradient of the region's logit sum w.r.t. them.

  BatchNorm runs in inference mode, so images do not interact and the gradient of the
  batch's summed target is each image's own gradient.
  """
  images = jnp.asarray(images, jnp.float32)
  # `model.init` output also holds the hook collections; stale ones would shadow ours.
  state = {k: v for k, v in variables.items() if k not in ('perturbations', 'intermediates')}
  return _gradients(model, layer, state, images, _region_array(region, images), threshold)


@jax.jit
def cam_from_gradients(grads: LayerGradients) -> jax.Array:
  """(B, H, W) Grad-CAM in [0, 1] at the logits' size; all zero where it has no support."""
  weights = jnp.mean(grads.gradients, axis=(1, 2))
  cam = nn.relu(jnp.einsum('bhwc,bc->bhw', grads.activations, weights))
  cam = jax.image.resize(cam, grads.logits.shape, method='bilinear')
  peak = jnp.max(cam, axis=(1, 2), keepdims=True)
  return jnp.where(peak > 0, cam / jnp.where(peak > 0, peak, 1.0), 0.0)


def seg_grad_cam(model: nn.Module, variables, images, layer: str = 'bottleneck',
                 region='prediction', threshold: float = 0.5) -> GradCamResult:
  """Seg-Grad-CAM of float32 images (B, H, W, 1) in [0, 1] for the target `region`.

  `region` is 'prediction' (sigmoid(logit) > threshold, the default), 'image' (every
  pixel) or a binary mask. An empty region has zero gradient, hence an all-zero map; it is
  flagged in `empty_target` for the caller to report. Compiles once per (layer, shape).
  """
  grads = layer_gradients(model, variables, images, layer, region, threshold)
  cam = cam_from_gradients(grads)
  empty = jnp.sum(grads.region, axis=(1, 2)) == 0
  return GradCamResult(*jax.device_get((cam, grads.logits, empty)))


def pointing_hit(cam: np.ndarray, mask: np.ndarray) -> bool:
  """Pointing game (Zhang et al., ECCV 2016, no tolerance): is the CAM maximum in the lesion?

  Both at the same (original) resolution; an all-zero CAM points nowhere, a miss.
  """
  return bool(cam.max() > 0 and mask[np.unravel_index(np.argmax(cam), cam.shape)])
