"""busi-unet command line: train, evaluate, predict, gradcam, benchmark, export.

  python main.py --config=configs/cpu.py --workdir=runs/cpu             # train (+ test once)
  python main.py --mode=evaluate --workdir=runs/cpu --split=test         # best checkpoint
  python main.py --mode=predict --workdir=runs/cpu --input=scans/ --output=out/
  python main.py --mode=gradcam --workdir=runs/cpu --split=test --output=cams/
  python main.py --mode=benchmark --config=configs/cpu.py
  python main.py --mode=export --workdir=runs/cpu --output=exported/       # ONNX, SavedModel

Any config field can be overridden, e.g. `--config.train.num_epochs=5`. Modes that read a
workdir take its saved config.json unless --config is given.
"""
import logging as std_logging
import os
import re
import sys

# TensorFlow's C++ start-up notices (oneDNN, CPU features) say nothing a user can act on.
os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')

from absl import app  # pylint: disable=g-import-not-at-top
from absl import flags
from absl import logging
from ml_collections import config_flags

import configs

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file('config', None, 'Training configuration (configs/*.py).',
                                lock_config=True)
flags.DEFINE_string('workdir', None, 'Run directory: config, checkpoints, logs, figures.')
flags.DEFINE_enum('mode', 'train',
                  ['train', 'evaluate', 'predict', 'gradcam', 'benchmark', 'export'],
                  'What to do.')
flags.DEFINE_string('split', 'test', 'evaluate/gradcam: TFDS split expression, e.g. '
                    '"train+validation+test".')
flags.DEFINE_enum('dataset', None, ['busi', 'busbra', 'folder', 'synthetic'],
                  'evaluate/gradcam: the dataset to score the model on (default: each one it '
                  'was trained on), e.g. a BUSI model on BUS-BRA.')
flags.DEFINE_string('manual_dir', None, 'evaluate/gradcam: another copy of that dataset '
                    '(folder or zip) to evaluate on, instead of the one in the config.')
flags.DEFINE_string('tfds_data_dir', None, 'evaluate/gradcam: where that copy is built '
                    '(default: <workdir>/eval/tfds when --manual_dir is given).')
flags.DEFINE_string('compare_to', None, 'evaluate: another workdir whose model is scored on '
                    'the same images; prints and saves the paired per-image differences.')
flags.DEFINE_list('input', [], 'predict: image files, folders or globs.')
flags.DEFINE_string('output', None, 'predict/gradcam/export: output folder.')
flags.DEFINE_enum('backend', 'auto', ['auto', 'jax', 'onnxruntime'],
                  'evaluate, predict --cams=false: what runs the network. onnxruntime (pip '
                  'install -r requirements-export.txt) is faster on a CPU, same probabilities '
                  'to 1e-4; auto: onnxruntime when installed and JAX would run on the CPU.')
flags.DEFINE_boolean('cams', True, 'predict: Seg-Grad-CAM maps (X_cam.npy); false skips the '
                     'Grad-CAM pass and writes masks and predictions.csv only (no overlays: '
                     'they show the CAM).')
flags.DEFINE_boolean('overlays', True, 'predict: overlay figures (X_overlay.png), the slowest '
                     'output to draw.')
# decoder_1 points at the lesion far more often than a coarse bottleneck (README, Grad-CAM).
flags.DEFINE_list('layers', ['decoder_1'], 'gradcam: layers to compare (first one is used '
                  'by predict), e.g. "encoder_3,bottleneck,decoder_1".')
flags.DEFINE_integer('max_images', 16, 'gradcam: images to draw.')


# Where each dataset's download is configured.
_MANUAL_DIR_FIELD = {'busi': 'manual_dir', 'busbra': 'busbra_dir'}


def _workdir_config(workdir):
  """The --config if given, else the workdir's saved one; data overrides from flags."""
  from unet_flax import checkpointing
  config = FLAGS.config or checkpointing.load_config(workdir)
  if FLAGS.manual_dir:
    dataset = FLAGS.dataset or 'busi'
    with config.unlocked():
      if dataset == 'folder':
        config.data.folder.dir = FLAGS.manual_dir
      else:
        config.data[_MANUAL_DIR_FIELD[dataset]] = FLAGS.manual_dir
      config.data.tfds_data_dir = (FLAGS.tfds_data_dir or
                                   os.path.join(workdir, 'eval', 'tfds'))
  return config


def _evaluate():
  """--mode=evaluate, and with --compare_to the paired comparison on the same images."""
  from unet_flax import compare, evaluate
  config = _workdir_config(FLAGS.workdir)
  summaries = evaluate.evaluate_workdir(FLAGS.workdir, config, FLAGS.split, FLAGS.dataset,
                                        FLAGS.backend)
  if not FLAGS.compare_to:
    return
  # The other model reads the very same data (folders, builds, folder dataset's naming), at
  # its own input size; its protocol still names what it was trained on.
  other = _workdir_config(FLAGS.compare_to)
  with other.unlocked():
    own = {'image_size': other.data.image_size, 'source': other.data.source}
    other.data = config.data.copy_and_resolve_references()
    other.data.update(own)
  for dataset in summaries:
    evaluate.evaluate_workdir(FLAGS.compare_to, other, FLAGS.split, dataset, FLAGS.backend)
    print(compare.write_comparison(
        evaluate.split_dir(evaluate.report_dir(FLAGS.workdir, config, dataset), FLAGS.split),
        evaluate.split_dir(evaluate.report_dir(FLAGS.compare_to, config, dataset),
                           FLAGS.split), FLAGS.workdir, FLAGS.compare_to))


