"""Where running jobs publish their state and output copies (light: the tools import it at start-up)."""

from __future__ import annotations

import contextlib
import os
import tempfile

STATE_DIR_VAR = "FAKERUN_STATE_DIR"


def state_dir() -> str:
    """$FAKERUN_STATE_DIR, or <tmp>/fakerun-<uid>."""
    return os.environ.get(STATE_DIR_VAR) or os.path.join(tempfile.gettempdir(), f"fakerun-{os.getuid()}")


def release_state_dir(directory: str) -> None:
    """Removes fakerun's default state directory once no job uses it; one the user named is theirs to keep."""
    if os.environ.get(STATE_DIR_VAR):
        # The user made it, or will look for it (a tmux demo's panes share it): even empty it stays.
        return
    with contextlib.suppress(OSError):
        os.rmdir(directory)  # fails while another job's files are in it
