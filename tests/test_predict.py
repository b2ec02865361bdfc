"""predict_files on every input format, BUSI-layout folders, broken files and inputs whose
outputs would share a name; its batched, streamed outputs against the per-image path;
predictions.csv; the Grad-CAM report, which draws the maps predict draws."""
from concurrent import futures
import csv
import functools
import json
import logging
import os
import subprocess
import sys

import jax
import numpy as np
from PIL import Image
import pytest
from scipy import special

import busi_fixtures
from configs import synthetic as synthetic_config
from data import scan_files
from data.busi import dataset_files
from unet_flax import gradcam
from unet_flax import gradcam_report
from unet_flax import imaging
from unet_flax import model as model_lib
from unet_flax import predict
from unet_flax import visualize

SIZE = 32


@pytest.fixture(scope='module')
def setup():
  config = synthetic_config.get_config()
  config.data.image_size = SIZE
  config.model.base_features = 4
  config.model.depth = 2
  config.eval.batch_size = 4
  model = model_lib.create_model(config.model)
  variables = model_lib.init_variables(model, 0, SIZE)
  return model, variables, config


def _noise(shape, seed=0):
  return np.random.default_rng(seed).integers(0, 256, shape, dtype=np.uint8)


def _mask(shape, top, left):
  mask = np.zeros(shape, np.uint8)
  mask[top:top + 5, left:left + 6] = 255
  return Image.fromarray(mask)


def _write_inputs(folder) -> dict[str, tuple[int, int]]:
  """One file per supported kind, a BUSI image with two masks and a corrupt file."""
  os.makedirs(folder / 'sub')
  sizes = {}

  def save(image: Image.Image, name: str):
    image.save(folder / name)
    sizes[os.path.splitext(os.path.basename(name))[0]] = image.size[::-1]

  save(Image.fromarray(_noise((40, 56))), 'gray.png')
  save(Image.fromarray(_noise((33, 47, 3))), 'rgb.png')
  save(Image.fromarray(_noise((21, 64, 4))), 'rgba.png')
  save(Image.fromarray(_noise((30, 30, 3))).convert('P'), 'palette.png')
  save(Image.fromarray(_noise((25, 35)).astype(np.uint16) * 257), 'deep.png')
  save(Image.fromarray(_noise((50, 30, 3))), 'sub/photo.JPG')
  save(Image.fromarray(_noise((36, 44))), 'benign (1).png')
  _mask((36, 44), 3, 4).save(folder / 'benign (1)_mask.png')
  _mask((36, 44), 20, 30).save(folder / 'benign (1)_mask_1.png')
  (folder / 'corrupt.png').write_bytes(b'\x89PNG but not really')
  return sizes


def test_busi_masks_are_ground_truth_and_not_inputs(tmp_path):
  _write_inputs(tmp_path)
  inputs, problems = predict.expand_inputs([str(tmp_path)])
  by_name = {os.path.basename(p): [os.path.basename(m) for m in masks] for p, masks in inputs}
  assert by_name['benign (1).png'] == ['benign (1)_mask.png', 'benign (1)_mask_1.png']
  assert not any('_mask' in name for name in by_name)
  assert 'photo.JPG' in by_name and 'corrupt.png' in by_name and not problems
  # The masks are found beside an image given alone, too; a mask without image is an input.
  (tmp_path / 'orphan_mask.png').write_bytes(b'')
  inputs, _ = predict.expand_inputs([str(tmp_path / 'benign (1).png'),
                                     str(tmp_path / 'orphan_mask.png')])
  assert [len(masks) for _, masks in inputs] == [2, 0]
  _, problems = predict.expand_inputs([str(tmp_path / '*.gif')])
  assert problems == [f'{tmp_path / "*.gif"}: no scan found (.png .jpg .jpeg .bmp .tif .tiff '
                      '.dcm)']


