"""--mode=export and the ONNX Runtime backend held to JAX: the ONNX graph for every model option,
the written ONNX and SavedModel loaded by a process without this repository's code, masks at
the original size, predict and evaluate through ONNX Runtime, and the optional install."""
import csv
import json
import os
import subprocess
import sys
import textwrap

import jax
import numpy as np
from PIL import Image
import pytest
from scipy import special

from configs import cpu as cpu_config
from data import synthetic
from unet_flax import checkpointing
from unet_flax import evaluate
from unet_flax import export
from unet_flax import imaging
from unet_flax import model as model_lib
from unet_flax import onnx_backend
from unet_flax import onnx_graph
from unet_flax import predict
from unet_flax import sharding

ort = pytest.importorskip('onnxruntime')

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SIZE = 64
THRESHOLD = 0.4


def _perturbed(variables, seed=0):
  """`variables` with BatchNorm statistics and affine parameters far from their initial
  (0, 1), so folding them into the convolutions is exercised."""
  rng = np.random.default_rng(seed)

  def perturb(path, value):
    key, parent = path[-1].key, path[-2].key
    if key == 'mean':
      return rng.normal(0, 0.3, value.shape).astype(np.float32)
    if key == 'var':
      return rng.uniform(0.3, 2.0, value.shape).astype(np.float32)
    if parent.startswith('norm_'):
      return (rng.uniform(0.5, 1.5, value.shape) if key == 'scale'
              else rng.normal(0, 0.2, value.shape)).astype(np.float32)
    return np.asarray(value)

  return jax.tree_util.tree_map_with_path(perturb, variables)


def _shipped_config():
  """configs/cpu.py's model (batch norm, transposed convs, presence head, deep supervision,
  flip TTA) at test size."""
  config = cpu_config.get_config()
  config.data.image_size = SIZE
  config.model.base_features = 8
  config.model.depth = 3
  config.model.deep_supervision = 2
  config.eval.batch_size = 4
  config.eval.threshold = THRESHOLD
  return config


def _scans(num: int, seed: int = 0) -> list[np.ndarray]:
  """Ultrasound-like gray scans of varied original sizes, with and without lesions."""
  return [synthetic.make_example((seed, i), i % 3, f's{i}')['image'][..., 0]
          for i in range(num)]


def _network_inputs(scans) -> np.ndarray:
  return np.stack([imaging.model_input(scan, SIZE) for scan in scans])


@pytest.fixture(scope='module')
def shipped():
  """(config, model, variables, scans, JAX's outputs on them): a batch of eval.batch_size
  scans, the one shape every test here compiles the shipped model for."""
  config = _shipped_config()
  model = model_lib.create_model(config.model)
  variables = _perturbed(model_lib.init_variables(model, 0, SIZE))
  scans = _scans(config.eval.batch_size)
  expected = jax.device_get(export.reference_outputs(model, variables, _network_inputs(scans),
                                                     True))
  return config, model, variables, scans, expected


def _onnx_outputs(model, variables, size, flip_tta, images) -> dict:
  session = ort.InferenceSession(
      onnx_graph.build(model, variables, size, flip_tta).SerializeToString(),
      providers=['CPUExecutionProvider'])
  names = [output.name for output in session.get_outputs()]
  return dict(zip(names, session.run(names, {onnx_graph.INPUT: images})))


def _max_probability_difference(outputs: dict, expected: dict) -> float:
  assert sorted(outputs) == sorted(expected)
  for name, value in expected.items():
    assert outputs[name].shape == value.shape, name
  return max(float(np.max(np.abs(outputs[k] - expected[k]))) for k in expected
             if k.endswith('_probability'))


# Between them and the shipped model below, every option of `model.UNet` inference.
@pytest.mark.parametrize('norm, upsample, presence_head, flip_tta', [
    ('group', 'resize', True, False), ('none', 'transpose', False, True)])
