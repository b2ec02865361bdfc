"""ONNX Runtime as the network behind --mode=predict's masks and --mode=evaluate.

On a CPU, ONNX Runtime's convolutions (MLAS kernels, convolution fused with its ReLU) run this
U-Net faster than XLA:CPU (README, Speed). The graph is `onnx_graph.build` of the very
parameters, built in memory, so it computes `model.inference_outputs` to float32 rounding
(tests/test_export.py). Grad-CAM needs `jax.grad`, so CAMs stay with JAX.
"""
import importlib.util

from absl import logging
import jax
import numpy as np

from unet_flax import onnx_graph

BACKENDS = ('auto', 'jax', 'onnxruntime')


def session_options(threads: int = 0, **settings):
  """The ONNX Runtime session options of `OnnxNetwork` (`settings`: attributes to set)."""
  ort = onnx_graph.import_optional('onnxruntime', '--backend=onnxruntime')
  options = ort.SessionOptions()
  options.intra_op_num_threads = threads  # 0: one per physical core.
  # Idle workers sleep instead of spinning: beside predict's reader and writer threads, or
  # any other load, spinning took the cores they needed (2 threads: 19 against 24 images/s
  # on a loaded 2-core machine).
  options.add_session_config_entry('session.intra_op.allow_spinning', '0')
  for name, value in settings.items():
    setattr(options, name, value)
  return options


def session(model, threads: int = 0, **settings):
  """An ONNX Runtime CPU session of `model` (a path or serialized bytes) with
  `session_options`."""
  ort = onnx_graph.import_optional('onnxruntime', '--backend=onnxruntime')
  return ort.InferenceSession(model, session_options(threads, **settings),
                              providers=['CPUExecutionProvider'])


class OnnxNetwork:
  """`model.inference_outputs(model, variables, images, flip_tta)` through ONNX Runtime."""

  def __init__(self, model, variables, image_size: int, flip_tta: bool, threads: int = 0):
    self._session = session(onnx_graph.build(model, variables, image_size,
                                             flip_tta).SerializeToString(), threads)
    self._outputs = [onnx_graph.LESION_OUTPUTS[0]]
    if model.presence_head:
      self._outputs.append(onnx_graph.PRESENCE_OUTPUTS[0])

  def outputs(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
    """((B, S, S) logits, (B,) presence logits or None) of (B, S, S, 1) float32 images."""
    results = self._session.run(self._outputs, {onnx_graph.INPUT: np.asarray(images,
                                                                              np.float32)})
    return results[0], results[1] if len(results) > 1 else None


def installed() -> bool:
  return all(importlib.util.find_spec(name) for name in ('onnx', 'onnxruntime'))


def network(backend: str, model, variables, config) -> OnnxNetwork | None:
  """The ONNX Runtime network `backend` asks for, or None for JAX.

  'auto' takes ONNX Runtime when it is installed and JAX would run on the CPU in float32:
  on a GPU or TPU, and for a half-precision model, JAX is the faster or the exact one.
  """
  if backend == 'jax' or backend == 'auto' and (
      not installed() or jax.default_backend() != 'cpu' or config.half_precision):
    return None
  logging.info('Running the network with ONNX Runtime (--backend=%s).', backend)
  return OnnxNetwork(model, variables, config.data.image_size, config.eval.flip_tta)
