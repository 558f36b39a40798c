#!/usr/bin/env bash
# The GPU measurements the speed targets need, as one script for a short lent-GPU session (on an
# H100: search about 8 minutes, mps about 2; train not run yet). Each step has its own time limit,
# so one slow step cannot eat the others; every step's output lands in $OUT (default ./device-checks).
#
#   bash benchmarks/device_checks.sh            # all steps
#   bash benchmarks/device_checks.sh search     # only the search steps (or: mps, train, train2, latency)
#
# search: where a candidate's time goes (build, transfer, forward, backward, reduction, kernel
#         time, launches); the scoring speed table's row; 1000 candidates end to end in exact mode in
#         1, 4 and 8 processes; the CLI's search of the embedded batch with 8 workers.
# mps:    1000 candidates in 8 and 16 worker processes (1 torch thread each) sharing the GPU through
#         MPS; 1 process with torch's threads and with 1 thread.
# train:  the engine's teacher and 800K distillation on Fashion-MNIST, eager and default (CUDA graphs), alone;
#         the default again on the now warm compile cache; the default 4 and 8 at once under MPS
#         (about 8 minutes).
# train2: the same alone on CIFAR-shaped data; the defaults' accuracy against eager fp32, 3 seeds; one
#         training step per block type and layout (why grouped students are slow) (about 8 minutes).
# latency: the GPU's latency tables (batch 1 and 128) and the predictor's validation on 30 networks
#          (about 4 minutes on a 2-core CPU at batch 1; far less per network on a GPU).
set -u
out="${OUT:-device-checks}"
mkdir -p "$out"
which="${1:-all}"
dev="${DEVICE:-cuda}"  # DEVICE=cpu tries the script out on a machine without a GPU
export PYTHONPATH="${PYTHONPATH:-}:$(pwd)"
# Fashion-MNIST for the train steps: carried in as data/ (mkdir -p data && cp /usr/share/datasets/fashion-mnist/*.gz data/)
[ -d data ] && export BLOCKSWAP_ZOO_DATA="${BLOCKSWAP_ZOO_DATA:-$(pwd)/data}"

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
    n="${CANDIDATES:-1000}"  # CANDIDATES=12 tries the steps out quickly
    step profile_exact 90 python benchmarks/profile_search_scoring.py --device "$dev" --mode exact --candidates 20
    step search_workers 330 python benchmarks/search_speed.py --device "$dev" --agreement-seeds 0 \
        --speed-candidates 6 --repeats 3 --search-candidates "$n" --search-runs exact,exact:4,exact:8
    # the command a user runs: start-up, sampling, workers and the report included
    rm -rf /tmp/device-cli-search
    step cli_search 150 bash -c "time python -m blockswap_zoo search wrn_40_2 400k --samples $n --mode exact \
        --device $dev --workers 8 --out /tmp/device-cli-search"
    cp /tmp/device-cli-search/candidates.* "$out/" 2>/dev/null
fi
if [[ $which == all || $which == mps ]]; then
    n="${CANDIDATES:-1000}"
    # Worker processes sharing the GPU through NVIDIA's Multi-Process Service (MPS), which runs their
    # kernels at once; without it the GPU time-slices between processes (the search step above).
    export CUDA_MPS_PIPE_DIRECTORY=/tmp/mps-pipe CUDA_MPS_LOG_DIRECTORY=/tmp/mps-log PATH="$PATH:/usr/local/nvidia/bin"
    mkdir -p "$CUDA_MPS_PIPE_DIRECTORY" "$CUDA_MPS_LOG_DIRECTORY"
    if timeout 20 nvidia-cuda-mps-control -d && timeout 60 python -c "import torch; torch.ones(1, device='cuda')"; then
        step search_mps 170 python benchmarks/search_speed.py --device "$dev" --agreement-seeds 0 --speed-candidates 0 \
            --search-candidates "$n" --search-runs exact:8:1,exact:16:1
    else
        echo "MPS did not start" | tee -a "$out/summary.txt"
    fi
    echo quit | timeout 20 nvidia-cuda-mps-control
    cat "$CUDA_MPS_LOG_DIRECTORY"/control.log >>"$out/summary.txt" 2>/dev/null
    unset CUDA_MPS_PIPE_DIRECTORY CUDA_MPS_LOG_DIRECTORY
    # one process: torch's threads (all cores) against 1 thread for the CPU-side build, twice the default
    step search_threads 80 python benchmarks/search_speed.py --device "$dev" --agreement-seeds 0 --speed-candidates 0 \
        --search-candidates 200 --search-runs exact,exact:1:1,exact
fi
if [[ $which == all || $which == train ]]; then
    # the real engine on Fashion-MNIST: eager against the default (CUDA graphs) alone, then the default
    # 4 and 8 runs at once under MPS (issue 17's targets)
    export TORCHINDUCTOR_CACHE_DIR=/tmp/device-checks-inductor  # cold first, warm for the repeat
    rm -rf "$TORCHINDUCTOR_CACHE_DIR"
    step engine_alone 240 python benchmarks/train_speed.py --device "$dev" --data fashion_mnist --concurrent 1
    step engine_warm_cache 120 python benchmarks/train_speed.py --device "$dev" --data fashion_mnist \
        --settings default --concurrent 1
    nvidia-cuda-mps-control -d 2>/dev/null
    step engine_concurrent 300 python benchmarks/train_speed.py --device "$dev" --data fashion_mnist \
        --settings default --kinds distill,teacher --concurrent 4,8
    echo quit | nvidia-cuda-mps-control 2>/dev/null
fi
if [[ $which == all || $which == train2 ]]; then
    # the same engine on CIFAR-shaped data, and what the defaults do to accuracy (3 seeds, paired)
    step engine_cifar 240 python benchmarks/train_speed.py --device "$dev" --data cifar_shaped --concurrent 1
    step fast_accuracy 240 python benchmarks/fast_defaults_accuracy.py --device "$dev" --seeds 0,1,2 \
        --json "$out/fast_accuracy.json"
    step blocktype_speed 120 python benchmarks/blocktype_train_speed.py --device "$dev"
fi
if [[ $which == all || $which == latency ]]; then
    step latency_predictor 300 env BLOCKSWAP_ZOO_LATENCY_DIR="$out/latency-tables" python \
        benchmarks/latency_predictor.py --device "$dev" --networks 30 --out "$out/latency_predictor.json"
fi
echo "outputs in $out"