def test_onnx_graph_matches_jax_for_each_model_option(norm, upsample, presence_head, flip_tta):
  model = model_lib.UNet(base_features=4, depth=2, norm=norm, upsample=upsample,
                         presence_head=presence_head, deep_supervision=1)
  variables = _perturbed(model_lib.init_variables(model, 1, 32), seed=1)
  images = np.stack([imaging.model_input(scan, 32) for scan in _scans(2, seed=1)])
  expected = jax.device_get(export.reference_outputs(model, variables, images, flip_tta))
  outputs = _onnx_outputs(model, variables, 32, flip_tta, images)
  assert _max_probability_difference(outputs, expected) <= export.TOLERANCE
  # The outputs are not trivially equal: the options change them.
  assert np.ptp(expected['lesion_probability']) > 0.01


@pytest.mark.parametrize('flip_tta', [False, True])
def test_onnx_runtime_fuses_every_relu_into_a_convolution(flip_tta, tmp_path):
  """After ONNX Runtime's graph optimizations no ReLU, Concat of skips or DepthToSpace runs
  on its own: each decoder block's (upsampled, skip) sum and ReLU fuse into a convolution.
  (A batch dimension shape inference could not name once left them unfused.)"""
  model = model_lib.UNet(base_features=16, depth=2, presence_head=True)
  variables = model_lib.init_variables(model, 0, 32)
  path = str(tmp_path / 'optimized.onnx')
  ort.InferenceSession(onnx_graph.build(model, variables, 32, flip_tta).SerializeToString(),
                       onnx_backend.session_options(optimized_model_filepath=path),
                       providers=['CPUExecutionProvider'])
  import onnx  # pylint: disable=g-import-not-at-top
  ops = [node.op_type for node in onnx.load(path).graph.node]
  assert 'Relu' not in ops and 'DepthToSpace' not in ops
  assert ops.count('Concat') == flip_tta  # Only the batch of the images and their mirrors.


def _mask_disagreement(masks_a, masks_b, expected_logits, threshold) -> tuple[int, int]:
  """(pixels where two lists of original-size masks differ, pixels of those where the
  expected probability is not within `export.TOLERANCE` of `threshold`)."""
  differing = unexplained = 0
  for a, b, logits in zip(masks_a, masks_b, expected_logits):
    probability = imaging.lesion_probability(logits, *a.shape)
    differs = a != b
    differing += int(differs.sum())
    unexplained += int((differs & (np.abs(probability - threshold) > export.TOLERANCE)).sum())
  return differing, unexplained


def _masks(logits, scans, threshold) -> list[np.ndarray]:
  """The masks `predict` writes, at the scans' original sizes."""
  return [imaging.lesion_mask(imaging.lesion_probability(image_logits, *scan.shape),
                              threshold, 0.001) for image_logits, scan in zip(logits, scans)]


def _median_probability(logits) -> float:
  """A threshold at which half the pixels are lesion: masks are as fragile as they get."""
  return float(np.median(special.expit(logits)))


def test_shipped_model_onnx_parity_and_masks_at_the_original_size(shipped):
  _, model, variables, scans, expected = shipped
  outputs = _onnx_outputs(model, variables, SIZE, True, _network_inputs(scans))
  difference = _max_probability_difference(outputs, expected)
  print(f'ONNX Runtime vs JAX, max abs probability difference: {difference:.1e} '
        f'(probabilities {expected["lesion_probability"].min():.3f} to '
        f'{expected["lesion_probability"].max():.3f})')
  assert difference <= export.TOLERANCE
  threshold = _median_probability(expected['lesion_logits'])
  differing, unexplained = _mask_disagreement(
      _masks(outputs['lesion_logits'], scans, threshold),
      _masks(expected['lesion_logits'], scans, threshold), expected['lesion_logits'], threshold)
  print(f'{differing} mask pixels differ, all within {export.TOLERANCE} of the threshold')
  assert unexplained == 0