def _scans_read(paths: list[str]) -> tuple[list[str], list[tuple[str, str]]]:
  """(output names of the scans predict would write, [(refused input, reason)]) of `paths`,
  read and batched as predict_files does, without a network."""
  inputs, _ = predict.expand_inputs(paths)
  read = functools.partial(predict._read, size=SIZE, with_truth=False)
  refused = []
  with futures.ThreadPoolExecutor(1) as reader:
    batches = list(predict._readable_batches(predict._read_ahead(reader, inputs, read, 2), 4,
                                             lambda *failure: refused.append(failure)))
  return [scan.name for batch in batches for scan in batch], refused


def test_an_input_whose_outputs_an_earlier_one_writes_is_refused_naming_both(tmp_path):
  from dicom_fixtures import write_dicom  # pylint: disable=g-import-not-at-top
  write_dicom(tmp_path / 'X.dcm', _noise((3, 20, 30)))  # Frames X_frame001 ... X_frame003.
  for name in ('X_frame002.png', 'a.png', 'a.tif'):
    Image.fromarray(_noise((20, 30))).save(tmp_path / name)
  loop, frame, png, tif = (str(tmp_path / name) for name in (
      'X.dcm', 'X_frame002.png', 'a.png', 'a.tif'))
  names, refused = _scans_read([str(tmp_path)])
  assert names == ['X_frame001', 'X_frame002', 'X_frame003', 'a']
  assert refused == [
      (frame, f"{frame}: output name 'X_frame002' is already used by frame 2 of {loop!r}; "
              'rename one'),
      (tif, f"{tif}: output name 'a' is already used by {png!r}; rename one")]
  # Listed first, the single frame keeps its name, and the whole loop is refused.
  names, refused = _scans_read([frame, loop])
  assert names == ['X_frame002']
  assert refused == [(loop, f"{loop}: output name 'X_frame002' is already used by {frame!r}; "
                            'rename one')]


def test_ground_truth_is_the_union_of_mask_files(tmp_path, capsys):
  _write_inputs(tmp_path)
  masks = [str(tmp_path / 'benign (1)_mask.png'), str(tmp_path / 'benign (1)_mask_1.png')]
  truth = predict.ground_truth(masks, (36, 44), 'benign (1)')
  assert truth.sum() == 60 and truth[3, 4] and truth[20, 30]
  assert predict.ground_truth([], (36, 44), 'benign (1)') is None
  # One mask of another size: no ground truth rather than part of it, and the reason.
  assert predict.ground_truth(masks, (9, 9), 'x') is None
  assert f'{masks[0]}: mask is 44x36 (WxH) but its image x is 9x9' in capsys.readouterr().err


def test_ground_truth_is_read_as_the_builders_read_masks(tmp_path, capsys):
  """An RGBA scan with a mask painted in alpha and a second, smaller mask: predict finds and
  reads them as the BUSI builder does."""
  gray = busi_fixtures.smooth_image(1)
  lesion = busi_fixtures.ellipse_mask(busi_fixtures.SHAPE, (20, 28), (6, 9))
  other = busi_fixtures.ellipse_mask(busi_fixtures.SHAPE, (8, 8), (4, 4))
  dataset = busi_fixtures.write_kaggle_tree(tmp_path, [
      busi_fixtures.Entry('benign (1)', gray, [lesion, other])])
  folder = dataset / 'benign'
  Image.fromarray(np.stack([gray] * 3 + [np.full_like(gray, 200)], -1), 'RGBA').save(
      folder / 'benign (1).png')
  painted = np.full(busi_fixtures.SHAPE + (4,), 255, np.uint8)  # White; alpha marks the lesion.
  painted[..., 3] = lesion * 255
  Image.fromarray(painted, 'RGBA').save(folder / 'benign (1)_mask.png')
  built = dataset_files.read_all(dataset, lambda record, image, mask: mask[..., 0])
  [(scan, masks)], _ = predict.expand_inputs([str(folder)])
  truth = predict.ground_truth(masks, scan_files.read_grayscale(scan).shape, 'benign (1)')
  np.testing.assert_array_equal(truth, built['benign (1)'] > 0)
  np.testing.assert_array_equal(truth, lesion | other)
  busi_fixtures.encode_mask(other[:30, :50], '1').save(folder / 'benign (1)_mask_1.png')
  assert predict.ground_truth(masks, busi_fixtures.SHAPE, 'benign (1)') is None
  assert (f'{folder / "benign (1)_mask_1.png"}: mask is 50x30 (WxH) but its image benign (1) '
          'is 56x40') in capsys.readouterr().err