def _parse_flags(argv):
  """absl's parser, but a misspelt --config.* override or a --config file that cannot be
  loaded is one clear line, not a traceback."""
  try:
    argv = FLAGS(argv)
  except (AttributeError, KeyError) as e:  # What ml_collections raises for an unknown field.
    while e.args and isinstance(e.args[0], BaseException):
      e = e.args[0]
    overrides = [arg for arg in argv[1:] if arg.startswith('--config.')]
    sys.exit(f'FATAL Unknown config field in {" ".join(overrides)}: '
             f'{e.args[0] if e.args else e}\nEvery field is listed in configs/default.py.')
  try:
    # ml_collections defers a load failure to the config's first use.
    FLAGS.config is None or FLAGS.config.keys()  # pylint: disable=expression-not-assigned
  except OSError as e:
    while e.__cause__ is not None:
      e = e.__cause__
    filename = FLAGS['config'].config_filename.split(':')[0]
    reason = ('no such file' if not os.path.exists(filename) else
              f'{type(e).__name__}: {" ".join(str(e).split())}')
    sys.exit(f'FATAL Cannot load --config={filename} ({reason}). Shipped configs: '
             f'{", ".join(f"configs/{name}.py" for name in configs.shipped())}.')
  return argv


ROOT = os.path.dirname(os.path.abspath(__file__))


class _ProjectInfoOnly(std_logging.Filter):
  """At the default verbosity, INFO lines come from this project only: orbax alone logs
  hundreds per checkpoint. `--verbosity=1` shows every library's."""

  def filter(self, record):
    return record.levelno >= std_logging.WARNING or record.pathname.startswith(ROOT)


def _user_errors() -> tuple[type[Exception], ...]:
  """What a user's data, workdir or download gets wrong (not bugs): these end the run with a
  message, not a traceback."""
  from data import provenance
  from data.busi import dataset_files
  from data.seg_folder import FolderFormatError
  from unet_flax import checkpointing, onnx_graph
  return (FileNotFoundError, provenance.StaleBuildError, FolderFormatError,
          dataset_files.BusiFormatError, checkpointing.UnreadableCheckpointError,
          checkpointing.WorkdirMismatchError, onnx_graph.MissingDependencyError)


def _run():
  if FLAGS.mode == 'train':
    from unet_flax import train
    train.train_and_evaluate(FLAGS.config, FLAGS.workdir)
  elif FLAGS.mode == 'evaluate':
    _evaluate()
  elif FLAGS.mode == 'predict':
    from unet_flax import checkpointing, onnx_backend, predict
    if not FLAGS.input or not FLAGS.output:
      raise app.UsageError('--mode=predict needs --input and --output.')
    if FLAGS.cams and FLAGS.backend == 'onnxruntime':
      raise app.UsageError('--backend=onnxruntime computes masks only (Grad-CAM needs JAX): '
                           'add --cams=false.')
    config, model, variables, _ = checkpointing.load_inference(FLAGS.workdir, FLAGS.config)
    failures = predict.predict_files(
        model, variables, config, FLAGS.input, FLAGS.output, layer=FLAGS.layers[0],
        overlays=FLAGS.overlays, cams=FLAGS.cams,
        network=None if FLAGS.cams else onnx_backend.network(FLAGS.backend, model, variables,
                                                             config))
    if failures:
      logging.error('%d input file(s) could not be processed (see above).', failures)
      sys.exit(1)
  elif FLAGS.mode == 'gradcam':
    from unet_flax import predict
    predict.gradcam_workdir(FLAGS.workdir, _workdir_config(FLAGS.workdir), FLAGS.split,
                            FLAGS.dataset,
                            FLAGS.output or os.path.join(FLAGS.workdir, 'gradcam'),
                            FLAGS.layers, FLAGS.max_images)
  elif FLAGS.mode == 'benchmark':
    from unet_flax import benchmark
    benchmark.run(FLAGS.config)
  elif FLAGS.mode == 'export':
    from unet_flax import export
    if not FLAGS.output:
      raise app.UsageError('--mode=export needs --output.')
    export.export_workdir(FLAGS.workdir, FLAGS.config, FLAGS.output)


def main(argv):
  if FLAGS.verbosity < 1:
    logging.get_absl_handler().addFilter(_ProjectInfoOnly())
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  if FLAGS.mode != 'benchmark' and not FLAGS.workdir:
    raise app.UsageError('--workdir is required.')
  if FLAGS.mode in ('train', 'benchmark') and FLAGS.config is None:
    raise app.UsageError(f'--config is required for --mode={FLAGS.mode}.')
  from unet_flax import distributed
  distributed.maybe_initialize(FLAGS.config)
  try:
    _run()
  except Exception as e:  # pylint: disable=broad-except
    if FLAGS.verbosity >= 1 or not isinstance(e, _user_errors()):
      raise
    message = str(e)
    if FLAGS.mode in ('evaluate', 'gradcam') and not FLAGS.config:
      # There the data folder is given by --manual_dir, not by a config override.
      message = re.sub(r'--config\.data\.(manual_dir|busbra_dir|folder\.dir)', '--manual_dir',
                       message)
    sys.exit(f'FATAL {message}')


if __name__ == '__main__':
  app.run(main, flags_parser=_parse_flags)
