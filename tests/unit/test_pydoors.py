"""`python -m torch.distributed.run|launch`: torch's log-source paths and the launcher's traceback."""

from __future__ import annotations

from pathlib import Path

from fakerun.launcher.report import launcher_traceback
from fakerun.tools.pydoors import module_path

SITE = "/opt/venv/lib/python3.11/site-packages"


def test_module_path_is_relative_to_the_first_search_entry_holding_it(tmp_path: Path) -> None:
    """torch's make_module_path_relative: the first sys.path entry (under -m, the working directory) that
    holds the resolved file wins; a symlinked venv resolves first."""
    site = tmp_path / "venv" / "lib" / "site-packages"
    site.mkdir(parents=True)
    link = tmp_path / "link"
    link.symlink_to(tmp_path / "venv")
    rel = "torch/distributed/run.py"
    assert module_path(rel, [str(tmp_path), str(site)], str(site)) == f"venv/lib/site-packages/{rel}"
    assert module_path(rel, ["/nowhere", str(site)], str(link / "lib" / "site-packages")) == rel
    assert module_path(rel, ["/nowhere"], str(site)) == str(site / rel)


def test_traceback_starts_where_python_m_started() -> None:
    """Under `python -m`, runpy's frozen frames (no source line) come first, then the module run as
    __main__: run.py's main(), or launch.py's main() through typing_extensions' deprecated() wrapper."""
    run = launcher_traceback("child_failed", f"{SITE}/torch/distributed/run.py", SITE).splitlines()
    assert run[1:5] == [
        '  File "<frozen runpy>", line 198, in _run_module_as_main',
        '  File "<frozen runpy>", line 88, in _run_code',
        f'  File "{SITE}/torch/distributed/run.py", line 1032, in <module>',
        "    main()",
    ]
    launch = launcher_traceback("child_failed", f"{SITE}/torch/distributed/launch.py", SITE).splitlines()
    files = [line.split('"')[1].rpartition("/")[2] for line in launch if line.startswith("  File ")]
    assert files[:7] == [
        "<frozen runpy>",
        "<frozen runpy>",
        "launch.py",
        "typing_extensions.py",
        "launch.py",
        "launch.py",
        "run.py",
    ]
    # torchrun's console script: its own path first, as before.
    assert launcher_traceback("child_failed", "/opt/venv/bin/torchrun", SITE).splitlines()[1] == (
        '  File "/opt/venv/bin/torchrun", line 8, in <module>'
    )