@pytest.mark.slow  # Compiles U-Net inference and Grad-CAM.
def test_predict_writes_original_size_outputs_and_skips_broken_files(setup, tmp_path, capsys):
  model, variables, config = setup
  sizes = _write_inputs(tmp_path / 'in')
  out = tmp_path / 'out'
  failures = predict.predict_files(model, variables, config,
                                   [str(tmp_path / 'in'), str(tmp_path / 'in/gray.png')],
                                   str(out))
  assert failures == 1
  assert 'corrupt.png' in capsys.readouterr().err
  expected = {f'{name}_{kind}' for name in sizes for kind in ('mask.png', 'cam.npy',
                                                               'overlay.png')}
  assert set(os.listdir(out)) == expected | {'predictions.csv'}
  # corrupt.png is the second input of the first batch of 4: the batch goes on without it.
  rows = _csv_rows(out)
  assert [os.path.basename(row['file']) for row in rows][:3] == ['benign (1).png',
                                                                'corrupt.png', 'deep.png']
  assert 'UnidentifiedImageError' in rows[1]['error'] and rows[1]['lesion_area_px'] == ''
  for name, (h, w) in sizes.items():
    mask = np.asarray(Image.open(out / f'{name}_mask.png'))
    assert mask.shape == (h, w) and mask.dtype == np.uint8 and set(np.unique(mask)) <= {0, 255}
    cam = np.load(out / f'{name}_cam.npy')
    assert cam.shape == (h, w) and cam.dtype == np.float32
    assert 0.0 <= cam.min() and cam.max() <= 1.0 + 1e-6
  # The written mask is the one `evaluate` scores: flip-TTA logits, upsampled, thresholded,
  # specks removed.
  gray = scan_files.read_grayscale(str(tmp_path / 'in/gray.png'))
  logits = model_lib.inference_logits(model, variables,
                                      imaging.model_input(gray, SIZE)[None], flip_tta=True)
  expected = imaging.lesion_mask(imaging.lesion_probability(np.asarray(logits[0]), *gray.shape),
                                 0.5, config.eval.min_lesion_fraction)
  np.testing.assert_array_equal(np.asarray(Image.open(out / 'gray_mask.png')) > 0, expected)


@pytest.fixture(scope='module', params=[False, True], ids=['mask-head', 'presence-head'])
def tiny(request):
  """(model, variables, config) of a tiny U-Net, with or without the presence head; the
  threshold is the median probability on noise, so masks are neither empty nor full."""
  config = synthetic_config.get_config()
  config.data.image_size = SIZE
  config.model.base_features = 4
  config.model.depth = 2
  config.model.presence_head = request.param
  config.eval.batch_size = 4
  model = model_lib.create_model(config.model)
  variables = model_lib.init_variables(model, 0, SIZE)
  noise = _noise((2, SIZE, SIZE, 1)).astype(np.float32) / 255
  logits = model_lib.inference_logits(model, variables, noise, flip_tta=True)
  config.eval.threshold = round(float(np.median(special.expit(logits))), 4)
  return model, variables, config


