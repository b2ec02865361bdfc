#!/usr/bin/env bash
# What a hospital can expect from fine-tuning: a model trained without BUS-BRA (BUSI +
# BUS-UCLM) fine-tuned on n BUS-BRA training patients (configs/finetune.py), against the same
# recipe from random weights on the same patients and budget; both scored on BUS-BRA's test
# split and paired (`--compare_to`). n = 0 is the base model as it is. Wall time per run in
# <workdir>.time; a run that has its .time file is finished and is not trained again, so an
# interrupted curve resumes where it stopped. Needs the three datasets (README, Data); several
# hours on two CPU cores.
#   RUNS=runs/adaptation benchmarks/adaptation_curve.sh 10 25 50 100 all
set -euo pipefail
cd "$(dirname "$0")/.."
RUNS=${RUNS:-runs/adaptation}
timed() {
  local workdir=$1; shift
  [ -f "$workdir.time" ] && { echo "$workdir: finished, kept"; return; }
  /usr/bin/time -f '%e s' -o "$workdir.time.part" "$@" && mv "$workdir.time.part" "$workdir.time"
}

mkdir -p "$RUNS"
timed "$RUNS/base" python main.py --config=configs/cpu_mixed.py --workdir="$RUNS/base" \
    --config.data.source=busi+bus_uclm --config.data.mix_weights=busi=2,bus_uclm=1
python main.py --mode=evaluate --workdir="$RUNS/base" --dataset=busbra --split=test
for n in "$@"; do
  groups=$([ "$n" = all ] && echo 0 || echo "$n")
  for start in finetuned scratch; do
    init=$([ "$start" = finetuned ] && echo "$RUNS/base" || echo '')
    timed "$RUNS/${start}_$n" python main.py --config=configs/finetune.py \
        --workdir="$RUNS/${start}_$n" --config.data.source=busbra \
        --config.data.train_groups="$groups" --config.train.init_from="$init"
  done
  python main.py --mode=evaluate --workdir="$RUNS/finetuned_$n" --split=test \
      --compare_to="$RUNS/scratch_$n"
done
