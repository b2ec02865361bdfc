"""The U-Net's inference outputs as an ONNX graph, written from its trained parameters.

No converter reaches ONNX from this stack: jax2tf's SavedModel holds an `XlaCallModule` op that
tf2onnx cannot convert, and jax2onnx pins an older orbax. The U-Net is a handful of op types,
so the graph is written node by node here, mirroring `model.UNet` in inference mode (BatchNorm
folded into the convolution before it, dropout off, deep-supervision heads left out as
inference leaves them) and `model.inference_outputs` (flip TTA inside the graph).
tests/test_export.py holds every output to JAX's.

Input `image`: (N, S, S, 1) float32 in [0, 1], the layout the JAX model takes. Outputs, each
the mean over the image and its mirror with flip TTA: `lesion_logits` and
`lesion_probability` (N, S, S), with a presence head already gated by it as inference gates
them, and with a presence head `presence_logits` and `presence_probability` (N,).
"""
import collections

import flax.linen as nn
import numpy as np

# Opset 17 and IR version 8 (ONNX 1.12, 2022) load in every current runtime: ONNX Runtime,
# TensorRT, OpenVINO, onnxruntime-web.
OPSET = 17
IR_VERSION = 8
INPUT = 'image'
LESION_OUTPUTS = ('lesion_logits', 'lesion_probability')
PRESENCE_OUTPUTS = ('presence_logits', 'presence_probability')
INSTALL_HINT = 'pip install -r requirements-export.txt'


class MissingDependencyError(RuntimeError):
  """The optional export packages (onnx, onnxruntime) are not installed."""


def import_optional(name: str, purpose: str):
  """`import name`, or an error that says how to install it."""
  try:
    return __import__(name)
  except ImportError as e:
    raise MissingDependencyError(
        f'{purpose} needs the {name!r} package, which is not installed: {INSTALL_HINT}') from e


