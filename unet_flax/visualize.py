"""Figures written to PNG files: overlays of predictions and Grad-CAM maps on the scan.

Built on `matplotlib.figure.Figure` (Agg canvas, no pyplot state), so they work headless,
in threads, and leak no open figures. The ground truth, when known, is always the same green
contour; the prediction is red.
"""
from collections.abc import Mapping, Sequence

from matplotlib.figure import Figure
import numpy as np

_TRUTH_COLOR = 'lime'
_PRED_COLOR = 'red'
_CAM_ALPHA = 0.5


def _contour(ax, mask: np.ndarray | None, color: str) -> None:
  """Outline of a binary mask (nothing for an empty or missing one)."""
  if mask is not None and np.any(mask):
    ax.contour(np.asarray(mask, np.float32), levels=[0.5], colors=color, linewidths=1.2)


def _show(ax, image: np.ndarray, title: str) -> None:
  ax.imshow(image, cmap='gray', vmin=0, vmax=255, interpolation='nearest')
  ax.set_title(title, fontsize=9)
  ax.set_axis_off()


def _show_cam(ax, image: np.ndarray, cam: np.ndarray, gt_mask, title: str):
  _show(ax, image, title)
  _contour(ax, gt_mask, _TRUTH_COLOR)
  return ax.imshow(cam, cmap='jet', vmin=0.0, vmax=1.0, alpha=_CAM_ALPHA,
                   interpolation='bilinear')


def overlay_figure(image: np.ndarray, pred_mask: np.ndarray, cam: np.ndarray, path: str, *,
                   gt_mask: np.ndarray | None = None, title: str = '') -> None:
  """Image | prediction (red tint and contour) | Grad-CAM heat map, all at one size.

  `image` is uint8 (H, W); masks are binary (H, W); `cam` is float (H, W) in [0, 1]. The
  ground truth, if given, is drawn as a green contour on every panel.
  """
  fig = Figure(figsize=(10.5, 3.8), layout='constrained')
  axes = fig.subplots(1, 3)
  _show(axes[0], image, 'image' + (' (green: truth)' if gt_mask is not None else ''))
  _contour(axes[0], gt_mask, _TRUTH_COLOR)
  _show(axes[1], image, f'prediction: {int(np.count_nonzero(pred_mask))} px')
  tint = np.zeros((*pred_mask.shape, 4), np.float32)
  tint[np.asarray(pred_mask, bool)] = (1.0, 0.0, 0.0, 0.3)
  axes[1].imshow(tint, interpolation='nearest')
  _contour(axes[1], pred_mask, _PRED_COLOR)
  _contour(axes[1], gt_mask, _TRUTH_COLOR)
  heat = _show_cam(axes[2], image, cam, gt_mask, 'Seg-Grad-CAM')
  fig.colorbar(heat, ax=axes[2], fraction=0.046, pad=0.02)
  if title:
    fig.suptitle(title, fontsize=10)
  fig.savefig(path, dpi=100)


def layer_comparison_figure(images: Sequence[np.ndarray],
                            cams_by_layer: Mapping[str, Sequence[np.ndarray]],
                            gt_masks: Sequence[np.ndarray | None], path: str, *,
                            row_titles: Sequence[str] = (), title: str = '') -> None:
  """One row per image: the scan, then its Grad-CAM from each layer, side by side.

  Shallow layers localise sharply but see little context; the bottleneck sees the whole
  lesion at coarse resolution. Putting them next to each other shows that trade-off.
  """
  layers = list(cams_by_layer)
  rows, cols = len(images), 1 + len(layers)
  fig = Figure(figsize=(2.4 * cols, 2.4 * rows + 0.4), layout='constrained')
  axes = fig.subplots(rows, cols, squeeze=False)
  for i, image in enumerate(images):
    _show(axes[i, 0], image, row_titles[i] if row_titles else '')
    _contour(axes[i, 0], gt_masks[i], _TRUTH_COLOR)
    for j, layer in enumerate(layers, start=1):
      _show_cam(axes[i, j], image, cams_by_layer[layer][i], gt_masks[i], layer if i == 0 else '')
  if title:
    fig.suptitle(title, fontsize=10)
  fig.savefig(path, dpi=80)
