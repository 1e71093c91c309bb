"""`python -m torch.distributed.run` and `python -m torch.distributed.launch` on a machine without torch.

The shims directory holds `pylib/torch/`, a stand-in package found through PYTHONPATH. Its `__init__`
never hides a real torch: if any other `torch` package is on sys.path (before or after pylib, installed
before or after the shims), that one is loaded in its place; without one, only those two `-m` commands
get past it (anything else importing torch gets ModuleNotFoundError, as without the shims). The two
modules then run fakerun's launcher here, with pylib taken back out of PYTHONPATH and sys.path, so the
workers see the environment they would see without the shims.
"""

from __future__ import annotations

import linecache
import os
import sys
import warnings
from collections.abc import Sequence

__all__ = ["DOORS", "PYLIB", "exec_door", "module_path", "pylib_files", "run_door"]

PYLIB = "pylib"
# The modules `python -m` reaches through the stand-in package.
DOORS = ("run", "launch")

# torch 2.13's torch/distributed/launch.py: `main()` under `if __name__ == "__main__":` is line 207, where
# typing_extensions' deprecated() wrapper points its FutureWarning (recorded: launch.py:207).
LAUNCH_MAIN_LINE = 207
LAUNCH_DEPRECATION = (
    "The module torch.distributed.launch is deprecated\n"
    "and will be removed in future. Use torchrun.\n"
    "Note that --use-env is set by default in torchrun.\n"
    "If your script expects `--local-rank` argument to be set, please\n"
    "change it to read from `os.environ['LOCAL_RANK']` instead. See \n"
    "https://pytorch.org/docs/stable/distributed.html#launch-utility for \n"
    "further instructions\n"
)

_INIT = '''"""fakerun's stand-in for torch: only `python -m torch.distributed.run|launch` get past it, and
only when no real torch is on sys.path (a real one, installed before or after, is loaded in its place)."""

{marker}
import os as _os
import sys as _sys

_PYLIB = _os.path.dirname(_os.path.dirname(_os.path.abspath(__file__)))
_PYTHON = {python!r}
_MARKER = {marker!r}
_DOORS = ("torch.distributed.run", "torch.distributed.launch")


def _is_stub(path):
    try:
        with open(path, "rb") as f:
            return _MARKER.encode() in f.read(4096)
    except OSError:
        return False


def _real_torch():
    """The spec of another torch on sys.path, skipping this directory and any other fakerun stand-in."""
    from importlib.machinery import PathFinder

    for entry in _sys.path:
        if _os.path.abspath(entry or _os.curdir) == _PYLIB:
            continue
        spec = PathFinder.find_spec(__name__, [entry])
        if spec is not None and spec.loader is not None and spec.origin and not _is_stub(spec.origin):
            return spec
    return None


def _launching():
    """Whether runpy is looking for the main module of `python -m torch.distributed.run|launch`."""
    if _sys.argv[:1] != ["-m"]:
        return False
    argv = list(getattr(_sys, "orig_argv", []))
    for before, arg in zip(argv, argv[1:]):
        if arg in _DOORS and before.startswith("-") and before.endswith("m") and not before.startswith("--"):
            return True
        if arg.startswith("-m") and arg[2:] in _DOORS:
            return True
    return False


def _fakerun(door):
    """Runs fakerun's launcher as `python -m torch.distributed.<door>` (in the interpreter that installed
    the shims when this one has no fakerun)."""
    try:
        from fakerun.tools.pydoors import run_door
    except ImportError:
        code = "import sys; from fakerun.tools.pydoors import exec_door; sys.exit(exec_door())"
        _os.execv(_PYTHON, [_PYTHON, "-c", code, door, _PYLIB, *_sys.argv])
    return run_door(door, _PYLIB, _sys.argv)


_spec = _real_torch()
if _spec is not None:
    import importlib.util as _util

    _module = _util.module_from_spec(_spec)
    _sys.modules[__name__] = _module  # the import statement returns what sys.modules holds after this
    _spec.loader.exec_module(_module)
elif not _launching():
    raise ModuleNotFoundError(f"No module named {{__name__!r}}", name=__name__)
'''

