"""Every kind of PNG/JPEG a user may bring becomes the grayscale uint8 the model expects."""
import numpy as np
from PIL import Image
import pytest

from data import scan_files
from unet_flax import imaging

GRAY = np.array([[0, 64, 128], [192, 255, 7]], np.uint8)


def _saved(tmp_path, image: Image.Image, name: str) -> str:
  path = str(tmp_path / name)
  image.save(path)
  return path


def test_gray_png_is_read_unchanged(tmp_path):
  path = _saved(tmp_path, Image.fromarray(GRAY), 'gray.png')
  np.testing.assert_array_equal(scan_files.read_grayscale(path), GRAY)


def test_colour_becomes_luminance_and_alpha_is_ignored(tmp_path):
  rgb = np.zeros((2, 3, 3), np.uint8)
  rgb[0, 0] = (255, 0, 0)
  rgb[0, 1] = (0, 255, 0)
  rgb[0, 2] = (0, 0, 255)
  rgb[1] = 200
  rgba = np.concatenate([rgb, np.full((2, 3, 1), 10, np.uint8)], axis=-1)
  expected = np.array([[76, 150, 29], [200, 200, 200]], np.uint8)  # ITU-R 601-2 luma.
  for image, name in [(Image.fromarray(rgb), 'rgb.png'), (Image.fromarray(rgba), 'rgba.png')]:
    gray = scan_files.read_grayscale(_saved(tmp_path, image, name))
    assert gray.dtype == np.uint8 and gray.shape == (2, 3)
    np.testing.assert_allclose(gray, expected, atol=1)


def test_palette_image_uses_its_palette(tmp_path):
  palette = Image.fromarray(np.array([[0, 1], [2, 1]], np.uint8)).convert('P')
  palette.putpalette([0, 0, 0, 255, 255, 255, 100, 100, 100] + [0] * 759)
  path = _saved(tmp_path, palette, 'palette.png')
  assert Image.open(path).mode == 'P'
  np.testing.assert_array_equal(scan_files.read_grayscale(path), [[0, 255], [100, 255]])


def test_16_bit_png_is_scaled_to_8_bits(tmp_path):
  values = np.array([[0, 257 * 100, 65535]], np.uint16)
  path = _saved(tmp_path, Image.fromarray(values), 'deep.png')
  assert Image.open(path).mode.startswith('I')
  np.testing.assert_array_equal(scan_files.read_grayscale(path), [[0, 100, 255]])


def test_jpeg_is_read_approximately(tmp_path):
  flat = np.full((16, 24), 120, np.uint8)
  gray = scan_files.read_grayscale(_saved(tmp_path, Image.fromarray(flat).convert('RGB'), 'a.jpg'))
  assert gray.shape == (16, 24)
  np.testing.assert_allclose(gray, flat, atol=2)


def test_unreadable_files_name_the_file_and_reason(tmp_path):
  corrupt = tmp_path / 'corrupt.png'
  corrupt.write_bytes(b'not an image at all')
  with pytest.raises(scan_files.ImageReadError, match='corrupt.png.*UnidentifiedImageError'):
    scan_files.read_grayscale(str(corrupt))
  truncated = tmp_path / 'truncated.png'
  noise = np.random.default_rng(0).integers(0, 256, (64, 64), dtype=np.uint8)
  data = open(_saved(tmp_path, Image.fromarray(noise), 'ok.png'), 'rb').read()
  truncated.write_bytes(data[:len(data) // 2])
  with pytest.raises(scan_files.ImageReadError, match='truncated.png'):
    scan_files.read_grayscale(str(truncated))
  with pytest.raises(scan_files.ImageReadError, match='missing.png.*FileNotFoundError'):
    scan_files.read_grayscale(str(tmp_path / 'missing.png'))


def test_resize_map_is_bilinear_float32():
  ramp = np.tile(np.arange(4, dtype=np.float64), (3, 1))
  np.testing.assert_array_equal(imaging.resize_map(ramp, 3, 4), ramp)
  up = imaging.resize_map(ramp, 5, 8)
  assert up.dtype == np.float32 and up.shape == (5, 8)
  # Half-pixel centres: output column j samples input x = (j + 0.5) / 2 - 0.5, edges clamp.
  np.testing.assert_allclose(up[0], np.clip((np.arange(8) + 0.5) / 2 - 0.5, 0, 3), atol=1e-6)


def test_model_input_is_square_unit_range():
  x = imaging.model_input(np.full((30, 50), 255, np.uint8), 16)
  assert x.shape == (16, 16, 1) and x.dtype == np.float32
  np.testing.assert_allclose(x, 1.0, atol=1e-6)


def test_lesion_probability_is_the_sigmoid_of_upsampled_logits():
  logits = np.array([[-4.0, 4.0], [0.0, 2.0]], np.float32)
  probability = imaging.lesion_probability(logits, 6, 8)
  assert probability.shape == (6, 8)
  np.testing.assert_allclose(probability, 1 / (1 + np.exp(-imaging.resize_map(logits, 6, 8))),
                             rtol=1e-6)
  assert probability[0, 0] < 0.05 and probability[0, -1] > 0.95


def test_specks_under_the_fraction_go_and_lesions_stay():
  mask = np.zeros((100, 100), bool)
  mask[10:20, 10:20] = True  # 100 px: a lesion.
  mask[50:53, 50:53] = True  # 9 px: a speck at min_fraction 0.001 (10 px).
  mask[80, 80] = mask[81, 81] = mask[82, 82] = True  # 3 px touching by corners: one speck.
  mask[60:62, 10:15] = True  # 10 px: exactly the minimum, kept.
  kept = imaging.remove_small_components(mask, 0.001)
  expected = np.zeros_like(mask)
  expected[10:20, 10:20] = expected[60:62, 10:15] = True
  np.testing.assert_array_equal(kept, expected)
  # Corner-touching pixels are one region: a 12-px diagonal stays at a 10-px minimum.
  diagonal = np.eye(100, dtype=bool) & (np.arange(100) < 12)[:, None]
  assert imaging.remove_small_components(diagonal, 0.001).sum() == 12
  assert imaging.remove_small_components(mask, 0.0).sum() == mask.sum()


def test_lesion_mask_is_the_thresholded_probability_without_specks():
  probability = np.full((50, 40), 0.2, np.float32)
  probability[5:25, 5:25] = 0.9
  probability[40, 30] = 0.99  # 1 px of 2000: under 0.001.
  mask = imaging.lesion_mask(probability, 0.5, 0.001)
  assert mask.dtype == bool and mask.sum() == 400 and not mask[40, 30]
  assert not imaging.lesion_mask(probability, 0.95, 0.001).any()
