"""The single writer: routes worker pipes to the console, prefixes, log files and duplicate filters."""

from __future__ import annotations

import contextlib
import os
import string
from dataclasses import dataclass, field
from typing import BinaryIO

from fakerun.launcher.plan import LaunchPlan

STDOUT, STDERR = 1, 2


@dataclass(frozen=True)
class RouteSpec:
    """Where one stream (stdout or stderr) of one local rank goes, per torch's LogsSpecs.reify."""

    to_console: bool
    prefix: str
    to_file: bool
    duplicate: bool


def route_spec(plan: LaunchPlan, local_rank: int, rank: int, stream: int) -> RouteSpec:
    """Applies --redirects, --tee, --local-ranks-filter and the prefix template to one stream."""
    tee = bool(plan.tee.get(local_rank, 0) & stream)
    redirected = tee or bool(plan.redirects.get(local_rank, 0) & stream)
    shown = plan.local_ranks_filter is None or local_rank in plan.local_ranks_filter
    filters = plan.args.duplicate_stdout_filters if stream == STDOUT else plan.args.duplicate_stderr_filters
    prefix = ""
    if tee:
        template = os.environ.get("TORCHELASTIC_LOG_LINE_PREFIX_TEMPLATE")
        if template:
            prefix = string.Template(template).safe_substitute(
                role_name=plan.args.role, rank=rank, local_rank=local_rank
            )
        else:
            prefix = f"[{plan.args.role}{local_rank}]:"
    return RouteSpec(
        to_console=shown and (tee or not redirected),
        prefix=prefix,
        to_file=redirected,
        duplicate=tee and shown and bool(filters),
    )


class Sink:
    """One output stream of the launcher (its stdout or stderr), written in whole lines."""

    def __init__(self, stream: BinaryIO) -> None:
        self._stream = stream
        self._pending: list[bytes] = []
        self.broken = False

    def write(self, data: bytes) -> None:
        """Queues bytes; they reach the terminal at the next flush."""
        if not self.broken:
            self._pending.append(data)

    def flush(self) -> None:
        """Writes what is queued in one go."""
        if not self._pending or self.broken:
            self._pending.clear()
            return
        data = b"".join(self._pending)
        self._pending.clear()
        try:
            self._stream.write(data)
            self._stream.flush()
        except BrokenPipeError:
            # The reader went away (`fakerun ... | head`): stop writing, keep the job going.
            self.broken = True
        except OSError:
            self.broken = True


@dataclass
class Route:
    """One worker stream being pumped: its spec, its line remainder and its open files."""

    spec: RouteSpec
    sink: Sink
    log_file: BinaryIO | None
    filtered_file: BinaryIO | None
    filters: list[str]
    remainder: bytes = b""
    prefix_bytes: bytes = field(init=False)

    def __post_init__(self) -> None:
        self.prefix_bytes = self.spec.prefix.encode()

    def feed(self, data: bytes) -> None:
        """Takes raw bytes from the worker: raw into the log file, whole lines to the console."""
        if self.log_file is not None:
            self.log_file.write(data)
        if not self.spec.to_console:
            return
        buf = self.remainder + data
        cut = buf.rfind(b"\n") + 1
        self.remainder = buf[cut:]
        if cut:
            self._emit(buf[:cut].splitlines(keepends=True))

    def close(self) -> None:
        """The worker closed the stream: a partial last line goes out as it is, then files close."""
        if self.remainder:
            self._emit([self.remainder])
            self.remainder = b""
        if self.log_file is not None:
            self.log_file.close()
            self.log_file = None

    def _emit(self, lines: list[bytes]) -> None:
        if self.prefix_bytes:
            lines = [self.prefix_bytes + line for line in lines]
        self.sink.write(b"".join(lines))
        if self.filtered_file is not None:
            for line in lines:
                text = line.decode("utf-8", "replace")
                if any(f in text for f in self.filters):
                    self.filtered_file.write(line)


class Console:
    """Owns the launcher's stdout and stderr; every byte the job shows goes through here."""

    def __init__(self, stdout: BinaryIO, stderr: BinaryIO) -> None:
        self.out = Sink(stdout)
        self.err = Sink(stderr)
        self._filtered: dict[str, BinaryIO] = {}

    def sink(self, stream: int) -> Sink:
        """The launcher sink for a worker stream."""
        return self.out if stream == STDOUT else self.err

    def launcher_lines(self, text: str) -> None:
        """Writes the launcher's own messages (stderr) and flushes at once."""
        self.err.write(text.encode())
        self.flush()

    def open_route(
        self, plan: LaunchPlan, local_rank: int, rank: int, stream: int, attempt_path: str
    ) -> Route:
        """Opens the files one worker stream needs in this attempt and returns its route."""
        spec = route_spec(plan, local_rank, rank, stream)
        name = "stdout" if stream == STDOUT else "stderr"
        log_file = None
        if spec.to_file:
            # Unbuffered: the file holds what the worker wrote even if the launcher is killed.
            log_file = open(os.path.join(attempt_path, str(local_rank), f"{name}.log"), "wb", buffering=0)  # noqa: SIM115
        filters = (
            plan.args.duplicate_stdout_filters if stream == STDOUT else plan.args.duplicate_stderr_filters
        )
        filtered = self.filtered_file(attempt_path, name) if filters else None
        return Route(spec, self.sink(stream), log_file, filtered if spec.duplicate else None, filters)

    def filtered_file(self, attempt_path: str, name: str) -> BinaryIO:
        """The attempt's `filtered_<stream>.log`, created once per attempt even if nothing matches."""
        path = os.path.join(attempt_path, f"filtered_{name}.log")
        if path not in self._filtered:
            self._filtered[path] = open(path, "wb")  # noqa: SIM115
        return self._filtered[path]

    def flush(self) -> None:
        """Pushes queued output of both streams to the terminal."""
        self.out.flush()
        self.err.flush()
        for f in self._filtered.values():
            with contextlib.suppress(OSError):
                f.flush()

    def close_files(self) -> None:
        """Closes the duplicate-filter files."""
        for f in self._filtered.values():
            with contextlib.suppress(OSError):
                f.close()
        self._filtered.clear()
