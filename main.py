"""busi-unet command line: train, evaluate, predict, gradcam, benchmark.

  python main.py --config=configs/cpu.py --workdir=runs/cpu             # train (+ test once)
  python main.py --mode=evaluate --workdir=runs/cpu --split=test         # best checkpoint
  python main.py --mode=predict --workdir=runs/cpu --input=scans/ --output=out/
  python main.py --mode=gradcam --workdir=runs/cpu --split=test --output=cams/
  python main.py --mode=benchmark --config=configs/cpu.py

Any config field can be overridden, e.g. `--config.train.num_epochs=5`. Modes that read a
workdir take its saved config.json unless --config is given.
"""
import os
import sys

from absl import app
from absl import flags
from absl import logging
from ml_collections import config_flags

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file('config', None, 'Training configuration (configs/*.py).',
                                lock_config=True)
flags.DEFINE_string('workdir', None, 'Run directory: config, checkpoints, logs, figures.')
flags.DEFINE_enum('mode', 'train', ['train', 'evaluate', 'predict', 'gradcam', 'benchmark'],
                  'What to do.')
flags.DEFINE_string('split', 'test', 'evaluate/gradcam: TFDS split expression, e.g. '
                    '"train+validation+test".')
flags.DEFINE_string('manual_dir', None, 'evaluate/gradcam: another BUSI download (folder or '
                    'zip) to evaluate on, instead of the one in the config.')
flags.DEFINE_string('tfds_data_dir', None, 'evaluate/gradcam: where that download is built '
                    '(default: <workdir>/eval/tfds when --manual_dir is given).')
flags.DEFINE_list('input', [], 'predict: image files, folders or globs.')
flags.DEFINE_string('output', None, 'predict/gradcam: output folder.')
# decoder_1 points at the lesion far more often than a coarse bottleneck (README, Grad-CAM).
flags.DEFINE_list('layers', ['decoder_1'], 'gradcam: layers to compare (first one is used '
                  'by predict), e.g. "encoder_3,bottleneck,decoder_1".')
flags.DEFINE_integer('max_images', 16, 'gradcam: images to draw.')


def _workdir_config():
  """The --config if given, else the workdir's saved one; data overrides from flags."""
  from unet_flax import checkpointing
  config = FLAGS.config or checkpointing.load_config(FLAGS.workdir)
  if FLAGS.manual_dir:
    with config.unlocked():
      config.data.source = 'busi'
      config.data.manual_dir = FLAGS.manual_dir
      config.data.tfds_data_dir = (FLAGS.tfds_data_dir or
                                   os.path.join(FLAGS.workdir, 'eval', 'tfds'))
  return config


def _parse_flags(argv):
  """absl's parser, but a misspelt --config.* override is one clear line, not a traceback."""
  try:
    return FLAGS(argv)
  except (AttributeError, KeyError) as e:  # What ml_collections raises for an unknown field.
    while e.args and isinstance(e.args[0], BaseException):
      e = e.args[0]
    overrides = [arg for arg in argv[1:] if arg.startswith('--config.')]
    sys.exit(f'FATAL Unknown config field in {" ".join(overrides)}: '
             f'{e.args[0] if e.args else e}\nEvery field is listed in configs/default.py.')


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  if FLAGS.mode != 'benchmark' and not FLAGS.workdir:
    raise app.UsageError('--workdir is required.')
  if FLAGS.mode in ('train', 'benchmark') and FLAGS.config is None:
    raise app.UsageError(f'--config is required for --mode={FLAGS.mode}.')
  from unet_flax import distributed
  distributed.maybe_initialize(FLAGS.config)

  if FLAGS.mode == 'train':
    from unet_flax import train
    train.train_and_evaluate(FLAGS.config, FLAGS.workdir)
  elif FLAGS.mode == 'evaluate':
    from unet_flax import evaluate
    evaluate.evaluate_workdir(FLAGS.workdir, _workdir_config(), FLAGS.split)
  elif FLAGS.mode == 'predict':
    from unet_flax import checkpointing, predict
    if not FLAGS.input or not FLAGS.output:
      raise app.UsageError('--mode=predict needs --input and --output.')
    config, model, variables, _ = checkpointing.load_inference(FLAGS.workdir, FLAGS.config)
    failures = predict.predict_files(model, variables, config, FLAGS.input, FLAGS.output,
                                     layer=FLAGS.layers[0])
    if failures:
      logging.error('%d input file(s) could not be processed (see above).', failures)
      sys.exit(1)
  elif FLAGS.mode == 'gradcam':
    from unet_flax import predict
    predict.gradcam_workdir(FLAGS.workdir, _workdir_config(), FLAGS.split,
                            FLAGS.output or os.path.join(FLAGS.workdir, 'gradcam'),
                            FLAGS.layers, FLAGS.max_images)
  elif FLAGS.mode == 'benchmark':
    from unet_flax import benchmark
    benchmark.run(FLAGS.config)


if __name__ == '__main__':
  app.run(main, flags_parser=_parse_flags)
