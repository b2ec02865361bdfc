"""Reading any scan a user may have into the 8-bit grayscale the network is trained on.

Users bring PNG or JPEG exports from scanners, screenshots, 16-bit files and palette images;
all of them become 8-bit grayscale, or fail with a message that names the file and the reason.
The dataset builders and `predict` read through here, so training and prediction see the same
pixels.
"""
import numpy as np
from PIL import Image
from PIL import ImageOps

# Modes whose pixels are 16-bit integers; PIL opens 16-bit grayscale PNGs as one of these.
_SIXTEEN_BIT_MODES = ('I;16', 'I;16B', 'I;16L', 'I;16N', 'I')


class ImageReadError(ValueError):
  """A file that is not a usable image; the message says which file and why."""


def _to_grayscale(image: Image.Image) -> np.ndarray:
  """uint8 (H, W): luminance for colour (alpha dropped), 16 bits scaled down by 257."""
  if image.mode in _SIXTEEN_BIT_MODES:
    pixels = np.asarray(image, dtype=np.int64)
    if pixels.size and (pixels.min() < 0 or pixels.max() > 65535):
      raise ValueError(f'{image.mode} pixels outside the 16-bit range '
                       f'[{pixels.min()}, {pixels.max()}]')
    # 65535 / 257 = 255: full 16-bit range onto full 8-bit range, rounded.
    return ((pixels + 128) // 257).astype(np.uint8)
  if image.mode == 'F':
    raise ValueError('floating-point pixels have no defined intensity range')
  if image.mode != 'L':
    # Via RGBA so palettes with transparency convert without a warning.
    image = image.convert('RGBA').convert('L')
  return np.asarray(image, dtype=np.uint8)


def read_grayscale(path: str) -> np.ndarray:
  """Any PIL-readable image (PNG, JPEG, ...) as uint8 (H, W); raises ImageReadError."""
  try:
    with Image.open(path) as image:
      image.load()  # Decode now, so truncated files fail here.
      # Phone photos of a screen carry their rotation in EXIF; apply it like viewers do.
      return _to_grayscale(ImageOps.exif_transpose(image))
  except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as e:
    raise ImageReadError(f'Cannot read image {path!r}: {type(e).__name__}: {e}') from e
