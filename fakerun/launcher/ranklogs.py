"""Per-rank copies of the job's output, for `fakerun-tail`: <state_dir>/job-<launcher pid>/rank-<R>.log."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

from fakerun.launcher.outfile import OutputFile, warning
from fakerun.paths import release_state_dir

META = "meta.json"


def prune_stale(directory: str) -> None:
    """Removes what SIGKILLed launchers left in the state directory (`job-<pid>` of a pid that is gone)."""
    try:
        names = os.listdir(directory)
    except OSError:
        return
    for name in names:
        stem = name.removesuffix(".json")
        if not stem.startswith("job-") or not stem[4:].isdigit():
            continue
        try:
            os.kill(int(stem[4:]), 0)
            continue  # alive (or another user's): not ours to touch
        except ProcessLookupError:
            pass
        except OSError:
            continue
        path = os.path.join(directory, name)
        if os.path.isdir(path):
            shutil.rmtree(path, ignore_errors=True)
        else:
            with contextlib.suppress(OSError):
                os.unlink(path)


def rank_file_name(rank: int) -> str:
    """The file holding one rank's stdout and stderr, as the worker wrote them."""
    return f"rank-{rank:05d}.log"


class RankFile:
    """One rank's copy: its two streams in one file, a line left open by one ended before the other writes."""

    def __init__(self, path: str, logs: RankLogs) -> None:
        self.path = path
        self._logs = logs
        # Open from the rank's first write on, unless too many copies are open (see RankLogs.max_open).
        self.handle: OutputFile | None = None
        self._open: int | None = None  # the stream whose last write did not end a line (a bar refresh)

    def write(self, data: bytes, stream: int) -> None:
        """Appends what `stream` wrote, in one write; a failed write is the file's owner's to report."""
        if not data:
            return
        f = self._logs.acquire(self)
        if f is None or f.closed:
            return
        record = b"\n" + data if self._open is not None and self._open != stream else data
        if f.write(record):
            self._open = None if data.endswith(b"\n") else stream

    def close(self) -> None:
        """Closes the file (a later write reopens it, unless the copies have failed)."""
        f, self.handle = self.handle, None
        if f is not None:
            f.close()


class RankLogs:
    """Owns the job's tail directory: its description, one raw file per rank, and its removal at the end."""

    def __init__(self, directory: str, meta: dict[str, Any], warn: Callable[[str], None]) -> None:
        self.directory = directory
        self._files: dict[int, RankFile] = {}
        # At most this many copies hold a descriptor (None: all): the launcher's descriptors go to the
        # ranks' pipes first, and a copy not written lately is closed and reopened at its next write.
        self.max_open: int | None = None
        self._lru: OrderedDict[RankFile, None] = OrderedDict()  # open copies, least recently written first
        self._warn = warn
        self.failed = False  # a copy could not be written: warned once, every copy dropped
        self._started = time.time()
        prune_stale(os.path.dirname(directory))
        os.makedirs(directory, mode=0o700, exist_ok=True)
        try:
            self._write_meta(meta)
        except OSError:
            self._remove()  # a half-made entry would be listed by fakerun-tail until the next job prunes it
            raise

    def describe(self, meta: dict[str, Any]) -> None:
        """The job changed shape (an elastic job's nodes came or went): meta.json says what it is now."""
        if self.failed:
            return
        try:
            self._write_meta(meta)
        except OSError as exc:
            self._fail(os.path.join(self.directory, META), exc)

    def _write_meta(self, meta: dict[str, Any]) -> None:
        """Replaces meta.json whole, so that a reader never sees half of it."""
        tmp = os.path.join(self.directory, META + ".tmp")
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump({**meta, "launcher_pid": os.getpid(), "started": self._started}, f)
        os.replace(tmp, os.path.join(self.directory, META))

    def file_for(self, rank: int) -> RankFile | None:
        """The rank's file (appended across restarts, created at its first write); None once failed."""
        if self.failed:
            return None
        f = self._files.get(rank)
        if f is None:
            f = self._files[rank] = RankFile(os.path.join(self.directory, rank_file_name(rank)), self)
        return f

    def acquire(self, rank_file: RankFile) -> OutputFile | None:
        """The copy's open file: opened on demand, closing the least recently written beyond max_open."""
        f = rank_file.handle
        if f is not None:
            self._lru.move_to_end(rank_file)
            return f
        while self.max_open is not None and self._lru and len(self._lru) >= self.max_open:
            self._lru.popitem(last=False)[0].close()
        if self.failed:  # also when closing one just now reported a delayed write error
            return None
        try:
            f = rank_file.handle = OutputFile.open(rank_file.path, self._on_error, append=True)
        except OSError as exc:
            self._fail(rank_file.path, exc)
            return None
        self._lru[rank_file] = None
        return f

    def _on_error(self, f: OutputFile, exc: OSError) -> None:
        self._fail(f.path, exc)

    def _fail(self, path: str, exc: OSError) -> None:
        """One copy failed (a full /tmp): every copy stops, so fakerun-tail never shows a rank with gaps."""
        if self.failed:
            return
        self.failed = True
        self._warn(warning("the output copy", path, exc, "fakerun-tail shows no more of this job"))
        for f in self._files.values():
            f.close()

    def close(self) -> None:
        """Closes the files and removes the directory: a finished job leaves nothing behind."""
        self.failed = True  # errors while closing are moot: the files are removed next
        for f in self._files.values():
            f.close()
        self._files.clear()
        self._lru.clear()
        self._remove()

    def _remove(self) -> None:
        shutil.rmtree(self.directory, ignore_errors=True)
        release_state_dir(os.path.dirname(self.directory))
