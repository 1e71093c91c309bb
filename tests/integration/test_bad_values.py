"""Values that pass the parser's types and used to crash or hang a job: the real `fakerun`, one line each."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

from fakerun import presets
from tests.conftest import Runner
from tests.integration.test_smi import GPU_HEAD, job_state, smi, write_state

CONFIGS = Path(presets.__file__).parent / "configs"
HUGE = str(10**30)
QUICK_S = 30.0  # each case fails before forking; generous for a loaded 2-core machine


def _replace(text: str, key: str, value: str) -> str:
    """A preset file's text with one top-level key's value replaced."""
    new, count = re.subn(rf"(?m)^{key} = .*$", f"{key} = {value}", text)
    assert count == 1, key
    return new


def _files(where: Path) -> None:
    """The hostile files the cases name, written in the run's working directory."""
    gpu = (CONFIGS / "gpus" / "h100.toml").read_text()
    (where / "big.toml").write_text(_replace(gpu, "peak_bf16_tflops", "1e308"))
    (where / "tiny.toml").write_text(_replace(gpu, "peak_bf16_tflops", "1e-300"))
    cluster = (CONFIGS / "clusters" / "dgx-h100.toml").read_text()
    (where / "badbus.toml").write_text(
        _replace(cluster, "bus_ids", '["zz", "2A", "3A", "5D", "9A", "AB", "BA", "DB"]')
    )
    (where / "deep.toml").write_text("a = " + "[" * 5000 + "]" * 5000 + "\n")
    (where / "deeptable.toml").write_text("[" + ".".join(["a"] * 5000) + "]\n")
    (where / "huge.toml").write_text("# " + "x" * (1 << 20) + "\n")
    os.mkfifo(where / "fifo.toml")


ERR = "fakerun: error: "
PORT_LINE = (
    "ValueError: The port number of the rendezvous endpoint '127.0.0.1:{}' must be an integer between 0 and "
    "65536."
)
BACKEND_LINE = (
    "ValueError: The rendezvous backend 'foo' is not registered. Did you forget to call `register`?"
)

# (arguments before the script, script arguments, environment, exit code, the last line or its start)
CASES: list[tuple[list[str], list[str], dict[str, str], int, str]] = [
    # presets
    (["--fake-gpu", "big.toml"], [], {}, 2, f"{ERR}bad GPU file 'big.toml': field 'peak_bf16_tflops' "),
    (["--fake-gpu", "tiny.toml"], [], {}, 2, f"{ERR}bad GPU file 'tiny.toml': field 'peak_bf16_tflops' "),
    (["--fake-cluster", "badbus.toml"], [], {}, 2, f"{ERR}bad cluster file 'badbus.toml': field 'bus_ids' "),
    # --fake-* numbers
    (["--fake-speed", "1e-310"], [], {}, 2, f"{ERR}argument --fake-speed: invalid speed '1e-310' "),
    (["--fake-speed", "nan"], [], {}, 2, f"{ERR}argument --fake-speed: "),
    (["--fake-speed", "inf"], [], {}, 2, f"{ERR}argument --fake-speed: "),
    (["--fake-speed", "0"], [], {}, 2, f"{ERR}argument --fake-speed: "),
    (["--fake-speed", "-1"], [], {}, 2, f"{ERR}argument --fake-speed: "),
    ([], [], {"FAKERUN_SPEED": "1e-310"}, 2, f"{ERR}argument --fake-speed: "),
    (["--fake-seed", str(2**64)], [], {}, 2, f"{ERR}argument --fake-seed: "),
    (["--fake-max-steps", HUGE], [], {}, 2, f"{ERR}argument --fake-max-steps: "),
    (["--fake-start-step", HUGE], [], {}, 2, f"{ERR}argument --fake-start-step: "),
    (["--fake-max-time", "99999999999h"], [], {}, 2, f"{ERR}argument --fake-max-time: "),
    # script hints
    ([], ["--global-batch-size", "1e25"], {}, 2, f"{ERR}script argument --global-batch-size: "),
    ([], ["--global-batch-size", HUGE], {}, 2, f"{ERR}script argument --global-batch-size: "),
    ([], ["--num_train_epochs", "1e308"], {}, 2, f"{ERR}script argument --num_train_epochs: "),
    ([], ["--hidden-size", "1e200"], {}, 2, f"{ERR}script argument --hidden-size: "),
    ([], ["--hidden-size", HUGE], {}, 2, f"{ERR}script argument --hidden-size: "),
    # files
    (
        ["--fake-config", "deep.toml"],
        [],
        {},
        2,
        f"{ERR}argument --fake-config: invalid TOML in 'deep.toml': ",
    ),
    (["--fake-config", "deeptable.toml"], [], {}, 2, f"{ERR}argument --fake-config: invalid TOML in "),
    (["--fake-gpu", "deep.toml"], [], {}, 2, f"{ERR}bad GPU file 'deep.toml': tables or arrays nested "),
    (["--fake-model", "deep.toml"], [], {}, 2, f"{ERR}bad model file 'deep.toml': tables or arrays nested "),
    (["--fake-cluster", "deeptable.toml"], [], {}, 2, f"{ERR}bad cluster file 'deeptable.toml': tables "),
    (["--fake-gpu", "g" * 5000], [], {}, 2, f"{ERR}unknown GPU 'ggg"),
    (["--fake-model", "m" * 5000 + ".toml"], [], {}, 2, f"{ERR}cannot read model file 'mmm"),
    (
        ["--fake-config", "/dev/zero"],
        [],
        {},
        2,
        f"{ERR}argument --fake-config: cannot read '/dev/zero': not a ",
    ),
    (
        ["--fake-config", "fifo.toml"],
        [],
        {},
        2,
        f"{ERR}argument --fake-config: cannot read 'fifo.toml': not a ",
    ),
    (
        ["--fake-config", "huge.toml"],
        [],
        {},
        2,
        f"{ERR}argument --fake-config: cannot read 'huge.toml': larger ",
    ),
    # failure scenarios
    (
        ["--fake-fail", "bogus"],
        [],
        {},
        2,
        f"{ERR}argument --fake-fail: invalid scenario 'bogus' (choose from ",
    ),
    (["--fake-fail", "oom@0"], [], {}, 2, f"{ERR}argument --fake-fail: invalid step '0' "),
    # torchrun values torch dies of later: its exception line, exit code 1
    (["--monitor-interval", "-1"], [], {}, 1, "ValueError: sleep length must be non-negative"),
    (["--monitor-interval", "nan"], [], {}, 1, "ValueError: Invalid value NaN (not a number)"),
    (["--master-port", "70000"], [], {}, 1, PORT_LINE.format(70000)),
    (["--master-port", "-1"], [], {}, 1, PORT_LINE.format(-1)),
    ([], [], {"PET_MASTER_PORT": "70000"}, 1, PORT_LINE.format(70000)),
    (["--rdzv-backend", "foo"], [], {}, 1, BACKEND_LINE),
    (["--rdzv-backend", "foo", "--nproc-per-node", "2"], [], {}, 1, BACKEND_LINE),
    (
        ["--rdzv-backend", "foo", "--nnodes", "2", "--rdzv-endpoint", "localhost:29400"],
        [],
        {},
        1,
        BACKEND_LINE,
    ),
    (["--shutdown-timeout", "-1"], [], {}, 1, "ValueError: shutdown_timeout must be non-negative, got -1"),
    (
        [],
        [],
        {"TORCH_ELASTIC_SHUTDOWN_TIMEOUT": "nan"},
        1,
        "ValueError: invalid literal for int() with base 10: ",
    ),
    ([], [], {"TORCH_ELASTIC_SHUTDOWN_TIMEOUT": HUGE}, 1, f"{ERR}TORCH_ELASTIC_SHUTDOWN_TIMEOUT="),
    (["--nnodes", "2", "--node-rank", "-1"], [], {}, 1, "AssertionError: node_rank -1 must be >= 0"),
    # absurd counts: argparse's usage error
    (
        ["--nproc-per-node", "99999999999999999999"],
        [],
        {},
        2,
        f"{ERR}argument --nproc-per-node/--nproc_per_node: ",
    ),
    (["--nnodes", "1:99999999999999"], [], {}, 2, f"{ERR}argument --nnodes: "),
    (["--max-restarts", HUGE], [], {}, 2, f"{ERR}argument --max-restarts/--max_restarts: "),
    (["--monitor-interval", "inf"], [], {}, 2, f"{ERR}argument --monitor-interval/--monitor_interval: "),
    (
        ["--shutdown-timeout", "1" + "0" * 400],
        [],
        {},
        2,
        f"{ERR}argument --shutdown-timeout/--shutdown_timeout: ",
    ),
]


