"""Reading any scan a user may have into the 8-bit grayscale the network is trained on, and
any lesion mask into the lesion it marks.

Users bring PNG, JPEG, BMP or TIFF exports from scanners, screenshots, 16-bit files, palette
images and DICOM files straight from the scanner (one frame or a cine loop of many); all of
them become 8-bit grayscale, or fail with a message that names the file and the reason. Masks
come as 1-bit, 8-bit, 16-bit, palette, colour or alpha files, several per lesion, or saved
lossily; all of them become one boolean lesion map of the scan's size. Both dataset builders
and `predict` read scans and masks through here, so training, evaluation and prediction see
the same pixels and the same lesions.
"""
from collections import abc
import os
from typing import Iterable, Optional, Sequence

import numpy as np
from PIL import Image
from PIL import ImageOps

# What PIL reads for the builders and predict (any case).
IMAGE_EXTENSIONS = ('.png', '.jpg', '.jpeg', '.bmp', '.tif', '.tiff')
DICOM_EXTENSIONS = ('.dcm',)  # Read with pydicom; files without an extension are not looked at.
SCAN_EXTENSIONS = IMAGE_EXTENSIONS + DICOM_EXTENSIONS

# Modes whose pixels are 16-bit integers; PIL opens 16-bit grayscale PNGs as one of these.
_SIXTEEN_BIT_MODES = ('I;16', 'I;16B', 'I;16L', 'I;16N', 'I')
# What PIL and its decoders raise for a missing, truncated or corrupt file.
_UNREADABLE = (OSError, ValueError, SyntaxError, EOFError, Image.DecompressionBombError)
# BUSI names the masks of `X.png` `X_mask.png`, `X_mask_1.png`, ...; its builder and predict
# (on a folder in that layout) find them by this ending of the stem.
MASK_STEM_SUFFIX = r'_mask(?:_(?P<index>\d+))?'
# Non-binary masks are thresholded at half the range; more than this fraction of pixels in the
# middle half of the range means the file is a picture, not a mask saved lossily.
_MAX_MIDTONE_FRACTION = 0.01


class ImageReadError(ValueError):
  """A file that is not a usable image; the message says which file and why."""


class FormatError(ValueError):
  """A dataset's files or its config are wrong: the builders collect everything wrong first,
  so a user fixes a broken copy in one go instead of one file per build attempt.

  `problems` holds (path, what is wrong) for every bad file, and the message lists them all.
  """

  def __init__(self, summary: str, problems: Iterable[tuple[str, str]] = ()):
    self.problems = sorted(set(problems))
    super().__init__('\n'.join([summary] + [f'  {path}: {what}' for path, what in self.problems]))


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


def _is_dicom(path) -> bool:
  return os.path.splitext(str(path))[1].lower() in DICOM_EXTENSIONS


def open_image(path) -> Image.Image:
  """The decoded image of a PIL-readable file, turned as its EXIF says (phone photos of a
  screen carry their rotation there; viewers apply it). `path` is a file name or anything with
  `open('rb')`, such as a `zipfile.Path`. Raises what PIL raises (`_UNREADABLE`)."""
  with path.open('rb') if hasattr(path, 'open') else open(path, 'rb') as f:
    with Image.open(f) as image:
      image.load()  # Decode now, so truncated files fail here.
      return ImageOps.exif_transpose(image)


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


def read_grayscale(path) -> np.ndarray:
  """Any scan of one frame (PNG, JPEG, BMP, TIFF, DICOM, ...) as uint8 (H, W); raises
  ImageReadError."""
  if _is_dicom(path):
    frames = read_frames(str(path))
    if len(frames) != 1:
      raise ImageReadError(f'{str(path)!r} has {len(frames)} frames where one scan is expected.')
    return frames[0]
  try:
    return _to_grayscale(open_image(path))
  except _UNREADABLE as e:
    raise ImageReadError(f'Cannot read image {str(path)!r}: {type(e).__name__}: {e}') from e


def _unreadable(path, error: Exception) -> FormatError:
  cause = error.__cause__ or error
  return FormatError('', [(str(path), f'unreadable or corrupt image '
                                      f'({type(cause).__name__}: {cause})')])


def read_scan(path) -> np.ndarray:
  """`read_grayscale` for a dataset's files: raises FormatError naming the file."""
  try:
    return read_grayscale(path)
  except ImageReadError as e:
    raise _unreadable(path, e) from e


