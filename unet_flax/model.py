"""A readable linen U-Net whose blocks are named, so any of them can be inspected.

Layout (Ronneberger et al. 2015): per level two (3x3 conv, norm, ReLU); 2x2 max-pool down;
2x upsampling (transposed conv or resize + conv) up; skip concatenation; 1x1 conv head that
returns one channel of lesion logits; optionally an image-level lesion-present head on the
bottleneck, and deep-supervision heads on the coarser decoder blocks (training only). Every block's output is `sow`n into the 'intermediates' collection and
`perturb`s it in the 'perturbations' collection under `<block name>/activation`; both are
no-ops unless asked for, and they let Grad-CAM read activations and take `jax.grad` with
respect to them.
"""
import functools
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from unet_flax.config_checks import NORMS, UPSAMPLES


def layer_names(depth: int) -> list[str]:
  """Names of the inspectable blocks, input side to output side."""
  return ([f'encoder_{i}' for i in range(depth)] + ['bottleneck'] +
          [f'decoder_{i}' for i in reversed(range(depth))])


class ConvBlock(nn.Module):
  """Two (3x3 conv, normalisation, ReLU), optional dropout; exposes its output."""
  features: int
  norm: str = 'batch'
  dropout: float = 0.0
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, train: bool):
    for i in range(2):
      x = nn.Conv(self.features, (3, 3), use_bias=self.norm == 'none', dtype=self.dtype,
                  name=f'conv_{i}')(x)
      if self.norm == 'batch':
        x = nn.BatchNorm(use_running_average=not train, momentum=0.9, dtype=self.dtype,
                         name=f'norm_{i}')(x)
      elif self.norm == 'group':
        x = nn.GroupNorm(num_groups=min(8, self.features), dtype=self.dtype,
                         name=f'norm_{i}')(x)
      x = nn.relu(x)
    if self.dropout:
      x = nn.Dropout(self.dropout, deterministic=not train)(x)
    x = self.perturb('activation', x)
    self.sow('intermediates', 'activation', x)
    return x


class PixelShuffleConvTranspose(nn.Module):
  """`nn.ConvTranspose(features, (2, 2), strides=(2, 2))`: same parameters, same outputs.

  One matmul per input pixel, then depth-to-space. On XLA:CPU the kernel gradient of a
  strided transposed conv is a dilated convolution that runs at a few GFLOP/s and took about
  a third of the train step; here every gradient is a plain matmul.
  """
  features: int
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x):
    kernel = self.param('kernel', nn.initializers.lecun_normal(),
                        (2, 2, x.shape[-1], self.features))
    bias = self.param('bias', nn.initializers.zeros_init(), (self.features,))
    x, kernel, bias = nn.dtypes.promote_dtype(x, kernel, bias, dtype=self.dtype)
    b, h, w, _ = x.shape
    # lax.conv_transpose (behind nn.ConvTranspose) uses the spatially flipped kernel.
    y = jnp.einsum('bhwc,ijco->bhiwjo', x, kernel[::-1, ::-1])
    return y.reshape(b, 2 * h, 2 * w, self.features) + bias


def max_pool_2x2(x):
  """`nn.max_pool(x, (2, 2), strides=(2, 2))` as reshape + max: same values and gradients.

  XLA:CPU turns the reduce-window version's gradient into a variadic reduce-window over four
  iota index tensors, several times slower.
  """
  b, h, w, c = x.shape
  return x.reshape(b, h // 2, 2, w // 2, 2, c).max(axis=(2, 4))


class Upsample(nn.Module):
  """Doubles the spatial size and sets the channel count."""
  features: int
  method: str = 'transpose'
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x):
    if self.method == 'transpose':
      return PixelShuffleConvTranspose(self.features, dtype=self.dtype,
                                       name='ConvTranspose_0')(x)
    b, h, w, c = x.shape
    x = jax.image.resize(x, (b, 2 * h, 2 * w, c), method='bilinear')
    return nn.Conv(self.features, (3, 3), dtype=self.dtype)(x)


class PresenceHead(nn.Module):
  """Image-level "is there a lesion?" logit, (B,), from global context (the bottleneck).

  A pixel classifier sees a patch; a normal scan with a lesion-like shadow fools it. Whether
  the image holds a lesion at all is a whole-image question, so it gets its own head.
  """
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x):
    return nn.Dense(1, dtype=self.dtype)(jnp.mean(x, axis=(1, 2)))[:, 0]


def gate_logits(mask_logits, presence_logits):
  """Logit of sigmoid(mask) * sigmoid(presence), computed stably.

  P(pixel is lesion) = P(pixel is lesion | the image has one) * P(the image has one); with
  q = s(a) s(b), logit(q) = a + b - log(1 + e^a + e^b).
  """
  b = presence_logits[:, None, None, None]
  # log(1 + e^a + e^b) = logaddexp(softplus(a), b): elementwise, fuses into one XLA loop.
  return mask_logits + b - jnp.logaddexp(jax.nn.softplus(mask_logits), b)


