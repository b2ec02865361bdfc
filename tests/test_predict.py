"""predict_files on every input format, BUSI-layout folders and broken files; gradcam_split."""
import json
import os

import numpy as np
from PIL import Image
import pytest

from configs import synthetic as synthetic_config
from data import scan_files
from unet_flax import imaging
from unet_flax import model as model_lib
from unet_flax import predict

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
  _, problems = predict.expand_inputs([str(tmp_path / '*.tif')])
  assert problems == [f'{tmp_path / "*.tif"}: no PNG/JPEG image found']


def test_ground_truth_is_the_union_of_mask_files(tmp_path):
  _write_inputs(tmp_path)
  truth = predict._ground_truth(
      [str(tmp_path / 'benign (1)_mask.png'), str(tmp_path / 'benign (1)_mask_1.png')],
      (36, 44), 'benign (1)')
  assert truth.sum() == 60 and truth[3, 4] and truth[20, 30]
  assert predict._ground_truth([str(tmp_path / 'benign (1)_mask.png')], (9, 9), 'x') is None


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
  assert set(os.listdir(out)) == expected
  for name, (h, w) in sizes.items():
    mask = np.asarray(Image.open(out / f'{name}_mask.png'))
    assert mask.shape == (h, w) and mask.dtype == np.uint8 and set(np.unique(mask)) <= {0, 255}
    cam = np.load(out / f'{name}_cam.npy')
    assert cam.shape == (h, w) and cam.dtype == np.float32
    assert 0.0 <= cam.min() and cam.max() <= 1.0 + 1e-6
  # The written mask is the one `evaluate` scores: flip-TTA logits, upsampled, thresholded.
  gray = scan_files.read_grayscale(str(tmp_path / 'in/gray.png'))
  logits = model_lib.inference_logits(model, variables,
                                      imaging.model_input(gray, SIZE)[None], flip_tta=True)
  expected = imaging.lesion_probability(np.asarray(logits[0]), *gray.shape) > 0.5
  np.testing.assert_array_equal(np.asarray(Image.open(out / 'gray_mask.png')) > 0, expected)


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


def test_gradcam_split_scores_layers_and_draws(setup, tmp_path):
  model, variables, config = setup
  batches = [_eval_batch([(40, 50), (30, 36)], 1), _eval_batch([(20, 64)], 2)]
  scores = predict.gradcam_split(model, variables, config, batches, str(tmp_path),
                                 layers=('bottleneck', 'decoder_0'), max_images=2)
  assert set(scores) == {'bottleneck', 'decoder_0'}
  assert all(0.0 <= s <= 1.0 for s in scores.values())
  assert set(os.listdir(tmp_path)) == {'case (1-0)_overlay.png', 'case (1-1)_overlay.png',
                                       'layer_comparison.png', 'pointing_game.json'}
  with open(tmp_path / 'pointing_game.json') as f:
    assert json.load(f)['lesion_images'] == 2
