"""DICOM scans as scanners write them become the 8-bit grayscale frames the model expects."""
import numpy as np
from PIL import Image
import pytest

from data import scan_files
from dicom_fixtures import write_dicom

NOISE = np.random.default_rng(0).integers(0, 256, (3, 20, 30), dtype=np.uint8)


def test_monochrome2_is_read_unchanged_and_monochrome1_inverted(tmp_path):
  write_dicom(tmp_path / 'a.dcm', NOISE[0])
  write_dicom(tmp_path / 'b.dcm', NOISE[0], 'MONOCHROME1')  # 0 is white.
  np.testing.assert_array_equal(scan_files.read_grayscale(str(tmp_path / 'a.dcm')), NOISE[0])
  np.testing.assert_array_equal(scan_files.read_grayscale(str(tmp_path / 'b.dcm')),
                                255 - NOISE[0])


def test_dicom_mask_marks_its_lesion(tmp_path):
  lesion = np.zeros((20, 30), np.uint8)
  lesion[5:9, 10:20] = 255
  write_dicom(tmp_path / 'a_mask.dcm', lesion)
  np.testing.assert_array_equal(scan_files.read_mask(tmp_path / 'a_mask.dcm'), lesion > 0)


def test_multi_frame_file_gives_every_frame_in_order(tmp_path):
  path = str(tmp_path / 'loop.DCM')
  write_dicom(path, NOISE)
  frames = scan_files.read_frames(path)
  assert len(frames) == 3
  for frame, expected in zip(frames, NOISE):
    np.testing.assert_array_equal(frame, expected)
  with pytest.raises(scan_files.ImageReadError, match='loop.DCM.* has 3 frames'):
    scan_files.read_grayscale(path)


def test_rgb_frames_become_luminance_as_colour_pngs_do(tmp_path):
  rgb = np.random.default_rng(1).integers(0, 256, (2, 12, 16, 3), dtype=np.uint8)
  write_dicom(tmp_path / 'colour.dcm', rgb, 'RGB')
  frames = scan_files.read_frames(str(tmp_path / 'colour.dcm'))
  assert len(frames) == 2
  for i, frame in enumerate(frames):
    Image.fromarray(rgb[i]).save(tmp_path / f'{i}.png')
    np.testing.assert_array_equal(frame, scan_files.read_grayscale(str(tmp_path / f'{i}.png')))


def test_rescale_and_window_map_the_window_onto_0_to_255(tmp_path):
  """12-bit pixels, rescaled to 2 x - 100, windowed at 1000 +- 250 (DICOM's linear function:
  values up to 750 black, above 1249 white, linear between)."""
  stored = np.array([[0, 425, 600, 675], [2000, 4095, 426, 550]], np.uint16)
  write_dicom(tmp_path / 'w.dcm', stored, bits_stored=12, RescaleSlope=2,
              RescaleIntercept=-100, WindowCenter=1000, WindowWidth=501)
  value = 2.0 * stored - 100
  expected = np.round(255 * np.clip((value - 749.5) / 500, 0, 1))
  assert list(expected[0]) == [0, 0, 179, 255]
  np.testing.assert_array_equal(scan_files.read_grayscale(str(tmp_path / 'w.dcm')), expected)
  # Without a window, the range the stored bits hold maps onto 0..255, as for 16-bit PNGs.
  write_dicom(tmp_path / 'u.dcm', stored, bits_stored=12)
  np.testing.assert_array_equal(scan_files.read_grayscale(str(tmp_path / 'u.dcm')),
                                np.round(stored * (255 / 4095)))


def test_broken_dicom_names_the_file_and_reason(tmp_path):
  (tmp_path / 'bad.dcm').write_bytes(b'not a DICOM file')
  with pytest.raises(scan_files.ImageReadError, match='bad.dcm.*InvalidDicomError'):
    scan_files.read_frames(str(tmp_path / 'bad.dcm'))
