#!/usr/bin/env bash
# fake_srun.sh: run an sbatch script on this machine as if SLURM had given it NODES nodes.
#
# Usage:
#   scripts/slurm/fake_srun.sh [-N NODES] [-J NAME] [-w LIST] [-o FILE] [-e FILE] [--sbatch-output]
#                              [--jobid ID] [--site-lua] [--] SCRIPT [SCRIPT_ARGS...]
#
#   -N, --nodes NODES     simulated nodes (default: the script's `#SBATCH --nodes`, else 1)
#   -J, --job-name NAME   SLURM_JOB_NAME (default: the script's `#SBATCH --job-name`, else its file name)
#   -w, --nodelist LIST   the nodes' names (default: named as the cluster preset names them, FAKERUN_CLUSTER
#                         or the default one's: gpu-node-[001-00N])
#   -o, --output FILE     the job's output (stdout, and stderr without -e) into FILE, `%x`, `%j`, `%A`, `%a`,
#                         `%N`, `%u`, `%%` expanded as sbatch does (`%x-%j.out`); `Submitted batch job ID` on
#                         the terminal. Default: the terminal
#   -e, --error FILE      the job's stderr into FILE, expanded likewise
#   --sbatch-output       files as sbatch writes them: -o/-e, else the script's `#SBATCH --output`/`--error`,
#                         else slurm-%j.out in the current directory
#   --jobid ID            SLURM_JOB_ID (default: a random 6-digit number)
#   --site-lua            every srun prints `srun: lua: Submitted job ID`, as on sites with a lua cli_filter
#   -h, --help            this text
#
# Example:
#   FAKERUN_MAX_STEPS=20 FAKERUN_SPEED=10 scripts/slurm/fake_srun.sh -N 2 scripts/slurm/train_llama3_8b.sbatch
#
# What it does, in sbatch's place:
#   - sets the environment a batch script gets: SLURM_JOB_ID, SLURM_JOB_NAME, SLURM_NNODES,
#     SLURM_JOB_NUM_NODES, SLURM_JOB_NODELIST (gpu-node-[001-00N]), SLURM_NTASKS, SLURM_TASKS_PER_NODE,
#     SLURM_CPUS_PER_TASK and SLURM_GPUS_ON_NODE (from the script's #SBATCH lines), and, as the batch
#     script runs as task 0 of the first node, SLURM_NODEID=0, SLURM_PROCID=0, SLURM_LOCALID=0, SLURMD_NODENAME;
#   - puts shims first on PATH, for the script only (and fakerun's `torchrun` and `nvidia-smi` when the
#     `fakerun` command is on PATH: a script's `srun torchrun ...` is simulated):
#       scontrol show hostnames [LIST]  one host a line (LIST defaults to $SLURM_JOB_NODELIST);
#       hostname [-s|-f]                the simulated node's name (SLURMD_NODENAME; $HOSTNAME likewise);
#                                       addresses (-i, -I) are this machine's, where every node runs;
#       srun [OPTIONS] CMD [ARGS...]    runs CMD once per task, all at once in the background, each with its
#                                       own SLURM_NODEID, SLURM_PROCID, SLURM_LOCALID, SLURMD_NODENAME and
#                                       step variables; waits for all; reports each failed task as srun
#                                       does and exits with the highest signal (128+N) of a killed task,
#                                       else the highest exit code. Understood: -N/--nodes, -n/--ntasks,
#                                       --ntasks-per-node, -w/--nodelist, -l/--label, -X/--disable-status,
#                                       --quit-on-interrupt, --mpi (pmix: the PMIx server's error line in
#                                       each task's output, as many PMIx 3 sites print it; also from
#                                       SLURM_MPI_TYPE); other options are accepted and ignored.
#                                       Default: one task per node of the allocation (--ntasks-per-node
#                                       from sbatch).
#   - runs SCRIPT with the interpreter of its #! line, in the current directory. Output stays on the
#     terminal unless -o names a file (sbatch writes it to the script's --output file).
#
# Signals, as srun handles them (each task runs in a session of its own, so a Ctrl-C in the terminal
# reaches srun and the batch script, never the tasks directly):
#   Ctrl-C        srun prints the tasks' states (`srun: interrupt (one more within 1 sec to abort)`,
#                 `srun: StepId=ID.0 tasks 0-1: running`); the job runs on. A second Ctrl-C within a second
#                 sends SIGINT, then SIGKILL, to every process of the step (`srun: sending Ctrl-C to
#                 StepId=...`, `srun: forcing job termination`, `srun: Job step aborted: ...`).
#   SIGTERM, SIGHUP, SIGQUIT to srun: SIGKILL to every process of the step (`srun: forcing job termination`).
#   SIGPIPE, or the reader of srun's output gone: SIGKILL to every process of the step.
#   SIGUSR1, SIGUSR2: forwarded to every process of the step.
#   fake_srun.sh itself ending (the batch script's end, SIGTERM, SIGHUP, a dead pipe): SIGTERM to what the
#   batch script still runs, every srun ends its step. SIGKILL of fake_srun.sh or of a srun: the kernel's
#   parent-death signal (setpriv) ends the script, the sruns and their tasks.
# srun signals its tasks first and writes after; no write can stop it.
#
# Every simulated node is this machine: a task that binds a port binds it here, so tasks must not all listen
# on the same one.

set -euo pipefail

# The repository this script is in (also when it runs as the `srun` or `scontrol` link to itself).
REPO=$(cd "$(dirname "$(readlink -f "${BASH_SOURCE[0]}")")/../.." && pwd)
readonly REPO
# Without fakerun: node names as many sites have them.
readonly NODE_PREFIX=node
# With it: the node list of a job of NODES nodes on CLUSTER (default: the default model's cluster), and
# fakerun's `torchrun` and `nvidia-smi` shims in DIR. Arguments: NODES CLUSTER DIR.
readonly FAKERUN_HELPER='import sys
from fakerun.launcher.slurm import main
from fakerun.tools.shims import install_shims
install_shims(sys.argv[3], python=sys.executable)
sys.exit(main(sys.argv[1:3]))'