def _mask_values(path) -> np.ndarray:
  """The (H, W) channel of a mask file that marks the lesion: the maximum over the gray or
  colour channels; with an alpha channel that varies, alpha alone (the lesion painted on a
  transparent layer). A DICOM mask is read as any scan."""
  if _is_dicom(path):
    return read_scan(path)
  try:
    mask = open_image(path)
  except _UNREADABLE as e:
    raise _unreadable(path, e) from e
  if mask.mode == 'F':
    raise FormatError('', [(str(path), 'floating-point mask; save it as 8-bit or 1-bit')])
  if mask.mode not in ('1', 'L', 'LA', 'RGB', 'RGBA') and not mask.mode.startswith('I'):
    mask = mask.convert('RGBA')  # Palette, CMYK, ...
  values = np.asarray(mask)
  if mask.mode in ('LA', 'RGBA'):
    alpha = values[..., -1]
    values = alpha if alpha.min() != alpha.max() else values[..., :-1]
  return values.max(axis=-1) if values.ndim == 3 else values


def read_mask(path) -> np.ndarray:
  """(H, W) bool, True on the lesion `_mask_values` marks; raises FormatError naming the file.

  A binary mask's lesion is its non-zero pixels. Masks with more than two values (saved as
  JPEG) are thresholded at half the range, unless too many mid-range pixels show it is a
  picture.
  """
  values = _mask_values(path)
  full = 1 if values.dtype == bool else 255 if values.dtype == np.uint8 else 65535
  if values.size and (values.min() < 0 or values.max() > full):
    raise FormatError('', [(str(path), f'mask values outside [0, {full}]')])
  distinct = np.unique(values)
  if len(distinct) == 1 or (len(distinct) == 2 and distinct[0] == 0):
    return values > 0
  midtones = np.count_nonzero((values > full * 0.25) & (values < full * 0.75))
  if midtones > _MAX_MIDTONE_FRACTION * values.size:
    raise FormatError('', [(str(path), f'not a binary mask ({len(distinct)} distinct '
                                       'values; is this an image?)')])
  return values > full // 2


def _union(paths: Sequence, shape: Optional[tuple[int, int]], image_name: str, hint: str):
  """(OR of the masks, problems) for `read_masks`; with `shape` None (the image could not be
  read) the masks are read for their own problems only, and the union is None."""
  union = None if shape is None else np.zeros(shape, bool)
  problems = []
  for path in paths:
    try:
      mask = read_mask(path)
    except FormatError as e:
      problems += e.problems
      continue
    if shape is None:
      continue
    if mask.shape != shape:
      (h, w), (mh, mw) = shape, mask.shape
      problems.append((str(path), f'mask is {mw}x{mh} (WxH) but its image {image_name} is '
                       f'{w}x{h}{hint}'))
    else:
      union |= mask
  return union, problems


def read_masks(paths: Sequence, shape: tuple[int, int], image_name: str,
               hint: str = '') -> np.ndarray:
  """(H, W) bool: the union of the mask files of one scan of (H, W) `shape`.

  Raises:
    FormatError: listing every unreadable mask and every mask of another size than the scan
      (naming the mask, the scan `image_name` and both sizes, then `hint`).
  """
  union, problems = _union(paths, shape, image_name, hint)
  if problems:
    raise FormatError(f'Unusable mask(s) of {image_name}:', problems)
  return union


def read_example(image, masks: Sequence, image_id: str,
                 hint: str = '') -> tuple[np.ndarray, np.ndarray]:
  """A dataset example: the (H, W, 1) uint8 scan and the (H, W, 1) uint8 {0, 1} union of its
  mask files, as the builders store them.

  Raises:
    FormatError: listing every unreadable file of the example and every mask whose size
      differs from the scan's (see `read_masks`).
  """
  problems = []
  try:
    scan = read_scan(image)
  except FormatError as e:
    scan, problems = None, e.problems
  union, mask_problems = _union(masks, None if scan is None else scan.shape,
                                os.path.basename(str(image)), hint)
  if problems or mask_problems:
    raise FormatError(f'Cannot decode {image_id}:', problems + mask_problems)
  return scan[..., None], union[..., None].astype(np.uint8)
