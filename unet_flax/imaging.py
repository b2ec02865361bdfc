"""Between an image's original size and the network's: model inputs, maps resized back, masks.

Reading files is `data.scan_files`' job; this module resizes what the network consumes and
produces, and turns its output into a mask, so evaluation, Grad-CAM and prediction all do
both alike.
"""
import numpy as np
from PIL import Image
from scipy import ndimage
from scipy import special

# Pixels touching by an edge or a corner belong to one lesion.
_EIGHT_CONNECTED = np.ones((3, 3), bool)


def resize_map(array2d: np.ndarray, height: int, width: int) -> np.ndarray:
  """Bilinear float32 resize of a 2-D map (logits, CAM, image) to (height, width)."""
  image = Image.fromarray(np.asarray(array2d, dtype=np.float32))  # mode 'F'
  return np.asarray(image.resize((width, height), Image.Resampling.BILINEAR),
                    dtype=np.float32)


def lesion_probability(logits: np.ndarray, height: int, width: int) -> np.ndarray:
  """Lesion probability at (height, width): logits upsampled bilinearly, then the sigmoid.

  The one place where the network's output becomes a full-size map, so evaluation, predict
  and Grad-CAM threshold the same thing.
  """
  return special.expit(resize_map(logits, height, width))


def remove_small_components(mask: np.ndarray, min_fraction: float) -> np.ndarray:
  """`mask` without its connected regions smaller than `min_fraction` of the image.

  Why: a region far smaller than any lesion an annotator drew is a speck, not a finding; left
  in, it makes a normal scan "not empty" and a lesion mask less precise.
  """
  mask = np.asarray(mask, bool)
  if not min_fraction or not mask.any():
    return mask
  labels, _ = ndimage.label(mask, _EIGHT_CONNECTED)
  sizes = np.bincount(labels.ravel())
  keep = sizes >= min_fraction * mask.size
  keep[0] = False  # Background.
  return keep[labels]


def lesion_mask(probability: np.ndarray, threshold: float, min_fraction: float) -> np.ndarray:
  """The predicted lesion mask: probability above `threshold`, specks removed.

  The one place where a probability map becomes a mask, so what evaluation scores is what
  predict writes and what Grad-CAM overlays show.
  """
  return remove_small_components(probability > threshold, min_fraction)


def model_input(gray: np.ndarray, size: int) -> np.ndarray:
  """uint8 (H, W) -> float32 (size, size, 1) in [0, 1], antialiased as in training."""
  return np.clip(resize_map(gray / 255.0, size, size), 0.0, 1.0)[..., None]
