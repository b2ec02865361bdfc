"""--mode=export: a workdir's best model as ONNX and as a TensorFlow SavedModel, plus
export.json, what a consumer needs to feed them and to turn their outputs into masks.

ONNX (`model.onnx`, `onnx_graph`) is the primary format: ONNX Runtime, TensorRT, OpenVINO,
Triton, C++/C#/JavaScript runtimes. The SavedModel (jax2tf) is for TF Serving; it holds an
`XlaCallModule` op, so it runs in TensorFlow but converts to neither ONNX nor TFLite. Both
compute exactly `reference_outputs`: flip TTA (per the config) is inside the graphs, the
preprocessing and the mask rule are in export.json. Before writing export.json, both files are
loaded back and held to JAX on a random batch (`verified` in export.json).
"""
import json
import os

from absl import logging
import jax
import numpy as np

from unet_flax import evaluate
from unet_flax import model as model_lib
from unet_flax import onnx_graph
from unet_flax import release

ONNX_FILE = 'model.onnx'
SAVED_MODEL_DIR = 'saved_model'
MANIFEST_FILE = 'export.json'
# Max abs difference of any probability from JAX's that an exported model may have.
TOLERANCE = 1e-4
# Lowered for both: the SavedModel also runs on a GPU TensorFlow / TF Serving.
SAVED_MODEL_PLATFORMS = ('cpu', 'cuda')


def reference_outputs(model, variables, images, flip_tta: bool) -> dict:
  """{output name: array} of JAX's inference (`model.inference_outputs`), with the sigmoid
  of each logit: what the exported models compute."""
  logits, presence = model_lib.inference_outputs(model, variables, images, flip_tta=flip_tta)
  outputs = dict(zip(onnx_graph.LESION_OUTPUTS, (logits, jax.nn.sigmoid(logits))))
  if presence is not None:
    outputs.update(zip(onnx_graph.PRESENCE_OUTPUTS, (presence, jax.nn.sigmoid(presence))))
  return outputs


