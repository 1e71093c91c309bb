"""The worker's only writer: each event through torch's lines, the dialect and the grid, to stdout/stderr."""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Callable, Sequence
from typing import TextIO

from fakerun.dialects import make
from fakerun.dialects.base import BarClose, BarDraw, Line, LogWrite, Output, Renderer, Seat
from fakerun.dialects.common import GridLines, TorchLines
from fakerun.dialects.events import Event
from fakerun.worker.tensorboard import TensorBoard


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
        self.bar_open = False
        self._nested: dict[int, int] = {}  # position -> columns of the nested bar last drawn there

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
        """Whether anything is printed on this rank for events of `kind`."""
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
            elif isinstance(item, BarDraw) and item.position:
                # tqdm's moveto(position), the refresh, moveto(-position): one write, whole in the pipe.
                out.write(_nested(item.position, item.text))
                self._nested[item.position] = len(item.text)
            elif isinstance(item, BarClose) and item.position:
                # leave=False: tqdm blanks the nested bar's line with as many spaces as it held.
                if item.position in self._nested:
                    out.write(_nested(item.position, " " * self._nested.pop(item.position)))
            elif isinstance(item, BarDraw):
                out.write("\r" + item.text)
                self.bar_open = True
            elif isinstance(item, BarClose):
                # tqdm.close(): the last state, then the newline that ends the bar (nothing if none is open).
                if item.text is not None:
                    out.write("\r" + item.text)
                if self.bar_open or item.text is not None:
                    out.write("\n")
                self.bar_open = False
            out.flush()
        self._flush_stdout(pending)

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


def _nested(position: int, text: str) -> str:
    """A nested bar's refresh as tqdm writes it: down `position` lines, `\\r` and the text, back up."""
    return "\n" * position + "\r" + text + "\x1b[A" * position