class UNet(nn.Module):
  """U-Net returning float32 logits of shape (B, H, W, 1).

  H and W must be divisible by 2**depth. `dtype` is the compute dtype (bfloat16 for mixed
  precision); parameters stay float32. With `presence_head`, inference returns the mask
  logits gated by the image-level lesion probability (`gate_logits`); training returns the
  raw mask logits and `sow`s the presence logits into the 'aux' collection, so each head gets
  its own loss. With `deep_supervision=k`,
  decoder_1 ... decoder_k get their own 1x1 logits head too, sown as 'aux'/'deep_logits'
  (coarsest first) for the training loss only.
  """
  base_features: int = 32
  depth: int = 4
  norm: str = 'batch'
  dropout: float = 0.0
  upsample: str = 'transpose'
  presence_head: bool = False
  deep_supervision: int = 0
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, train: bool = False):
    if self.norm not in NORMS:
      raise ValueError(f'model.norm must be one of {NORMS}, got {self.norm!r}')
    if self.upsample not in UPSAMPLES:
      raise ValueError(f'model.upsample must be one of {UPSAMPLES}, got {self.upsample!r}')
    if not 0 <= self.deep_supervision < self.depth:
      raise ValueError(f'model.deep_supervision must be in [0, depth - 1 = {self.depth - 1}], '
                       f'got {self.deep_supervision}')
    factor = 2**self.depth
    if x.shape[1] % factor or x.shape[2] % factor:
      raise ValueError(f'Image size {x.shape[1:3]} must be divisible by 2**depth = {factor}.')
    x = x.astype(self.dtype)
    skips = []
    for level in range(self.depth):
      x = ConvBlock(self.base_features * 2**level, self.norm, dtype=self.dtype,
                    name=f'encoder_{level}')(x, train)
      skips.append(x)
      x = max_pool_2x2(x)
    x = bottleneck = ConvBlock(self.base_features * 2**self.depth, self.norm, self.dropout,
                               self.dtype, name='bottleneck')(x, train)
    for level in reversed(range(self.depth)):
      features = self.base_features * 2**level
      x = Upsample(features, self.upsample, self.dtype, name=f'upsample_{level}')(x)
      x = jnp.concatenate([x, skips[level]], axis=-1)
      x = ConvBlock(features, self.norm, dtype=self.dtype, name=f'decoder_{level}')(x, train)
      if 1 <= level <= self.deep_supervision:
        # Built in inference too (same parameters either way); XLA drops the unused output.
        self.sow('aux', 'deep_logits', nn.Conv(1, (1, 1), dtype=self.dtype,
                                               name=f'head_{level}')(x).astype(jnp.float32))
    logits = nn.Conv(1, (1, 1), dtype=self.dtype, name='head')(x).astype(jnp.float32)
    if not self.presence_head:
      return logits
    presence = PresenceHead(self.dtype, name='presence')(bottleneck).astype(jnp.float32)
    self.sow('aux', 'presence_logits', presence)
    return logits if train else gate_logits(logits, presence)


def create_model(model_config, half_precision: bool = False) -> UNet:
  """Builds the U-Net from `config.model`."""
  return UNet(base_features=model_config.base_features, depth=model_config.depth,
              norm=model_config.norm, dropout=model_config.dropout,
              upsample=model_config.upsample,
              presence_head=model_config.presence_head,
              deep_supervision=model_config.deep_supervision,
              dtype=jnp.bfloat16 if half_precision else jnp.float32)


def _one_view(model: UNet, variables, images):
  """(B, S, S) logits and the (B,) presence logits (None without a presence head)."""
  logits, state = model.apply(variables, images, train=False, mutable=['aux'])
  presence = state.get('aux', {}).get('presence_logits')
  # `sow` appends to what `variables` may already hold: this call's value is the last.
  return logits[..., 0], None if presence is None else presence[-1]


@functools.partial(jax.jit, static_argnames=('model', 'flip_tta'))
def inference_outputs(model: UNet, variables, images, flip_tta: bool):
  """(B, S, S) logits in inference mode and the (B,) presence logits (None without a presence
  head); with `flip_tta`, each is the mean of the image's and its left-right mirror's.

  A lesion is a lesion in the mirrored scan too (training augments with that flip), so the
  mean of the two views cancels some of either view's errors, for twice the compute.
  """
  logits, presence = _one_view(model, variables, images)
  if flip_tta:
    mirrored, mirrored_presence = _one_view(model, variables, images[:, :, ::-1])
    logits = (logits + mirrored[:, :, ::-1]) / 2
    if presence is not None:
      presence = (presence + mirrored_presence) / 2
  return logits, presence


@functools.partial(jax.jit, static_argnames=('model', 'flip_tta'))
def inference_logits(model: UNet, variables, images, flip_tta: bool):
  """The logits of `inference_outputs`: what evaluation thresholds."""
  return inference_outputs(model, variables, images, flip_tta)[0]


@functools.partial(jax.jit, static_argnums=(0, 2))
def init_variables(model: UNet, seed, image_size: int) -> dict:
  """Parameters and BatchNorm statistics only, initialised in one compiled program.

  Un-jitted, `init` dispatches every initializer op by op; jitted with the default threefry
  PRNG it compiles for ~20 s on two cores. The 'rbg' PRNG compiles in a fraction of that and
  is just as good for drawing initial weights.
  `init` also fills the 'perturbations' and 'intermediates' hook collections; they are not
  state, so they are dropped here rather than trained, checkpointed or restored.
  """
  rng = jax.random.key(seed, impl='unsafe_rbg')
  variables = model.init(rng, jnp.zeros((1, image_size, image_size, 1)))
  return {k: v for k, v in variables.items() if k in ('params', 'batch_stats')}
