#!/usr/bin/env bash
# Calibration at the paper's scale on one GPU node (no network), in one call: this project's QAM (3 seeds in one
# process) beside the authors' QAM (seed 0, their main.py) on the same generated 1000 episodes, QAM's protocol,
# 4x512 networks, 10 critics, to the released curve's first step (50K), evaluated there with 50 episodes. It is the
# comparison the CPU sessions could not afford (docs/RESULTS.md, section 1: at 4x512 one seed costs them ~4 hours).
#
#   bash benchmarks/gpu_calibration.sh OUT                                   # from the repository root
#   TASK=scene-play-task2 ALGOS="qam fql" bash benchmarks/gpu_calibration.sh OUT
#   STEPS=300 EPISODES=20 HIDDEN="32 32" NUM_QS=2 SEEDS=0 PY=.venv/bin/python PEER_PY=/tmp/peer-venv/bin/python \
#       bash benchmarks/gpu_calibration.sh /tmp/smoke                        # the same steps on a CPU, in minutes
#
# Brings its own packages, as gpu_session.sh does (its header lists them): .gpu/whl/ (wheels), .gpu/site/dm_control/;
# and .peer-src/, the authors' tree (git archive HEAD of yonghdong/trqam), for their main.py. Without .gpu/whl it uses
# the interpreter's own packages (a CPU smoke run). Sizes (the H200 of benchmarks/RESULTS.md: 1.9 ms per paper-size
# QAM update of ours, 5.8 ms of theirs): the data about 3 min on 16 cores, ours 3 seeds and theirs 1 seed side by side
# on the one GPU about 5 min, each evaluation 50 episodes per seed. Each step has its own limit (LIMIT_* seconds);
# steps.txt says how each ended. Both runs checkpoint and continue when the script is run again with the same OUT on
# the same node; a fresh node starts them over.
set -uo pipefail
out=${1:?usage: gpu_calibration.sh OUT}
cd "$(dirname "${BASH_SOURCE[0]}")/.."
mkdir -p "$out"
out=$(cd "$out" && pwd)
PY=${PY:-python3} PEER_PY=${PEER_PY:-$PY}
TASK=${TASK:-scene-play-task1} ALGOS=${ALGOS:-qam} SEEDS=${SEEDS:-0 1 2} STEPS=${STEPS:-50000}
EPISODES=${EPISODES:-1000} HIDDEN=${HIDDEN:-512 512 512 512} NUM_QS=${NUM_QS:-10} PEER=${PEER:-1}
env_id=${TASK%-task*} task_id=${TASK##*-task}
if [ -d .gpu/whl ]; then
  $PY -m pip install -q --no-index --no-deps --no-compile --upgrade --target /tmp/site .gpu/whl/*.whl >"$out/pip.log" 2>&1 \
    || { echo "pip install of .gpu/whl failed (see $out/pip.log)" >&2; exit 1; }
  # no GL libraries on the node: MuJoCo without rendering (evaluation does not render)
  export PYTHONPATH=/tmp/site:$PWD/.gpu/site MUJOCO_GL=disable
fi
export XLA_PYTHON_CLIENT_PREALLOCATE=false PYTHONUNBUFFERED=1 MUJOCO_GL=${MUJOCO_GL:-egl}
{ nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv 2>&1; nproc; } >"$out/device.txt"
source benchmarks/gpu_step.sh  # step NAME LIMIT_S CMD...

data=$out/data file=$out/data/$env_id-v0.npz
[ -f "$file" ] || step datagen "${LIMIT_DATA:-300}" $PY -m datagen --env-id "$env_id" --episodes "$EPISODES" --seed 0 \
  --workers "$(nproc)" --out "$data" --no-progress
[ -f "$file" ] || { echo "no dataset at $file (see $out/datagen.log)" >&2; exit 1; }

# shellcheck disable=SC2086  # word splitting of SEEDS, HIDDEN and ALGOS is meant
step ours "${LIMIT_OURS:-480}" $PY -m benchmarks.calibrate --task "$TASK" --protocol qam --algos $ALGOS --steps "$STEPS" \
  --seeds $SEEDS --dataset-path "$file" --hidden-dims $HIDDEN --num-qs "$NUM_QS" --eval-interval "$STEPS" \
  --checkpoint-interval 5000 --out "$out/calibration" &
if [ "$PEER" = 1 ]; then
  [ -f .peer-src/main.py ] || { echo "no .peer-src/main.py: git archive HEAD of yonghdong/trqam into .peer-src" >&2; exit 1; }
  # the authors' side in the same protocol: reward mode, discount and beta from the one protocol table
  protocol=$($PY -c "from benchmarks.calibrate import parse_task; from experiments.protocols import settings
s = {k: v for k, (v, _) in settings('qam', parse_task('$TASK')[2]).items()}
print('--sparse' if s['sparse'] else '', '--discount', s['discount'], '--inv-temp', s['knob:qam'])") \
    || { echo "no protocol row for $TASK" >&2; exit 1; }
  # shellcheck disable=SC2086
  step peer "${LIMIT_PEER:-480}" $PY -m benchmarks.learning_parity --peer-src .peer-src --peer-python "$PEER_PY" \
    --out "$out/parity" --env-id "$env_id" --task-id "$task_id" --dataset-path "$file" $protocol \
    --bc-steps 0 --seeds 0 --steps "$STEPS" --eval-interval "$STEPS" --eval-episodes 50 --hidden-dims $HIDDEN \
    --num-qs "$NUM_QS" --algos qam --sides peer --checkpoint-interval 5000 &
fi
wait
step report 120 $PY -m benchmarks.calibrate --out "$out/calibration" --report-only
cat "$out/calibration/calibration.md" "$out/parity/parity.md" 2>/dev/null
# what comes back from the node: the logs, tables and CSVs, not the data or the checkpoints
tar -czf "$out/results.tar.gz" -C "$out" --exclude=data --exclude=checkpoints --exclude='*.pkl' --exclude=results.tar.gz \
  --exclude=peer-src . 2>/dev/null
exit 0