@pytest.fixture(scope='module')
def exported(shipped, tmp_path_factory):
  """(export.json, folder) of a workdir with the shipped-like model as its best checkpoint,
  its threshold chosen where half of the scans' pixels are lesion."""
  config, _, variables, _, expected = shipped
  workdir = str(tmp_path_factory.mktemp('run'))
  checkpointing.save_config(config, workdir)
  checkpoints = checkpointing.Checkpoints(workdir, keep=1)
  threshold = round(_median_probability(expected['lesion_logits']), 6)
  checkpoints.save_best(3, variables, {
      'epoch': 2, 'val_all_images_dice': 0.5, 'threshold': threshold,
      'val_all_images_dice_by_threshold': {str(threshold): 0.5}})
  checkpoints.close()
  output_dir = str(tmp_path_factory.mktemp('exported'))
  return export.export_workdir(workdir, None, output_dir), output_dir


def test_export_json_says_what_a_consumer_needs(shipped, exported):
  manifest, output_dir = exported
  with open(os.path.join(output_dir, export.MANIFEST_FILE)) as f:
    assert json.load(f) == manifest
  # The checkpoint's chosen threshold, not the config's.
  assert manifest['threshold'] != THRESHOLD
  assert manifest['threshold'] == round(_median_probability(shipped[4]['lesion_logits']), 6)
  assert manifest['min_lesion_fraction'] == 0.001
  assert manifest['input']['shape'] == ['N', SIZE, SIZE, 1]
  assert manifest['flip_tta']['enabled'] and manifest['flip_tta']['in_graph']
  assert sorted(manifest['outputs']) == sorted(onnx_graph.LESION_OUTPUTS +
                                               onnx_graph.PRESENCE_OUTPUTS)
  differences = manifest['verified']['max_abs_probability_difference']
  assert sorted(differences) == ['onnxruntime', 'tensorflow']
  assert max(differences.values()) <= export.TOLERANCE


# What a consumer runs: onnxruntime and TensorFlow, numpy, the export folder; nothing else.
# Each model also runs the first image alone: the batch size is free.
_CONSUMER = textwrap.dedent("""
    import json, os, sys
    import numpy as np
    import onnxruntime
    import tensorflow as tf
    folder, images = sys.argv[1], np.load(sys.argv[2])
    with open(os.path.join(folder, 'export.json')) as f:
      manifest = json.load(f)
    session = onnxruntime.InferenceSession(os.path.join(folder, manifest['files']['onnx']['path']))
    names = [o.name for o in session.get_outputs()]
    saved = manifest['files']['saved_model']
    serve = tf.saved_model.load(os.path.join(folder, saved['path'])).signatures[saved['signature']]
    results = {}
    for batch, name in ((images, 'all'), (images[:1], 'first')):
      results.update({f'onnx/{name}/{n}': v for n, v in zip(names, session.run(
          names, {manifest['input']['name']: batch}))})
      results.update({f'tf/{name}/{n}': v.numpy() for n, v in serve(tf.constant(batch)).items()})
    assert not [m for m in sys.modules if m.split('.')[0] in ('unet_flax', 'data', 'configs')]
    np.savez(sys.argv[3], **results)
""")


@pytest.mark.slow  # Starts TensorFlow in a subprocess.
def test_exported_models_run_without_this_repository(shipped, exported, tmp_path):
  _, _, _, scans, expected = shipped
  manifest, output_dir = exported
  np.save(tmp_path / 'images.npy', _network_inputs(scans))
  env = {k: v for k, v in os.environ.items() if k != 'PYTHONPATH'}
  subprocess.run([sys.executable, '-c', _CONSUMER, output_dir, str(tmp_path / 'images.npy'),
                  str(tmp_path / 'outputs.npz')], cwd=tmp_path, env=env, check=True,
                 timeout=300)
  results = np.load(tmp_path / 'outputs.npz')
  threshold = manifest['threshold']
  for runtime in ('onnx', 'tf'):
    outputs = {k.split('/')[2]: v for k, v in results.items() if k.startswith(f'{runtime}/all')}
    assert _max_probability_difference(outputs, expected) <= export.TOLERANCE, runtime
    _, unexplained = _mask_disagreement(_masks(outputs['lesion_logits'], scans, threshold),
                                        _masks(expected['lesion_logits'], scans, threshold),
                                        expected['lesion_logits'], threshold)
    assert unexplained == 0, runtime
    first = {k.split('/')[2]: v for k, v in results.items() if k.startswith(f'{runtime}/first')}
    assert _max_probability_difference(first, {k: v[:1] for k, v in expected.items()}) <= (
        export.TOLERANCE), runtime


