#!/usr/bin/env bash
# Update speed on one NVIDIA GPU, ours and the authors' in the same call (benchmarks/RESULTS.md, GPU section).
#
#   bash benchmarks/gpu_check.sh [OUT_DIR]          # from the repository root; OUT_DIR default $OUT or /tmp/gpu_check
#
# Needs, beside jax (CUDA), flax, optax, chex and numpy: gymnasium, cloudpickle, farama-notifications, tqdm
# (our utils import them) and ml_collections (the authors' agents import it); a missing one is installed from
# the wheels in .whl/ (no index). The authors' code goes in .peer/ (their agents/ and utils/ folders):
#   mkdir -p .peer && git -C PATH/TO/trqam.git archive HEAD agents utils | tar -x -C .peer
#   pip download --no-deps -d .whl gymnasium==1.4.0 cloudpickle==3.1.3 farama-notifications==0.0.6 tqdm==4.70.1 ml_collections==1.1.0
# Runs: TRQAM and QAM at paper and small size with one seed, each followed by the authors' update at the same
# size (in its own subprocess), then TRQAM with 4 and 8 seeds per dispatch; budget 240 s + 150 s (timeouts).
# Writes OUT_DIR/gpu_check.json, OUT_DIR/one_seed.json and seeds.json (rewritten after each row, so a timeout
# keeps the rows done) and OUT_DIR/gpu_check.log (the printed tables).
# GPU_CHECK_SMOKE=1 runs the same steps on the CPU with tiny settings (a check of the script, not a measurement);
# GPU_CHECK_SQUEEZE=1 adds the one-seed rows without the runner's seed vmap (bench_update.py --squeeze-one-seed, ~1 min).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
out=${1:-${OUT:-/tmp/gpu_check}}
peer=${PEER_DIR:-.peer}
wheels=${WHEEL_DIR:-.whl}
py=${PYTHON:-$(command -v python3 || command -v python || echo python3)}
mkdir -p "$out"
log="$out/gpu_check.log"
fail() { echo "gpu_check: $*" | tee -a "$log" >&2; exit 1; }
: >"$log"

# 1. packages: what is missing comes from the wheel folder, nothing from the network
missing=$("$py" - <<'EOF'
import importlib.util
need = {"gymnasium": "gymnasium", "cloudpickle": "cloudpickle", "farama_notifications": "farama-notifications",
        "tqdm": "tqdm", "ml_collections": "ml_collections", "yaml": "PyYAML", "absl": "absl-py",
        "jax": "jax", "flax": "flax", "optax": "optax", "chex": "chex", "numpy": "numpy"}
print(" ".join(dist for mod, dist in need.items() if importlib.util.find_spec(mod) is None))
EOF
)
if [ -n "$missing" ]; then
  [ -d "$wheels" ] || fail "missing packages ($missing) and no wheel folder $wheels/"
  echo "gpu_check: installing $missing from $wheels/" | tee -a "$log"
  "$py" -m pip install -q --no-index --find-links "$wheels" $missing >>"$log" 2>&1 \
    || fail "pip could not install $missing from $wheels/ (see $log)"
fi

# 2. the device and the peer
if [ -z "${GPU_CHECK_SMOKE:-}" ]; then
  "$py" -c "import jax, sys; d = jax.devices()[0]; sys.exit(0 if d.platform == 'gpu' else f'no GPU: jax sees {d}')" \
    || fail "jax has no GPU backend here (jax.devices() above)"
  command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv | tee -a "$log"
fi
[ -f "$peer/agents/trqam.py" ] && [ -f "$peer/agents/qam.py" ] && [ -d "$peer/utils" ] \
  || fail "no $peer/agents/trqam.py, $peer/agents/qam.py and $peer/utils/: copy the authors' agents/ and utils/ there"
"$py" -c "import jax; print('jax', jax.__version__, jax.devices())" | tee -a "$log"

# 3. the measurements: no preallocation, so the peer's subprocess finds free memory beside ours
export XLA_PYTHON_CLIENT_PREALLOCATE=false PYTHONPATH=.
if [ -n "${GPU_CHECK_SMOKE:-}" ]; then
  export JAX_PLATFORMS=cpu
  tiny=(--sizes small --batch-size 16 --flow-steps 3 --updates 2 --repeats 1 --peer-repeats 2 --matmul-repeats 2 --matmul-size 256)
  seeds=(1 2)
else
  tiny=(--updates 50 --repeats 5 --peer-repeats 100)
  seeds=(1 4 8)
fi
run() {  # one bench_update.py call, its table into the log, its rows into OUT/NAME.json
  local name=$1 limit=$2; shift 2
  set +e +o pipefail
  timeout "$limit" "$py" benchmarks/bench_update.py "$@" "${tiny[@]}" --json "$out/$name.json" 2>&1 | tee -a "$log"
  local rc=${PIPESTATUS[0]}
  set -e -o pipefail
  [ "$rc" = 124 ] && fail "$name: ran past ${limit}s (rows so far in $out/$name.json)"
  [ "$rc" = 0 ] || fail "$name: bench_update.py exited with $rc (see $log)"
}
# first what the ratios need (one seed, ours and theirs), then ours with several seeds per dispatch
run one_seed 240 --algos trqam qam --num-seeds 1 --peer "$peer" ${GPU_CHECK_SQUEEZE:+--squeeze-one-seed}
run seeds 150 --algos trqam --num-seeds "${seeds[@]:1}"

# 4. one JSON with both calls, and the summary table
"$py" - "$out" <<'EOF' | tee -a "$log"
import json, sys
out = sys.argv[1]
parts = [json.load(open(f"{out}/{n}.json")) for n in ("one_seed", "seeds")]
merged = {**{k: v for k, v in parts[0].items() if k != "results"}, "results": [r for p in parts for r in p["results"]],
          "matmul_peak_gflops_second_call": parts[1]["matmul_peak_gflops"]}
one = {(r["algo"], r["size"]): r for r in parts[0]["results"]}
for r in parts[1]["results"]:  # aggregate updates/s of N seeds over one seed's, the one seed from the first call
    r["aggregate_vs_one_seed"] = r["updates_per_s"] / one[r["algo"], r["size"]]["updates_per_s"]
json.dump(merged, open(f"{out}/gpu_check.json", "w"), indent=2)
print(f"\n{merged['device']}, jax {merged['jax_version']}")
print(f"{'algo':<6} {'size':<6} {'seeds':>5} {'ours ms/upd':>11} {'upd/s':>8} {'x one seed':>10} {'theirs ms':>9} {'ratio':>6} {'compile s':>9}")
for r in merged["results"]:
    p = r.get("peer", {})
    print(f"{r['algo']:<6} {r['size']:<6} {r['num_seeds']:>5} {r['ms_per_update']:>11.3f} {r['updates_per_s']:>8.1f} "
          f"{r.get('aggregate_vs_one_seed', 1.0):>10.2f} {p.get('ms_per_update', float('nan')):>9.3f} "
          f"{r.get('ratio', float('nan')):>6.2f} {r['compile_s']:>9.1f}")
EOF
echo "gpu_check: done; $out/gpu_check.json" | tee -a "$log"
