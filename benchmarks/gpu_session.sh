#!/usr/bin/env bash
# One call on an NVIDIA GPU node (no network): speed against the authors' code, seeds per process, evaluation
# speed with the node's cores, and a small GPU slice of the experiment. Results under OUT (files + slice.tar.gz).
#
#   bash benchmarks/gpu_session.sh OUT        # from the repository root
#   PARTS="speed slice" SPEED_ALGOS=trqam SPEED_SIZES=paper bash benchmarks/gpu_session.sh OUT   # some parts only
#
# Brings its own packages (the node has jax/flax/optax/chex/numpy but no network): .gpu/whl/ holds the wheels
# of tyro, gymnasium, mujoco, ogbench, dm_env, ml_collections, ... (pip download --no-deps ... for Python 3.12),
# .gpu/site/dm_control/ the parts of dm_control that OGBench's manipulation envs import (its wheel is 56 MB),
# .peer/ the authors' agents/ and utils/ (git archive HEAD agents utils of yonghdong/trqam).
# Each step has its own time limit, so one that runs long cannot cost the others; steps.txt says how each ended.
set -uo pipefail
out=${1:?usage: gpu_session.sh OUT}
cd "$(dirname "${BASH_SOURCE[0]}")/.."
mkdir -p "$out"
python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .gpu/whl/*.whl >"$out/pip.log" 2>&1 \
  || { echo "pip install of .gpu/whl failed" >&2; exit 1; }
# no GL libraries on the node: MuJoCo without rendering (evaluation does not render; no videos here)
export PYTHONPATH=$PWD:/tmp/site:$PWD/.gpu/site MUJOCO_GL=disable XLA_PYTHON_CLIENT_PREALLOCATE=false PYTHONUNBUFFERED=1
export JAX_COMPILATION_CACHE_DIR=/tmp/jax-cache JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS=0
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv >"$out/device.txt" 2>&1
nproc >>"$out/device.txt"
parts=${PARTS:-speed seeds slice eval}
want() { [[ " $parts " == *" $1 "* ]]; }
source benchmarks/gpu_step.sh  # step NAME LIMIT_S CMD...

# 1. one seed, ours and the authors' in the same call (paper and small size), then seeds per dispatch (small size)
want speed && step speed 170 python3 benchmarks/bench_update.py --algos ${SPEED_ALGOS:-trqam qam} --sizes ${SPEED_SIZES:-paper small} \
  --num-seeds 1 --peer .peer --updates 20 --repeats 5 --peer-repeats 100 --json "$out/speed.json"
want seeds && step seeds 60 python3 benchmarks/bench_update.py --algos trqam --sizes small --num-seeds 4 8 --updates 20 --repeats 3 \
  --json "$out/seeds.json"

# 2. a small slice of the experiment: cube-double task 2, BC -> TRQAM / QAM / FQL (side by side on the GPU), 4 seeds each
data=/tmp/data slice=/tmp/slice
if want slice; then
  step datagen 50 python3 -m datagen --env-id cube-double-play --episodes 150 --seed 0 --workers "$(nproc)" --out "$data"
  common=(--env-id cube-double-play --task-id 2 --seed 0 --num-seeds 4 --dataset-path "$data/cube-double-play-v0.npz"
          --actor-hidden-dims 256 256 256 --value-hidden-dims 256 256 256 --num-qs 4 --eval-episodes 25 --eval-workers 4
          --log-interval 2000 --eval-interval 10000 --checkpoint-interval 100000)
  step bc 60 python3 baselines/bc.py "${common[@]}" --pretrain-steps 20000 --run-dir "$slice/bc/cube-double-play-task2"
  for algo in trqam qam fql; do
    script=$algo.py; [ "$algo" = fql ] && script=baselines/fql.py
    step "$algo" 150 python3 "$script" "${common[@]}" --offline-steps 20000 --exp-name "$algo" \
      --pretrained-path "$slice/bc/cube-double-play-task2/seed{seed}/pretrained.msgpack" --run-dir "$slice/$algo/cube-double-play-task2" &
  done
  wait
  tar -czf "$out/slice.tar.gz" --exclude=checkpoints -C /tmp slice 2>/dev/null
fi

# 3. evaluation speed with the node's cores: the sequential loop against the batched Evaluator
want eval && step eval 60 python3 benchmarks/bench_eval.py --envs cube-double-play --workers 0 4 8 16 --repeats 1 --json "$out/eval.json"
# at most 8 files come back from the node: the logs and JSONs in one archive beside the slice
tar -czf "$out/results.tar.gz" -C "$out" --exclude=results.tar.gz --exclude=slice.tar.gz . 2>/dev/null
find "$out" -maxdepth 1 -type f ! -name '*.tar.gz' -delete
exit 0