def _write_scans(folder, scans) -> list[str]:
  os.makedirs(folder)
  paths = [str(folder / f'scan_{i}.png') for i in range(len(scans))]
  for path, scan in zip(paths, scans):
    Image.fromarray(scan).save(path)
  return paths


def test_onnx_backend_writes_predicts_masks_and_scores_as_evaluate(shipped, tmp_path):
  config, model, variables, scans, expected = shipped
  paths = _write_scans(tmp_path / 'in', scans)
  config = config.copy_and_resolve_references()
  config.eval.threshold = _median_probability(expected['lesion_logits'])
  network = onnx_backend.OnnxNetwork(model, variables, SIZE, config.eval.flip_tta)
  for name, run_network in (('jax', None), ('onnx', network)):
    predict.predict_files(model, variables, config, paths, str(tmp_path / name), cams=False,
                          network=run_network)
  rows = {}
  for name in ('jax', 'onnx'):
    with open(tmp_path / name / 'predictions.csv', newline='') as f:
      rows[name] = list(csv.DictReader(f))
  for jax_row, onnx_row in zip(rows['jax'], rows['onnx'], strict=True):
    for column in ('max_lesion_probability', 'presence_probability'):
      assert abs(float(jax_row[column]) - float(onnx_row[column])) <= export.TOLERANCE
  masks = {name: [np.asarray(Image.open(tmp_path / name / f'scan_{i}_mask.png')) > 0
                  for i in range(len(scans))] for name in ('jax', 'onnx')}
  differing, unexplained = _mask_disagreement(masks['jax'], masks['onnx'],
                                              expected['lesion_logits'], config.eval.threshold)
  print(f'predict: {differing} mask pixels differ, all within {export.TOLERANCE} of the '
        'threshold')
  assert unexplained == 0 and sum(m.sum() for m in masks['jax']) > 0

  predictor = evaluate.Predictor(model, sharding.create_mesh(), config.eval.batch_size,
                                 config.eval.flip_tta, network)
  logits = predictor.logits(variables, _network_inputs(scans[:3]))
  assert logits.shape == (3, SIZE, SIZE)
  np.testing.assert_allclose(special.expit(logits), expected['lesion_probability'][:3],
                             atol=export.TOLERANCE)


def test_auto_backend_takes_onnxruntime_only_where_it_is_the_faster_exact_one(shipped,
                                                                           monkeypatch):
  config, model, variables, _, _ = shipped
  assert onnx_backend.network('jax', model, variables, config) is None
  assert isinstance(onnx_backend.network('auto', model, variables, config),
                    onnx_backend.OnnxNetwork)
  half = config.copy_and_resolve_references()
  half.half_precision = True
  assert onnx_backend.network('auto', model, variables, half) is None
  monkeypatch.setattr(onnx_backend, 'installed', lambda: False)
  assert onnx_backend.network('auto', model, variables, config) is None


def test_the_core_runs_without_the_export_packages(shipped, monkeypatch):
  """Nothing but the export and the ONNX Runtime backend imports onnx; without it they end in
  one line that says what to install."""
  script = ("import sys; sys.modules['onnx'] = sys.modules['onnxruntime'] = None; "
            'import main; from unet_flax import evaluate, export, onnx_backend, predict')
  subprocess.run([sys.executable, '-c', script], cwd=ROOT, check=True, timeout=300)
  _, model, variables, _, _ = shipped
  monkeypatch.setitem(sys.modules, 'onnx', None)
  with pytest.raises(onnx_graph.MissingDependencyError) as error:
    onnx_graph.build(model, variables, SIZE, True)
  assert str(error.value) == ("The ONNX export needs the 'onnx' package, which is not "
                              'installed: pip install -r requirements-export.txt')
  import main  # pylint: disable=g-import-not-at-top
  assert issubclass(onnx_graph.MissingDependencyError, main._user_errors())