@pytest.mark.parametrize(
    ("before", "script_args", "environ", "code", "last"),
    CASES,
    ids=[" ".join([*c[0], *c[1], *(f"{k}={v}" for k, v in c[2].items())])[:60] for c in CASES],
)
def test_bad_value(
    runner: Runner, before: list[str], script_args: list[str], environ: dict[str, str], code: int, last: str
) -> None:
    """Exit code 1 or 2, the error as stderr's last line, no traceback, nothing left behind, at once."""
    _files(runner.tmp)
    tmp = runner.tmp / "tmp"
    tmp.mkdir()
    # Should a case not fail, its job is short: defaults through the environment, which any case overrides.
    env = {"FAKERUN_MAX_STEPS": "2", "FAKERUN_SPEED": "1000", "TMPDIR": str(tmp), **environ}
    res = runner.run([*before, "train.py", *script_args], timeout=QUICK_S, **env)
    lines = res.stderr.splitlines()
    assert res.code == code, res.stderr[-2000:]
    assert lines and lines[-1].startswith(last), lines[-3:]
    assert len(lines[-1]) < 400
    assert "Traceback" not in res.stderr and "Traceback" not in res.stdout
    assert res.stdout == ""
    assert res.elapsed < QUICK_S
    assert list(tmp.iterdir()) == [], "a log directory or other file was left in TMPDIR"


def test_unknown_backend_after_the_start_up_lines(runner: Runner) -> None:
    """As torchrun: the OMP banner (and, at INFO, the launch configs) come out before the exception line."""
    res = runner.run(["--rdzv-backend", "foo", "--nproc-per-node", "2", "train.py"], LOGLEVEL="INFO")
    assert res.code == 1
    text = res.stderr
    assert (
        text.index("Setting OMP_NUM_THREADS")
        < text.index("Starting elastic_operator")
        < text.index(BACKEND_LINE)
    )
    assert "Traceback" not in text


def test_smi_with_bad_bus_ids_in_a_state_file(runner: Runner) -> None:
    """fakerun-smi reads bus ids through the cluster check: bad ones fall back to the default layout."""
    state = runner.tmp / "state"
    state.mkdir()
    doc = job_state(os.getpid())
    doc["bus_ids"] = ["zz", "1" * 1000]
    write_state(state, doc)
    res = smi(runner, state)
    assert res.code == 0, res.stderr
    assert "Traceback" not in res.stderr
    buses = [m["bus"] for m in map(GPU_HEAD.match, res.stdout.splitlines()) if m]
    assert len(buses) == 2 and all(re.fullmatch(r"[0-9A-F]{8}:[0-9A-F]{2}:00\.0", b) for b in buses)
