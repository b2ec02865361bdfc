"""The overlay figure, pixel by pixel: scan, prediction and Grad-CAM panels at the scan's size."""
import numpy as np
from PIL import Image

from unet_flax import visualize


def _box(shape, top, left, height, width):
  mask = np.zeros(shape, bool)
  mask[top:top + height, left:left + width] = True
  return mask


def test_overlay_panels_show_the_scan_the_prediction_and_the_cam(tmp_path):
  h, w = 60, 80
  image = np.full((h, w), 100, np.uint8)
  pred, truth = _box((h, w), 10, 10, 20, 30), _box((h, w), 30, 40, 20, 30)
  cam = np.zeros((h, w), np.float32)
  cam[:, w // 2:] = 1.0
  path = tmp_path / 'overlay.png'
  visualize.overlay_figure(image, pred, cam, str(path), gt_mask=truth,
                           title='a title long enough to be wrapped onto a second line ' * 3)
  out = np.asarray(Image.open(path))
  lime, red = (0, 255, 0), (255, 0, 0)
  # The first lime pixel is the truth outline's top left corner in the first panel.
  top, left = np.argwhere((out == lime).all(axis=-1))[0] - (30, 40)
  panels = [out[top:top + h, left + i * (w + visualize._GAP):][:, :w] for i in range(3)]
  truth_outline = truth & ~_box((h, w), 31, 41, 18, 28)
  for panel in panels:  # The truth's one-pixel outline on every panel.
    np.testing.assert_array_equal((panel == lime).all(axis=-1), truth_outline)
  scan, prediction, heat = panels
  assert (scan[~truth_outline] == 100).all()
  pred_outline = pred & ~_box((h, w), 11, 11, 18, 28)
  np.testing.assert_array_equal((prediction == red).all(axis=-1), pred_outline)
  tinted = prediction[pred & ~pred_outline].astype(float)  # 30 % red over the gray.
  assert (np.abs(tinted - (0.7 * 100 + 0.3 * 255, 70, 70)) <= 0.5).all()
  assert (prediction[~pred & ~truth_outline] == 100).all()
  # Half of jet's dark blue (cam 0) and dark red (cam 1) over the gray.
  assert (np.abs(heat[:20, :w // 2] - (50, 50, 113.75)) <= 0.5).all()
  assert (np.abs(heat[:20, w // 2:] - (113.75, 50, 50)) <= 0.5).all()