def write_saved_model(model, variables, image_size: int, flip_tta: bool, path: str) -> None:
  """`reference_outputs` as the `serving_default` signature of a SavedModel at `path`, for
  any batch size; the parameters are its variables."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  from jax.experimental import jax2tf  # pylint: disable=g-import-not-at-top
  converted = jax2tf.convert(
      lambda v, images: reference_outputs(model, v, images, flip_tta),
      polymorphic_shapes=[None, f'(b, {image_size}, {image_size}, 1)'], with_gradient=False,
      native_serialization_platforms=SAVED_MODEL_PLATFORMS)
  module = tf.Module()
  module.parameters = jax.tree.map(lambda a: tf.Variable(np.asarray(a), trainable=False),
                                  variables)

  @tf.function(autograph=False, input_signature=[
      tf.TensorSpec((None, image_size, image_size, 1), tf.float32, name=onnx_graph.INPUT)])
  def serve(image):
    return converted(module.parameters, image)

  tf.saved_model.save(module, path, signatures={'serving_default': serve})


def _onnx_outputs(path: str, images: np.ndarray) -> dict:
  ort = onnx_graph.import_optional('onnxruntime', 'Checking the ONNX export')
  session = ort.InferenceSession(path, providers=['CPUExecutionProvider'])
  names = [output.name for output in session.get_outputs()]
  return dict(zip(names, session.run(names, {onnx_graph.INPUT: images})))


def _saved_model_outputs(path: str, images: np.ndarray) -> dict:
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  serve = tf.saved_model.load(path).signatures['serving_default']
  return {name: value.numpy() for name, value in serve(tf.constant(images)).items()}


def verify(model, variables, config, output_dir: str) -> dict:
  """Max abs difference of each written model's probabilities from JAX's on a random batch
  of `eval.batch_size`; raises if one exceeds `TOLERANCE`."""
  size, flip_tta = config.data.image_size, config.eval.flip_tta
  images = np.random.default_rng(config.seed).random((config.eval.batch_size, size, size, 1),
                                                     np.float32)
  expected = jax.device_get(reference_outputs(model, variables, images, flip_tta))
  differences = {}
  for name, outputs in (
      ('onnxruntime', _onnx_outputs(os.path.join(output_dir, ONNX_FILE), images)),
      ('tensorflow', _saved_model_outputs(os.path.join(output_dir, SAVED_MODEL_DIR), images))):
    if sorted(outputs) != sorted(expected):
      raise AssertionError(f'{name} outputs {sorted(outputs)}, expected {sorted(expected)}')
    differences[name] = max(float(np.max(np.abs(outputs[key] - expected[key])))
                            for key in expected if key.endswith('_probability'))
    if differences[name] > TOLERANCE:
      raise AssertionError(f'The {name} export differs from JAX by {differences[name]:.2e} '
                           f'(tolerance {TOLERANCE}): a bug in unet_flax/onnx_graph.py or '
                           'export.py.')
  return {'images': f'{len(images)} of uniform noise', 'tolerance': TOLERANCE,
          'max_abs_probability_difference': differences}


def manifest(config, note: str, verified: dict) -> dict:
  """export.json: what the models take and give, and how `--mode=predict` uses them."""
  size, evaluation = config.data.image_size, config.eval
  per_pixel = ['N', size, size]
  outputs = {
      'lesion_logits': {'shape': per_pixel, 'meaning': 'per-pixel lesion logit at the '
                        'network size' + (', gated by the presence head: logit of '
                                          'P(pixel) * P(image has a lesion)'
                                          if config.model.presence_head else '')},
      'lesion_probability': {'shape': per_pixel, 'meaning': 'sigmoid(lesion_logits)'}}
  if config.model.presence_head:
    outputs['presence_logits'] = {'shape': ['N'], 'meaning': 'image-level lesion logit'}
    outputs['presence_probability'] = {'shape': ['N'],
                                       'meaning': 'sigmoid(presence_logits)'}
  return {
      'checkpoint': note,
      'model': config.model.to_dict(),
      'compute_dtype': 'float32',
      'input': {
          'name': onnx_graph.INPUT, 'shape': ['N', size, size, 1], 'dtype': 'float32',
          'layout': 'NHWC, one gray channel', 'range': [0.0, 1.0],
          'preprocessing': (
              f'the scan as uint8 gray (H, W) (colour: PIL luminance, convert("L")), divided '
              f'by 255, resized to {size} x {size} (aspect ratio not kept) by PIL '
              'Image.resize(BILINEAR) of the float image (mode "F"), which antialiases when '
              'downscaling, clipped to [0, 1]'),
          'normalization': 'none besides the division by 255'},
      'flip_tta': {'enabled': bool(evaluation.flip_tta), 'in_graph': True,
                   'meaning': 'every output is the mean of the logits of the image and of '
                              'its left-right mirror (mirrored back)'
                              if evaluation.flip_tta else 'off'},
      'outputs': outputs,
      'threshold': float(evaluation.threshold),
      'min_lesion_fraction': float(evaluation.min_lesion_fraction),
      'mask': ('the mask --mode=predict writes for a scan of size (H, W): lesion_logits '
               'resized to (H, W) by PIL Image.resize(BILINEAR) (mode "F"), sigmoid, '
               '> threshold, then 8-connected regions under min_lesion_fraction * H * W '
               'pixels removed'),
      'files': {
          'onnx': {'path': ONNX_FILE, 'opset': onnx_graph.OPSET,
                   'ir_version': onnx_graph.IR_VERSION},
          'saved_model': {'path': SAVED_MODEL_DIR, 'signature': 'serving_default',
                          'platforms': list(SAVED_MODEL_PLATFORMS),
                          'tensorflow': _tensorflow_version()}},
      'verified': verified,
  }


def _tensorflow_version() -> str:
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  return tf.__version__


def export_workdir(workdir: str, config, output_dir: str) -> dict:
  """Writes model.onnx, saved_model/ and export.json of the workdir's best checkpoint (or of
  a release model folder), with its chosen threshold; returns the manifest."""
  config, _, variables, best = release.load_model(workdir, config)
  if config.half_precision:
    logging.warning('The model was trained with half_precision; the export computes in '
                    'float32, as --mode=predict on a CPU does not.')
  # float32 whatever the training precision: the parameters are float32 either way.
  model = model_lib.create_model(config.model)
  size, flip_tta = config.data.image_size, config.eval.flip_tta
  proto = onnx_graph.build(model, variables, size, flip_tta)
  os.makedirs(output_dir, exist_ok=True)
  with open(os.path.join(output_dir, ONNX_FILE), 'wb') as f:
    f.write(proto.SerializeToString())
  write_saved_model(model, variables, size, flip_tta, os.path.join(output_dir, SAVED_MODEL_DIR))
  result = manifest(config, f'best of {workdir}, {evaluate.best_note(best)}',
                    verify(model, variables, config, output_dir))
  with open(os.path.join(output_dir, MANIFEST_FILE), 'w') as f:
    json.dump(result, f, indent=2)
  print(f'Wrote {ONNX_FILE}, {SAVED_MODEL_DIR}/ and {MANIFEST_FILE} to {output_dir} '
        f'(max abs probability difference from JAX: '
        + ', '.join(f'{k} {v:.1e}' for k, v in
                    result['verified']['max_abs_probability_difference'].items()) + ').')
  return result
