"""Writes the files a save reports (dialects/files.py): their heads, then holes up to their sizes."""

from __future__ import annotations

import os
from collections.abc import Sequence

from fakerun.dialects.files import Artifact


def write(files: Sequence[Artifact]) -> str | None:
    """Creates `files` (paths relative to the working directory) as sparse files of their sizes; None, or
    the first failure as one line (the save goes on in the log: the files are a courtesy to what reads
    them, not part of the simulated job)."""
    for f in files:
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
