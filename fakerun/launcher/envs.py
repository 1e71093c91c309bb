"""The environment torchrun gives each worker, as a pure function of the plan and the worker's place."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from fakerun.launcher.plan import LaunchPlan


@dataclass(frozen=True)
class WorkerSlot:
    """One worker's place in the job: which node, which local rank, which global rank."""

    node_index: int
    local_rank: int
    rank: int
    host: str


def worker_slots(plan: LaunchPlan) -> list[WorkerSlot]:
    """Numbers the workers of every simulated node as a static N-node job would."""
    return [
        WorkerSlot(node.group_rank, lr, node.group_rank * plan.nproc_per_node + lr, node.host)
        for node in plan.nodes
        for lr in range(plan.nproc_per_node)
    ]


def worker_env(
    base: Mapping[str, str],
    plan: LaunchPlan,
    slot: WorkerSlot,
    *,
    restart_count: int,
    error_file: str,
) -> dict[str, str]:
    """Returns the worker's whole environment: the launcher's, plus what torchrun adds or defaults."""
    env = dict(base)
    local_rank = slot.local_rank
    if plan.args.virtual_local_rank:
        env["CUDA_VISIBLE_DEVICES"] = str(local_rank)
        local_rank = 0
    env.update(
        {
            "LOCAL_RANK": str(local_rank),
            "RANK": str(slot.rank),
            "GROUP_RANK": str(slot.node_index),
            "ROLE_RANK": str(slot.rank),
            "ROLE_NAME": plan.args.role,
            "LOCAL_WORLD_SIZE": str(plan.nproc_per_node),
            "WORLD_SIZE": str(plan.world_size),
            "GROUP_WORLD_SIZE": str(plan.group_world_size),
            "ROLE_WORLD_SIZE": str(plan.world_size),
            "MASTER_ADDR": plan.rdzv.master_addr,
            "MASTER_PORT": str(plan.rdzv.master_port),
            "TORCHELASTIC_RESTART_COUNT": str(restart_count),
            "TORCHELASTIC_MAX_RESTARTS": str(plan.args.max_restarts),
            "TORCHELASTIC_RUN_ID": plan.rdzv.run_id,
            "TORCHELASTIC_USE_AGENT_STORE": "True",
            "TORCHELASTIC_ERROR_FILE": error_file,
            "TORCHELASTIC_SIGNALS_TO_HANDLE": plan.args.signals_to_handle,
        }
    )
    env.setdefault("TORCH_NCCL_ASYNC_ERROR_HANDLING", "1")
    if plan.set_omp_threads:
        env["OMP_NUM_THREADS"] = "1"
    return env


def worker_argv(plan: LaunchPlan, python: str, local_rank: int) -> list[str]:
    """The worker's command line as torchrun builds it (`python -u script args`, `-m`, `--no-python`), with
    `--local-rank=N` before the script's arguments under torch.distributed.launch without --use-env."""
    args = plan.args
    script_args = list(args.training_script_args)
    if not args.use_env:
        script_args.insert(0, f"--local-rank={local_rank}")
    if args.run_path:  # torch runs the script in a spawned interpreter: argv[2:] is its sys.argv
        return [python, "-u", args.training_script, *script_args]
    if args.no_python:
        return [args.training_script, *script_args]
    if args.module:
        return [python, "-u", "-m", args.training_script, *script_args]
    return [python, "-u", args.training_script, *script_args]
