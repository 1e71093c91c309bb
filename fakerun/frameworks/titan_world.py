"""torchtitan's checks of its parallel degrees, batch and sequence length against the world size, which its
ranks make at start-up (ParallelDims._validate, Trainer.__init__'s batch assertion, parallelize_fn's
sequence check): the job's death when they fail."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from fakerun.frameworks import titan_errors

if TYPE_CHECKING:
    from fakerun.hints import Hints

__all__ = ["world_exit"]


def _figure(hints: Hints, key: str, default: int) -> int:
    """One of the figures hints.py's _titan_figures recorded (`titan.<key>`)."""
    return int(hints.settings.get(f"titan.{key}", str(default)))


def refusal(hints: Hints, world: int) -> str | None:
    """The traceback torchtitan's ranks die with on this world size, or None when the job starts."""
    dp_replicate = _figure(hints, "parallelism.data_parallel_replicate_degree", 1)
    dp_shard = _figure(hints, "parallelism.data_parallel_shard_degree", -1)
    cp = _figure(hints, "parallelism.context_parallel_degree", 1)
    tp, pp, ep = (int(str(hints.job.get(k, 1))) for k in ("tp", "pp", "ep"))
    if any(d < 1 for d in (dp_replicate, cp, tp, pp, ep)):
        message = "AssertionError: Parallelism degree should be >= 1, except for dp_shard"
        return titan_errors.traceback_text("mesh", message, assertion="degree")
    if not (dp_shard == -1 or dp_shard >= 1):
        return titan_errors.traceback_text(
            "mesh", "AssertionError: dp_shard must -1 or >=1.", assertion="dp_shard"
        )
    if dp_shard < 0:
        dp_shard = world // (dp_replicate * cp * tp * pp)
        if dp_shard < 1:
            return titan_errors.traceback_text("mesh", "AssertionError", assertion="dp_shard_derived")
    if dp_replicate * dp_shard * cp * tp * pp != world:
        message = (
            f"AssertionError: Invalid parallel dims: dp_replicate({dp_replicate}) * dp_shard({dp_shard}) * "
            f"cp({cp}) * tp({tp}) * pp({pp}) != WORLD_SIZE({world})"
        )
        return titan_errors.traceback_text("mesh", message, assertion="product")
    sparse_region = dp_shard * cp * tp  # the experts' FSDP x EP region of the mesh
    if sparse_region % ep:
        message = (
            f"ValueError: expert_parallel_degree ({ep}) must divide dp_shard * cp * tp ({sparse_region})"
        )
        return titan_errors.traceback_text("mesh", message, assertion="ep")
    degree = dp_replicate * dp_shard  # the "batch" mesh: data loading's degree
    local = _figure(hints, "training.local_batch_size", 8)
    global_batch = _figure(hints, "training.global_batch_size", -1)
    if global_batch > 0 and global_batch % (local * degree):
        message = (
            "AssertionError: global batch size must be multiple of local batch size times data-parallel "
            f"degree ({global_batch} % ({local} * {degree}) != 0)"
        )
        return titan_errors.traceback_text("batch", message)
    return _sequence_refusal(hints, tp, cp)


def _sequence_refusal(hints: Hints, tp: int, cp: int) -> str | None:
    """parallelize_fn's first check: sequence parallelism splits each sequence over tp ranks and
    load-balanced context parallelism over 2 x cp chunks, so seq_len must divide by tp x 2 x cp."""
    model = hints.model
    seq = int(str(hints.job.get("seq_len", model.seq_len if model is not None else 2048)))
    if seq % (tp * 2 * cp) == 0:
        return None
    # The assertion's message is a triple-quoted f-string: its newlines and indentation are printed.
    message = (
        f"AssertionError: \n        Sequence length {seq} must be divisible by the product of TP degree\n"
        f"        ({tp}) and 2 * CP degree ({cp}).\n        "
    )
    family = model.family if model is not None else "llama3"
    return titan_errors.traceback_text("parallelize", message, assertion=family)


def world_exit(hints: Hints) -> Callable[[int], tuple[str, int] | None]:
    """Hints.world_exit of a torchtitan job: its ranks die (traceback, exit 1) on a world size it refuses."""

    def refused(world: int) -> tuple[str, int] | None:
        text = refusal(hints, world)
        return None if text is None else (text, 1)

    return refused
