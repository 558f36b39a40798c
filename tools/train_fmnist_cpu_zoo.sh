#!/usr/bin/env bash
# Train the Fashion-MNIST CPU zoo (issue 30) in the background, session after session: every recipe in
# blockswap_zoo/recipes/fmnist_cpu_zoo, from a git worktree pinned at COMMIT (default: HEAD), so edits to the
# working tree cannot change a running or resuming run. `nice`d, logging to RUNS/zoo.log, stopped with SIGINT
# after LIMIT seconds (0: no limit); every run resumes from its last finished epoch when started again.
#
#   bash tools/train_fmnist_cpu_zoo.sh start     # start or resume it in the background; prints the PID file
#   bash tools/train_fmnist_cpu_zoo.sh pause     # kill -STOP its processes (before timing anything)
#   bash tools/train_fmnist_cpu_zoo.sh resume    # kill -CONT them
#   bash tools/train_fmnist_cpu_zoo.sh status    # what each run is doing
#   RECIPES="wrn_40_2.fmnist_e50" LIMIT=3600 bash tools/train_fmnist_cpu_zoo.sh start
#
# Order: the teacher, then the 400K group (BlockSwap, single-blocktype, random), then 200K, 800K and the
# other budgets, students distilled four to a process, two processes of one thread each at once; the searches come from searches/fmnist_zoo (the CPU zoo's search settings are the GPU zoo's).
# When every run is done: `blockswap-zoo release RUNS/<name>/checkpoint` for each, then `blockswap-zoo docs`.
set -eu
repo="$(git -C "$(dirname "$0")" rev-parse --show-toplevel)"
runs="$(realpath -m "${RUNS:-$repo/runs/fmnist_cpu_zoo}")"
tree="$(realpath -m "${WORKTREE:-$repo/../zoo-worktree}")"
pidfile="$runs/zoo.pid"
pids() {  # the background job and every process under it
    [ -f "$pidfile" ] || return 0
    local top; top="$(cat "$pidfile")"
    kill -0 "$top" 2>/dev/null || return 0
    echo "$top"; pgrep -d ' ' -g "$(ps -o pgid= "$top" | tr -d ' ')" || true
}
case "${1:-start}" in
    pause) for p in $(pids); do kill -STOP "$p"; done; echo "paused: $(pids | xargs)"; exit ;;
    resume) for p in $(pids); do kill -CONT "$p"; done; echo "resumed: $(pids | xargs)"; exit ;;
    status)
        echo "processes: $(pids | xargs)"
        for m in "$runs"/*/*/metrics.jsonl; do  # each stage's last finished epoch (not the shared teacher's links)
            [ -f "$m" ] && [ ! -L "$(dirname "$m")" ] && echo "${m#"$runs"/}: $(tail -n 1 "$m" | cut -c1-160)"
        done
        tail -n 3 "$runs/zoo.log"
        exit ;;
    start) ;;
    *) echo "usage: $0 [start|pause|resume|status]" >&2; exit 2 ;;
esac
if [ -n "$(pids)" ]; then echo "already running: $(pids | xargs) (pid file $pidfile)" >&2; exit 1; fi
commit="$(git -C "$repo" rev-parse "${COMMIT:-HEAD}")"
if [ -d "$tree" ]; then
    git -C "$tree" checkout -q --detach "$commit"
else
    git -C "$repo" worktree add -q --detach "$tree" "$commit"
fi
zoo="$tree/blockswap_zoo/recipes/fmnist_cpu_zoo"
teacher="$(basename "$(grep -l '^role: teacher' "$zoo"/*.yaml)" .yaml)"
tag="$(basename "$(ls "$zoo"/wrn_40_2_bs400k.*.yaml)" .yaml)"; tag="${tag#*.}"
# four students to a process (one teacher pass per batch), each comparison within one group
default="$teacher
wrn_40_2_bs400k wrn_40_2_g16 wrn_40_2_rand400k wrn_40_2_bs250k
wrn_40_2_bs200k wrn_40_2_bg2_m8 wrn_40_2_rand200k wrn_16_1
wrn_40_2_bs800k wrn_40_2_g4 wrn_40_2_rand800k wrn_40_1
wrn_16_2 wrn_40_2_bs150k wrn_40_2_bs500k wrn_40_2_bs1600k"
recipes=()
for r in ${RECIPES:-$default}; do
    [[ $r == *.* ]] || r="$r.$tag"
    recipes+=("$zoo/$r.yaml")
done
mkdir -p "$runs"
echo "$(date -u +%FT%TZ) start at $commit: ${RECIPES:-all}" >>"$runs/zoo.log"
cd "$tree"
# setsid: its own process group, so pause/resume reach every child and nothing else
PYTHONPATH="$tree" PYTHONUNBUFFERED=1 COLUMNS=160 setsid nice -n 19 timeout -s INT -k 120 "${LIMIT:-0}" \
    python3 -m blockswap_zoo reproduce "${recipes[@]}" --out "$runs" --jobs 2 --group 4 --searches "$tree/searches/fmnist_zoo" \
    --device cpu >>"$runs/zoo.log" 2>&1 </dev/null &
echo $! >"$pidfile"
echo "started $! at $commit, logging to $runs/zoo.log"
