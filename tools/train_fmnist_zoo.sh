#!/usr/bin/env bash
# Train the Fashion-MNIST zoo (issue 18) on a lent GPU, in as many short calls as it takes: every recipe in
# blockswap_zoo/recipes/fmnist_zoo, JOBS at once under NVIDIA MPS, the teacher first (its run is shared by
# every student), the searches taken from searches/fmnist_zoo (made on a CPU). Each call trains for at
# most LIMIT seconds, then stops the runs (each resumes from its last finished epoch) and packs the run
# folder into $OUT as zoo_runs.tar.gz.part-NN (15 MiB each; finished stages without their resume state),
# beside zoo.log: at most 7 parts come back with it (8 files a call), so about 100 MiB of runs.
#
#   # on the device, Fashion-MNIST carried in data/ (it is not there):
#   LIMIT=500 bash tools/train_fmnist_zoo.sh
#   # here, after each call: unpack what came back, then carry runs/fmnist_zoo into the next call
#   bash tools/train_fmnist_zoo.sh unpack /work/.device/.../files
#   DEVICE=cpu MAX_STEPS=2 RECIPES="wrn_40_2.fmnist_e200 wrn_40_2_g16.fmnist_at_e30" bash tools/train_fmnist_zoo.sh
#
# When every run is done: `blockswap-zoo release runs/fmnist_zoo/<name>/checkpoint` for each, then
# `blockswap-zoo docs`.
set -u
runs="${RUNS:-runs/fmnist_zoo}"
if [ "${1:-}" = unpack ]; then  # unpack FOLDER: the parts a call brought back, over the local runs
    mkdir -p "$runs"
    cat "$2"/zoo_runs.tar.gz.part-* | tar -xz -C "$runs"
    exit
fi
out="${OUT:-device-checks}"
limit="${LIMIT:-500}"
jobs="${JOBS:-8}"
dev="${DEVICE:-cuda}"
# the order runs start in within a phase: the teacher, then the 200K/400K/800K comparisons, then the rest
default="wrn_40_2.fmnist_e200
wrn_40_2_bs200k wrn_40_2_bg2_m8 wrn_40_2_rand200k wrn_16_1
wrn_40_2_bs400k wrn_40_2_g16 wrn_40_2_rand400k
wrn_40_2_bs800k wrn_40_2_g4 wrn_40_2_rand800k wrn_40_1 wrn_16_2
wrn_40_2_bs150k wrn_40_2_bs250k wrn_40_2_bs500k wrn_40_2_bs1600k"
recipes=()
for r in ${RECIPES:-$default}; do
    [[ $r == *.* ]] || r="$r.fmnist_at_e30"
    recipes+=("$r")
done
extra=()
[ -n "${MAX_STEPS:-}" ] && extra+=(--max-steps "$MAX_STEPS")
export PYTHONPATH="${PYTHONPATH:-}:$(pwd)" PYTHONUNBUFFERED=1 COLUMNS="${COLUMNS:-160}"
[ -d data ] && export BLOCKSWAP_ZOO_DATA="${BLOCKSWAP_ZOO_DATA:-$(pwd)/data}"
mkdir -p "$out" "$runs"
if [ "$dev" = cuda ]; then
    nvidia-smi --query-gpu=name,memory.total --format=csv >"$out/zoo.log" 2>&1
    nvidia-cuda-mps-control -d 2>/dev/null || true  # several processes share the GPU's SMs
fi
t0=$SECONDS
# SIGINT at the limit: each run stops after its last saved epoch and resumes in the next call
timeout -s INT -k 60 "$limit" python3 -m blockswap_zoo reproduce "${recipes[@]}" --out "$runs" --jobs "$jobs" \
    --searches searches/fmnist_zoo --device "$dev" "${extra[@]}" 2>&1 | tee -a "$out/zoo.log"
echo "rc=${PIPESTATUS[0]} after $((SECONDS - t0))s" | tee -a "$out/zoo.log"
for r in "${recipes[@]}"; do  # every run's own log, for the record
    [ -f "$runs/$r/reproduce.log" ] && tail -n 5 "$runs/$r/reproduce.log" >>"$out/zoo.log"
done
if [ "$dev" = cuda ]; then
    echo quit | nvidia-cuda-mps-control 2>/dev/null || true
fi
# pack: everything but the resume state of stages that finished (model.safetensors beside it)
(cd "$runs" && find . \( -type f -o -type l \) ! -name '*.png' | sort | while read -r f; do
    if [ "$(basename "$f")" = checkpoint.pt ] && [ -f "$(dirname "$f")/model.safetensors" ]; then continue; fi
    echo "$f"
done) >/tmp/zoo_files.txt
tar -czf - -C "$runs" --no-recursion -T /tmp/zoo_files.txt | split -b 15M -d - "$out/zoo_runs.tar.gz.part-"
ls -la "$out"
