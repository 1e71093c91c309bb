"""What a framework leaves on storage when it saves or exports: pure descriptions the worker writes."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

from fakerun.sim import checkpoint, safetensors

if TYPE_CHECKING:
    from fakerun.dialects.events import TrainingStopped
    from fakerun.sim.run import RunPlan


@dataclass(frozen=True)
class Artifact:
    """One file as the framework writes it: its leading bytes, then a hole up to its size (sparse)."""

    path: str  # relative to the rank's working directory, or absolute
    size: int  # bytes the file reports (ls -l, stat); at least len(head)
    head: bytes = b""  # what a reader of its metadata finds (JSON text, a safetensors header...)

    @classmethod
    def text(cls, path: str, text: str) -> Artifact:
        """A small file written whole (a tracker file, a JSON state)."""
        data = text.encode()
        return cls(path, len(data), data)


@dataclass(frozen=True)
class Removal:
    """A file or directory the framework deletes after a save (HF's save_total_limit, torchtitan's
    keep_latest_k: the oldest checkpoints beyond the limit)."""

    path: str


@dataclass(frozen=True)
class SaveRequest:
    """One rank's part of a save: which job, which step, what kind of save, and the script's settings."""

    run: RunPlan
    settings: Mapping[str, str]  # hints.Hints.settings: where the script's arguments say it saves
    step: int
    rank: int
    world_size: int
    # "checkpoint": a training checkpoint after `step` (periodic or final); "export": the model the script
    # writes once training is over (HF's save_model, fakerun's hf_export/).
    kind: Literal["checkpoint", "export"]
    # The step loop's end as the rank measured it (its clock's runtime: HF's train metrics), for an export.
    stopped: TrainingStopped | None = None


# A framework's layout: this rank's files of a save, and what it then deletes, in the framework's order.
Layout = Callable[[SaveRequest], Sequence[Artifact | Removal]]


def distcp(directory: str, request: SaveRequest) -> list[Artifact]:
    """A torch.distributed.checkpoint save: this rank's `__R_0.distcp` and, from rank 0, `.metadata` last."""
    job = request.run.job
    files = [Artifact(f"{directory}/__{request.rank}_0.distcp", checkpoint.rank_checkpoint_bytes(job))]
    if request.rank == 0:
        files += [Artifact(f"{directory}/{f.name}", f.nbytes) for f in checkpoint.distcp_files(job)[-1:]]
    return files


def safetensors_files(directory: str, request: SaveRequest, dtype: str = "BF16") -> list[Artifact]:
    """save_pretrained's weights from rank 0: each shard with its real header, and the index when sharded;
    `dtype` is the weights' (safetensors' name: BF16, F32)."""
    if request.rank != 0:
        return []
    tensors = checkpoint.hf_tensor_shapes(request.run.job.model)
    split = safetensors.shards(tensors, checkpoint.HF_SHARD_BYTES, dtype)
    files = [
        Artifact(
            f"{directory}/{s.name}",
            safetensors.file_bytes(s.tensors, dtype),
            safetensors.header(s.tensors, dtype),
        )
        for s in split
    ]
    if len(split) > 1:
        index = safetensors.index(split, dtype)
        files.append(Artifact.text(f"{directory}/model.safetensors.index.json", index))
    return files
