"""Generated ultrasound-like scans: a DEMO data source, not medical data.

They let the whole project (tests, the synthetic config, the end-to-end demo) run without the
Kaggle download. Each example has exactly the features of the `busi` TFDS builder, so the input
pipeline cannot tell them apart. What is imitated, so that a U-Net has something real-ish to
learn: multiplicative (Rayleigh) speckle on layered tissue whose echo fades with depth, and
dark (hypoechoic) lesions with irregular borders that cast a posterior acoustic shadow
(malignant-like) or enhancement (benign-like). Everything is a pure function of a seed.
"""
from collections.abc import Sequence

import ml_collections
import numpy as np
import tensorflow as tf

LABEL_NAMES = ('benign', 'malignant', 'normal')
NORMAL = 2
# Original sizes vary like BUSI's, but small so that tests and demos stay fast.
HEIGHTS = (96, 160)
WIDTHS = (112, 200)
# Different seeds keep the splits disjoint; ids are numbered across splits in this order.
_SPLIT_SEEDS = {'train': 1, 'validation': 2, 'test': 3}


def _smooth(x: np.ndarray, passes: int) -> np.ndarray:
  """Cheap blur (repeated 3x3 box filter) to give noise a spatial correlation length."""
  for _ in range(passes):
    p = np.pad(x, 1, mode='edge')
    x = sum(p[i:i + x.shape[0], j:j + x.shape[1]] for i in range(3) for j in range(3)) / 9
  return x


def _tissue(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
  """Mean echogenicity: bright skin line, layered parenchyma, attenuation with depth."""
  y = np.linspace(0.0, 1.0, h)[:, None]
  depth = 0.25 + 0.75 * np.exp(-rng.uniform(1.0, 2.0) * y)
  x = np.linspace(-0.5, 0.5, w)[None, :]
  layers = 1 + 0.2 * np.sin(2 * np.pi * (rng.uniform(2, 5) * (y + rng.uniform(-0.2, 0.2) * x)
                                        + rng.uniform(0, 1)))
  skin = 1 + 1.5 * np.exp(-((y - 0.03) / 0.02)**2)
  blobs = 1 + 0.6 * _smooth(rng.standard_normal((h, w)), passes=6)
  return np.clip(depth * layers * skin * blobs, 0.05, None)


def _lesion(rng: np.random.Generator, h: int, w: int, irregularity: float) -> np.ndarray:
  """Boolean mask of a rotated ellipse whose radius wobbles with the angle."""
  cy, cx = rng.uniform(0.3, 0.7) * h, rng.uniform(0.25, 0.75) * w
  ry, rx = rng.uniform(0.08, 0.18) * h, rng.uniform(0.08, 0.2) * w
  angle = rng.uniform(-0.5, 0.5)
  yy, xx = np.mgrid[:h, :w].astype(np.float64)
  u = ((xx - cx) * np.cos(angle) + (yy - cy) * np.sin(angle)) / rx
  v = (-(xx - cx) * np.sin(angle) + (yy - cy) * np.cos(angle)) / ry
  theta = np.arctan2(v, u)
  wobble = 1 + sum(
      irregularity * rng.uniform(0.3, 1.0) / k * np.cos(k * theta + rng.uniform(0, 2 * np.pi))
      for k in range(2, 7))
  return np.hypot(u, v) < wobble


def _posterior(lesion: np.ndarray, gain: float, decay: float) -> np.ndarray:
  """Multiplicative shadow (gain < 1) or enhancement (gain > 1) in the columns below a lesion."""
  h = lesion.shape[0]
  rows = np.arange(h)[:, None]
  has = lesion.any(axis=0)
  bottom = np.where(has, h - 1 - np.argmax(lesion[::-1], axis=0), h)
  below = (rows > bottom) & has
  return np.where(below, 1 + (gain - 1) * np.exp(-(rows - bottom) / decay), 1.0)


def make_example(seed: Sequence[int], label: int, image_id: str) -> dict[str, np.ndarray]:
  """One raw example (same features as the `busi` builder) for a given class."""
  rng = np.random.default_rng(seed)
  h = int(rng.integers(HEIGHTS[0], HEIGHTS[1] + 1))
  w = int(rng.integers(WIDTHS[0], WIDTHS[1] + 1))
  malignant = label == 1
  echo = _tissue(rng, h, w)
  mask = np.zeros((h, w), bool)
  num_lesions = 0 if label == NORMAL else 1 + int(rng.uniform() < 0.2)
  for _ in range(num_lesions):
    lesion = _lesion(rng, h, w, irregularity=0.5 if malignant else 0.12)
    mask |= lesion
    # Soft edges: the dark interior fades into the tissue over a few pixels.
    inside = _smooth(lesion.astype(np.float64), passes=2)
    echo *= 1 - rng.uniform(0.55, 0.8) * inside
    gain = rng.uniform(0.45, 0.7) if malignant else rng.uniform(1.2, 1.5)
    echo *= _smooth(_posterior(lesion, gain, decay=rng.uniform(0.2, 0.5) * h), passes=3)
  # Fully developed speckle: Rayleigh amplitude, unit mean, correlated over ~2 pixels.
  speckle = rng.rayleigh(1.0, (h, w)) / np.sqrt(np.pi / 2)
  speckle = 0.3 + 0.7 * _smooth(speckle, passes=1)
  image = np.clip(110 * echo * speckle, 0, 255).astype(np.uint8)
  return {
      'image': image[..., None],
      'mask': mask.astype(np.uint8)[..., None],
      'label': np.int64(label),
      'image_id': image_id,
      'num_masks': np.int32(max(num_lesions, 1)),  # BUSI has one (empty) mask file per normal.
      'dup_group': image_id,  # Generated scans have no duplicates.
  }


def make_examples(num: int, seed: int, *, first_id: int = 1,
                  normal_fraction: float = 0.2) -> list[dict[str, np.ndarray]]:
  """`num` examples; about `normal_fraction` normal, the rest 2:1 benign:malignant like BUSI."""
  labels = np.random.default_rng(seed).choice(
      3, size=num, p=[(1 - normal_fraction) * 2 / 3, (1 - normal_fraction) / 3, normal_fraction])
  return [
      make_example((seed, i), int(label), f'{LABEL_NAMES[label]} ({first_id + i})')
      for i, label in enumerate(labels)
  ]


def output_signature() -> dict[str, tf.TensorSpec]:
  """The raw-example features of the TFDS builder, as tf.data specs."""
  return {
      'image': tf.TensorSpec((None, None, 1), tf.uint8),
      'mask': tf.TensorSpec((None, None, 1), tf.uint8),
      'label': tf.TensorSpec((), tf.int64),
      'image_id': tf.TensorSpec((), tf.string),
      'num_masks': tf.TensorSpec((), tf.int32),
      'dup_group': tf.TensorSpec((), tf.string),
  }


def as_dataset(split: str, data_config: ml_collections.ConfigDict) -> tf.data.Dataset:
  """Raw examples of 'train', 'validation' or 'test', sized by `data_config.synthetic`."""
  sizes = {name: data_config.synthetic[f'num_{name}'] for name in _SPLIT_SEEDS}
  if split not in sizes:
    raise ValueError(f'Unknown synthetic split {split!r}; expected one of {list(sizes)}.')
  names = list(sizes)
  first_id = 1 + sum(sizes[name] for name in names[:names.index(split)])
  examples = make_examples(sizes[split], _SPLIT_SEEDS[split], first_id=first_id)
  return tf.data.Dataset.from_generator(
      lambda: iter(examples), output_signature=output_signature()
  ).apply(tf.data.experimental.assert_cardinality(len(examples)))
