#!/usr/bin/env bash
# fake_srun.sh: run an sbatch script on this machine as if SLURM had given it NODES nodes.
#
# Usage:
#   scripts/slurm/fake_srun.sh [-N NODES] [-J NAME] [--jobid ID] [--] SCRIPT [SCRIPT_ARGS...]
#
#   -N, --nodes NODES     simulated nodes (default: the script's `#SBATCH --nodes`, else 1)
#   -J, --job-name NAME   SLURM_JOB_NAME (default: the script's `#SBATCH --job-name`, else its file name)
#   --jobid ID            SLURM_JOB_ID (default: a random 6-digit number)
#   -h, --help            this text
#
# Example:
#   FAKERUN_MAX_STEPS=20 FAKERUN_SPEED=10 scripts/slurm/fake_srun.sh -N 2 scripts/slurm/train_llama3_8b.sbatch
#
# What it does, in sbatch's place:
#   - sets the environment a batch script gets: SLURM_JOB_ID, SLURM_JOB_NAME, SLURM_NNODES,
#     SLURM_JOB_NUM_NODES, SLURM_JOB_NODELIST (fake-[001-00N]), SLURM_NTASKS, SLURM_TASKS_PER_NODE,
#     SLURM_CPUS_PER_TASK and SLURM_GPUS_ON_NODE (from the script's #SBATCH lines), and, as the batch
#     script runs as task 0 of the first node, SLURM_NODEID=0, SLURM_PROCID=0, SLURM_LOCALID=0, SLURMD_NODENAME;
#   - puts two shims first on PATH, for the script only:
#       scontrol show hostnames [LIST]  one host a line (LIST defaults to $SLURM_JOB_NODELIST);
#       srun [OPTIONS] CMD [ARGS...]    runs CMD once per task, all at once in the background, each with its
#                                       own SLURM_NODEID, SLURM_PROCID, SLURM_LOCALID, SLURMD_NODENAME and
#                                       step variables; waits for all; exits with the highest exit code
#                                       (128+N for a task killed by signal N), as srun does. Understood:
#                                       -N/--nodes, -n/--ntasks, --ntasks-per-node, -w/--nodelist,
#                                       -l/--label; other options are accepted and ignored. Default: one
#                                       task per node of the allocation (--ntasks-per-node from sbatch).
#   - runs SCRIPT with the interpreter of its #! line, in the current directory. Output stays on the
#     terminal (sbatch would write it to the script's --output file).
#
# Signals: Ctrl-C makes srun send SIGTERM to every task (a second Ctrl-C sends SIGKILL), wait for them, and
# stop the script; SIGTERM and SIGHUP sent to srun are forwarded as they are. Every simulated node is this
# machine: a task that binds a port binds it here, so tasks must not all listen on the same one.

set -euo pipefail

readonly NODE_PREFIX=fake-

usage() {
	sed -n '2,/^$/{s/^# \{0,1\}//;p}' "${BASH_SOURCE[0]}"
}

# --- hostlists ---------------------------------------------------------------------------------------

