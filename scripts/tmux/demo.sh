#!/usr/bin/env bash
# One tmux window showing a simulated 2-node x 8-GPU job: the job itself (rank 0's bar), two ranks' output
# through fakerun-tail, and fakerun-smi. See scripts/tmux/README.md.
set -euo pipefail

usage() {
    cat <<'EOF'
usage: demo.sh [-s NAME] [--detach] [--size COLSxLINES] [--ranks A,B] [-h] [FAKERUN_ARG ...]

Opens a tmux session (a new window when already inside tmux) running
  fakerun --nnodes 2 --nproc-per-node 8 [FAKERUN_ARG ...] train.py
in a big pane, `fakerun-tail --rank 5 -f` and `fakerun-tail --rank 12 -f` in two smaller panes and
`watch -n 1 fakerun-smi` in a fourth. Ctrl-C in the big pane ends the job; the tail panes end with it;
Enter then closes the window.

  -s, --session NAME  tmux session name (default: fakerun-demo, or fakerun-demo-<pid> when taken)
  --detach            create the session without attaching to it (scripts, tests)
  --size COLSxLINES   the new session's size (default: this terminal's, else 200x50)
  --ranks A,B         the two ranks to tail (default: 5,12)
  -h, --help          this help
  FAKERUN_ARG ...     anything else goes to fakerun, e.g. --fake-speed 5 --fake-max-steps 200
                      (`--` ends demo.sh's own options)
EOF
}

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
self="$here/$(basename "${BASH_SOURCE[0]}")"
repo=$(cd "$here/../.." && pwd)

# A command's absolute path: from PATH, else from the repository's venv. Panes get absolute paths because
# a tmux server started earlier has its own PATH, which need not hold an activated venv.
find_cmd() {
    local found
    if found=$(command -v "$1" 2>/dev/null); then
        echo "$found"
    elif [[ -x "$repo/.venv/bin/$1" ]]; then
        echo "$repo/.venv/bin/$1"
    else
        return 1
    fi
}

# ----------------------------------------------------------------------------------------- pane roles
# The panes run this script again with a role as first argument, so that no command line is quoted twice.

# The job's lines longer than its pane are cut at the edge instead of wrapping into the next row (DECAWM
# off: the terminal keeps writing into the last column), so one line stays one row and the pane scrolls
# evenly; the tails cut theirs cleanly (fakerun-tail -S, as less -S).
nowrap() { printf '\033[?7l'; }

role_job() {  # role_job FAKERUN ARG...: the job in the foreground, then a closing prompt
    local status=0
    nowrap
    # Ctrl-C reaches fakerun directly (same process group), which stops its workers as torchrun does; the
    # trap only keeps this shell alive to say how the job ended (and makes Ctrl-C at the prompt close too).
    trap ':' INT
    "$@" || status=$?
    printf '\n[fakerun exited with status %s; press Enter to close the demo]\n' "$status"
    read -r _ || true
    tmux kill-window -t "${TMUX_PANE:?}" 2>/dev/null || true
}

role_smi() {  # role_smi FAKERUN_SMI [ARG...]: the GPU table (or query), refreshed every second
    if command -v watch >/dev/null 2>&1; then
        exec watch -n 1 -t "$@"
    fi
    while :; do
        clear
        "$@" || true
        sleep 1
    done
}

case "${1:-}" in
    __job) shift; role_job "$@"; exit 0 ;;
    __smi) shift; role_smi "$@"; exit 0 ;;
esac

# ------------------------------------------------------------------------------------------------ setup

session=""
detach=0
size_arg=""
ranks="5,12"
fakerun_args=()
while (($#)); do
    case "$1" in
        -h | --help) usage; exit 0 ;;
        -s | --session) session=${2:?--session needs a name}; shift 2 ;;
        --session=*) session=${1#*=}; shift ;;
        --detach) detach=1; shift ;;
        --size) size_arg=${2:?--size needs COLSxLINES}; shift 2 ;;
        --size=*) size_arg=${1#*=}; shift ;;
        --ranks) ranks=${2:?--ranks needs A,B}; shift 2 ;;
        --ranks=*) ranks=${1#*=}; shift ;;
        --) shift; fakerun_args+=("$@"); break ;;
        *) fakerun_args+=("$1"); shift ;;
    esac
done
IFS=, read -r rank_a rank_b <<<"$ranks"
if ! [[ "$rank_a" =~ ^[0-9]+$ && "$rank_b" =~ ^[0-9]+$ ]]; then
    echo "demo.sh: --ranks takes two ranks, e.g. 5,12" >&2
    exit 2
fi
if [[ -n "$size_arg" && ! "$size_arg" =~ ^[1-9][0-9]*x[1-9][0-9]*$ ]]; then
    echo "demo.sh: --size takes COLSxLINES, e.g. 200x50" >&2
    exit 2
fi

command -v tmux >/dev/null 2>&1 || { echo "demo.sh: tmux is not installed" >&2; exit 1; }
fakerun=$(find_cmd fakerun) || { echo "demo.sh: fakerun not found (pip install -e . in $repo)" >&2; exit 1; }
tail_cmd=$(find_cmd fakerun-tail) || { echo "demo.sh: fakerun-tail not found (pip install -e .)" >&2; exit 1; }
smi=$(find_cmd fakerun-smi) || smi="fakerun-smi"  # written elsewhere: the pane says so if it is missing

