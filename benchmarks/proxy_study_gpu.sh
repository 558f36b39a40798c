#!/usr/bin/env bash
# The proxy study's GPU run, for a lent-GPU session: K training shards at once under NVIDIA MPS, then the
# scores (already made on a CPU and committed in studies/proxy_study: nothing left to score) and the
# analysis; resumable across sessions (the study folder travels with the working tree; unpack the
# returned archive over it and run again). Everything it made is packed into $OUT/proxy_study.tar.gz
# (default ./device-checks).
#
#   SHARDS=8 EPOCHS=5 LIMIT=480 bash benchmarks/proxy_study_gpu.sh
#   tar -xzf <files_at>/proxy_study.tar.gz -C studies                     # here, afterwards
#   DEVICE=cpu STUDY=/tmp/try STUDENTS=2 MAX_STEPS=2 LIMIT=120 bash benchmarks/proxy_study_gpu.sh   # a CPU try-out
set -u
out="${OUT:-device-checks}"
study="${STUDY:-studies/proxy_study}"
shards="${SHARDS:-8}"
limit="${LIMIT:-480}"  # seconds of training this call; unfinished students are trained by the next one
dev="${DEVICE:-cuda}"
sampling=(--budgets "${BUDGETS:-200k,400k,800k}" --students "${STUDENTS:-50}")
extra=()
[ -n "${MAX_STEPS:-}" ] && extra+=(--max-steps "$MAX_STEPS" --eval-subset 256)
mkdir -p "$out" "$study"
export PYTHONPATH="${PYTHONPATH:-}:$(pwd)"
# Fashion-MNIST for training: carried in as data/ (mkdir -p data && cp /usr/share/datasets/fashion-mnist/*.gz data/)
[ -d data ] && export BLOCKSWAP_ZOO_DATA="${BLOCKSWAP_ZOO_DATA:-$(pwd)/data}"
if [ "$dev" = cuda ]; then
    nvidia-cuda-mps-control -d 2>/dev/null || true  # several processes share the GPU's SMs
fi
t0=$SECONDS
for ((i = 0; i < shards; i++)); do
    timeout "$limit" python benchmarks/proxy_study.py train --out "$study" --device "$dev" \
        "${sampling[@]}" --epochs "${EPOCHS:-5}" \
        --shard "$i/$shards" "${extra[@]}" >"$study/train.$i.log" 2>&1 &
done
wait
echo "training: $((SECONDS - t0))s, $(cat "$study"/students*.jsonl 2>/dev/null | wc -l) students done" | tee "$out/proxy_study.txt"
python benchmarks/proxy_study.py score --out "$study" "${sampling[@]}" --device "$dev" --seeds "${SEEDS:-0,1,2}" >>"$out/proxy_study.txt" 2>&1
python benchmarks/proxy_study.py analyse --out "$study" >>"$out/proxy_study.txt" 2>&1
echo "total: $((SECONDS - t0))s" >>"$out/proxy_study.txt"
tar -czf "$out/proxy_study.tar.gz" -C "$(dirname "$study")" "$(basename "$study")"
if [ "$dev" = cuda ]; then
    echo quit | nvidia-cuda-mps-control 2>/dev/null || true
fi
