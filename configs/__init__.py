"""The shipped configs: each module's `get_config()` is one setting; default.py lists and
explains every field."""
import os

# The repository's release model: what evaluate, predict and gradcam use without --workdir or
# --model, and what configs/finetune.py starts from. Named here so that a config can point at
# it without importing JAX.
RELEASE_MODEL_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                                 'models', 'busi-unet')


def shipped() -> list[str]:
  """Names of the shipped config modules ('cpu', 'default', ...), sorted."""
  folder = os.path.dirname(os.path.abspath(__file__))
  return sorted(name[:-3] for name in os.listdir(folder)
                if name.endswith('.py') and not name.startswith('_'))
