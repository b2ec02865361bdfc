"""Per-layer time of the U-Net's 3x3 convolutions: JAX (XLA:CPU) or PyTorch (oneDNN).

Why: the train step is bound by its convolutions, so whether JAX can beat PyTorch on a CPU
is decided layer by layer, by the convolution kernels each framework calls. Run it under
both interpreters on a quiet machine and compare the tables:

  PYTHONPATH=. python benchmarks/conv_layers.py --config=configs/cpu.py
  ~/torchvenv/bin/python benchmarks/conv_layers.py --framework=torch --image_size=192 \
      --batch_size=16 --base_features=16 --depth=4

Prints, per layer, forward and forward+backward (input and kernel gradients) milliseconds,
and one JSON line with the totals. Without --config the shape flags are used (PyTorch's venv
has no ml_collections).
"""
import argparse
import json
import runpy
import time


def conv_shapes(image_size: int, base_features: int, depth: int) -> list[tuple[int, int, int]]:
  """(spatial size, in channels, out channels) of every 3x3 conv, input side to output."""
  shapes, channels = [], 1
  for level in range(depth + 1):  # Encoder blocks, then the bottleneck.
    features, size = base_features * 2**level, image_size // 2**level
    shapes += [(size, channels, features), (size, features, features)]
    channels = features
  for level in reversed(range(depth)):  # Decoder: upsampled features ++ skip, then conv.
    features, size = base_features * 2**level, image_size // 2**level
    shapes += [(size, 2 * features, features), (size, features, features)]
  return shapes


def _timed(fn, steps: int) -> float:
  fn()
  fn()
  start = time.perf_counter()
  for _ in range(steps):
    fn()
  return (time.perf_counter() - start) / steps * 1e3


def jax_layer_ms(batch: int, size: int, cin: int, cout: int, steps: int):
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top

  def conv(x, w):
    return jax.lax.conv_general_dilated(x, w, (1, 1), 'SAME',
                                        dimension_numbers=('NHWC', 'HWIO', 'NHWC'))

  x = jax.random.normal(jax.random.key(0), (batch, size, size, cin))
  w = jax.random.normal(jax.random.key(1), (3, 3, cin, cout)) * 0.05
  forward = jax.jit(conv)
  both = jax.jit(jax.grad(lambda x, w: jnp.sum(jax.nn.relu(conv(x, w))**2), argnums=(0, 1)))
  return (_timed(lambda: jax.block_until_ready(forward(x, w)), steps),
          _timed(lambda: jax.block_until_ready(both(x, w)), steps))


def torch_layer_ms(batch: int, size: int, cin: int, cout: int, steps: int):
  import torch  # pylint: disable=g-import-not-at-top
  import torch.nn.functional as F  # pylint: disable=g-import-not-at-top

  x = torch.randn(batch, cin, size, size, requires_grad=True)
  w = (torch.randn(cout, cin, 3, 3) * 0.05).requires_grad_()

  def forward():
    with torch.no_grad():
      F.conv2d(x, w, padding=1)

  def both():
    (F.relu(F.conv2d(x, w, padding=1))**2).sum().backward()

  return _timed(forward, steps), _timed(both, steps)


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--framework', choices=('jax', 'torch'), default='jax')
  parser.add_argument('--config', help='A configs/*.py file; overrides the shape flags.')
  parser.add_argument('--image_size', type=int, default=192)
  parser.add_argument('--batch_size', type=int, default=16)
  parser.add_argument('--base_features', type=int, default=16)
  parser.add_argument('--depth', type=int, default=4)
  parser.add_argument('--threads', type=int, default=0, help='PyTorch threads (0: default).')
  parser.add_argument('--steps', type=int, default=5)
  args = parser.parse_args()
  if args.config:
    config = runpy.run_path(args.config)['get_config']()
    args.image_size, args.batch_size = config.data.image_size, config.train.batch_size
    args.base_features, args.depth = config.model.base_features, config.model.depth
  if args.framework == 'torch' and args.threads:
    import torch  # pylint: disable=g-import-not-at-top
    torch.set_num_threads(args.threads)
  layer_ms = jax_layer_ms if args.framework == 'jax' else torch_layer_ms
  print(f'{args.framework}: 3x3 convs of the U-Net, batch {args.batch_size}, float32, ms')
  print(f"{'size':>5} {'in':>5} {'out':>5} {'forward':>9} {'fwd+bwd':>9}")
  totals = [0.0, 0.0]
  for size, cin, cout in conv_shapes(args.image_size, args.base_features, args.depth):
    forward, both = layer_ms(args.batch_size, size, cin, cout, args.steps)
    totals[0] += forward
    totals[1] += both
    print(f'{size:>5} {cin:>5} {cout:>5} {forward:>9.1f} {both:>9.1f}', flush=True)
  print(json.dumps({'framework': args.framework, 'image_size': args.image_size,
                    'batch_size': args.batch_size, 'base_features': args.base_features,
                    'depth': args.depth, 'forward_ms': round(totals[0], 1),
                    'forward_backward_ms': round(totals[1], 1)}))


if __name__ == '__main__':
  main()
