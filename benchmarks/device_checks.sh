#!/usr/bin/env bash
# The GPU measurements the open speed targets need, as one script for a short lent-GPU session
# (about 8 minutes on an H100/H200 once torch is warm). Each step has its own time limit, so one
# slow step cannot eat the others; every step's output lands in $OUT (default ./device-checks).
#
#   bash benchmarks/device_checks.sh            # all steps
#   bash benchmarks/device_checks.sh search     # only the search steps (or: train)
#
# search: where a candidate's time goes (build, transfer, forward, backward, reduction, kernel
#         time, launches), then 1000 candidates end to end in exact mode, in 1 and in 8 processes.
# train:  the teacher and distillation steps, eager and compiled with CUDA graphs.
set -u
out="${OUT:-device-checks}"
mkdir -p "$out"
which="${1:-all}"
dev="${DEVICE:-cuda}"  # DEVICE=cpu tries the script out on a machine without a GPU
export PYTHONPATH="${PYTHONPATH:-}:$(pwd)"

step() {  # step NAME SECONDS COMMAND...: run with a time limit, keep its output, go on on failure
    local name=$1 limit=$2
    shift 2
    echo "== $name (limit ${limit}s): $*" | tee -a "$out/summary.txt"
    local t0=$SECONDS
    timeout "$limit" "$@" >"$out/$name.txt" 2>&1
    local rc=$?
    echo "   rc=$rc in $((SECONDS - t0))s" | tee -a "$out/summary.txt"
    grep -v -e '^USDT' -e 'gpuGetDeviceCount' "$out/$name.txt" | tail -n 25 >>"$out/summary.txt"
}

nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv >"$out/gpu.txt" 2>&1
if [[ $which == all || $which == search ]]; then
    step profile_exact 90 python benchmarks/profile_search_scoring.py --device "$dev" --mode exact --candidates 20
    step profile_fast 90 python benchmarks/profile_search_scoring.py --device "$dev" --mode fast --candidates 20
    step search_1000 200 python benchmarks/search_speed.py --device "$dev" --agreement-seeds 0 --speed-candidates 0 \
        --search-candidates 1000 --search-runs exact,exact:8
fi
if [[ $which == all || $which == train ]]; then
    step train_eager 120 python benchmarks/train_speed.py --device "$dev" --only teacher
    step train_graphs 150 python benchmarks/train_speed.py --device "$dev" --only teacher --compile \
        --compile-mode reduce-overhead
    step distill_graphs 150 python benchmarks/train_speed.py --device "$dev" --only distill --compile \
        --compile-mode reduce-overhead
fi
echo "outputs in $out"
