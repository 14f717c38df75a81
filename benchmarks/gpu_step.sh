# Sourced by benchmarks/gpu_session.sh and benchmarks/gpu_calibration.sh (which set $out): one step of a device call.
step() {  # step NAME LIMIT_S CMD...: output in OUT/NAME.log, status and duration in OUT/steps.txt
  local name=$1 limit=$2 t0=$SECONDS; shift 2
  timeout "$limit" "$@" >"$out/$name.log" 2>&1
  echo "$name rc=$? ${limit}s-limit took $((SECONDS - t0))s" | tee -a "$out/steps.txt"
}
