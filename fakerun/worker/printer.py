"""The worker's only writer: each event through torch's lines, the dialect and the grid, to stdout/stderr."""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TextIO

from fakerun.dialects import make
from fakerun.dialects.base import BarClose, BarDraw, Line, LogWrite, Output, Renderer, Seat
from fakerun.dialects.common import GridLines, TorchLines
from fakerun.dialects.events import Event
from fakerun.render.bar import MININTERVAL
from fakerun.worker.tensorboard import TensorBoard


@dataclass
class _BarState:
    """What tqdm keeps of one open bar: its status printer's last length, its last refresh, and its state
    now (close() shows it again, or for the first time when mininterval held its update back)."""

    last_len: int = 0
    drawn_at: float | None = None  # the job's time of the last refresh; None: none yet (the first is drawn)
    text: str | None = None


class Printer:
    """Renders a rank's events and writes them: whole lines per stream, a tqdm-style bar on the dialect's."""

    def __init__(
        self,
        layers: Sequence[Renderer],
        clock: Callable[[], float],
        stdout: TextIO | None = None,
        stderr: TextIO | None = None,
        files: bool = True,
        tensorboard: TensorBoard | None = None,
    ) -> None:
        self.layers = tuple(layers)
        self.tensorboard = tensorboard  # the rank's TensorBoard writer, fed every event after its lines
        self.files = files  # the script's own log files are written (not with --fake-no-files)
        self.clock = clock
        # Looked up when writing unless given, so that a test's redirection of sys.stdout is honoured.
        self._stdout = stdout
        self._stderr = stderr
        self._bars: dict[int, _BarState] = {}  # position -> its open bar

    @classmethod
    def for_rank(
        cls,
        dialect: str,
        seat: Seat,
        clock: Callable[[], float],
        *,
        files: bool = True,
        tensorboard: str | None = None,
    ) -> Printer:
        """torch's own lines, then the dialect's, then the grid; the framework's TensorBoard files (or, given,
        --fake-tensorboard's)."""
        host = seat.hosts[min(seat.rank // seat.nproc_per_node, len(seat.hosts) - 1)] if seat.hosts else ""
        board = TensorBoard(dialect, seat.rank, host, tensorboard, files=files)
        layers = (TorchLines(seat), make(dialect, seat), GridLines(seat))
        return cls(layers, clock, files=files, tensorboard=board)

    def wants(self, kind: type[Event]) -> bool:
        """Whether anything is printed (or written to TensorBoard) on this rank for events of `kind`."""
        if self.tensorboard is not None and self.tensorboard.wants(kind):
            return True
        return any(layer.wants(kind) for layer in self.layers)

    def emit(self, event: Event) -> None:
        """Prints `event` as it happens now on the job's clock."""
        at = self.clock()
        out: list[Output] = []
        for layer in self.layers:
            out.extend(layer.render(event, at))
        if out:
            self.write(out)
        if self.tensorboard is not None:
            self.tensorboard.record(event, at)

    def write(self, outputs: Sequence[Output]) -> None:
        """Writes outputs in order, stdout lines of a run in one write, each stream flushed."""
        pending: list[str] = []
        for item in outputs:
            if isinstance(item, LogWrite):
                self._log(item)
                continue
            if isinstance(item, Line) and item.stream == "stdout":
                pending.append(item.text + "\n")
                continue
            self._flush_stdout(pending)
            pending = []
            out = (self._stdout or sys.stdout) if item.stream == "stdout" else (self._stderr or sys.stderr)
            if isinstance(item, Line):
                out.write(item.text + "\n")
            elif isinstance(item, BarDraw):
                self._draw(out, item)
            elif isinstance(item, BarClose) and item.position:
                # leave=False: tqdm blanks the nested bar's line (its status printer writing '').
                state = self._bars.pop(item.position, None)
                if state is not None:
                    out.write(_at(item.position, self._status(state, "")))
            elif isinstance(item, BarClose):
                # tqdm.close(): the final state shown again, then the newline that ends the bar (nothing if
                # none is open).
                state = self._bars.pop(0, None)
                text = item.text if item.text is not None else state.text if state is not None else None
                if text is not None:
                    out.write(self._status(state or _BarState(), text))
                if state is not None or item.text is not None:
                    out.write("\n")
            out.flush()
        self._flush_stdout(pending)

    @property
    def bar_open(self) -> bool:
        """Whether the bar at position 0 is drawn and not closed."""
        return 0 in self._bars

    def _draw(self, out: TextIO, item: BarDraw) -> None:
        """A refresh as tqdm writes it, unless it is an update() within mininterval of the bar's last refresh
        (on the job's clock, which the bar's elapsed times count): then it waits for the next refresh."""
        state = self._bars.setdefault(item.position, _BarState())
        if not item.text.strip(" \r"):
            # tqdm's clear() (before tqdm.write) or a leave=False close: blanks; nothing is padded after them.
            out.write(_at(item.position, "\r" + item.text))
            state.last_len, state.text = 0, None
            return
        now = self.clock()
        state.text = item.text
        if not item.forced and state.drawn_at is not None and now - state.drawn_at < MININTERVAL:
            return
        state.drawn_at = now
        # tqdm's moveto(position), the refresh, moveto(-position): one write, whole in the pipe.
        out.write(_at(item.position, self._status(state, item.text)))

    @staticmethod
    def _status(state: _BarState, text: str) -> str:
        """tqdm's status_printer: `\\r`, the text, and spaces over what a longer last refresh left."""
        # Imported here, as in render/bar.py: tqdm's import is paid by the rank that draws a bar only.
        from tqdm.utils import disp_len

        width = disp_len(text)
        padding = " " * max(state.last_len - width, 0)
        state.last_len = width
        return "\r" + text + padding

    def _log(self, item: LogWrite) -> None:
        """Writes into the script's log file (opened and closed for each write, as llm.c's script does); a
        file that cannot be written is left alone: the log is a courtesy to what reads it, like saves."""
        if not self.files:
            return
        with contextlib.suppress(OSError):
            parent = os.path.dirname(item.path)
            if parent:
                os.makedirs(parent, exist_ok=True)
            with open(item.path, "w" if item.fresh else "a", encoding="utf-8") as f:
                f.write(item.text)

    def _flush_stdout(self, pending: list[str]) -> None:
        if pending:
            out = self._stdout or sys.stdout
            out.write("".join(pending))
            out.flush()


def _at(position: int, status: str) -> str:
    """A bar's refresh at `position` as tqdm writes it: down `position` lines, the status, back up."""
    return "\n" * position + status + "\x1b[A" * position