_PACKAGE = '''"""fakerun's stand-in for torch.distributed (see torch/__init__.py)."""

{marker}
'''

_DOOR = '''"""`python -m torch.distributed.{door}` answered by fakerun's launcher (see torch/__init__.py)."""

{marker}
import sys

if __name__ == "__main__":
    from torch import _fakerun

    sys.exit(_fakerun({door!r}))
'''


def pylib_files(python: str, marker: str) -> dict[str, str]:
    """The stand-in package's files (path under pylib/ -> text), running fakerun with `python` if need be."""
    files = {
        "torch/__init__.py": _INIT.format(marker=marker, python=python),
        "torch/distributed/__init__.py": _PACKAGE.format(marker=marker),
    }
    for door in DOORS:
        files[f"torch/distributed/{door}.py"] = _DOOR.format(marker=marker, door=door)
    return files


def _forget_pylib(pylib: str) -> None:
    """Takes the stand-in back out of PYTHONPATH, sys.path and sys.modules: the workers, and a script run
    in this process (`--run-path`), see no torch, as on this machine without the shims."""
    here = os.path.abspath(pylib)
    kept = [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p and os.path.abspath(p) != here]
    if kept:
        os.environ["PYTHONPATH"] = os.pathsep.join(kept)
    else:
        os.environ.pop("PYTHONPATH", None)
    sys.path[:] = [p for p in sys.path if os.path.abspath(p or os.curdir) != here]
    for name in [m for m in sys.modules if m == "torch" or m.startswith("torch.")]:
        del sys.modules[name]


def module_path(site_relative: str, search: Sequence[str], site_packages: str) -> str:
    """A torch source file as torch's log formatter names it (make_module_path_relative): resolved, then
    relative to the first sys.path entry holding it. Under `python -m` the first entry is the working
    directory, so a venv below it shows as `venv/lib/python3.11/site-packages/torch/...`."""
    from pathlib import Path  # as torch's; the module doors alone need it (3 ms of a launcher's start)

    path = Path(site_packages, site_relative).resolve()
    for entry in search:
        try:
            return str(path.relative_to(entry))
        except ValueError:
            continue
    return str(path)


def launch_deprecation(launch_py: str) -> None:
    """launch.py's FutureWarning, through `warnings` (so -W and PYTHONWARNINGS filters apply), pointing at
    its `main()` line as typing_extensions' deprecated() makes it."""
    lines = ["\n"] * (LAUNCH_MAIN_LINE - 1) + ["    main()\n"]
    # An entry without mtime is kept by linecache.checkcache, so the warning can show the source line.
    linecache.cache[launch_py] = (sum(map(len, lines)), None, lines, launch_py)
    warnings.warn_explicit(
        LAUNCH_DEPRECATION, FutureWarning, launch_py, LAUNCH_MAIN_LINE, module="__main__", registry={}
    )


def run_door(door: str, pylib: str, argv: Sequence[str]) -> int:
    """`python -m torch.distributed.<door> ARGS` (argv as that module sees it) on fakerun's launcher."""
    from fakerun.launcher.messages import site_packages
    from fakerun.main import main

    _forget_pylib(pylib)
    argv0 = os.path.join(site_packages(), "torch", "distributed", f"{door}.py")
    sys.argv = [argv0, *argv[1:]]
    if door == "launch":
        launch_deprecation(argv0)
    return main(list(sys.argv), door=door)


def exec_door() -> int:
    """The `-c` entry the stand-in execs when its own interpreter has no fakerun: DOOR PYLIB ARGV..."""
    door, pylib, *argv = sys.argv[1:]
    if sys.path[:1] == [""]:
        sys.path[0] = os.getcwd()  # as under `python -m`, which the stand-in was run with
    return run_door(door, pylib, argv)
