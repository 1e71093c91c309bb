"""torchrun's log directory: `<log_dir>/<run_id>_<rand8>/attempt_N/<local_rank>/{stdout,stderr}.log`."""

from __future__ import annotations

import os
import shutil
import tempfile
from dataclasses import dataclass


@dataclass
class LogDir:
    """The base log directory of one launcher, and whether we made it (and so must remove it)."""

    base: str
    owned: bool

    @classmethod
    def create(cls, log_dir: str | None) -> LogDir:
        """Uses --log-dir, or a private temporary directory that is removed when the job ends."""
        if log_dir is None:
            return cls(tempfile.mkdtemp(prefix="torchelastic_"), owned=True)
        os.makedirs(log_dir, exist_ok=True)
        return cls(os.path.abspath(log_dir), owned=False)

    def new_run_dir(self, run_id: str) -> str:
        """Creates one node's `<run_id>_<rand8>` directory (mode 0700, as torch's mkdtemp)."""
        return tempfile.mkdtemp(prefix=f"{run_id}_", dir=self.base)

    def cleanup(self) -> None:
        """Removes the temporary base directory; a user's --log-dir is kept."""
        if self.owned:
            shutil.rmtree(self.base, ignore_errors=True)


def attempt_dir(run_dir: str, restart_count: int) -> str:
    """The directory of one attempt of one node."""
    return os.path.join(run_dir, f"attempt_{restart_count}")


def rank_dir(run_dir: str, restart_count: int, local_rank: int) -> str:
    """The directory of one local rank in one attempt."""
    return os.path.join(attempt_dir(run_dir, restart_count), str(local_rank))


def error_file(run_dir: str, restart_count: int, local_rank: int) -> str:
    """TORCHELASTIC_ERROR_FILE of one local rank in one attempt."""
    return os.path.join(rank_dir(run_dir, restart_count, local_rank), "error.json")


def make_attempt_dirs(run_dir: str, restart_count: int, nproc: int) -> None:
    """Creates `attempt_N/<local_rank>/` for every local rank, as torch does before starting workers."""
    for lr in range(nproc):
        os.makedirs(rank_dir(run_dir, restart_count, lr), exist_ok=True)
