#!/usr/bin/env bash
# Two fakerun agents in two tmux panes forming one 16-GPU job over TCP (static rendezvous on loopback), as
# two torchrun agents on two nodes would; fakerun-smi below. See scripts/tmux/README.md.
set -euo pipefail

usage() {
    cat <<'USAGE'
usage: two_agents.sh [-s NAME] [--detach] [--port PORT] [-h] [FAKERUN_ARG ...]

Left pane:  fakerun --nnodes 2 --nproc-per-node 8 --node-rank 0 --master-port PORT [FAKERUN_ARG ...] train.py
Right pane: the same with --node-rank 1
Bottom:     watch -n 1 fakerun-smi
Node 0 shows rank 0's bar and the grid of all 16 GPUs. Ctrl-C in either agent pane ends the job on both
nodes, as losing a node does.

  -s, --session NAME  tmux session name (default: fakerun-2agents)
  --detach            create the session without attaching to it (scripts, tests)
  --port PORT         node 0's rendezvous port (default: 29555)
  -h, --help          this help
USAGE
}

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(cd "$here/../.." && pwd)

find_cmd() {  # an absolute path: a tmux server started earlier has its own PATH
    local found
    if found=$(command -v "$1" 2>/dev/null); then
        echo "$found"
    elif [[ -x "$repo/.venv/bin/$1" ]]; then
        echo "$repo/.venv/bin/$1"
    else
        echo "two_agents.sh: cannot find $1 (activate the venv or install fakerun)" >&2
        exit 1
    fi
}

session="fakerun-2agents"
detach=0
port=29555
extra=()
while (($#)); do
    case "$1" in
        -s | --session) session=$2; shift 2 ;;
        --detach) detach=1; shift ;;
        --port) port=$2; shift 2 ;;
        -h | --help) usage; exit 0 ;;
        --) shift; extra+=("$@"); break ;;
        *) extra+=("$1"); shift ;;
    esac
done

command -v tmux >/dev/null || { echo "two_agents.sh: tmux is not installed" >&2; exit 1; }
fakerun=$(find_cmd fakerun)
smi=$(find_cmd fakerun-smi)

# Each pane's command, quoted once for the shell tmux starts it with.
agent() {
    printf '%q ' "$fakerun" --nnodes 2 --nproc-per-node 8 --node-rank "$1" --master-port "$port" "${extra[@]}" train.py
    printf '; read -r -p "[agent exited with status $?; Enter closes the pane] " _'
}
if command -v watch >/dev/null; then
    smi_cmd="watch -n 1 -t $(printf '%q' "$smi")"
else
    smi_cmd="while :; do clear; $(printf '%q' "$smi"); sleep 1; done"
fi

tmux new-session -d -s "$session" -x 220 -y 60 "$(agent 0)"
tmux split-window -h -t "$session:0.0" "$(agent 1)"
tmux split-window -v -f -l 20 -t "$session:0" "$smi_cmd"
tmux select-pane -t "$session:0.0"
if ((detach == 0)); then
    if [[ -n ${TMUX:-} ]]; then
        tmux switch-client -t "$session"
    else
        tmux attach -t "$session"
    fi
fi
