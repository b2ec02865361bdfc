"""Colab GPU / GPU box setting, and every field with its reason (other configs start here).

The recipe is the one validation adopted on CPU (`configs/cpu.py`: depth 5, deep supervision
of three decoder levels, lesion-present head, weight EMA, flip TTA, threshold chosen on
validation, learning rate 2e-3 with 2 warm-up epochs, 78 epochs), scaled for an accelerator:
256 x 256 input instead of 192 (metrics are taken at the original ~500-px resolution, so a
finer network output loses less of each boundary) and twice the width (base 32: four times the
FLOPs, seconds per epoch on a GPU). Those two changes are argued, not measured: on CPU they
cost ~7x per step and were never trained to the end.

Every field can be overridden on the command line, e.g.
`--config.train.num_epochs=50 --config.data.manual_dir=/content/archive.zip`.
"""
import ml_collections


def get_config() -> ml_collections.ConfigDict:
  config = ml_collections.ConfigDict()
  config.seed = 0
  # Compute in bfloat16 (parameters, loss and metrics stay float32). Good on TPU/A100+.
  config.half_precision = False
  # Multi-host job (TPU pod slice, several GPU nodes): run the same command on every host and
  # `jax.distributed.initialize()` joins them. Not needed for the devices of one host.
  config.distributed = False

  config.data = data = ml_collections.ConfigDict()
  # The dataset(s) to train on: 'busi' (the Kaggle download), 'busbra' (BUS-BRA), 'bus_uclm'
  # (BUS-UCLM), 'folder' (your own images and masks, see data.folder) or 'synthetic' (demo).
  # Several joined by '+' ('busi+busbra') train together, validate on each and report test per
  # dataset.
  data.source = 'busi'
  # Where the user's Kaggle download lives: the extracted `Dataset_BUSI_with_GT/` folder (or a
  # parent of it), or `archive.zip`. Only read when the TFDS dataset is not built yet.
  data.manual_dir = '~/busi'
  # BUS-BRA's release folder (Images/, Masks/, bus_data.csv), from Zenodo record 8231412.
  data.busbra_dir = '~/busbra/BUSBRA'
  # BUS-UCLM's release folder (images/, masks/, INFO.csv), from Mendeley Data
  # doi:10.17632/7fvgj4jsp7.3. Licence CC BY-NC 4.0: models trained on it are non-commercial.
  data.bus_uclm_dir = '~/bus_uclm/BUS-UCLM'
  # Your own scans: a folder of images and masks paired by name (data/seg_folder/README.md).
  data.folder = folder = ml_collections.ConfigDict()
  folder.name = 'my_scans'  # Names the TFDS build and the reports; one name per dataset.
  folder.dir = ''
  folder.images_subdir = ''  # '' = `dir` itself.
  folder.masks_subdir = ''
  folder.image_prefix = ''
  folder.image_suffix = ''
  folder.mask_prefix = ''
  folder.mask_suffix = '_mask'  # `a.png` pairs with `a_mask.png`.
  folder.csv = ''  # Optional table with one row per image (relative to `dir`).
  folder.csv_delimiter = ','
  folder.id_column = ''  # Its column holding the image's file name (extension optional).
  folder.label_column = ''  # benign / malignant / normal (see label_map).
  folder.group_column = ''  # Patient: a patient's images stay in one split.
  # No group column: a regular expression at the start of the file name whose first group is
  # the patient, e.g. '(....)_' for ALWI_000.png -> ALWI.
  folder.group_pattern = ''
  folder.split_column = ''  # Your own train / validation / test assignment.
  folder.label_map = ''  # CSV value -> class, e.g. 'b=benign,m=malignant'.
  # Colour-coded masks: colour -> class, e.g. '00ff00=benign,ff0000=malignant'.
  folder.label_colours = ''
  # Image file names (without extension) to leave out, e.g. known-defective scans:
  # 'a,b'. Any other unusable file stops the build.
  folder.exclude = ''
  folder.validation_fraction = 0.1
  folder.test_fraction = 0.2
  # Sampling weights of the training datasets when several are mixed, e.g. 'busi=1,busbra=1';
  # '' = in proportion to their sizes. An epoch has as many batches as the datasets have
  # examples together.
  data.mix_weights = ''
  # Within each training dataset that has normal scans, the share of its draws that are
  # normal scans (its lesion scans take the rest of its weight); 0 = as the data come.
  data.normal_share = 0.0
  # Train on this many patients (groups) of each training split, drawn by `seed`, nested (a
  # smaller count's are among a larger one's): how much a few annotated patients buy
  # (benchmarks/adaptation_curve.sh). 0 = all.
  data.train_groups = 0
  data.tfds_data_dir = ''  # '' = TFDS default (~/tensorflow_datasets).
  data.image_size = 256
  data.include_normal_in_train = True  # Normal scans teach the net to predict "no lesion".
  data.cache = True
  data.shuffle_buffer = 1024
  data.augment = augment = ml_collections.ConfigDict()
  augment.enabled = True
  augment.flip_left_right = True
  augment.flip_up_down = False  # Ultrasound has a physical top (the probe); keep it.
  augment.max_rotation_deg = 10.0
  augment.max_scale = 0.15  # Zoom in/out by up to 15%.
  augment.max_shift = 0.08  # Fraction of the image size.
  augment.brightness = 0.1
  augment.contrast = 0.2
  augment.gamma = 0.2
  augment.speckle_std = 0.05  # Multiplicative (Rayleigh-like) noise, as in ultrasound.
  # Synthetic demo data (data.source='synthetic').
  data.synthetic = synthetic = ml_collections.ConfigDict()
  synthetic.num_train = 96
  synthetic.num_validation = 16
  synthetic.num_test = 24

  config.model = model = ml_collections.ConfigDict()
  model.base_features = 32
  model.depth = 5  # A 8 x 8 bottleneck at 256 sees the whole breast section at once.
  model.norm = 'batch'  # 'batch' | 'group' | 'none'
  model.dropout = 0.1  # In the bottleneck only.
  model.upsample = 'transpose'  # 'transpose' | 'resize'
  # Image-level "lesion present" head; its probability multiplies the pixel probabilities,
  # which keeps lesion-like shadows on normal scans from becoming predicted lesions.
  model.presence_head = True
  # decoder_1 ... decoder_k also predict the (average-pooled) mask during training, with loss
  # weights 1/2, 1/4, ... (nnU-Net's deep supervision). 0 = off.
  model.deep_supervision = 3

  config.train = train = ml_collections.ConfigDict()
  # Start from the weights of a release model folder (`--mode=release`) or a training workdir
  # (its best checkpoint): parameters and BatchNorm statistics; the optimizer state is fresh
  # and the weight EMA starts from them. The architecture must be the same (the input size
  # may differ). '' = random initialisation. A workdir that has a checkpoint resumes from it.
  train.init_from = ''
  train.batch_size = 16  # Global batch, split over all devices.
  train.num_epochs = 78
  train.optimizer = 'adamw'  # 'adam' | 'adamw'
  train.learning_rate = 2e-3
  train.warmup_epochs = 2
  train.weight_decay = 1e-4
  train.grad_clip_norm = 1.0  # 0 disables clipping.
  train.dice_weight = 1.0
  train.bce_weight = 1.0
  train.presence_weight = 0.5  # BCE of the presence head (used when model.presence_head).
  # Validation, checkpoints and inference use an exponential moving average of the weights
  # (0 = the raw weights). Its decay warms up as (1 + step) / (10 + step) up to this value,
  # which it reaches only after (10 * decay - 1) / (1 - decay) steps (0.99: 890; 0.998: 4490).
  train.ema_decay = 0.99
  train.log_every_steps = 10
  train.eval_every_epochs = 2
  train.checkpoint_every_epochs = 2
  train.keep_checkpoints = 2  # Latest K, plus the best by validation all-image Dice.
  # A NaN/inf loss or gradient stops training (False) or skips that update and counts it
  # in metrics.jsonl (True). Either way the state and checkpoints stay finite.
  train.skip_nonfinite_updates = False

  config.eval = evaluate = ml_collections.ConfigDict()
  evaluate.batch_size = 16
  evaluate.threshold = 0.5  # Used for validation during training.
  # After training, the best checkpoint's threshold is chosen on the validation split among
  # these and kept with the checkpoint: the test report, evaluate, predict and Grad-CAM use
  # it. () keeps `threshold`. The rule (`metrics.choose_threshold`): image-level sensitivity
  # (lesion scans given a mask) of at least `min_sensitivity` on every validation dataset, or
  # the most any candidate reaches there; then the highest all-image Dice (ties: closest to
  # `threshold`). An empty mask on a lesion scan is the costlier error.
  evaluate.threshold_candidates = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)
  evaluate.min_sensitivity = 0.92
  # Average the logits of each image and its left-right mirror (validation, evaluate and
  # predict alike): twice the inference compute for a steadier mask.
  evaluate.flip_tta = True
  # Predicted regions smaller than this fraction of the image are specks, not lesions: they
  # are removed from every mask (evaluate, predict, Grad-CAM), and a normal scan counts as
  # correctly empty when nothing is left. The smallest lesion drawn in BUSI's training split
  # covers 0.28 % of its image, in BUS-BRA's 0.68 %; keep this well below your own data's.
  evaluate.min_lesion_fraction = 0.001
  config.benchmark = benchmark = ml_collections.ConfigDict()
  benchmark.steps = 10  # --mode=benchmark: timed steps (after compile and warm-up).
  return config