def _scans(folder) -> list[str]:
  """Scans of different sizes (larger and smaller than the network input) and kinds, in
  input order; the fourth is a truncated PNG, in the middle of the first batch of 4."""
  os.makedirs(folder)
  images = {'a_gray.png': _noise((45, 60)), 'b_rgb.png': _noise((60, 45, 3), 1),
            'c_small.png': _noise((20, 28), 2), 'd_broken.png': _noise((40, 40), 3),
            'e_wide.jpg': _noise((37, 90, 3), 4), 'f_deep.png': _noise((52, 41), 5),
            'g_large.png': _noise((70, 88), 6)}
  for name, pixels in images.items():
    image = Image.fromarray(pixels)
    if name == 'f_deep.png':
      image = Image.fromarray(pixels.astype(np.uint16) * 257)
    image.save(folder / name)
  data = (folder / 'd_broken.png').read_bytes()
  (folder / 'd_broken.png').write_bytes(data[:len(data) // 2])
  return [str(folder / name) for name in images]


def _per_image(model, variables, config, path: str, layer: str = 'decoder_1'):
  """The path before streaming, for one image alone in a zero-padded batch: its mask, CAM,
  lesion probability and summary line at the original size."""
  gray = scan_files.read_grayscale(path)
  images = np.zeros((config.eval.batch_size, SIZE, SIZE, 1), np.float32)
  images[0] = imaging.model_input(gray, SIZE)
  logits = model_lib.inference_logits(model, variables, images, flip_tta=config.eval.flip_tta)
  region = np.stack([imaging.lesion_mask(special.expit(image_logits), config.eval.threshold,
                                         config.eval.min_lesion_fraction)
                     for image_logits in np.asarray(logits)])
  result = gradcam.seg_grad_cam(model, variables, images, layer, region=region)
  h, w = gray.shape
  probability = imaging.lesion_probability(np.asarray(logits)[0], h, w)
  mask = imaging.lesion_mask(probability, config.eval.threshold, config.eval.min_lesion_fraction)
  area = int(mask.sum())
  line = (f'{predict._stem(path)}: lesion area {area} px ({100.0 * area / (h * w):.2f}%), '
          f'max probability {probability.max():.3f}')
  if result.empty_target[0]:
    line += ' [no predicted lesion: Grad-CAM map is all zero]'
  return gray, mask, imaging.resize_map(result.cam[0], h, w), probability, line


def _csv_rows(folder) -> list[dict]:
  with open(folder / 'predictions.csv', newline='') as f:
    return list(csv.DictReader(f))


def _written_mask(folder, path: str) -> np.ndarray:
  return np.asarray(Image.open(folder / f'{predict._stem(path)}_mask.png'))


@pytest.mark.slow  # Compiles U-Net inference and Grad-CAM.
def test_streamed_batches_write_the_bytes_of_the_per_image_path(tiny, tmp_path, capsys):
  model, variables, config = tiny
  paths = _scans(tmp_path / 'in')
  out = tmp_path / 'out'
  assert predict.predict_files(model, variables, config, [str(tmp_path / 'in')], str(out)) == 1
  err = capsys.readouterr().err
  assert 'ERROR' in err and 'd_broken.png' in err
  masks = []
  for path in paths[:3] + paths[4:]:
    gray, mask, cam, _, line = _per_image(model, variables, config, path)
    masks.append(mask)
    assert _written_mask(out, path).tobytes() == (mask.astype(np.uint8) * 255).tobytes()
    assert np.load(out / f'{predict._stem(path)}_cam.npy').tobytes() == cam.tobytes()
    overlay = tmp_path / 'overlay.png'
    visualize.overlay_figure(gray, mask, cam, str(overlay), title=line)
    assert (out / f'{predict._stem(path)}_overlay.png').read_bytes() == overlay.read_bytes()
  assert 0 < sum(m.sum() for m in masks) < sum(m.size for m in masks)


@pytest.mark.slow  # Compiles U-Net inference and Grad-CAM.
def test_batch_size_changes_no_mask(tiny, tmp_path):
  """Alone in a batch of 1 or packed into batches of 4, an image gets the same mask. XLA:CPU
  sums in another order for another batch shape, so CAMs agree to float32 rounding only."""
  model, variables, config = tiny
  paths = _scans(tmp_path / 'in')
  alone = config.copy_and_resolve_references()
  alone.eval.batch_size = 1
  for name, run_config in (('four', config), ('one', alone)):
    predict.predict_files(model, variables, run_config, paths, str(tmp_path / name),
                          overlays=False)
  for path in paths[:3] + paths[4:]:
    np.testing.assert_array_equal(_written_mask(tmp_path / 'one', path),
                                  _written_mask(tmp_path / 'four', path))
    cams = [np.load(tmp_path / run / f'{predict._stem(path)}_cam.npy') for run in ('one', 'four')]
    np.testing.assert_allclose(*cams, atol=1e-5)
  assert _csv_rows(tmp_path / 'one') == _csv_rows(tmp_path / 'four')


@pytest.mark.parametrize('cams, overlays, kinds', [
    (False, False, ['mask.png']), (True, False, ['mask.png', 'cam.npy']),
    (False, True, ['mask.png'])])  # The overlay shows the CAM: none without.
@pytest.mark.slow  # Compiles U-Net inference and Grad-CAM.
def test_opt_outs_skip_their_work(tiny, tmp_path, monkeypatch, cams, overlays, kinds):
  model, variables, config = tiny
  paths = _scans(tmp_path / 'in')
  readable = paths[:3] + paths[4:]
  masks = [_per_image(model, variables, config, path)[1] for path in readable]

  def must_not_run(*args, **kwargs):
    raise AssertionError('called although opted out')

  if not cams:
    monkeypatch.setattr(gradcam, 'seg_grad_cam', must_not_run)
  monkeypatch.setattr(visualize, 'overlay_figure', must_not_run)
  out = tmp_path / 'out'
  predict.predict_files(model, variables, config, paths, str(out), cams=cams,
                        overlays=overlays)
  assert sorted(os.listdir(out)) == sorted(
      [f'{predict._stem(p)}_{kind}' for p in readable for kind in kinds] + ['predictions.csv'])
  for path, mask in zip(readable, masks):
    assert _written_mask(out, path).tobytes() == (mask.astype(np.uint8) * 255).tobytes()


@pytest.mark.slow  # Compiles U-Net inference and Grad-CAM.
def test_predictions_csv_has_a_row_per_input_in_order(tiny, tmp_path):
  model, variables, config = tiny
  paths = _scans(tmp_path / 'in')
  os.makedirs(tmp_path / 'in/sub')
  clash = tmp_path / 'in/sub/a_gray.png'
  Image.fromarray(_noise((30, 30))).save(clash)
  out = tmp_path / 'out'
  predict.predict_files(model, variables, config, [str(tmp_path / 'in')], str(out),
                        overlays=False)
  rows = _csv_rows(out)
  assert tuple(rows[0]) == predict.CSV_COLUMNS
  assert [row['file'] for row in rows] == paths + [str(clash)]
  broken, clashing = rows[3], rows[-1]
  assert 'd_broken.png' in broken['error'] and 'truncated' in broken['error']
  assert 'already used' in clashing['error']
  assert {k for k, v in broken.items() if v} == {k for k, v in clashing.items() if v} == {
      'file', 'error'}
  for path, row in zip(paths[:3] + paths[4:], rows[:3] + rows[4:-1]):
    gray, mask, _, probability, _ = _per_image(model, variables, config, path)
    h, w = gray.shape
    area = int((_written_mask(out, path) > 0).sum())
    assert (int(row['height']), int(row['width'])) == (h, w)
    assert int(row['lesion_area_px']) == area == mask.sum()
    assert float(row['lesion_area_percent']) == pytest.approx(100 * area / (h * w), abs=1e-4)
    assert float(row['max_lesion_probability']) == pytest.approx(probability.max(), abs=1e-6)
    assert float(row['threshold']) == config.eval.threshold and row['error'] == ''
    if not config.model.presence_head:
      assert row['presence_probability'] == ''
      continue
    # The image-level probability of the presence head: its logit averaged over the flip.
    image = imaging.model_input(gray, SIZE)[None]
    views = [model.apply(variables, view, train=False, mutable=['aux'])[1]['aux']
             ['presence_logits'][0][0] for view in (image, image[:, :, ::-1])]
    assert float(row['presence_probability']) == pytest.approx(
        special.expit(np.mean(views)), abs=1e-6)


@pytest.mark.slow  # Compiles U-Net inference and Grad-CAM.
def test_second_run_compiles_nothing(setup, tmp_path, caplog):
  """One batch shape: the network and Grad-CAM compile once, not per batch or per run."""
  model, variables, config = setup
  paths = _scans(tmp_path / 'in')
  predict.predict_files(model, variables, config, paths, str(tmp_path / 'warm'),
                        overlays=False)
  # Other files, another last batch (4 + 1 readable instead of 4 + 2): the same shapes.
  with jax.log_compiles(), caplog.at_level(logging.WARNING):
    predict.predict_files(model, variables, config, paths[1:], str(tmp_path / 'out'),
                          overlays=False)
  assert not [r.message for r in caplog.records if 'Compiling' in r.message]


def test_predict_refuses_to_write_beside_its_inputs(setup, tmp_path):
  model, variables, config = setup
  Image.fromarray(_noise((8, 8))).save(tmp_path / 'a.png')
  with pytest.raises(ValueError, match='ground truth'):
    predict.predict_files(model, variables, config, [str(tmp_path)], str(tmp_path))


def _eval_batch(sizes, seed):
  """A batch shaped like `input_pipeline.eval_batches` output (originals zero-padded)."""
  rng = np.random.default_rng(seed)
  hmax, wmax = np.max(sizes, axis=0)
  batch = {'image': rng.uniform(size=(len(sizes), SIZE, SIZE, 1)).astype(np.float32),
           'orig_image': np.zeros((len(sizes), hmax, wmax), np.uint8),
           'orig_mask': np.zeros((len(sizes), hmax, wmax), np.uint8),
           'orig_height': np.array([h for h, _ in sizes], np.int32),
           'orig_width': np.array([w for _, w in sizes], np.int32),
           'image_id': np.array([f'case ({seed}-{i})'.encode() for i in range(len(sizes))])}
  for i, (h, w) in enumerate(sizes):
    batch['orig_image'][i, :h, :w] = _noise((h, w), seed + i)
    if (seed, i) != (1, 0):  # The very first image is a normal scan.
      batch['orig_mask'][i, h // 4:h // 2, w // 4:w // 2] = 1
  return batch


@pytest.mark.slow  # Compiles U-Net inference and Grad-CAM.
def test_gradcam_split_scores_layers_and_draws(setup, tmp_path):
  model, variables, config = setup
  batches = [_eval_batch([(40, 50), (30, 36)], 1), _eval_batch([(20, 64)], 2)]
  scores = gradcam_report.gradcam_split(model, variables, config, batches, str(tmp_path),
                                        layers=('bottleneck', 'decoder_0'), max_images=2)
  assert set(scores) == {'bottleneck', 'decoder_0'}
  assert all(0.0 <= s <= 1.0 for s in scores.values())
  assert set(os.listdir(tmp_path)) == {'case (1-0)_overlay.png', 'case (1-1)_overlay.png',
                                       'layer_comparison.png', 'pointing_game.json'}
  with open(tmp_path / 'pointing_game.json') as f:
    assert json.load(f)['lesion_images'] == 2


def _masks(folder) -> dict[str, np.ndarray]:
  return {name[:-len('_mask.png')]: np.asarray(Image.open(folder / name))
          for name in os.listdir(folder) if name.endswith('_mask.png')}


@pytest.mark.slow  # Compiles U-Net inference.
def test_folder_of_tiff_and_bmp_scans_predicts_as_their_png_copies(setup, tmp_path):
  model, variables, config = setup
  scans = {'gray.tif': _noise((40, 50)), 'deep.tiff': _noise((30, 44), 1).astype(np.uint16) * 257,
           'colour.TIF': _noise((36, 36, 3), 2), 'gray_bmp.bmp': _noise((41, 33), 3),
           'colour_bmp.BMP': _noise((28, 60, 3), 4)}
  os.makedirs(tmp_path / 'scans/sub')
  os.makedirs(tmp_path / 'pngs')
  for i, (name, pixels) in enumerate(scans.items()):
    Image.fromarray(pixels).save(tmp_path / 'scans' / ('sub' if i % 2 else '') / name)
    Image.fromarray(pixels).save(tmp_path / 'pngs' / f'{os.path.splitext(name)[0]}.png')
  assert predict.predict_files(model, variables, config, [str(tmp_path / 'scans')],
                               str(tmp_path / 'out'), cams=False) == 0
  predict.predict_files(model, variables, config, [str(tmp_path / 'pngs')],
                        str(tmp_path / 'png_out'), cams=False)
  masks, png_masks = _masks(tmp_path / 'out'), _masks(tmp_path / 'png_out')
  assert len(masks) == len(scans)
  for name, pixels in scans.items():
    stem = os.path.splitext(name)[0]
    assert masks[stem].shape == pixels.shape[:2]
    np.testing.assert_array_equal(masks[stem], png_masks[stem])


@pytest.mark.slow  # Compiles U-Net inference.
def test_dicom_scans_predict_one_output_per_frame(setup, tmp_path):
  from dicom_fixtures import write_dicom  # pylint: disable=g-import-not-at-top
  model, variables, config = setup
  single, loop = _noise((40, 50), 5), _noise((3, 36, 44), 6)
  colour = _noise((2, 30, 30, 3), 7)
  os.makedirs(tmp_path / 'scans')
  write_dicom(tmp_path / 'scans/a_single.dcm', single, 'MONOCHROME1')
  write_dicom(tmp_path / 'scans/b_loop.dcm', loop)
  write_dicom(tmp_path / 'scans/c_colour.dcm', colour, 'RGB')
  out = tmp_path / 'out'
  # Batches of 4: the loop's frames and the colour frames share the second batch.
  assert predict.predict_files(model, variables, config, [str(tmp_path / 'scans')], str(out),
                               cams=False) == 0
  names = ['a_single', 'b_loop_frame001', 'b_loop_frame002', 'b_loop_frame003',
           'c_colour_frame001', 'c_colour_frame002']
  assert sorted(os.listdir(out)) == sorted([f'{n}_mask.png' for n in names] +
                                           ['predictions.csv'])
  rows = _csv_rows(out)
  assert [(os.path.basename(r['file']), r['frame']) for r in rows] == [
      ('a_single.dcm', ''), ('b_loop.dcm', '1'), ('b_loop.dcm', '2'), ('b_loop.dcm', '3'),
      ('c_colour.dcm', '1'), ('c_colour.dcm', '2')]
  # Each frame's mask is the one its pixels get as a PNG of their own.
  os.makedirs(tmp_path / 'pngs')
  pngs = {'a_single': Image.fromarray(255 - single), 'c_colour_frame002': Image.fromarray(
      colour[1]), **{f'b_loop_frame00{i + 1}': Image.fromarray(f) for i, f in enumerate(loop)}}
  for name, image in pngs.items():
    image.save(tmp_path / 'pngs' / f'{name}.png')
  predict.predict_files(model, variables, config, [str(tmp_path / 'pngs')],
                        str(tmp_path / 'png_out'), cams=False)
  masks, png_masks = _masks(out), _masks(tmp_path / 'png_out')
  for name in pngs:
    np.testing.assert_array_equal(masks[name], png_masks[name])


@pytest.mark.slow  # Compiles U-Net inference.
def test_threshold_sets_the_masks_and_probabilities_are_written_consistently(setup, tmp_path):
  model, variables, config = setup
  paths = _scans(tmp_path / 'in')
  readable = paths[:3] + paths[4:]
  config = config.copy_and_resolve_references()
  config.eval.min_lesion_fraction = 0.0  # Specks kept: the mask is exactly p > threshold.
  predict.predict_files(model, variables, config, paths, str(tmp_path / 'first'), cams=False,
                        probabilities=True)
  # Thresholds between which a good share of this untrained model's pixels lie.
  everything = np.concatenate([np.asarray(Image.open(
      tmp_path / 'first' / f'{predict._stem(p)}_probability.png')).ravel() for p in readable])
  probabilities = {}
  for threshold in np.round(np.quantile(everything / predict.PROBABILITY_SCALE, [0.3, 0.7]), 4):
    config.eval.threshold = threshold
    out = tmp_path / f'at_{threshold}'
    threshold = float(threshold)
    predict.predict_files(model, variables, config, paths, str(out), cams=False,
                          probabilities=True)
    assert {float(row['threshold']) for row in _csv_rows(out) if not row['error']} == {threshold}
    for path in readable:
      name = predict._stem(path)
      stored = np.asarray(Image.open(out / f'{name}_probability.png'))
      assert stored.dtype == np.uint16
      assert stored.shape == _written_mask(out, path).shape == scan_files.read_grayscale(
          path).shape
      probability = stored / predict.PROBABILITY_SCALE
      mask = _written_mask(out, path) > 0
      near = np.abs(probability - threshold) <= 1 / predict.PROBABILITY_SCALE
      np.testing.assert_array_equal(mask[~near], (probability > threshold)[~near])
      probabilities.setdefault(name, []).append((probability, mask))
  marked = [[mask.sum() for _, mask in runs] for runs in probabilities.values()]
  for (low_p, low_mask), (high_p, high_mask) in probabilities.values():
    np.testing.assert_array_equal(low_p, high_p)  # The threshold moves the masks only.
    assert np.all(high_mask <= low_mask)
  assert sum(low for low, _ in marked) > sum(high for _, high in marked) > 0


def _workdir(setup, folder) -> str:
  """A workdir whose best checkpoint is `setup`'s model, its threshold 0.5."""
  from unet_flax import checkpointing  # pylint: disable=g-import-not-at-top
  _, variables, config = setup
  checkpointing.save_config(config, str(folder))
  checkpoints = checkpointing.Checkpoints(str(folder), keep=1)
  checkpoints.save_best(1, variables, {'epoch': 1, 'step': 1, 'threshold': 0.5})
  checkpoints.close()
  return str(folder)


def _main(*args):
  """main.py in a subprocess; asserts that it succeeds."""
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  result = subprocess.run([sys.executable, 'main.py', *args], cwd=root, capture_output=True,
                          text=True, timeout=600)
  assert result.returncode == 0, result.stderr[-2000:]


@pytest.mark.slow  # Runs main.py, which compiles U-Net inference.
def test_main_predict_takes_threshold_and_probabilities_flags(setup, tmp_path):
  workdir = _workdir(setup, tmp_path / 'run')
  Image.fromarray(_noise((40, 50))).save(tmp_path / 'scan.png')
  _main('--mode=predict', f'--workdir={workdir}', f'--input={tmp_path / "scan.png"}',
        f'--output={tmp_path / "out"}', '--threshold=0.25', '--probabilities', '--cams=false')
  assert float(_csv_rows(tmp_path / 'out')[0]['threshold']) == 0.25
  probability = np.asarray(Image.open(tmp_path / 'out/scan_probability.png'))
  assert probability.shape == (40, 50)
  mask = _written_mask(tmp_path / 'out', str(tmp_path / 'scan.png')) > 0
  assert mask.any() and np.all(probability[mask] > 0.25 * predict.PROBABILITY_SCALE - 1)


@pytest.mark.slow  # Compiles Grad-CAM, in-process and in main.py.
def test_gradcam_explains_the_mask_at_the_threshold_given(setup, tmp_path):
  """The region each map explains is the mask at --threshold: near 0 lesion scans get one,
  near 1 none does (this untrained model's probabilities lie between), so every lesion
  scan counts as a miss."""
  workdir = _workdir(setup, tmp_path / 'run')

  def report(folder):
    with open(folder / 'pointing_game.json') as f:
      return json.load(f)

  gradcam_report.gradcam_workdir(workdir, None, 'test', 'synthetic', str(tmp_path / 'low'),
                                 ['decoder_0'], max_images=0, threshold=1e-6)
  _main('--mode=gradcam', f'--workdir={workdir}', '--split=test', '--layers=decoder_0',
        '--max_images=0', '--threshold=0.999999', f'--output={tmp_path / "high"}')
  low, high = report(tmp_path / 'low'), report(tmp_path / 'high')
  assert (low['threshold'], high['threshold']) == (1e-6, 0.999999)
  assert low['lesion_images'] == high['lesion_images'] > 0
  assert low['empty_prediction'] < low['lesion_images'] == high['empty_prediction']
  assert high['pointing_game'] == {'decoder_0': 0.0}
