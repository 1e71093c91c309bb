"""Output beside every dialect: torch's and NCCL's own lines, and fakerun's GPU grid where it is shown."""

from __future__ import annotations

from collections.abc import Sequence

from fakerun.dialects.base import Line, Output, Seat, c10_prefix
from fakerun.dialects.events import BarrierPassed, Event, GpuGrid, NcclInitialized
from fakerun.dialects.fakerun import StructuredLog
from fakerun.render import nccl
from fakerun.render.grid import grid_records, render_grid

# A job of more GPUs than this shows its first nodes and one line of ranges for the others: the grid stays
# a few lines long, whatever the job's size (the unhealthy line still names any GPU in trouble).
GRID_DETAIL_GPUS = 16


def barrier_warning(rank: int, device_index: int, at: float) -> str:
    """torch's C++ warning (c10 format, nanosecond time, `[rankN]:` prefix) for a device-less barrier."""
    return (
        f"{c10_prefix(rank, 'W', 'ProcessGroupNCCL.cpp:4561', at)} [PG ID 0 PG GUID 0 Rank {rank}]  "
        f"using GPU {device_index} to perform barrier as devices used by this process are currently unknown. "
        "This can potentially cause a hang if this rank to GPU mapping is incorrect. Specify device_ids in "
        "barrier() to force use of a particular device, or call init_process_group() with a device_id."
    )


def _machine_log(seat: Seat) -> StructuredLog | None:
    """The rank's structlog logger when its log format is for machines (json, logfmt), else None."""
    if seat.log_format == "console":
        return None
    return StructuredLog(seat.log_format, seat.rank, color=False, level=seat.log_level)


class TorchLines:
    """What torch and NCCL print on every rank whatever the training framework is."""

    def __init__(self, seat: Seat) -> None:
        self.seat = seat
        self._nccl: tuple[tuple[int, int, int], dict[str, list[str]]] | None = None
        self.log = _machine_log(seat)

    def render(self, event: Event, at: float) -> Sequence[Output]:
        """torch's barrier warning on stderr; NCCL's INFO lines under NCCL_DEBUG=INFO."""
        seat = self.seat
        if isinstance(event, BarrierPassed):
            # Every rank of a job that calls barrier() without device_ids prints it: that barrier is the
            # first collective, which sets NCCL's communicator up.
            return [Line(barrier_warning(seat.rank, event.device_index, at), "stderr")]
        if isinstance(event, NcclInitialized) and seat.nccl_debug:
            parts = self._nccl_parts(event)
            names = nccl.INIT_PARTS if event.part is None else (event.part,)
            texts = [text for name in names for text in parts[name]]
            if self.log is not None:
                # json and logfmt promise one event per stdout line: NCCL's own lines ride in `nccl` events.
                lines = (self.log.line("info", "nccl", at, line=text) for text in texts)
                return [line for line in lines if line is not None]
            return [Line(text) for text in texts]
        return ()

    def _nccl_parts(self, event: NcclInitialized) -> dict[str, list[str]]:
        # Drawn once per communicator: its parts print at different moments.
        key = (event.job.seed, event.pid, event.tid)
        if self._nccl is None or self._nccl[0] != key:
            job = event.job
            topo = nccl.nccl_topo_for(
                job.cluster,
                job.nnodes,
                job.nproc_per_node,
                self.seat.hosts,
                collnet_enable=self.seat.nccl_collnet_enable,
            )
            parts = nccl.nccl_init_parts(topo, self.seat.rank, pid=event.pid, tid=event.tid, seed=job.seed)
            self._nccl = (key, parts)
        return self._nccl[1]

    def wants(self, kind: type[Event]) -> bool:
        """The barrier warning always; NCCL's lines only when NCCL_DEBUG asks for them."""
        return kind is BarrierPassed or (kind is NcclInitialized and self.seat.nccl_debug)


class GridLines:
    """fakerun's GPU grid (a status view of every GPU, not any framework's output), where it is shown."""

    def __init__(self, seat: Seat) -> None:
        self.seat = seat
        # json and logfmt: the grid as fakerun's own events, one line each, its figures as numbers.
        self.log = _machine_log(seat)

    def render(self, event: Event, at: float) -> Sequence[Output]:
        """The grid's lines for a GpuGrid event, when this rank shows the grid."""
        if not (isinstance(event, GpuGrid) and self.seat.grid):
            return ()
        seat = self.seat
        if self.log is not None:
            records = grid_records(event.gpus, step=event.step, stragglers=event.stragglers)
            events = (self.log.line("info", name, at, **fields) for name, fields in records)
            return [line for line in events if line is not None]
        lines = render_grid(
            event.gpus,
            step=event.step,
            width=seat.width,
            color=seat.color,
            stragglers=event.stragglers,
            detail_gpus=GRID_DETAIL_GPUS,
        )
        return [Line(text) for text in lines]

    def wants(self, kind: type[Event]) -> bool:
        """The grid's events, when it is shown: on global rank 0, the one the coordinator sends its rows."""
        return kind is GpuGrid and self.seat.grid and self.seat.rank == 0