class _Graph:
  """Nodes and initializers under construction; every op returns its output's name."""

  def __init__(self):
    self.onnx = import_optional('onnx', 'The ONNX export')
    self.nodes, self.initializers = [], []
    self._counts = collections.Counter()

  def _name(self, prefix: str) -> str:
    self._counts[prefix] += 1
    return f'{prefix}_{self._counts[prefix]}'

  def constant(self, name: str, array) -> str:
    name = self._name(name)
    self.initializers.append(self.onnx.numpy_helper.from_array(np.asarray(array), name))
    return name

  def op(self, op_type: str, inputs: list[str], name: str = '', output: str = '',
         **attributes) -> str:
    output = output or self._name(f'{name or op_type}/out')
    self.nodes.append(self.onnx.helper.make_node(op_type, inputs, [output],
                                                 name=self._name(name or op_type),
                                                 **attributes))
    return output

  def conv(self, inputs, conv, name: str, norm=None, stats=None) -> str:
    """Flax `nn.Conv` ('SAME' padding), with a BatchNorm (`norm` parameters, `stats`) folded
    in: y = (conv(x) - mean) * scale / sqrt(var + eps) + bias is one convolution.

    `inputs` is a tensor, or a list of (tensor, channels) whose channel concatenation the
    convolution reads: then it is written as one convolution per input, summed (the kernel
    split along its input channels, the bias on the first). ONNX Runtime fuses the sum and a
    following ReLU into one of the convolutions, and an input its blocked (NCHWc) convolutions
    wrote stays in that layout: no concatenated tensor, no conversions to NCHW and back for it.
    """
    kernel = np.asarray(conv['kernel'], np.float64)  # (kh, kw, in, out)
    bias = np.asarray(conv['bias'], np.float64) if 'bias' in conv else np.zeros(kernel.shape[-1])
    if stats is not None:
      factor = (np.asarray(norm['scale'], np.float64) /
                np.sqrt(np.asarray(stats['var'], np.float64) + nn.BatchNorm.epsilon))
      kernel = kernel * factor
      bias = (bias - np.asarray(stats['mean'], np.float64)) * factor + np.asarray(norm['bias'])
    if isinstance(inputs, str):
      inputs = [(inputs, kernel.shape[2])]
    if sum(channels for _, channels in inputs) != kernel.shape[2]:
      raise ValueError(f'{name}: inputs of {[c for _, c in inputs]} channels for a kernel of '
                       f'{kernel.shape[2]} input channels')
    size, start, terms = kernel.shape[0], 0, []
    for i, (x, channels) in enumerate(inputs):
      part = kernel[:, :, start:start + channels].transpose(3, 2, 0, 1).astype(np.float32)
      start += channels
      weights = [x, self.constant(f'{name}/kernel', part)]
      if i == 0:
        weights.append(self.constant(f'{name}/bias', bias.astype(np.float32)))
      terms.append(self.op('Conv', weights, name, kernel_shape=[size, size],
                           pads=[size // 2] * 4))
    while len(terms) > 1:
      terms = [self.op('Add', terms[:2], name)] + terms[2:]
    return terms[0]

  def group_norm(self, x: str, norm, groups: int, name: str) -> str:
    """Flax `nn.GroupNorm` over (channels of a group, H, W), NCHW."""
    grouped = self.op('Reshape', [x, self.constant(f'{name}/groups',
                                                   np.array([0, groups, -1], np.int64))], name)
    centred = self.op('Sub', [grouped, self.op('ReduceMean', [grouped], name, axes=[2])], name)
    var = self.op('ReduceMean', [self.op('Mul', [centred, centred], name)], name, axes=[2])
    std = self.op('Sqrt', [self.op('Add', [var, self.constant(
        f'{name}/epsilon', np.float32(nn.GroupNorm.epsilon))], name)], name)
    x = self.op('Reshape', [self.op('Div', [centred, std], name), self.op('Shape', [x], name)],
                name)
    per_channel = lambda a: np.asarray(a, np.float32)[:, None, None]
    x = self.op('Mul', [x, self.constant(f'{name}/scale', per_channel(norm['scale']))], name)
    return self.op('Add', [x, self.constant(f'{name}/bias', per_channel(norm['bias']))], name)

  def flip_width(self, x: str, axis: int) -> str:
    return self.op('Slice', [x, self.constant('flip/start', np.array([-1], np.int64)),
                             self.constant('flip/end', np.array([np.iinfo(np.int64).min])),
                             self.constant('flip/axis', np.array([axis], np.int64)),
                             self.constant('flip/step', np.array([-1], np.int64))], 'flip')


def _conv_block(g: _Graph, x, model, params, stats, name: str) -> str:
  """`model.ConvBlock`: two (3x3 conv, norm, ReLU); dropout is off in inference. `x` as
  `_Graph.conv` takes its inputs: a decoder block reads (upsampled, skip) as two."""
  for i in range(2):
    norm = params.get(f'norm_{i}')
    if model.norm == 'batch':
      x = g.conv(x, params[f'conv_{i}'], f'{name}/conv_{i}', norm, stats[f'norm_{i}'])
    else:
      x = g.conv(x, params[f'conv_{i}'], f'{name}/conv_{i}')
      if model.norm == 'group':
        features = params[f'conv_{i}']['kernel'].shape[-1]
        x = g.group_norm(x, norm, min(8, features), f'{name}/norm_{i}')
    x = g.op('Relu', [x], name)
  return x


def _upsample(g: _Graph, x: str, model, params, name: str) -> str:
  """`model.Upsample`: a 2x2 stride-2 transposed conv, or bilinear resize + 3x3 conv."""
  if model.upsample == 'transpose':
    # `model.PixelShuffleConvTranspose` computes `nn.ConvTranspose`, which (as
    # lax.conv_transpose) uses the spatially flipped kernel; ONNX's ConvTranspose does not
    # flip. ONNX Runtime runs ConvTranspose in parallel over the batch; the alternative, a 1x1
    # conv to 4x the channels then DepthToSpace, converts 4x the channels out of the blocked
    # layout and then runs DepthToSpace's 6-D transpose on one thread.
    conv = params['ConvTranspose_0']
    kernel = np.asarray(conv['kernel'], np.float32)[::-1, ::-1]  # (2, 2, in, out)
    kernel = g.constant(f'{name}/kernel', kernel.transpose(2, 3, 0, 1))  # (in, out, 2, 2)
    bias = g.constant(f'{name}/bias', np.asarray(conv['bias'], np.float32))
    return g.op('ConvTranspose', [x, kernel, bias], name, kernel_shape=[2, 2], strides=[2, 2])
  # jax.image.resize's bilinear upsampling: half-pixel centres, edges clamped.
  x = g.op('Resize', [x, '', g.constant(f'{name}/scales', np.array([1, 1, 2, 2], np.float32))],
           name, mode='linear', coordinate_transformation_mode='half_pixel')
  return g.conv(x, params['Conv_0'], f'{name}/conv')


def _unet(g: _Graph, x: str, model, variables) -> tuple[str, str | None]:
  """`model.UNet` in inference mode on NCHW `x`: ((B, 1, S, S) logits, gated by the presence
  head if there is one; its (B, 1) logits or None)."""
  params, stats = variables['params'], variables.get('batch_stats', {})
  skips = []
  for level in range(model.depth):
    name = f'encoder_{level}'
    x = _conv_block(g, x, model, params[name], stats.get(name), name)
    skips.append(x)
    x = g.op('MaxPool', [x], f'pool_{level}', kernel_shape=[2, 2], strides=[2, 2])
  x = bottleneck = _conv_block(g, x, model, params['bottleneck'], stats.get('bottleneck'),
                               'bottleneck')
  for level in reversed(range(model.depth)):
    x = _upsample(g, x, model, params[f'upsample_{level}'], f'upsample_{level}')
    # concatenate([x, skip]) as the next convolution's two inputs (`_Graph.conv`).
    features = model.base_features * 2**level
    name = f'decoder_{level}'
    x = _conv_block(g, [(x, features), (skips[level], features)], model, params[name],
                    stats.get(name), name)
  logits = g.conv(x, params['head'], 'head')
  if not model.presence_head:
    return logits, None
  dense = params['presence']['Dense_0']
  pooled = g.op('Flatten', [g.op('GlobalAveragePool', [bottleneck], 'presence')], 'presence')
  presence = g.op('Gemm', [pooled, g.constant('presence/kernel', np.asarray(dense['kernel'])),
                           g.constant('presence/bias', np.asarray(dense['bias']))], 'presence')
  # `model.gate_logits`: logit(sigmoid(a) sigmoid(b)) = a + b - log(1 + e^a + e^b)
  # = a + b - m - log(e^-m + e^(a - m) + e^(b - m)) with m = max(a, b, 0): no exponent is
  # positive. Exp, Log and the arithmetic are vectorized in ONNX Runtime; its Softplus (which
  # `model.gate_logits` uses) took 25x an Exp.
  b = g.op('Reshape', [presence, g.constant('gate/shape', np.array([-1, 1, 1, 1], np.int64))],
           'gate')
  zero = g.constant('gate/zero', np.float32(0))
  m = g.op('Max', [logits, b, zero], 'gate')
  exps = [g.op('Exp', [g.op('Sub', [t, m], 'gate')], 'gate') for t in (zero, logits, b)]
  log_sum = g.op('Log', [g.op('Sum', exps, 'gate')], 'gate')
  gated = g.op('Sub', [g.op('Sub', [g.op('Add', [logits, b], 'gate'), m], 'gate'), log_sum],
               'gate')
  return gated, presence


def build(model, variables, image_size: int, flip_tta: bool):
  """The `onnx.ModelProto` of `model.inference_outputs(model, variables, images, flip_tta)`
  (and the sigmoid of each output), for batches of (N, image_size, image_size, 1) images."""
  g = _Graph()
  onnx, helper = g.onnx, g.onnx.helper
  # NHWC with one channel is NCHW's memory order: a reshape, no copy.
  to_nchw = g.constant('to_nchw', np.array([0, 1, image_size, image_size], np.int64))
  x = g.op('Reshape', [INPUT, to_nchw], 'to_nchw')
  if flip_tta:  # One batch of the images and their mirrors; split and averaged below.
    x = g.op('Concat', [x, g.flip_width(x, 3)], 'flip_tta', axis=0)
  # The network's batch dimension by name: shape inference leaves the Concat's batch
  # dimension unnamed, and ONNX Runtime then could not tell that the two convolutions a
  # decoder block sums (`_Graph.conv`) have one shape, so it did not fuse their sum and ReLU.
  network_input = helper.make_tensor_value_info(
      x, onnx.TensorProto.FLOAT, ['2N' if flip_tta else 'N', 1, image_size, image_size])
  logits, presence = _unet(g, x, model, variables)

  def one_per_image(tensor: str, shape: list[int], output: str) -> str:
    """(B, ...) -> `shape`; with flip TTA the mean of the image's and its mirror's values."""
    if not flip_tta:
      return g.op('Reshape', [tensor, g.constant('shape', np.array([-1] + shape, np.int64))],
                  output, output=output)
    views = g.op('Reshape', [tensor, g.constant('shape', np.array([2, -1] + shape, np.int64))],
                 'flip_tta')
    index = lambda i: g.constant('flip_tta/view', np.array(i, np.int64))
    image, mirror = (g.op('Gather', [views, index(i)], 'flip_tta', axis=0) for i in (0, 1))
    if shape:
      mirror = g.flip_width(mirror, 2)
    return g.op('Mul', [g.op('Add', [image, mirror], 'flip_tta'),
                        g.constant('flip_tta/half', np.float32(0.5))], output, output=output)

  outputs = [one_per_image(logits, [image_size, image_size], LESION_OUTPUTS[0])]
  outputs.append(g.op('Sigmoid', [outputs[0]], output=LESION_OUTPUTS[1]))
  if presence is not None:
    outputs.append(one_per_image(presence, [], PRESENCE_OUTPUTS[0]))
    outputs.append(g.op('Sigmoid', [outputs[2]], output=PRESENCE_OUTPUTS[1]))
  spatial = ['N', image_size, image_size]
  graph = helper.make_graph(
      g.nodes, 'busi_unet',
      [helper.make_tensor_value_info(INPUT, onnx.TensorProto.FLOAT, spatial + [1])],
      [helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, spatial if i < 2 else ['N'])
       for i, name in enumerate(outputs)],
      g.initializers, value_info=[network_input])
  proto = helper.make_model(graph, opset_imports=[helper.make_opsetid('', OPSET)],
                            producer_name='busi-unet', ir_version=IR_VERSION)
  onnx.checker.check_model(proto, full_check=True)
  return proto
