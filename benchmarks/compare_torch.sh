#!/usr/bin/env bash
# Train/inference images/s of this JAX U-Net and of the same U-Net in PyTorch eager, same
# settings, back to back on this machine. Prints one JSON line for each.
#   benchmarks/compare_torch.sh [configs/cpu.py] [extra --config.* overrides...]
# Needs a separate torch venv (never install torch into the project's venv):
#   python3 -m venv ~/torchvenv && ~/torchvenv/bin/pip install torch==2.13.0 numpy
# benchmarks/torch_unet_reference.py is the PyTorch U-Net timed (same layers, Dice + BCE, Adam);
# TORCH_REF may name another script.
set -euo pipefail
cd "$(dirname "$0")/.."
CONFIG=${1:-configs/cpu.py}
shift || true
PYTHON=${PYTHON:-python}
TORCH_PYTHON=${TORCH_PYTHON:-$HOME/torchvenv/bin/python}
TORCH_REF=${TORCH_REF:-benchmarks/torch_unet_reference.py}
THREADS=${THREADS:-$(nproc)}

read -r SIZE BATCH FEATURES DEPTH < <(PYTHONPATH=. "$PYTHON" -c "
import runpy, sys
c = runpy.run_path('$CONFIG')['get_config']()
print(c.data.image_size, c.train.batch_size, c.model.base_features, c.model.depth)")

echo "== JAX ($CONFIG) =="
JAX_JSON=$(PYTHONPATH=. "$PYTHON" main.py --mode=benchmark --config="$CONFIG" "$@" | tail -n 1)
echo "== PyTorch eager (size $SIZE, batch $BATCH, features $FEATURES, depth $DEPTH, $THREADS threads) =="
if [[ -x "$TORCH_PYTHON" && -f "$TORCH_REF" ]]; then
  TORCH_JSON=$("$TORCH_PYTHON" "$TORCH_REF" --image_size "$SIZE" --batch_size "$BATCH" \
    --base_features "$FEATURES" --depth "$DEPTH" --threads "$THREADS" --steps 10 | tail -n 1)
else
  TORCH_JSON='{"error": "no torch venv; python3 -m venv ~/torchvenv && ~/torchvenv/bin/pip install torch==2.13.0 numpy"}'
fi
echo "jax:   $JAX_JSON"
echo "torch: $TORCH_JSON"
"$PYTHON" - "$JAX_JSON" "$TORCH_JSON" <<'PY'
import json, sys
jax_r, torch_r = json.loads(sys.argv[1]), json.loads(sys.argv[2])
for key in ('train_images_per_s', 'infer_images_per_s'):
  if key in torch_r:
    print(f'{key}: jax/torch = {jax_r[key] / torch_r[key]:.2f}x')
PY