# The tails find this job by its run id, not by being the only job on the host. A --rdzv-id of the
# caller's wins (argparse keeps the last value), so it is the one to look for.
run_id="fakerun-demo-$$"
for ((i = 0; i < ${#fakerun_args[@]}; i++)); do
    case "${fakerun_args[$i]}" in
        --rdzv-id | --rdzv_id) run_id=${fakerun_args[$((i + 1))]:-$run_id} ;;
        --rdzv-id=* | --rdzv_id=*) run_id=${fakerun_args[$i]#*=} ;;
    esac
done

# The panes' environment: this PATH (fakerun-smi's watch), and the state directory the job publishes in.
envs=(-e "PATH=$PATH")
if [[ -n "${FAKERUN_STATE_DIR:-}" ]]; then
    envs+=(-e "FAKERUN_STATE_DIR=$FAKERUN_STATE_DIR")
fi

# In fakerun's own style only rank 0 prints once training runs, so the tails would stop after start-up.
# Unless the caller chose a style, the job prints as torchtitan's run_train.sh runs it: every rank logs its
# steps (the tails keep moving) and the job pane shows local rank 0 of each node (--local-ranks-filter 0).
style=()
for arg in "${fakerun_args[@]}"; do
    case "$arg" in --fake-trainer | --fake-trainer=* | --local-ranks-filter | --local-ranks-filter=*) style=(x) ;; esac
done
if ((${#style[@]} == 0)); then
    fakerun_args=(--fake-trainer titan --local-ranks-filter 0 "${fakerun_args[@]}")
fi

# Commands go to tmux as argument lists: tmux then runs them directly, with no shell in between to quote
# for, and each pane's process is the one that gets Ctrl-C and the hangup when the window closes.
job_cmd=("$self" __job "$fakerun" --rdzv-id "$run_id" --nnodes 2 --nproc-per-node 8 "${fakerun_args[@]}" train.py)
tail_a=("$tail_cmd" --rank "$rank_a" -f -S --wait 30 --run-id "$run_id")
tail_b=("$tail_cmd" --rank "$rank_b" -f -S --wait 30 --run-id "$run_id")
smi_cmd=("$self" __smi "$smi")
# Where the table does not fit beside the job, the GPU pane shows what people watch in a small pane instead:
# one CSV row per GPU.
smi_query=("$self" __smi "$smi" --query-gpu=index,name,temperature.gpu,utilization.gpu,memory.used,memory.total,power.draw --format=csv)

if [[ -n "${TMUX:-}" ]]; then
    main=$(tmux new-window -P -F '#{pane_id}' -n fakerun-demo -c "$PWD" "${envs[@]}" "${job_cmd[@]}")
    target=""
else
    if [[ -z "$session" ]]; then
        session="fakerun-demo"
        tmux has-session -t "=$session" 2>/dev/null && session="fakerun-demo-$$"
    fi
    size=(-x 200 -y 50)
    if [[ -n "$size_arg" ]]; then
        size=(-x "${size_arg%x*}" -y "${size_arg#*x}")
    elif [[ -t 1 ]]; then
        size=(-x "$(tput cols)" -y "$(tput lines)")
    fi
    main=$(tmux new-session -d -P -F '#{pane_id}' -s "$session" -n fakerun-demo "${size[@]}" -c "$PWD" \
        "${envs[@]}" "${job_cmd[@]}")
    target=$session
fi

# Layout. nvidia-smi's table is SMI_COLS wide (91 on the 580 drivers, 89 on older ones); the default style's
# step lines are about LINE_COLS. Very wide windows: the table in a column of its own, full height, the job
# and the tails to its left. Wide ones (200x50): the job across the top, whole step lines; under it the
# tails stacked (a step line's start: time, step, loss, grad norm) and the table beside them. Narrower ones
# (120x40): the job, the GPUs as CSV rows (what fits a small pane), and the two tails, stacked.
readonly SMI_COLS=91 LINE_COLS=150
split() {  # split TARGET -v|-h LENGTH COMMAND...: a new pane (LENGTH cells or N%), its id printed
    local at=$1 dir=$2 length=$3
    shift 3
    tmux split-window "$dir" -d -P -F '#{pane_id}' -t "$at" -l "$length" -c "$PWD" "${envs[@]}" "$@"
}
cols=$(tmux display-message -p -t "$main" '#{window_width}')
if ((cols >= SMI_COLS + 1 + LINE_COLS)); then
    pane_smi=$(split "$main" -h "$SMI_COLS" "${smi_cmd[@]}")
    pane_a=$(split "$main" -v 40% "${tail_a[@]}")
    pane_b=$(split "$pane_a" -h 50% "${tail_b[@]}")
elif ((cols >= SMI_COLS + 1 + 60)); then
    pane_a=$(split "$main" -v 65% "${tail_a[@]}")
    pane_smi=$(split "$pane_a" -h "$SMI_COLS" "${smi_cmd[@]}")
    pane_b=$(split "$pane_a" -v 50% "${tail_b[@]}")
else
    pane_smi=$(split "$main" -v 60% "${smi_query[@]}")
    pane_a=$(split "$pane_smi" -v 60% "${tail_a[@]}")
    pane_b=$(split "$pane_a" -v 50% "${tail_b[@]}")
fi
# A finished tail keeps its last lines on screen instead of closing and reshaping the layout.
for pane in "$pane_a" "$pane_b"; do
    tmux set-option -p -t "$pane" remain-on-exit on
done
tmux select-pane -t "$pane_a" -T "rank $rank_a"
tmux select-pane -t "$pane_b" -T "rank $rank_b"
tmux select-pane -t "$pane_smi" -T "fakerun-smi"
tmux select-pane -t "$main" -T "fakerun"

if [[ -n "$target" && $detach -eq 0 ]]; then
    exec tmux attach-session -t "=$target"
fi
echo "demo.sh: started in ${target:+session $target, }pane $main"
