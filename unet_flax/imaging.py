"""Between an image's original size and the network's: model inputs, and maps resized back.

Reading files is `data.scan_files`' job; this module resizes what the network consumes and
produces, so evaluation, Grad-CAM and prediction all resize alike.
"""
import numpy as np
from PIL import Image
from scipy import special

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


def model_input(gray: np.ndarray, size: int) -> np.ndarray:
  """uint8 (H, W) -> float32 (size, size, 1) in [0, 1], antialiased as in training."""
  return np.clip(resize_map(gray / 255.0, size, size), 0.0, 1.0)[..., None]
