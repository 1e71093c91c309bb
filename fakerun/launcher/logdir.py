"""torchrun's log directory: `<log_dir>/<run_id>_<rand8>/attempt_N/<local_rank>/{stdout,stderr}.log`."""

from __future__ import annotations

import contextlib
import os
import shutil
import stat
import tempfile
from collections.abc import Callable
from dataclasses import dataclass

TEMP_PREFIX = "torchelastic_"
# In a temporary base directory of ours: who made it (pid, start time, boot, pid namespace), so that a later
# job can tell a SIGKILLed launcher's leftover from a live job's directory or a real torchrun's.
OWNER_FILE = ".fakerun-owner"


class LogDirError(Exception):
    """The log directory of this run cannot be made: one line, and the launcher exits 1."""


@dataclass
class LogDir:
    """The base log directory of one launcher, and whether we made it (and so must remove it)."""

    base: str
    owned: bool

    @classmethod
    def create(cls, log_dir: str | None) -> LogDir:
        """Uses --log-dir, or a private temporary directory that is removed when the job ends."""
        prune_stale_temp_dirs(tempfile.gettempdir())
        if log_dir is None:
            base = tempfile.mkdtemp(prefix=TEMP_PREFIX)
            mark_owner(base)
            return cls(base, owned=True)
        os.makedirs(log_dir, exist_ok=True)
        return cls(os.path.abspath(log_dir), owned=False)

    def new_run_dir(self, run_id: str) -> str:
        """Creates one node's `<run_id>_<rand8>` directory (mode 0700, as torch's mkdtemp)."""
        try:
            return tempfile.mkdtemp(prefix=f"{run_id}_", dir=self.base)
        except OSError as exc:
            why = exc.strerror or str(exc)
            raise LogDirError(f"cannot create the log directory in {self.base}: {why}") from None

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


def make_attempt_dirs(
    run_dir: str,
    restart_count: int,
    nproc: int,
    on_error: Callable[[str, OSError], None] | None = None,
) -> None:
    """Creates `attempt_N/<local_rank>/` for every local rank, as torch does before starting workers.

    A directory that cannot be made (the run directory replaced by a file, a full disk) goes to `on_error`
    when given, and the attempt starts without it; without `on_error` the OSError is raised.
    """
    for lr in range(nproc):
        path = rank_dir(run_dir, restart_count, lr)
        try:
            os.makedirs(path, exist_ok=True)
        except OSError as exc:
            if on_error is None:
                raise
            on_error(path, exc)


def _proc_start(pid: int) -> str | None:
    """When process `pid` started (clock ticks since boot, /proc/<pid>/stat field 22), None if it is gone."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            raw = f.read()
    except OSError:
        return None
    # The command name (field 2) may hold spaces and parentheses: count fields after its last `)`.
    fields = raw[raw.rfind(b")") + 2 :].split()
    return fields[19].decode() if len(fields) > 19 else None


def _read_text(path: str) -> str | None:
    try:
        with open(path, encoding="ascii") as f:
            return f.read().strip()
    except (OSError, ValueError):
        return None


def _this_launcher() -> list[str] | None:
    """This process as an owner marker records it: pid, start time, boot id, pid namespace; None off Linux."""
    start = _proc_start(os.getpid())
    boot = _read_text("/proc/sys/kernel/random/boot_id")
    try:
        namespace = os.readlink("/proc/self/ns/pid")
    except OSError:
        return None
    if start is None or boot is None:
        return None
    return [str(os.getpid()), start, boot, namespace]


def mark_owner(directory: str) -> None:
    """Records this launcher as the owner of a temporary log directory (atomically; skipped off Linux)."""
    me = _this_launcher()
    if me is None:
        return
    tmp = os.path.join(directory, OWNER_FILE + ".tmp")
    with contextlib.suppress(OSError):
        with open(tmp, "w", encoding="ascii") as f:
            f.write(" ".join(me) + "\n")
        os.replace(tmp, os.path.join(directory, OWNER_FILE))


def owner_gone(marker: str, me: list[str]) -> bool:
    """Whether the launcher an owner marker names is certainly dead (never True when in doubt)."""
    fields = marker.split()
    if len(fields) != 4 or not fields[0].isdigit():
        return False
    pid, start, boot, namespace = fields
    if boot != me[2]:
        return True  # made before a reboot: every process of then is gone
    if namespace != me[3]:
        return False  # another pid namespace's pid means nothing here
    return _proc_start(int(pid)) != start  # gone, or the pid now belongs to a later process


def prune_stale_temp_dirs(tmp: str) -> None:
    """Removes the `torchelastic_*` directories of our launchers that were SIGKILLed (their owner is dead).

    Only directories of this user carrying our owner marker are considered: a real torchrun's (which
    never removes them) and those of live jobs are left alone.
    """
    me = _this_launcher()
    if me is None:
        return
    try:
        names = os.listdir(tmp)
    except OSError:
        return
    uid = os.getuid()
    for name in names:
        if not name.startswith(TEMP_PREFIX):
            continue
        path = os.path.join(tmp, name)
        try:
            st = os.lstat(path)
        except OSError:
            continue
        if not stat.S_ISDIR(st.st_mode) or st.st_uid != uid:
            continue
        marker = _read_marker(os.path.join(path, OWNER_FILE))
        if marker is not None and owner_gone(marker, me):
            shutil.rmtree(path, ignore_errors=True)


def _read_marker(path: str) -> str | None:
    """An owner marker's text; None unless it is a small regular file (never follows a symlink)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except OSError:
        return None
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return None
        return os.read(fd, 256).decode("ascii", "replace")
    except OSError:
        return None
    finally:
        os.close(fd)
