"""Per-rank copies of the job's output, for `fakerun-tail`: <state_dir>/job-<launcher pid>/rank-<R>.log."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import time
from typing import Any, BinaryIO

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

    def __init__(self, f: BinaryIO) -> None:
        self._f = f
        self._open: int | None = None  # the stream whose last write did not end a line (a bar refresh)

    def write(self, data: bytes, stream: int) -> None:
        """Appends what `stream` wrote; OSError is the caller's (a full /tmp)."""
        if not data:
            return
        if self._open is not None and self._open != stream:
            self._f.write(b"\n")
        self._f.write(data)
        self._open = None if data.endswith(b"\n") else stream

    def close(self) -> None:
        """Closes the file."""
        self._f.close()


class RankLogs:
    """Owns the job's tail directory: its description, one raw file per rank, and its removal at the end."""

    def __init__(self, directory: str, meta: dict[str, Any]) -> None:
        self.directory = directory
        self._files: dict[int, RankFile] = {}
        prune_stale(os.path.dirname(directory))
        os.makedirs(directory, mode=0o700, exist_ok=True)
        tmp = os.path.join(directory, META + ".tmp")
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump({**meta, "launcher_pid": os.getpid(), "started": time.time()}, f)
        os.replace(tmp, os.path.join(directory, META))

    def file_for(self, rank: int) -> RankFile:
        """The rank's file (appended across restarts), opened on first use, unbuffered."""
        f = self._files.get(rank)
        if f is None:
            path = os.path.join(self.directory, rank_file_name(rank))
            f = self._files[rank] = RankFile(open(path, "ab", buffering=0))  # noqa: SIM115
        return f

    def close(self) -> None:
        """Closes the files and removes the directory: a finished job leaves nothing behind."""
        for f in self._files.values():
            with contextlib.suppress(OSError):
                f.close()
        self._files.clear()
        shutil.rmtree(self.directory, ignore_errors=True)
        with contextlib.suppress(OSError):
            os.rmdir(os.path.dirname(self.directory))  # the shared state dir, when no other job uses it