# Prints the interpreter of the `fakerun` command on PATH (the #! line of its console script).
fakerun_python() {
	local exe line
	exe=$(command -v fakerun) || return 1
	IFS= read -r line <"$exe" || return 1
	line=${line#'#!'}
	line=${line%%[[:space:]]*}
	if [[ $line == /* && -x $line && $line != */sh ]]; then
		printf '%s\n' "$line"
	else
		command -v python3
	fi
}

usage() {
	sed -n '2,/^$/{s/^# \{0,1\}//;p}' "${BASH_SOURCE[0]}"
}

# --- hostlists ---------------------------------------------------------------------------------------

# Prints the hosts of a SLURM hostlist (`gpu-[001-002],login1`), one a line, in hostlist.c's order; an
# error line and status 1 if it is malformed. fakerun's module is the one implementation (unit-tested
# against SLURM's order), run from this repository with fakerun's Python, else python3 (it needs only the
# standard library).
expand_hostlist() {
	local py
	py=$(fakerun_python) || py=$(command -v python3) || {
		echo "fake_srun.sh: no python3 to expand the hostlist '$1' with" >&2
		return 1
	}
	PYTHONPATH="$REPO${PYTHONPATH:+:$PYTHONPATH}" "$py" -m fakerun.launcher.slurm hostnames "$1"
}

# Prints SLURM's compressed tasks-per-node form of its arguments: `2 2 2 1` -> `2(x3),1`.
compress_counts() {
	local out="" prev="" run=0 c
	for c in "$@" ""; do
		if [[ $c == "$prev" ]]; then
			run=$((run + 1))
			continue
		fi
		if [[ -n $prev ]]; then
			if ((run > 1)); then out+="${out:+,}$prev(x$run)"; else out+="${out:+,}$prev"; fi
		fi
		prev=$c
		run=1
	done
	printf '%s\n' "$out"
}

# --- the scontrol shim -------------------------------------------------------------------------------

scontrol_main() {
	if [[ ${1:-} == show && ${2:-} =~ ^hostnames?$ ]]; then
		local list=${3:-${SLURM_JOB_NODELIST:-}}
		[[ -n $list ]] || {
			echo "scontrol: error: no hostlist given and SLURM_JOB_NODELIST is unset" >&2
			return 1
		}
		local out
		out=$(expand_hostlist "$list") || {
			echo "scontrol: error: Invalid hostlist: $list" >&2
			return 1
		}
		# One write, as scontrol's buffered output (bash's printf writes line by line): `scontrol show
		# hostnames | head -n1` under pipefail must not see scontrol die of SIGPIPE between two names.
		cat <<<"$out"
		return
	fi
	echo "scontrol: error: only 'scontrol show hostnames [LIST]' is simulated here" >&2
	return 1
}

# --- processes -----------------------------------------------------------------------------------------

# Sets the caller's `tree` to the live descendants of the given pids, one "PID PGID" a line, read from /proc
# (Linux); the subtrees of the pids in the caller's `prune` (an associative array, may be empty) are left out.
proc_tree() {
	local f line pid ppid rest
	local -a fields queue stat
	local -A kids=() pgid_of=()
	for f in /proc/[0-9]*/stat; do
		# mapfile, not read: this runs in srun's signal handlers, and a `read` there would make a `read -t`
		# they interrupt wait forever (bash 5.2).
		{ mapfile -n 1 -t stat <"$f"; } 2>/dev/null || continue
		line=${stat[0]:-}
		pid=${line%% *}
		[[ -n $pid ]] || continue
		rest=${line##*") "} # after the command name, which may hold spaces and parentheses
		# shellcheck disable=SC2206  # numbers and a state letter: nothing to glob
		fields=($rest)
		ppid=${fields[1]:-0}
		kids[$ppid]+=" $pid"
		pgid_of[$pid]=${fields[2]:-0}
	done
	tree=()
	queue=("$@")
	while ((${#queue[@]})); do
		for pid in ${kids[${queue[0]}]:-}; do
			[[ -z ${prune[$pid]+x} ]] || continue
			tree+=("$pid ${pgid_of[$pid]}")
			queue+=("$pid")
		done
		queue=("${queue[@]:1}")
	done
}

# True if process PID runs: it exists and is not a zombie (an orphan's zombie may wait long for its reaper),
# and, given PARENT, is still that process's child (not a stranger that got the pid of one that ended).
alive() {
	local -a stat fields
	{ mapfile -n 1 -t stat <"/proc/$1/stat"; } 2>/dev/null || return 1 # not `read`: see proc_tree
	((${#stat[@]})) || return 1
	# shellcheck disable=SC2206  # numbers and a state letter
	fields=(${stat[0]##*") "})
	[[ ${fields[0]:-Z} != Z && ${2:-${fields[1]}} == "${fields[1]}" ]]
}

# Sends signal SIG to every process of the tasks PID...: the process group each leads (tasks run under
# setsid) and every descendant outside those groups (a task's children may lead their own sessions, as
# fakerun's workers do), as slurmstepd signals every process of a step's cgroup. The tree is read before
# anything is signalled: a SIGKILLed task's children would be orphans, out of reach.
signal_tasks() {
	local sig=$1 p entry
	shift
	(($#)) || return 0
	local -a tree=()
	local -A groups=() prune=()
	proc_tree "$@"
	for p in "$@"; do
		groups[$p]=1
		kill -s "$sig" -- "-$p" 2>/dev/null || kill -s "$sig" "$p" 2>/dev/null || true
	done
	for entry in "${tree[@]}"; do
		[[ -n ${groups[${entry#* }]+x} ]] || kill -s "$sig" "${entry%% *}" 2>/dev/null || true
	done
}

# --- the hostname shim -------------------------------------------------------------------------------

# A task on a simulated node names that node: `hostname`, `-s`, `-f`, `-A` print SLURMD_NODENAME (short
# form for -s). Addresses (-i, -I) and anything else are this machine's, where every simulated node runs:
# a rendezvous endpoint taken from `hostname --ip-address` must be reachable.
hostname_main() {
	local real="" dir
	local IFS=:
	for dir in $PATH; do
		[[ $dir != "$FAKE_SRUN_DIR" && -x $dir/hostname ]] && real=$dir/hostname && break
	done
	unset IFS
	local name=${SLURMD_NODENAME:-}
	if [[ -n $name ]]; then
		case "$*" in
		"" | -f | --fqdn | --long | -A | --all-fqdns) printf '%s\n' "$name" && return ;;
		-s | --short) printf '%s\n' "${name%%.*}" && return ;;
		esac
	fi
	[[ -n $real ]] || {
		echo "hostname: command not found" >&2
		return 127
	}
	exec "$real" "$@"
}

# --- the srun shim -----------------------------------------------------------------------------------

# srun's wording for how a task ended (strsignal's for a signal): `Exited with exit code N`, or the signal.
task_end() {
	local rc=$1 sig
	local -a names=("" Hangup Interrupt Quit "Illegal instruction" "Trace/breakpoint trap" Aborted "Bus error"
		"Floating point exception" Killed "User defined signal 1" "Segmentation fault" "User defined signal 2"
		"Broken pipe" "Alarm clock" Terminated "Stack fault" "Child exited" Continued "Stopped (signal)"
		Stopped "Stopped (tty input)" "Stopped (tty output)" "Urgent I/O condition" "CPU time limit exceeded"
		"File size limit exceeded" "Virtual timer expired" "Profiling timer expired" "Window changed"
		"I/O possible" "Power failure" "Bad system call")
	if ((rc <= 128)); then
		echo "Exited with exit code $rc"
		return
	fi
	sig=$((rc - 128))
	echo "${names[sig]:-Unknown signal $sig}"
}

# SLURM's bitmap form of sorted task ids: `0-3,5`.
task_ranges() {
	local out="" lo="" hi="" n
	for n in "$@" ""; do
		if [[ -n $hi && $n == $((hi + 1)) ]]; then
			hi=$n
			continue
		fi
		if [[ -n $lo ]]; then
			if ((lo == hi)); then out+="${out:+,}$lo"; else out+="${out:+,}$lo-$hi"; fi
		fi
		lo=$n
		hi=$n
	done
	printf '%s\n' "$out"
}

# Copies stdin to stdout with srun --label's `N: ` in front of each line.
label_lines() {
	local label=$1 line
	# The terminal's Ctrl-C is srun's to handle: the label must outlive its task's last line.
	trap '' INT TERM HUP QUIT
	while IFS= read -r line || [[ -n $line ]]; do
		printf '%s: %s\n' "$label" "$line"
	done
}

# srun writes its tasks' output itself. When that output is a pipe whose reader has gone away, srun gets
# SIGPIPE and ends the step (signals.c: _handle_pipe). The relay is that writer here: it copies the tasks'
# output (stdin) to srun's (stdout) and, when a write fails, passes the SIGPIPE on to srun (pid $1).
relay() {
	# It ends at end of file, once every task and srun have closed the pipe.
	trap '' INT TERM HUP QUIT
	cat || kill -s PIPE "$1" 2>/dev/null || true
}

srun_main() {
	# A srun whose batch script dies (fake_srun.sh SIGKILLed, or the script gone while `srun ... &` runs)
	# gets SIGTERM and ends its step: the kernel's parent-death signal, set by util-linux's setpriv.
	if [[ -z ${FAKE_SRUN_GUARDED:-} ]] && command -v setpriv >/dev/null; then
		FAKE_SRUN_GUARDED=1 exec setpriv --pdeathsig TERM "$0" "$@"
	fi
	unset FAKE_SRUN_GUARDED
	local nodes="" ntasks="" per_node="" nodelist="" label=0 quit_on_intr=0 disable_status=0
	local mpi=${SLURM_MPI_TYPE:-}
	while (($#)); do
		case $1 in
		-N | --nodes) nodes=$2 && shift 2 ;;
		--nodes=*) nodes=${1#*=} && shift ;;
		-N*) nodes=${1#-N} && shift ;;
		-n | --ntasks) ntasks=$2 && shift 2 ;;
		--ntasks=*) ntasks=${1#*=} && shift ;;
		-n*) ntasks=${1#-n} && shift ;;
		--ntasks-per-node) per_node=$2 && shift 2 ;;
		--ntasks-per-node=*) per_node=${1#*=} && shift ;;
		-w | --nodelist) nodelist=$2 && shift 2 ;;
		--nodelist=*) nodelist=${1#*=} && shift ;;
		-w*) nodelist=${1#-w} && shift ;;
		-l | --label) label=1 && shift ;;
		--quit-on-interrupt) quit_on_intr=1 && shift ;;
		-X | --disable-status) disable_status=1 && shift ;;
		--mpi) mpi=$2 && shift 2 ;;
		--mpi=*) mpi=${1#*=} && shift ;;
		# Options with a separate value that a sbatch script commonly gives srun: value skipped.
		-c | -J | -o | -e | -i | -p | -t | -G | -A | -q | -m | -D | --cpus-per-task | --job-name | --output | \
			--error | --input | --partition | --time | --gpus | --gpus-per-node | --gpus-per-task | --gres | \
			--mem | --mem-per-cpu | --mem-per-gpu | --cpu-bind | --gpu-bind | --export | --distribution | \
			--account | --qos | --chdir | --jobid | --container-image | --container-mounts | \
			--container-workdir | --container-name | --network | --signal)
			shift 2
			;;
		--) shift && break ;;
		-*) shift ;; # a flag, or --option=value: nothing to simulate
		*) break ;;
		esac
	done
	if ((!$#)); then
		echo "srun: fatal: No command given to execute." >&2
		return 1
	fi

	# The step's nodes: -w's list, else the allocation's first -N nodes (srun takes N from `min-max`'s max).
	local -a alloc hosts
	local out
	out=$(expand_hostlist "${SLURM_JOB_NODELIST:?srun: fatal: not in a job (SLURM_JOB_NODELIST is unset)}")
	mapfile -t alloc <<<"$out"
	if [[ -n $nodelist ]]; then
		out=$(expand_hostlist "$nodelist")
		mapfile -t hosts <<<"$out"
	else
		local want=${nodes##*-}
		want=${want:-${#alloc[@]}}
		# `srun -n1` without -N runs on one node, not on every node of the allocation.
		if [[ -z $nodes && -n $ntasks ]] && ((ntasks < want)); then want=$ntasks; fi
		if ((want > ${#alloc[@]})); then
			echo "srun: error: Unable to create step for job $SLURM_JOB_ID: Requested node configuration is not available" >&2
			return 1
		fi
		hosts=("${alloc[@]:0:want}")
	fi
	local nnodes=${#hosts[@]}

	# Tasks, placed block-wise as SLURM's default distribution does: node 0 gets the first per_node tasks.
	if [[ -z $per_node ]]; then
		if [[ -n $ntasks ]]; then
			per_node=$(((ntasks + nnodes - 1) / nnodes))
		else
			per_node=${SLURM_NTASKS_PER_NODE:-1}
		fi
	fi
	ntasks=${ntasks:-$((per_node * nnodes))}
	local -a counts=()
	local node left=$ntasks
	for ((node = 0; node < nnodes; node++)); do
		if ((left >= per_node)); then counts+=("$per_node"); else counts+=("$left"); fi
		left=$((left > per_node ? left - per_node : 0))
	done

	# Registered with fake_srun.sh, which ends a step still running when the batch script ends (an
	# `srun ... &`, or a srun that was SIGKILLed: the file then names its tasks). A job that is ending has
	# removed the directory: no new step then.
	local reg=""
	if [[ -n ${FAKE_SRUN_DIR:-} ]]; then
		reg=$FAKE_SRUN_DIR/srun.$$
		if ! { : >"$reg"; } 2>/dev/null; then
			echo "srun: error: Unable to create step for job $SLURM_JOB_ID: Job/step already completing or completed" >&2
			return 1
		fi
		# shellcheck disable=SC2064  # expanded now, on purpose
		trap "rm -f '$reg'" EXIT
	fi
	# Step ids count up within the job, as they do under SLURM.
	local step=0 step_file=${FAKE_SRUN_DIR:-}/steps
	if [[ -n ${FAKE_SRUN_DIR:-} ]]; then
		step=$(cat "$step_file" 2>/dev/null || echo 0)
		echo $((step + 1)) >"$step_file"
	fi
	local steplist tasks_per_node width=${#ntasks} stepid=$SLURM_JOB_ID.$step
	if ((nnodes == ${#alloc[@]})) && [[ -z $nodelist ]]; then
		steplist=$SLURM_JOB_NODELIST
	else
		steplist=$(
			IFS=,
			echo "${hosts[*]}"
		)
	fi
	tasks_per_node=$(compress_counts "${counts[@]}")
	# A site's lua cli_filter logs each submission through srun's own log.
	if [[ -n ${FAKE_SRUN_SITE_LUA:-} ]]; then echo "srun: lua: Submitted job $SLURM_JOB_ID" >&2; fi
	# The PMIx server of each task's node (PMIx 3's shared-memory lock, harmless) says so as the task starts.
	local pmix_noise=0
	[[ $mpi != pmix* ]] || pmix_noise=1

	# setsid puts each task in its own session, as on a real remote node: the terminal's Ctrl-C reaches
	# srun only, and srun decides what the tasks get (without it they would see SIGINT and SIGTERM both).
	# Except when srun was started in the background (`srun ... &`): bash then ignores SIGINT for good, so
	# Ctrl-C can reach the tasks only directly, and only those that handle SIGINT themselves (torchrun does).
	local -a detach=() guard=()
	if command -v setsid >/dev/null && [[ -z $(trap -p INT) ]]; then detach=(setsid); fi
	# And a task whose srun dies without a word (SIGKILL) gets SIGKILL: nothing runs on unseen.
	if command -v setpriv >/dev/null; then guard=(setpriv --pdeathsig KILL); fi

	# srun's signals (signals.c), each handled by signalling the tasks first and writing after: a write
	# never stops srun (SIGPIPE is handled, a failed write ignored) and never comes before the tasks are told.
	#   SIGINT   status report: `interrupt (one more within 1 sec to abort)` and the tasks' states; a second
	#            within a second: SIGINT to every process of the step, then SIGKILL (`forcing job
	#            termination`). --quit-on-interrupt: the first one does that; -X: each forwards SIGINT.
	#   SIGTERM, SIGHUP, SIGQUIT   SIGKILL to every process of the step (`forcing job termination`).
	#   SIGPIPE  (srun's output is gone) SIGKILL to every process of the step, without a word.
	#   SIGUSR1, SIGUSR2   forwarded to every process of the step. SIGALRM: ignored.
	local -a pids=() task_node=() helpers=() relays=() extra_fds=()
	local -A rc_of=()
	local aborted=0 cancelled=0 kill_sent=0 piped=0 intr_deadline=0 said_at="" say_fd=2 abort_said=0
	local forcing_said=0 last_sig=0
	say() {
		printf '%s\n' "$@" 1>&"$say_fd" 2>/dev/null || true
	}
	now_us() {
		local t=${EPOCHREALTIME:-}
		if [[ -z $t ]]; then t=$(date +%s.%6N); fi
		t=${t/[.,]/}
		echo $((10#$t))
	}
	live_tasks() {
		local i
		live=()
		for i in "${!pids[@]}"; do
			[[ -n ${rc_of[$i]+x} ]] || live+=("${pids[i]}")
		done
	}
	signal_step() {
		local -a live
		live_tasks
		signal_tasks "$1" "${live[@]}"
	}
	abort_step() {
		local -a live
		live_tasks
		((${#live[@]})) || return 0
		aborted=1
		signal_tasks KILL "${live[@]}"
	}
	say_tasks() {
		local state=$1 s=""
		shift
		(($#)) || return 0
		(($# == 1)) || s=s
		say "srun: StepId=$stepid task$s $(task_ranges "$@"): $state"
	}
	# srun's status report (task_state.c): running, exited abnormally, exited.
	print_status() {
		local i
		local -a running=() bad=() good=()
		for i in "${!pids[@]}"; do
			if [[ -z ${rc_of[$i]+x} ]]; then
				running+=("$i")
			elif ((rc_of[$i])); then
				bad+=("$i")
			else
				good+=("$i")
			fi
		done
		say_tasks running "${running[@]}"
		say_tasks "exited abnormally" "${bad[@]}"
		say_tasks exited "${good[@]}"
	}
	# Once: a hangup or a SIGTERM to the job reaches srun both directly and through its batch script (and a
	# handler may run inside another one).
	say_forcing() {
		((!forcing_said)) || return 0
		forcing_said=1
		say "srun: forcing job termination"
	}
	# After the handler's own lines, srun's main thread: it waits KillWait (30 s) + 2 for the step to end,
	# and the first node's slurmstepd says why the step ends.
	say_aborted() {
		((aborted && !abort_said)) || return 0
		abort_said=1
		say "srun: Job step aborted: Waiting up to 32 seconds for job step to finish."
		local when
		printf -v when '%(%Y-%m-%dT%H:%M:%S)T' -1
		say "slurmstepd: error: *** STEP $stepid ON ${hosts[0]} CANCELLED AT $when DUE to SIGNAL Killed ***"
	}
	# Reaps the tasks that have ended and reports them as srun does: an exit code or a signal is an error
	# line, except that a cancelled step's killed tasks go unmentioned.
	local worst_code=0 worst_sig=0 force_terminated=0
	reap() {
		local i rc=0 sig
		for i in "${!pids[@]}"; do
			[[ -z ${rc_of[$i]+x} ]] || continue
			! alive "${pids[i]}" "$$" || continue
			# Ended: `wait` returns its status at once. Except that bash 5.2 may have lost the status of a
			# child that ended just as a signal came (`wait` says -1): a signal to the whole process group
			# (a task without setsid) then most likely ended it too.
			rc=0
			wait "${pids[i]}" || rc=$?
			((rc >= 0)) || rc=$((last_sig ? 128 + last_sig : 255))
			task_done "$i" "$rc"
		done
	}
	task_done() {
		local i=$1 rc=$2 sig
		rc_of[$i]=$rc
		((rc)) || return 0
		if ((rc > 128)); then
			sig=$((rc - 128))
			# srun's "Force Terminated" line follows a task killed by SIGKILL or SIGTERM.
			((sig != 9 && sig != 15)) || force_terminated=1
			((sig <= worst_sig)) || worst_sig=$sig
			((cancelled)) && return 0
		else
			((rc <= worst_code)) || worst_code=$rc
		fi
		say "srun: error: ${task_node[i]}: task $i: $(task_end "$rc")"
	}
	on_int() {
		local now
		now=$(now_us)
		reap
		if ((quit_on_intr || now < intr_deadline)); then
			signal_step INT
			abort_step
			cancelled=1
			kill_sent=$((kill_sent + 1))
			say "srun: sending Ctrl-C to StepId=$stepid"
			if ((kill_sent == 1)); then
				say_forcing
			elif [[ $said_at != $((now / 1000000)) ]]; then
				said_at=$((now / 1000000))
				say "srun: job abort in progress"
			fi
			say_aborted
			return 0
		fi
		if ((disable_status)); then
			signal_step INT
			say "srun: sending Ctrl-C to StepId=$stepid"
		elif ((!cancelled)); then
			say "srun: interrupt (one more within 1 sec to abort)"
			print_status
		fi
		intr_deadline=$((now + 1000000))
	}
	on_kill() {
		abort_step
		[[ $1 != QUIT ]] || say "srun: Quit"
		say_forcing
		say_aborted
	}
	on_pipe() {
		((piped)) && return 0
		piped=1
		abort_step
		say_aborted
	}
	# An explicit status in each: a bare `return` in a trap returns the interrupted `wait`'s 128+N.
	trap 'last_sig=2; on_int || true' INT
	trap 'last_sig=15; on_kill TERM || true' TERM
	trap 'last_sig=1; on_kill HUP || true' HUP
	trap 'last_sig=3; on_kill QUIT || true' QUIT
	trap 'last_sig=13; on_pipe || true' PIPE
	trap 'last_sig=10; signal_step USR1 || true' USR1
	trap 'last_sig=12; signal_step USR2 || true' USR2
	trap ':' ALRM

	# The tasks' output goes through a relay where srun's own is a pipe or a socket (a terminal hangs up with
	# SIGHUP, a file never goes away). One relay when stdout and stderr are the same pipe (`2>&1 | tee`):
	# the lines of both keep their order. srun's own lines follow the tasks' stderr through it.
	local to_out=1 to_err=2 orig_err
	exec {orig_err}>&2
	extra_fds+=("$orig_err")
	if [[ $(trap -p PIPE) == *on_pipe* ]]; then
		if [[ -p /dev/stdout || -S /dev/stdout ]]; then
			exec {to_out}> >(relay "$$")
			relays+=("$!")
			extra_fds+=("$to_out")
		fi
		if [[ -p /dev/stderr || -S /dev/stderr ]]; then
			if ((to_out != 1)) && [[ /dev/stdout -ef /dev/stderr ]]; then
				to_err=$to_out
			else
				exec {to_err}> >(
					for fd in "${extra_fds[@]}"; do exec {fd}>&-; done
					relay "$$" >&2
				)
				relays+=("$!")
				extra_fds+=("$to_err")
			fi
		fi
	fi
	# srun's lines: through the stderr relay, else to a copy of stderr (fd 2 goes to /dev/null below).
	say_fd=$to_err
	((say_fd != 2)) || say_fd=$orig_err

	local t local_id=0 out_fd err_fd fd
	node=0
	for ((t = 0; t < ntasks; t++)); do
		# A signal that ended the step while it was starting: no more tasks.
		((!aborted)) || break
		if ((local_id >= counts[node])); then
			node=$((node + 1))
			local_id=0
		fi
		local -a vars=(
			SLURM_STEP_ID="$step" SLURM_STEPID="$step"
			SLURM_STEP_NUM_NODES="$nnodes" SLURM_NNODES="$nnodes"
			SLURM_STEP_NODELIST="$steplist" SLURM_NODELIST="$steplist"
			SLURM_STEP_NUM_TASKS="$ntasks" SLURM_NTASKS="$ntasks" SLURM_NPROCS="$ntasks"
			SLURM_STEP_TASKS_PER_NODE="$tasks_per_node" SLURM_TASKS_PER_NODE="$tasks_per_node"
			SLURM_NODEID="$node" SLURM_PROCID="$t" SLURM_LOCALID="$local_id"
			SLURMD_NODENAME="${hosts[node]}" HOSTNAME="${hosts[node]}"
		)
		if ((label)); then
			# srun -l pads the task number to the width of the largest one.
			exec {out_fd}> >(
				for fd in "${extra_fds[@]}"; do [[ $fd == "$to_out" ]] || exec {fd}>&-; done
				label_lines "$(printf '%*d' "$width" "$t")" >&"$to_out"
			)
			helpers+=("$!")
			exec {err_fd}> >(
				for fd in "${extra_fds[@]}" "$out_fd"; do [[ $fd == "$to_err" ]] || exec {fd}>&-; done
				label_lines "$(printf '%*d' "$width" "$t")" >&"$to_err"
			)
			helpers+=("$!")
		else
			out_fd=$to_out
			err_fd=$to_err
		fi
		# The task: a subshell that closes srun's own descriptors, then becomes the command (exec), with
		# default signal dispositions (bash resets what it traps).
		(
			for fd in "${extra_fds[@]}"; do exec {fd}>&-; done
			if ((pmix_noise)); then
				printf '[%s:%d] PMIX ERROR: ERROR in file %s at line %d\n' "${hosts[node]}" "$BASHPID" \
					../../../../../../src/mca/gds/ds12/gds_ds12_lock_pthread.c 168 >&2
			fi
			exec env "${vars[@]}" "${guard[@]}" "${detach[@]}" "$@"
		) 1>&"$out_fd" 2>&"$err_fd" &
		pids+=("$!")
		if [[ -n $reg ]]; then printf '%s\n' "$!" >>"$reg"; fi
		if ((label)); then exec {out_fd}>&- {err_fd}>&-; fi
		task_node+=("${hosts[node]}")
		local_id=$((local_id + 1))
	done

	# While waiting, bash would print its own "line N: PID Killed  env ..." notices on stderr: srun's lines
	# go to say_fd, bash's to /dev/null.
	exec 2>/dev/null
	local -a live
	while :; do
		reap
		live_tasks
		((${#live[@]})) || break
		# A signal interrupts the `wait` and is handled at once; a task's end is seen within 0.25 s. Not a
		# `wait` for the tasks: bash 5.2 loses the status of a child that ends while a trap interrupts a
		# `wait` for it (-1). Not `read -t`: a `read` in a trap makes it hang, and its SIGALRM can crash bash.
		sleep 0.25 &
		wait "$!" || true
	done
	if ((force_terminated)); then say "srun: Force Terminated StepId=$stepid"; fi
	# When a step ends SLURM kills what its tasks left behind (background children): so do we, group by group.
	for i in "${pids[@]}"; do kill -s KILL -- "-$i" 2>/dev/null || true; done
	# The label helpers and relays end when every task's output has closed; let them flush before srun
	# returns. A task's own background children may hold its output open: give up on them after 2 s.
	for fd in "$to_out" "$to_err"; do
		((fd <= 2)) || exec {fd}>&- 2>/dev/null || true
	done
	local tries=100
	for i in "${helpers[@]}" "${relays[@]}"; do
		while alive "$i" "$$" && ((tries > 0)); do
			sleep 0.02
			tries=$((tries - 1))
		done
	done
	if ((tries == 0)); then signal_tasks KILL "${helpers[@]}" "${relays[@]}"; fi
	trap - INT TERM HUP QUIT PIPE USR1 USR2 ALRM
	exec 2>&"$orig_err" {orig_err}>&-
	# srun's exit code: the highest signal of a killed task (128+N), else the highest exit code.
	if ((worst_sig)); then return $((128 + worst_sig)); fi
	return "$worst_code"
}

# --- sbatch, in this shell -----------------------------------------------------------------------------

# Prints the value of `#SBATCH --NAME=V`, `--NAME V` or `-S V` in SCRIPT's header (sbatch stops reading
# directives at the first line that is neither a comment nor blank).
sbatch_option() {
	local script=$1 long=$2 short=${3:-} line
	local -a words
	while IFS= read -r line; do
		[[ $line =~ ^[[:space:]]*(#|$) ]] || break
		[[ $line == '#SBATCH'[[:space:]]* ]] || continue
		read -ra words <<<"${line#'#SBATCH'}"
		case ${words[0]:-} in
		"--$long="*) printf '%s\n' "${words[0]#*=}" && return ;;
		"--$long") printf '%s\n' "${words[1]:-}" && return ;;
		"-$short") [[ -z $short ]] || { printf '%s\n' "${words[1]:-}" && return; } ;;
		"-$short"*) [[ -z $short ]] || { printf '%s\n' "${words[0]#"-$short"}" && return; } ;;
		esac
	done <"$script"
}

# At exit (the batch script's end, or fake_srun.sh's own death by SIGTERM, SIGHUP, SIGPIPE...), as SLURM
# does when a job ends: the batch script and whatever it still runs get SIGTERM, every srun still running
# ends its step (SIGKILL to its tasks), what is left after 5 s gets SIGKILL, and so do the tasks of a srun
# that was SIGKILLed (named in its file). Then the shims go. Nothing here writes: a job whose output is
# gone must still be cleaned up.
cleanup() {
	local f pid entry tries=50
	local -a sruns=() tasks=() tree=() rest=() stat=() fields=()
	local -A prune=()
	for f in "$FAKE_SRUN_DIR"/srun.*; do
		[[ -e $f ]] || continue
		pid=${f##*.}
		sruns+=("$pid")
		prune[$pid]=1
	done
	# The job's other processes, read before anything is signalled (a srun's own are its to end).
	proc_tree "$$"
	for entry in "${tree[@]}"; do
		kill -s TERM "${entry%% *}" 2>/dev/null || true
	done
	# A srun that got the same signal (a Ctrl-C, a hangup of the terminal) is ending its step already: a
	# moment for it, then SIGTERM to the others.
	while ((tries > 40)); do
		rest=()
		for pid in "${sruns[@]}"; do
			if alive "$pid"; then rest+=("$pid"); fi
		done
		((${#rest[@]})) || break
		sleep 0.1
		tries=$((tries - 1))
	done
	for pid in "${rest[@]}"; do kill -s TERM "$pid" 2>/dev/null || true; done
	while ((tries > 0)); do
		rest=()
		for entry in "${sruns[@]}" "${tree[@]}"; do
			if alive "${entry%% *}"; then rest+=("${entry%% *}"); fi
		done
		((${#rest[@]})) || break
		sleep 0.1
		tries=$((tries - 1))
	done
	for pid in "${rest[@]}"; do kill -s KILL "$pid" 2>/dev/null || true; done
	# A srun that ends removes its file: one left names the tasks of a srun that died without a word.
	# Each still leads its own process group (setsid) unless its pid has gone to another process.
	for f in "$FAKE_SRUN_DIR"/srun.*; do
		[[ -e $f ]] || continue
		while IFS= read -r pid; do
			{ mapfile -n 1 -t stat <"/proc/$pid/stat"; } 2>/dev/null || continue
			# shellcheck disable=SC2206  # numbers and a state letter
			fields=(${stat[0]##*") "})
			[[ ${fields[2]:-} != "$pid" ]] || tasks+=("$pid")
		done <"$f"
	done
	signal_tasks KILL "${tasks[@]}"
	rm -rf "$FAKE_SRUN_DIR"
}

# Prints a file name pattern of sbatch's --output/--error with its replacement symbols expanded: %x the job
# name, %j and %A the job id, %a the array index (4294967294, SLURM's NO_VAL: no array), %N the first node,
# %u the user, %% a percent sign. Arguments: PATTERN NAME JOBID NODE.
file_pattern() {
	local pattern=$1 out="" ch i
	for ((i = 0; i < ${#pattern}; i++)); do
		ch=${pattern:i:1}
		if [[ $ch != % || $i -eq $((${#pattern} - 1)) ]]; then
			out+=$ch
			continue
		fi
		i=$((i + 1))
		case ${pattern:i:1} in
		x) out+=$2 ;;
		j | A) out+=$3 ;;
		a) out+=4294967294 ;;
		N) out+=$4 ;;
		u) out+=$SLURM_JOB_USER ;;
		%) out+=% ;;
		*) out+=%${pattern:i:1} ;;
		esac
	done
	printf '%s\n' "$out"
}

sbatch_main() {
	local nodes="" name="" jobid="" hostlist="" output="" error="" files="" site_lua=""
	while (($#)); do
		case $1 in
		-N | --nodes) nodes=${2:?-N needs a node count} && shift 2 ;;
		--nodes=*) nodes=${1#*=} && shift ;;
		-w | --nodelist) hostlist=${2:?-w needs a node list} && shift 2 ;;
		--nodelist=*) hostlist=${1#*=} && shift ;;
		-o | --output) output=${2:?-o needs a file name} && shift 2 ;;
		--output=*) output=${1#*=} && shift ;;
		-e | --error) error=${2:?-e needs a file name} && shift 2 ;;
		--error=*) error=${1#*=} && shift ;;
		--sbatch-output) files=1 && shift ;;
		--site-lua) site_lua=1 && shift ;;
		-J | --job-name) name=${2:?-J needs a name} && shift 2 ;;
		--job-name=*) name=${1#*=} && shift ;;
		--jobid) jobid=${2:?--jobid needs an id} && shift 2 ;;
		--jobid=*) jobid=${1#*=} && shift ;;
		-h | --help) usage && return 0 ;;
		--) shift && break ;;
		-*) echo "sbatch: unrecognized option '$1' (see fake_srun.sh --help)" >&2 && return 2 ;;
		*) break ;;
		esac
	done
	if ((!$#)); then
		usage >&2
		return 2
	fi
	local script=$1
	shift
	[[ -f $script && -r $script ]] || {
		echo "sbatch: error: Unable to open file $script" >&2
		return 1
	}
	local shebang
	IFS= read -r shebang <"$script" || true
	if [[ $shebang != '#!'* ]]; then
		echo "sbatch: error: This does not look like a batch script.  The first" >&2
		echo "sbatch: error: line must start with #! followed by the path to an interpreter." >&2
		return 1
	fi
	local -a interpreter
	read -ra interpreter <<<"${shebang#'#!'}"

	local -a named=()
	if [[ -n $hostlist ]]; then
		local out
		out=$(expand_hostlist "$hostlist") || return 2
		mapfile -t named <<<"$out"
		nodes=${nodes:-${#named[@]}}
	fi
	nodes=${nodes:-$(sbatch_option "$script" nodes N)}
	nodes=${nodes:-1}
	nodes=${nodes##*-} # `--nodes=2-4`: the most SLURM could give
	if [[ ! $nodes =~ ^[1-9][0-9]*$ ]]; then
		echo "sbatch: error: Invalid node count specification: $nodes" >&2
		return 2
	fi
	if ((${#named[@]} && ${#named[@]} != nodes)); then
		echo "sbatch: error: -w $hostlist names ${#named[@]} nodes, not $nodes" >&2
		return 2
	fi
	name=${name:-$(sbatch_option "$script" job-name J)}
	name=${name:-$(basename "$script")}
	jobid=${jobid:-$((100000 + (RANDOM * 32768 + RANDOM) % 900000))}
	local per_node gpus cpus
	per_node=$(sbatch_option "$script" ntasks-per-node)
	gpus=$(sbatch_option "$script" gpus-per-node)
	[[ -n $gpus ]] || gpus=$(sbatch_option "$script" gres)
	gpus=${gpus##*:} # `h100:8` or `gpu:8`: the count
	cpus=$(sbatch_option "$script" cpus-per-task c)

	# The job's directory, its shims first on PATH for the script only: this very file linked as `srun` and
	# `scontrol`, and fakerun's `torchrun` and `nvidia-smi`.
	local self
	self=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/$(basename "${BASH_SOURCE[0]}")
	FAKE_SRUN_DIR=$(mktemp -d "${TMPDIR:-/tmp}/fake_srun.XXXXXX")
	export FAKE_SRUN_DIR
	trap cleanup EXIT
	ln -s "$self" "$FAKE_SRUN_DIR/srun"
	ln -s "$self" "$FAKE_SRUN_DIR/scontrol"
	ln -s "$self" "$FAKE_SRUN_DIR/hostname"

	# The nodes, named as the cluster preset names its hosts (fakerun's helper), else node[001-00N].
	local nodelist="" py
	if py=$(fakerun_python); then
		nodelist=$("$py" -c "$FAKERUN_HELPER" "$nodes" "${FAKERUN_CLUSTER:-}" "$FAKE_SRUN_DIR") || nodelist=""
	fi
	if ((${#named[@]})); then nodelist=$hostlist; fi
	if [[ -z $nodelist ]]; then
		local width=3
		if ((${#nodes} > width)); then width=${#nodes}; fi
		if ((nodes == 1)); then
			nodelist=$(printf '%s%0*d' "$NODE_PREFIX" "$width" 1)
		else
			nodelist=$(printf '%s[%0*d-%0*d]' "$NODE_PREFIX" "$width" 1 "$width" "$nodes")
		fi
	fi
	local first
	first=$(expand_hostlist "$nodelist") || return 2
	first=${first%%$'\n'*}

	# A clean slate: no step of an outer (real or fake) job leaks into this one.
	local var
	for var in "${!SLURM_@}" SLURMD_NODENAME; do unset "$var"; done
	export SLURM_JOB_ID=$jobid SLURM_JOBID=$jobid SLURM_JOB_NAME=$name
	export SLURM_NNODES=$nodes SLURM_JOB_NUM_NODES=$nodes
	export SLURM_JOB_NODELIST=$nodelist SLURM_NODELIST=$nodelist
	export SLURM_NTASKS=$((nodes * ${per_node:-1})) SLURM_NPROCS=$((nodes * ${per_node:-1}))
	export SLURM_TASKS_PER_NODE="${per_node:-1}(x$nodes)"
	[[ $nodes != 1 ]] || export SLURM_TASKS_PER_NODE=${per_node:-1}
	[[ -z $per_node ]] || export SLURM_NTASKS_PER_NODE=$per_node
	[[ -z $cpus ]] || export SLURM_CPUS_PER_TASK=$cpus
	[[ ! $gpus =~ ^[0-9]+$ ]] || export SLURM_GPUS_ON_NODE=$gpus SLURM_GPUS_PER_NODE=$gpus
	# The batch script itself is task 0 of the first node.
	export SLURM_NODEID=0 SLURM_PROCID=0 SLURM_LOCALID=0
	export SLURMD_NODENAME=$first HOSTNAME=$first
	export SLURM_SUBMIT_DIR=$PWD SLURM_SUBMIT_HOST=${HOSTNAME:-localhost} SLURM_CLUSTER_NAME=cluster
	export SLURM_JOB_USER=${USER:-$(id -un)} SLURM_JOB_PARTITION=gpu
	if [[ -n $site_lua ]]; then export FAKE_SRUN_SITE_LUA=1; else unset FAKE_SRUN_SITE_LUA; fi
	export PATH="$FAKE_SRUN_DIR:$PATH"

	# -o (or --sbatch-output): the job's output in files, as sbatch writes them; the terminal gets sbatch's
	# one line. sbatch's own choice: -o/-e, else the script's #SBATCH --output/--error, else slurm-%j.out,
	# with stderr into the output file unless an error file is named.
	if [[ -n $files ]]; then
		output=${output:-$(sbatch_option "$script" output o)}
		output=${output:-slurm-%j.out}
		error=${error:-$(sbatch_option "$script" error e)}
	fi
	if [[ -n $output || -n $error ]]; then
		echo "Submitted batch job $jobid"
		if [[ -n $output ]]; then
			exec >"$(file_pattern "$output" "$name" "$jobid" "$first")" || return 1
		fi
		if [[ -n $error ]]; then
			exec 2>"$(file_pattern "$error" "$name" "$jobid" "$first")" || return 1
		elif [[ -n $output ]]; then
			exec 2>&1
		fi
	fi
	# In the foreground, so that Ctrl-C reaches the script and its srun (a background job would ignore it).
	local rc=0
	# If fake_srun.sh dies without its cleanup (SIGKILL), the batch script gets SIGTERM, its sruns then.
	local -a guard=()
	if command -v setpriv >/dev/null; then guard=(setpriv --pdeathsig TERM); fi
	# The script's stderr is ours; bash's own notice of its end ("Terminated") goes nowhere.
	local err
	exec {err}>&2 2>/dev/null
	"${guard[@]}" "${interpreter[@]}" "$script" "$@" 2>&"$err" {err}>&- || rc=$?
	exec 2>&"$err" {err}>&-
	return "$rc"
}

# One file, four programs: called through the `srun`, `scontrol` or `hostname` link, it is that shim.
case $(basename "$0") in
srun) srun_main "$@" ;;
scontrol) scontrol_main "$@" ;;
hostname) hostname_main "$@" ;;
*) sbatch_main "$@" ;;
esac
