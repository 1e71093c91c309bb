"""Writes the files a save reports (dialects/files.py): their heads, then holes up to their sizes."""

from __future__ import annotations

import contextlib
import os
import shutil
from collections.abc import Sequence

from fakerun.dialects.files import Artifact, Removal


def write(files: Sequence[Artifact | Removal]) -> str | None:
    """Creates `files` (paths relative to the working directory) as sparse files of their sizes and deletes
    the removals; None, or the first failure as one line (the save goes on in the log: the files are a
    courtesy to what reads them, not part of the simulated job)."""
    for f in files:
        if isinstance(f, Removal):
            _remove(f.path)
            continue
        try:
            parent = os.path.dirname(f.path)
            if parent:
                os.makedirs(parent, exist_ok=True)
            with open(f.path, "wb") as out:
                out.write(f.head)
                # Past the head the file is a hole: it reports its size and costs no disk.
                out.truncate(max(f.size, len(f.head)))
        except OSError as exc:
            return f"cannot write {f.path}: {exc.strerror or exc}"
    return None


def _remove(path: str) -> None:
    """Deletes a checkpoint the framework rotates out, as shutil.rmtree does in it; never the working
    directory or the root, and nothing when it is already gone (another rank, or the user, removed it)."""
    if os.path.realpath(path) in (os.path.realpath(os.curdir), os.path.realpath(os.sep)):
        return
    if os.path.isdir(path) and not os.path.islink(path):
        shutil.rmtree(path, ignore_errors=True)
    else:
        with contextlib.suppress(OSError):
            os.unlink(path)