# Prints the numbers of one bracket body (`1,3,5-7`, `001-016`), zero-padded to each range's low end.
range_values() {
	local body=$1 item lo hi width n
	local -a items
	[[ -n $body ]] || {
		echo "bad hostlist: empty brackets" >&2
		return 1
	}
	IFS=, read -ra items <<<"$body"
	for item in "${items[@]}"; do
		if [[ ! $item =~ ^([0-9]+)(-([0-9]+))?$ ]]; then
			echo "bad hostlist range '$item'" >&2
			return 1
		fi
		lo=${BASH_REMATCH[1]}
		hi=${BASH_REMATCH[3]:-$lo}
		width=${#lo}
		# 10# keeps a leading zero from making the number octal.
		for ((n = 10#$lo; n <= 10#$hi; n++)); do
			printf '%0*d\n' "$width" "$n"
		done
	done
}

# Prints the names of a prefix that may hold brackets (`r[1-2]c`), in SLURM's order: its rightmost bracket
# is the outer loop (hostlist.c expands the brackets to its left inside it).
expand_prefix() {
	local prefix=$1 head rest body tail out v h
	local -a heads values
	if [[ $prefix != *'['* ]]; then
		printf '%s\n' "$prefix"
		return
	fi
	head=${prefix%'['*}
	rest=${prefix##*'['}
	body=${rest%%']'*}
	tail=${rest#*']'}
	out=$(expand_prefix "$head") || return 1
	mapfile -t heads <<<"$out"
	out=$(range_values "$body") || return 1
	mapfile -t values <<<"$out"
	for v in "${values[@]}"; do
		for h in "${heads[@]}"; do
			printf '%s\n' "$h$v$tail"
		done
	done
}

# Prints the hosts of one hostlist token: a name, or a prefix ending with a bracket (`gpu-[001-004]`).
expand_token() {
	local token=$1 prefix body out name v
	local -a names values
	if [[ $token != *'['* ]]; then
		printf '%s\n' "$token"
		return
	fi
	if [[ $token != *']' ]]; then
		echo "bad hostlist '$token': nothing may follow the last ']'" >&2
		return 1
	fi
	prefix=${token%'['*}
	body=${token##*'['}
	body=${body%']'}
	out=$(expand_prefix "$prefix") || return 1
	mapfile -t names <<<"$out"
	out=$(range_values "$body") || return 1
	mapfile -t values <<<"$out"
	for name in "${names[@]}"; do
		for v in "${values[@]}"; do
			printf '%s\n' "$name$v"
		done
	done
}

# Prints the hosts of a SLURM hostlist (`gpu-[001-002],login1`), one a line.
expand_hostlist() {
	local text=$1 token="" ch i inside=0
	local -a tokens=()
	# Split on commas, spaces and tabs outside brackets, as hostlist.c does.
	for ((i = 0; i < ${#text}; i++)); do
		ch=${text:i:1}
		case $ch in
		'[') inside=1 ;;
		']') inside=0 ;;
		',' | ' ' | $'\t')
			if ((!inside)); then
				[[ -z $token ]] || tokens+=("$token")
				token=""
				continue
			fi
			;;
		esac
		token+=$ch
	done
	[[ -z $token ]] || tokens+=("$token")
	for token in "${tokens[@]}"; do
		expand_token "$token" || return 1
	done
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
		expand_hostlist "$list" || {
			echo "scontrol: error: Invalid hostlist: $list" >&2
			return 1
		}
		return
	fi
	echo "scontrol (fake_srun.sh): only 'scontrol show hostnames [LIST]' is simulated" >&2
	return 1
}

# --- the srun shim -----------------------------------------------------------------------------------

# srun's wording for how a task ended: `Exited with exit code N`, or the signal.
task_end() {
	local rc=$1
	if ((rc <= 128)); then
		echo "Exited with exit code $rc"
		return
	fi
	case $((rc - 128)) in
	9) echo "Killed" ;;
	15) echo "Terminated" ;;
	2) echo "Interrupt" ;;
	*) echo "Killed by signal $((rc - 128))" ;;
	esac
}

# Copies stdin to stdout with srun --label's `N: ` in front of each line.
label_lines() {
	local label=$1 line
	# The terminal's Ctrl-C is srun's to handle: the label must outlive its task's last line.
	trap '' INT TERM HUP
	while IFS= read -r line || [[ -n $line ]]; do
		printf '%s: %s\n' "$label" "$line"
	done
}

srun_main() {
	local nodes="" ntasks="" per_node="" nodelist="" label=0
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
		# Options with a separate value that a sbatch script commonly gives srun: value skipped.
		-c | -J | -o | -e | -i | -p | -t | -G | -A | -q | -m | -D | --cpus-per-task | --job-name | --output | \
			--error | --input | --partition | --time | --gpus | --gpus-per-node | --gpus-per-task | --gres | \
			--mem | --mem-per-cpu | --mem-per-gpu | --cpu-bind | --gpu-bind | --mpi | --export | --distribution | \
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

	# Step ids count up within the job, as they do under SLURM.
	local step=0 step_file=${FAKE_SRUN_DIR:-}/steps
	if [[ -n ${FAKE_SRUN_DIR:-} ]]; then
		step=$(cat "$step_file" 2>/dev/null || echo 0)
		echo $((step + 1)) >"$step_file"
	fi
	local steplist tasks_per_node width=${#ntasks}
	if ((nnodes == ${#alloc[@]})) && [[ -z $nodelist ]]; then
		steplist=$SLURM_JOB_NODELIST
	else
		steplist=$(
			IFS=,
			echo "${hosts[*]}"
		)
	fi
	tasks_per_node=$(compress_counts "${counts[@]}")

	# Registered for fake_srun.sh, which stops a step still running when the batch script ends (e.g. an
	# `srun ... &` that Ctrl-C cannot reach).
	if [[ -n ${FAKE_SRUN_DIR:-} ]]; then
		: >"$FAKE_SRUN_DIR/srun.$$"
		# shellcheck disable=SC2064  # expanded now, on purpose
		trap "rm -f '$FAKE_SRUN_DIR/srun.$$'" EXIT
	fi

	# setsid puts each task in its own session, as on a real remote node: the terminal's Ctrl-C reaches
	# srun only, and srun decides what the tasks get (without it they would see SIGINT and SIGTERM both).
	# Except when srun was started in the background (`srun ... &`): bash then ignores SIGINT for good, so
	# Ctrl-C can reach the tasks only directly, and only those that handle SIGINT themselves (torchrun does).
	local -a detach=()
	if command -v setsid >/dev/null && [[ -z $(trap -p INT) ]]; then detach=(setsid); fi

	local -a pids=() task_node=() helpers=()
	# Signals: forwarded to every task, Ctrl-C as SIGTERM, a second Ctrl-C as SIGKILL. A detached task leads
	# its own process group: signal the group, as slurmstepd signals all of a task's processes.
	local caught=0 interrupted=0 sig srun_err=2
	forward() {
		sig=$1
		caught=1
		if [[ $sig == INT ]]; then
			if ((interrupted)); then
				echo "srun: sending SIGKILL to StepId=$SLURM_JOB_ID.$step" >&"$srun_err"
				signal_tasks KILL
				# An explicit status: a bare `return` in a trap returns the interrupted `wait`'s 128+N.
				return 0
			fi
			interrupted=1
			echo "srun: interrupt: sending SIGTERM to StepId=$SLURM_JOB_ID.$step (Ctrl-C again: SIGKILL)" \
				>&"$srun_err"
			sig=TERM
		fi
		signal_tasks "$sig"
	}
	signal_tasks() {
		local p
		for p in "${pids[@]}"; do
			if ((${#detach[@]})); then
				kill -s "$1" -- "-$p" 2>/dev/null || kill -s "$1" "$p" 2>/dev/null || true
			else
				kill -s "$1" "$p" 2>/dev/null || true
			fi
		done
	}
	trap 'forward INT || true' INT
	trap 'forward TERM || true' TERM
	trap 'forward HUP || true' HUP

	local t local_id=0 out_fd err_fd
	node=0
	for ((t = 0; t < ntasks; t++)); do
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
			SLURMD_NODENAME="${hosts[node]}"
		)
		if ((label)); then
			# srun -l pads the task number to the width of the largest one.
			exec {out_fd}> >(label_lines "$(printf '%*d' "$width" "$t")")
			helpers+=("$!")
			exec {err_fd}> >(label_lines "$(printf '%*d' "$width" "$t")" >&2)
			helpers+=("$!")
			# shellcheck disable=SC2261  # two different fds, not two targets for stderr
			env "${vars[@]}" "${detach[@]}" "$@" >&"$out_fd" 2>&"$err_fd" &
			pids+=("$!")
			exec {out_fd}>&- {err_fd}>&-
		else
			env "${vars[@]}" "${detach[@]}" "$@" &
			pids+=("$!")
		fi
		task_node+=("${hosts[node]}")
		local_id=$((local_id + 1))
	done


	local worst=0 rc prev i
	# While waiting, bash would print its own "line N: PID Killed  env ..." notices on stderr: srun's lines
	# go to a copy of stderr instead, and bash's to /dev/null.
	exec {srun_err}>&2 2>/dev/null
	for i in "${!pids[@]}"; do
		prev=""
		while :; do
			caught=0
			rc=0
			wait "${pids[i]}" || rc=$?
			# A trapped signal interrupts `wait` with 128+signal while the task runs on: wait again. (A task
			# that ended just as the signal came is already reported: `wait` then says 127.)
			if ((rc == 127)) && [[ -n $prev ]]; then
				rc=$prev
				break
			fi
			((caught)) || break
			prev=$rc
		done
		if ((rc != 0)); then
			echo "srun: error: ${task_node[i]}: task $i: $(task_end "$rc")" >&"$srun_err"
		fi
		if ((rc > worst)); then worst=$rc; fi
	done
	# When a step ends SLURM kills what its tasks left behind (background children): so do we, group by group.
	if ((${#detach[@]})); then
		for i in "${pids[@]}"; do kill -s KILL -- "-$i" 2>/dev/null || true; done
	fi
	# The label helpers end when their task's output closes; let them flush before srun returns.
	# A task's own background children may hold its output open: give up on them after 2 s.
	local tries=100
	for i in "${helpers[@]}"; do
		while kill -0 "$i" 2>/dev/null && ((tries > 0)); do
			sleep 0.02
			tries=$((tries - 1))
		done
	done
	trap - INT TERM HUP
	exec 2>&"$srun_err" {srun_err}>&-
	if ((interrupted)); then
		# Die of SIGINT, so that the batch script stops too, as after Ctrl-C in a terminal.
		kill -INT $$
	fi
	return "$worst"
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

# At exit: SIGTERM to any srun step still running (srun passes it to its tasks), a moment for them to stop,
# then the shims go.
cleanup() {
	local f tries=300
	for f in "$FAKE_SRUN_DIR"/srun.*; do
		[[ -e $f ]] && kill -TERM "${f##*.}" 2>/dev/null
	done
	while compgen -G "$FAKE_SRUN_DIR/srun.*" >/dev/null && ((tries > 0)); do
		sleep 0.1
		tries=$((tries - 1))
	done
	rm -rf "$FAKE_SRUN_DIR"
}

sbatch_main() {
	local nodes="" name="" jobid=""
	while (($#)); do
		case $1 in
		-N | --nodes) nodes=${2:?-N needs a node count} && shift 2 ;;
		--nodes=*) nodes=${1#*=} && shift ;;
		-J | --job-name) name=${2:?-J needs a name} && shift 2 ;;
		--job-name=*) name=${1#*=} && shift ;;
		--jobid) jobid=${2:?--jobid needs an id} && shift 2 ;;
		--jobid=*) jobid=${1#*=} && shift ;;
		-h | --help) usage && return 0 ;;
		--) shift && break ;;
		-*) echo "fake_srun.sh: unknown option $1 (see --help)" >&2 && return 2 ;;
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

	nodes=${nodes:-$(sbatch_option "$script" nodes N)}
	nodes=${nodes:-1}
	nodes=${nodes##*-} # `--nodes=2-4`: the most SLURM could give
	if [[ ! $nodes =~ ^[1-9][0-9]*$ ]]; then
		echo "fake_srun.sh: bad node count '$nodes'" >&2
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

	local width=3 nodelist
	if ((${#nodes} > width)); then width=${#nodes}; fi
	if ((nodes == 1)); then
		nodelist=$(printf '%s%0*d' "$NODE_PREFIX" "$width" 1)
	else
		nodelist=$(printf '%s[%0*d-%0*d]' "$NODE_PREFIX" "$width" 1 "$width" "$nodes")
	fi

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
	SLURMD_NODENAME=$(expand_hostlist "$nodelist" | head -n1)
	export SLURMD_NODENAME
	export SLURM_SUBMIT_DIR=$PWD SLURM_SUBMIT_HOST=${HOSTNAME:-localhost} SLURM_CLUSTER_NAME=fake

	# The shims: this very file, linked as `srun` and `scontrol`, first on PATH for the script only.
	local self
	self=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/$(basename "${BASH_SOURCE[0]}")
	FAKE_SRUN_DIR=$(mktemp -d "${TMPDIR:-/tmp}/fake_srun.XXXXXX")
	export FAKE_SRUN_DIR
	trap cleanup EXIT
	ln -s "$self" "$FAKE_SRUN_DIR/srun"
	ln -s "$self" "$FAKE_SRUN_DIR/scontrol"
	export PATH="$FAKE_SRUN_DIR:$PATH"

	echo "fake_srun.sh: job $jobid ($name) on $nodes simulated node(s) $nodelist" >&2
	# In the foreground, so that Ctrl-C reaches the script and its srun (a background job would ignore it).
	local rc=0
	"${interpreter[@]}" "$script" "$@" || rc=$?
	return "$rc"
}

# One file, three programs: called through the `srun` or `scontrol` link, it is that shim.
case $(basename "$0") in
srun) srun_main "$@" ;;
scontrol) scontrol_main "$@" ;;
*) sbatch_main "$@" ;;
esac
