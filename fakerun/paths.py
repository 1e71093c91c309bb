"""Where running jobs publish their state and output copies (light: the tools import it at start-up)."""

from __future__ import annotations

import os
import tempfile


def state_dir() -> str:
    """$FAKERUN_STATE_DIR, or <tmp>/fakerun-<uid>."""
    return os.environ.get("FAKERUN_STATE_DIR") or os.path.join(
        tempfile.gettempdir(), f"fakerun-{os.getuid()}"
    )
