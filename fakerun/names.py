"""The names fakerun's command line accepts for what the simulation implements (trainer dialects, log levels,
failure scenarios) and the environment variables it reads, importable without the simulation or the
multi-node protocol: a single-node --fake-exec launcher loads neither."""

from __future__ import annotations

# The job's shared secret for the agents' handshake (launcher/wire.py); one derived from the run id if unset.
SECRET_VAR = "FAKERUN_SECRET"

# --fake-trainer's choices, sorted: the keys of fakerun.dialects.DIALECTS (a unit test holds them equal).
TRAINERS = (
    "deepspeed",
    "fakerun",
    "hf",
    "lightning",
    "llmc",
    "llmc_py",
    "megatron",
    "megatron-deepspeed",
    "nanogpt",
    "nemo",
    "titan",
    "torchtune",
)

# --fake-log-level's choices: the `logging` levels fakerun's own events are logged at, lowest first.
LOG_LEVELS = ("debug", "info", "warning")

# What each scenario does, as --fake-list-failures shows it.
DESCRIPTIONS = {
    "crash": "an uncaught Python exception in the training script (a DataLoader worker died): exit 1",
    "oom": "torch.OutOfMemoryError in the backward pass, with the memory model's figures: exit 1",
    "xid": "a GPU fault (Xid): CUDA error: an illegal memory access was encountered; the watchdog aborts: -6",
    "illegal-memory-access": "a kernel's bad address (no Xid): the same CUDA error and abort as xid: -6",
    "ecc": "an uncorrectable ECC error in HBM: CUDA error, the watchdog aborts the process: -6",
    "segfault": "the process dies of SIGSEGV in native code: -11",
    "sigkill": "the host's OOM killer ends the process: -9",
    "nccl-timeout": "a collective never completes: every rank's NCCL watchdog times out and aborts: -6",
    "hang": "one rank stops responding; the others' watchdogs time out and abort (-6), it gets SIGTERM",
    "node-loss": "a node vanishes: its ranks die (-9), the other nodes' ranks see the remote peer close: -6",
    "loss-spike": "the loss jumps and the gradient norm with it, then recovers over tens of steps",
    "nan": "1-3 steps of NaN loss: fp16 skips them and lowers its loss scale; Megatron-core bf16 exits 16",
    "slow-node": "a node's GPUs throttle (heat) or its NVLink degrades: every step waits for it, x1.3-2.5",
    "nic-flap": "a node's NIC goes down: back within IB's retries, a stalled step; else IB errors, abort: -6",
}
FAILURE_KINDS = tuple(DESCRIPTIONS)
# --fake-fail's name for failures drawn at the rates of large runs (sim/failures.py's RANDOM_MIX).
RANDOM_FAILURE = "random"
RANDOM_DESCRIPTION = (
    "failures drawn at the rates of a large run (Llama 3: 419 in 54 days on 16,384 GPUs), scaled to this job"
)
MAX_FAILURES = 64  # --fake-fail scenarios in one job
