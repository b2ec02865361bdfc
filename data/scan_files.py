"""Reading any scan a user may have into the 8-bit grayscale the network is trained on.

Users bring PNG, JPEG, BMP or TIFF exports from scanners, screenshots, 16-bit files, palette
images and DICOM files straight from the scanner (one frame or a cine loop of many); all of
them become 8-bit grayscale, or fail with a message that names the file and the reason. The
dataset builders and `predict` read through here, so training and prediction see the same
pixels.
"""
from collections import abc
import os

import numpy as np
from PIL import Image
from PIL import ImageOps

# What PIL reads for the builders and predict (any case).
IMAGE_EXTENSIONS = ('.png', '.jpg', '.jpeg', '.bmp', '.tif', '.tiff')
DICOM_EXTENSIONS = ('.dcm',)  # Read with pydicom; files without an extension are not looked at.
SCAN_EXTENSIONS = IMAGE_EXTENSIONS + DICOM_EXTENSIONS

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


def _is_dicom(path: str) -> bool:
  return os.path.splitext(path)[1].lower() in DICOM_EXTENSIONS


def _window(dataset) -> tuple[float, float]:
  """The (low, high) input values that map onto 0 and 255: the file's first VOI window
  (DICOM's linear function), else the whole range its stored bits can hold after the
  modality rescale (as 16-bit PNGs are read: full range onto full range)."""
  center, width = dataset.get('WindowCenter'), dataset.get('WindowWidth')
  if center is not None and width is not None:
    # A file may list several windows; the first is the one meant by default.
    center, width = (float(v[0] if isinstance(v, abc.Sequence) else v) for v in (center, width))
    return center - 0.5 - (width - 1) / 2, center - 0.5 + (width - 1) / 2
  bits = int(dataset.BitsStored)
  low, high = ((-2**(bits - 1), 2**(bits - 1) - 1) if dataset.get('PixelRepresentation') == 1
               else (0, 2**bits - 1))
  slope = float(dataset.get('RescaleSlope', 1))
  intercept = float(dataset.get('RescaleIntercept', 0))
  return tuple(sorted((low * slope + intercept, high * slope + intercept)))


def _dicom_frames(path: str) -> list[np.ndarray]:
  """uint8 (H, W) per frame: monochrome through the modality rescale and the VOI window
  (inverted for MONOCHROME1, where 0 is white), colour (RGB; YBR is converted by pydicom)
  as luminance like any colour image. Raises OSError, ValueError and others on bad files."""
  import pydicom  # pylint: disable=g-import-not-at-top  # Only DICOM input needs it.
  from pydicom import pixels as dicom_pixels  # pylint: disable=g-import-not-at-top
  dataset = pydicom.dcmread(path)
  pixels = dataset.pixel_array
  frames = int(dataset.get('NumberOfFrames') or 1)
  photometric = dataset.PhotometricInterpretation
  if photometric == 'PALETTE COLOR':
    pixels, photometric = dicom_pixels.apply_color_lut(pixels, dataset), 'RGB'
  if photometric in ('MONOCHROME1', 'MONOCHROME2'):
    low, high = _window(dataset)
    values = dicom_pixels.apply_modality_lut(pixels, dataset).astype(np.float64)
    scaled = np.clip((values - low) / max(high - low, 1e-9), 0.0, 1.0)
    gray = np.round(255 * scaled).astype(np.uint8)
    if photometric == 'MONOCHROME1':
      gray = 255 - gray
    return list(gray.reshape(frames, *gray.shape[-2:]))
  if dataset.SamplesPerPixel == 3:
    if pixels.dtype != np.uint8:  # 16-bit colour: its top byte.
      pixels = (pixels >> (8 * pixels.itemsize - 8)).astype(np.uint8)
    return [_to_grayscale(Image.fromarray(frame))
            for frame in pixels.reshape(frames, *pixels.shape[-3:])]
  raise ValueError(f'photometric interpretation {photometric!r} is not supported (expected '
                   'MONOCHROME1, MONOCHROME2, RGB, YBR_* or PALETTE COLOR)')


def read_frames(path: str) -> list[np.ndarray]:
  """Every frame of a scan as uint8 (H, W): one per image file, one per frame of a DICOM
  file; raises ImageReadError."""
  if not _is_dicom(path):
    return [read_grayscale(path)]
  try:
    return _dicom_frames(path)
  except ImportError as e:
    raise ImageReadError(f'Cannot read DICOM {path!r}: {e} (pip install pydicom).') from e
  except Exception as e:  # pydicom and its decoders raise many types for damaged files.
    raise ImageReadError(f'Cannot read DICOM {path!r}: {type(e).__name__}: {e}') from e


def read_grayscale(path: str) -> np.ndarray:
  """Any scan of one frame (PNG, JPEG, BMP, TIFF, DICOM, ...) as uint8 (H, W); raises
  ImageReadError."""
  if _is_dicom(path):
    frames = read_frames(path)
    if len(frames) != 1:
      raise ImageReadError(f'{path!r} has {len(frames)} frames where one scan is expected.')
    return frames[0]
  try:
    with Image.open(path) as image:
      image.load()  # Decode now, so truncated files fail here.
      # Phone photos of a screen carry their rotation in EXIF; apply it like viewers do.
      return _to_grayscale(ImageOps.exif_transpose(image))
  except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as e:
    raise ImageReadError(f'Cannot read image {path!r}: {type(e).__name__}: {e}') from e
