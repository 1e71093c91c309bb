"""Tests for fakerun.cli: torchrun 2.13's command line, PET_* defaults and the --fake-* options."""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path
from typing import Any

import pytest

from fakerun import dialects
from fakerun.cli import build_parser, parse_command_line, prog_name
from fakerun.launcher.plan import LaunchError, check_launch, make_plan
from fakerun.names import FAILURE_KINDS
from fakerun.options import CommandLine, FakeOptions, TorchrunArgs

HELP_DIR = Path(__file__).resolve().parents[3] / "shared" / "reference" / "torchrun" / "01_help"
FAKE_GROUP = "\nfakerun options:"
MISSING_SCRIPT = "the following arguments are required: training_script, training_script_args"


def parse(argv: list[str], environ: dict[str, str] | None = None, prog: str = "fakerun") -> CommandLine:
    """Parse with an explicit (by default empty) environment."""
    return parse_command_line(argv, environ or {}, prog)


def fails(
    capsys: pytest.CaptureFixture[str], argv: list[str], environ: dict[str, str] | None = None, code: int = 2
) -> list[str]:
    """Parse, expect SystemExit(code) and no stdout, and return the stderr lines."""
    with pytest.raises(SystemExit) as info:
        parse(argv, environ)
    assert info.value.code == code
    out, err = capsys.readouterr()
    assert out == ""
    return err.splitlines()


def one_line(
    capsys: pytest.CaptureFixture[str], argv: list[str], environ: dict[str, str] | None = None
) -> str:
    """Parse, expect exit code 2 with exactly one line on stderr, and return it."""
    lines = fails(capsys, argv, environ)
    assert len(lines) == 1, lines
    return lines[0]


def help_text(capsys: pytest.CaptureFixture[str], prog: str) -> str:
    """The --help output (stdout, exit code 0)."""
    with pytest.raises(SystemExit) as info:
        parse(["--help"], prog=prog)
    assert info.value.code == 0
    out, err = capsys.readouterr()
    assert err == ""
    return out


def reference(name: str) -> str:
    """A file of the recorded torchrun help, or a skip when the shared reference is not beside the repo."""
    path = HELP_DIR / name
    if not path.is_file():
        pytest.skip(f"reference file {path} is not available")
    return path.read_text()


class TestHelp:
    """--help reproduces torchrun 2.13's help byte for byte, then adds the fakerun group."""

    @pytest.mark.parametrize(
        ("columns", "name"), [("80", "torchrun_help.txt"), ("120", "torchrun_help_COLUMNS120.txt")]
    )
    def test_torchrun_part_matches_reference(
        self, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, columns: str, name: str
    ) -> None:
        """With prog torchrun, everything before the fakerun group equals the recorded help."""
        monkeypatch.setenv("COLUMNS", columns)
        out = help_text(capsys, "torchrun")
        assert out[: out.index(FAKE_GROUP)] == reference(name)

    def test_prog_fakerun_reindents_usage(
        self, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """With prog fakerun only the usage's name and continuation indent differ from the reference."""
        monkeypatch.setenv("COLUMNS", "80")
        ref = reference("torchrun_help.txt")
        usage, rest = ref.split("\n\n", 1)
        usage = usage.replace("usage: torchrun ", "usage: fakerun ").replace("\n" + " " * 16, "\n" + " " * 15)
        out = help_text(capsys, "fakerun")
        assert out[: out.index(FAKE_GROUP)] == usage + "\n\n" + rest

    def test_fakerun_group_comes_last(
        self, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """The fakerun group follows torchrun's options, explains FAKERUN_<NAME> and the config file."""
        monkeypatch.setenv("COLUMNS", "200")
        out = help_text(capsys, "fakerun")
        group = out[out.index(FAKE_GROUP) :]
        assert "--virtual-local-rank" not in group
        description = group.splitlines()[2]
        assert "FAKERUN_<NAME>" in description
        assert "--fake-config" in description
        assert "run N times faster than real time" in group

    @pytest.mark.parametrize(
        "usage",
        [
            "--fake-config FILE",
            "--fake-exec",
            "--fake-seed INT",
            "--fake-speed FACTOR",
            "--fake-max-steps N",
            "--fake-max-time DURATION",
            "--fake-nccl-timeout DURATION",
            "--fake-start-step S",
            "--fake-model NAME|FILE",
            "--fake-gpu NAME|FILE",
            "--fake-cluster NAME|FILE",
            "--fake-log-format {console,json,logfmt}",
            "--fake-trainer {" + ",".join(dialects.names()) + "}",
            "--fake-grid",
            "--fake-metrics FILE",
            "--fake-loop",
            "--fake-fail SCENARIO",
            "--fake-list-presets",
        ],
    )
    def test_fake_option_listed(
        self, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, usage: str
    ) -> None:
        """Each --fake-* option is listed in the fakerun group with its metavar."""
        monkeypatch.setenv("COLUMNS", "200")
        out = help_text(capsys, "fakerun")
        group = out[out.index(FAKE_GROUP) :]
        assert f"\n  {usage} " in group or f"\n  {usage}\n" in group

    def test_short_help_flag(self, capsys: pytest.CaptureFixture[str]) -> None:
        """-h prints the same help and exits 0."""
        with pytest.raises(SystemExit) as info:
            parse(["-h"])
        assert info.value.code == 0
        assert capsys.readouterr().out.startswith("usage: fakerun [-h] [--nnodes NNODES]")

    def test_usage_leaves_out_fake_options(self) -> None:
        """The usage line is torchrun's: no --fake-* option appears in it."""
        usage = build_parser("torchrun").format_usage()
        assert "--fake" not in usage
        assert usage.rstrip().endswith("[--virtual-local-rank]\n                training_script ...")


class TestDefaults:
    """With no flags and no PET_* variables every value is torchrun's default (flags.md)."""

    def test_defaults(self) -> None:
        """The parsed TorchrunArgs equals flags.md's defaults."""
        args = parse(["train.py"]).torchrun
        assert args.explicit == {"training_script", "training_script_args"}
        assert {k: v for k, v in asdict(args).items() if k != "explicit"} == {
            "training_script": "train.py",
            "training_script_args": [],
            "nnodes": "1:1",
            "nproc_per_node": "1",
            "rdzv_backend": "static",
            "rdzv_endpoint": "",
            "rdzv_id": "none",
            "rdzv_conf": "",
            "standalone": False,
            "max_restarts": 0,
            "monitor_interval": 0.1,
            "start_method": "spawn",
            "event_log_handler": "null",
            "role": "default",
            "module": False,
            "no_python": False,
            "run_path": False,
            "log_dir": None,
            "redirects": "0",
            "tee": "0",
            "local_ranks_filter": "",
            "duplicate_stdout_filters": [],
            "duplicate_stderr_filters": [],
            "node_rank": 0,
            "master_addr": "127.0.0.1",
            "master_port": None,
            "local_addr": None,
            "logs_specs": None,
            "numa_binding": None,
            "signals_to_handle": "SIGTERM,SIGINT,SIGHUP,SIGQUIT",
            "shutdown_timeout": None,
            "virtual_local_rank": False,
            "use_env": True,  # torchrun has no --use-env: it passes no --local-rank
        }

    def test_fake_defaults(self) -> None:
        """Without --fake-* options, FAKERUN_* variables or a config file, FakeOptions keeps its defaults."""
        fake = parse(["train.py"]).fake
        assert fake == FakeOptions()
        assert dict(fake.sources) == {}

    def test_prog_is_recorded(self) -> None:
        """The CommandLine carries the program name it was parsed for."""
        assert parse(["train.py"], prog="torchrun").prog == "torchrun"


# (spellings, value given, TorchrunArgs field, parsed value)
VALUED = [
    (["--nnodes"], "2:4", "nnodes", "2:4"),
    (["--nproc-per-node", "--nproc_per_node"], "4", "nproc_per_node", "4"),
    (["--rdzv-backend", "--rdzv_backend"], "c10d", "rdzv_backend", "c10d"),
    (["--rdzv-endpoint", "--rdzv_endpoint"], "h:29400", "rdzv_endpoint", "h:29400"),
    (["--rdzv-id", "--rdzv_id"], "job1", "rdzv_id", "job1"),
    (["--rdzv-conf", "--rdzv_conf"], "join_timeout=5", "rdzv_conf", "join_timeout=5"),
    (["--max-restarts", "--max_restarts"], "3", "max_restarts", 3),
    (["--monitor-interval", "--monitor_interval"], "2", "monitor_interval", 2.0),
    (["--start-method", "--start_method"], "fork", "start_method", "fork"),
    (["--event-log-handler", "--event_log_handler"], "console", "event_log_handler", "console"),
    (["--role"], "trainer", "role", "trainer"),
    (["--log-dir", "--log_dir"], "/tmp/x", "log_dir", "/tmp/x"),
    (["-r", "--redirects"], "3", "redirects", "3"),
    (["-t", "--tee"], "0:1,1:2", "tee", "0:1,1:2"),
    (["--local-ranks-filter", "--local_ranks_filter"], "0,2", "local_ranks_filter", "0,2"),
    (
        ["--duplicate-stdout-filters", "--duplicate_stdout_filters"],
        "a,b",
        "duplicate_stdout_filters",
        ["a", "b"],
    ),
    (["--duplicate-stderr-filters", "--duplicate_stderr_filters"], "a", "duplicate_stderr_filters", ["a"]),
    (["--node-rank", "--node_rank"], "1", "node_rank", 1),
    (["--master-addr", "--master_addr"], "10.0.0.1", "master_addr", "10.0.0.1"),
    (["--master-port", "--master_port"], "29513", "master_port", 29513),
    (["--local-addr", "--local_addr"], "127.0.0.1", "local_addr", "127.0.0.1"),
    (["--logs-specs", "--logs_specs"], "mine", "logs_specs", "mine"),
    (["--numa-binding", "--numa_binding"], "core-complex", "numa_binding", "core-complex"),
    (["--signals-to-handle", "--signals_to_handle"], "SIGUSR1", "signals_to_handle", "SIGUSR1"),
    (["--shutdown-timeout", "--shutdown_timeout"], "3", "shutdown_timeout", 3),
]
FLAGS = [
    (["--standalone"], "standalone"),
    (["-m", "--module"], "module"),
    (["--no-python", "--no_python"], "no_python"),
    (["--run-path", "--run_path"], "run_path"),
    (["--virtual-local-rank", "--virtual_local_rank"], "virtual_local_rank"),
]


class TestSpellings:
    """Every torchrun option works in each of its spellings, with a separate or an `=` value."""

    @pytest.mark.parametrize(
        ("option", "value", "field", "expected"),
        [(spelling, value, f, e) for spellings, value, f, e in VALUED for spelling in spellings],
    )
    def test_valued_option(self, option: str, value: str, field: str, expected: Any) -> None:
        """`--opt value` sets the field."""
        assert getattr(parse([option, value, "train.py"]).torchrun, field) == expected

    @pytest.mark.parametrize(
        ("option", "value", "field", "expected"),
        [
            (spelling, value, f, e)
            for spellings, value, f, e in VALUED
            for spelling in spellings
            if "--" in spelling
        ],
    )
    def test_equals_form(self, option: str, value: str, field: str, expected: Any) -> None:
        """`--opt=value` sets the field."""
        assert getattr(parse([f"{option}={value}", "train.py"]).torchrun, field) == expected

    @pytest.mark.parametrize(("option", "field"), [(s, f) for spellings, f in FLAGS for s in spellings])
    def test_flag(self, option: str, field: str) -> None:
        """A flag turns its field on."""
        assert getattr(parse([option, "train.py"]).torchrun, field) is True

    @pytest.mark.parametrize(
        ("argv", "field", "expected"), [(["-r3"], "redirects", "3"), (["-mt3"], "tee", "3")]
    )
    def test_attached_short_values(self, argv: list[str], field: str, expected: str) -> None:
        """Short options take attached values and combine, as argparse allows."""
        assert getattr(parse([*argv, "train.py"]).torchrun, field) == expected

    def test_flag_rejects_value(self, capsys: pytest.CaptureFixture[str]) -> None:
        """A flag given `=value` is a usage error."""
        lines = fails(capsys, ["--standalone=1", "train.py"])
        assert lines[-1] == "fakerun: error: argument --standalone: ignored explicit argument '1'"

    @pytest.mark.parametrize(
        ("value", "expected"),
        [
            ("apple,orange", ["apple", "orange"]),
            ("a,,b,c", ["a,b", "c"]),
            ("a,,,b", ["a,", "b"]),
            ("a,,,,b", ["a,,b"]),
            ("solo", ["solo"]),
            ("", [""]),
            ("a,", ["a", ""]),
        ],
    )
    def test_duplicate_filters_comma_escaping(self, value: str, expected: list[str]) -> None:
        """The filters split on commas, and a doubled comma is a literal comma (torch's splitting)."""
        args = parse(["--duplicate-stdout-filters", value, "--duplicate-stderr-filters", value, "t.py"])
        assert args.torchrun.duplicate_stdout_filters == expected
        assert args.torchrun.duplicate_stderr_filters == expected


class TestPetEnvironment:
    """PET_<DEST> variables supply defaults that the command line overrides."""

    @pytest.mark.parametrize(
        ("env", "value", "field", "expected"),
        [
            ("PET_NNODES", "2", "nnodes", "2"),
            ("PET_NPROC_PER_NODE", "3", "nproc_per_node", "3"),
            ("PET_RDZV_BACKEND", "c10d", "rdzv_backend", "c10d"),
            ("PET_RDZV_ENDPOINT", "h:1", "rdzv_endpoint", "h:1"),
            ("PET_RDZV_ID", "job", "rdzv_id", "job"),
            ("PET_MAX_RESTARTS", "2", "max_restarts", 2),
            ("PET_MONITOR_INTERVAL", "0.5", "monitor_interval", 0.5),
            ("PET_START_METHOD", "forkserver", "start_method", "forkserver"),
            ("PET_ROLE", "trainer", "role", "trainer"),
            ("PET_LOG_DIR", "/tmp/logs", "log_dir", "/tmp/logs"),
            ("PET_REDIRECTS", "3", "redirects", "3"),
            ("PET_TEE", "3", "tee", "3"),
            ("PET_LOCAL_RANKS_FILTER", "0", "local_ranks_filter", "0"),
            ("PET_DUPLICATE_STDOUT_FILTERS", "a,,b,c", "duplicate_stdout_filters", ["a,b", "c"]),
            ("PET_NODE_RANK", "1", "node_rank", 1),
            ("PET_MASTER_ADDR", "10.1.1.1", "master_addr", "10.1.1.1"),
            ("PET_MASTER_PORT", "29513", "master_port", 29513),
            ("PET_LOCAL_ADDR", "127.0.0.1", "local_addr", "127.0.0.1"),
            ("PET_SIGNALS_TO_HANDLE", "SIGUSR1", "signals_to_handle", "SIGUSR1"),
            ("PET_SHUTDOWN_TIMEOUT", "3", "shutdown_timeout", 3),
            ("PET_STANDALONE", "1", "standalone", True),
            ("PET_STANDALONE", "0", "standalone", False),
            ("PET_MODULE", "2", "module", True),
            ("PET_NO_PYTHON", "1", "no_python", True),
            ("PET_RUN_PATH", "1", "run_path", True),
            ("PET_VIRTUAL_LOCAL_RANK", "1", "virtual_local_rank", True),
        ],
    )
    def test_env_default(self, env: str, value: str, field: str, expected: Any) -> None:
        """The variable sets the field when the flag is not given."""
        assert getattr(parse(["train.py"], {env: value}).torchrun, field) == expected

    @pytest.mark.parametrize(
        ("env", "field"), [("PET_LOGS_SPECS", "logs_specs"), ("PET_NUMA_BINDING", "numa_binding")]
    )
    def test_options_without_env_action(self, env: str, field: str) -> None:
        """--logs-specs and --numa-binding ignore PET_* variables."""
        assert getattr(parse(["train.py"], {env: "node"}).torchrun, field) is None

    @pytest.mark.parametrize(
        ("argv", "env", "field", "expected"),
        [
            (["--nproc-per-node", "2"], {"PET_NPROC_PER_NODE": "3"}, "nproc_per_node", "2"),
            (["--max_restarts=1"], {"PET_MAX_RESTARTS": "5"}, "max_restarts", 1),
            (["--master-port", "1234"], {"PET_MASTER_PORT": "29513"}, "master_port", 1234),
            (["--standalone"], {"PET_STANDALONE": "0"}, "standalone", True),
            (["-r", "1"], {"PET_REDIRECTS": "3"}, "redirects", "1"),
        ],
    )
    def test_command_line_wins(self, argv: list[str], env: dict[str, str], field: str, expected: Any) -> None:
        """A value on the command line beats the PET_* variable."""
        assert getattr(parse([*argv, "train.py"], env).torchrun, field) == expected

    def test_bad_env_value_is_usage_error(self, capsys: pytest.CaptureFixture[str]) -> None:
        """A PET_* value its type rejects is reported by argparse, exit code 2."""
        lines = fails(capsys, ["train.py"], {"PET_MAX_RESTARTS": "abc"})
        assert lines[0].startswith("usage: fakerun ")
        assert lines[-1] == "fakerun: error: argument --max-restarts/--max_restarts: invalid int value: 'abc'"

    def test_bad_check_env_value(self, capsys: pytest.CaptureFixture[str]) -> None:
        """A non-integer PET_* flag value (a ValueError in torchrun) is one line and exit code 1."""
        lines = fails(capsys, ["train.py"], {"PET_STANDALONE": "yes"}, code=1)
        assert len(lines) == 1
        assert lines[0].startswith("fakerun: error: ")
        assert "PET_STANDALONE" in lines[0]
        assert "'yes'" in lines[0]


class TestAbbreviations:
    """Unambiguous prefixes of long options work; ambiguous ones are usage errors, as in torchrun."""

    def test_prefixes(self) -> None:
        """`--nproc-per 2 --stand --max-re=1` is accepted."""
        args = parse(["--nproc-per", "2", "--stand", "--max-re=1", "train.py"]).torchrun
        assert (args.nproc_per_node, args.standalone, args.max_restarts) == ("2", True, 1)

    def test_ambiguous_nproc(self, capsys: pytest.CaptureFixture[str]) -> None:
        """`--nproc` matches both spellings of --nproc-per-node: exit code 2 and torchrun's message."""
        lines = fails(capsys, ["--nproc", "2", "train.py"])
        assert lines[0].startswith("usage: fakerun [-h]")
        assert lines[-1] == (
            "fakerun: error: ambiguous option: --nproc could match --nproc-per-node, --nproc_per_node"
        )

    def test_ambiguous_ma(self, capsys: pytest.CaptureFixture[str]) -> None:
        """`--ma` is ambiguous among torchrun's options only, never a --fake-* option."""
        lines = fails(capsys, ["--ma", "1", "train.py"])
        assert lines[-1] == (
            "fakerun: error: ambiguous option: --ma could match --max-restarts, --max_restarts, "
            "--master-addr, --master_addr, --master-port, --master_port"
        )

    @pytest.mark.parametrize("argv", [["--fake-max", "3", "t.py"], ["--fake-max=3", "t.py"]])
    def test_ambiguous_fake_prefix_before_script(
        self, capsys: pytest.CaptureFixture[str], argv: list[str]
    ) -> None:
        """Before the script, a prefix of several --fake-* options is an ambiguous-option usage error."""
        lines = fails(capsys, argv)
        assert lines[0].startswith("usage: fakerun [-h]")
        assert lines[-1] == (
            f"fakerun: error: ambiguous option: {argv[0]} could match --fake-max-steps, --fake-max-time"
        )

    def test_fake_prefix(self) -> None:
        """Unambiguous prefixes of --fake-* options work too."""
        assert parse(["--fake-se", "5", "train.py"]).fake.seed == 5


class TestPassthrough:
    """Everything after training_script goes to the script untouched."""

    @pytest.mark.parametrize(
        "script_args",
        [
            [],
            ["--foo", "1"],
            ["--nproc-per-node", "5", "--help"],
            ["-m", "--standalone", "--nproc-per-node"],
            ["--fake-seed", "3", "--fake-exec"],
            ["--fake-bogus"],
            ["--f", "--fake", "--fake-m", "--fake-max=3", "--fake-s", "1"],
        ],
    )
    def test_script_args(self, script_args: list[str]) -> None:
        """Flag-looking script arguments are not parsed by the launcher."""
        cmd = parse(["--nnodes", "1", "train.py", *script_args])
        assert cmd.torchrun.training_script == "train.py"
        assert cmd.torchrun.training_script_args == script_args
        assert cmd.torchrun.nproc_per_node == "1"
        assert cmd.fake == FakeOptions()

    def test_fake_options_before_script(self) -> None:
        """--fake-* options anywhere before the script are fakerun's, mixed with torchrun's."""
        cmd = parse(["--fake-seed", "3", "--nnodes", "2", "--fake-exec", "--standalone", "train.py", "a"])
        assert (cmd.fake.seed, cmd.fake.exec) == (3, True)
        assert (cmd.torchrun.nnodes, cmd.torchrun.standalone) == ("2", True)
        assert cmd.torchrun.training_script_args == ["a"]


class TestUsageErrors:
    """argparse usage errors print the usage and `<prog>: error: ...` on stderr and exit 2."""

    @pytest.mark.parametrize("argv", [[], ["--nnodes", "2"], ["--fake-seed", "1"]])
    def test_missing_script(self, capsys: pytest.CaptureFixture[str], argv: list[str]) -> None:
        """No training_script is a usage error naming both positionals."""
        lines = fails(capsys, argv)
        assert lines[0].startswith("usage: fakerun [-h]")
        assert lines[-1] == f"fakerun: error: {MISSING_SCRIPT}"

    def test_invalid_start_method(self, capsys: pytest.CaptureFixture[str]) -> None:
        """A --start-method outside its choices is rejected."""
        lines = fails(capsys, ["--start-method", "thread", "train.py"])
        assert lines[-1].startswith(
            "fakerun: error: argument --start-method/--start_method: invalid choice: "
        )
        assert "'thread'" in lines[-1]

    def test_invalid_numa_binding(self, capsys: pytest.CaptureFixture[str]) -> None:
        """A --numa-binding outside its choices is rejected."""
        lines = fails(capsys, ["--numa-binding", "gpu", "train.py"])
        assert lines[-1].startswith(
            "fakerun: error: argument --numa-binding/--numa_binding: invalid choice: "
        )

    @pytest.mark.parametrize(
        ("argv", "message"),
        [
            (["--bogus", "train.py"], "unrecognized arguments: --bogus"),
            (
                ["--max-restarts", "x", "train.py"],
                "argument --max-restarts/--max_restarts: invalid int value: 'x'",
            ),
            (["--nnodes"], "argument --nnodes: expected one argument"),
        ],
    )
    def test_other_usage_errors(
        self, capsys: pytest.CaptureFixture[str], argv: list[str], message: str
    ) -> None:
        """Unknown options, bad types and missing values are usage errors."""
        assert fails(capsys, argv)[-1] == f"fakerun: error: {message}"

    def test_prog_in_message(self, capsys: pytest.CaptureFixture[str]) -> None:
        """The program name given is used in the usage and error lines."""
        with pytest.raises(SystemExit):
            parse_command_line([], {}, "torchrun")
        lines = capsys.readouterr().err.splitlines()
        assert lines[0].startswith("usage: torchrun [-h]")
        assert lines[-1] == f"torchrun: error: {MISSING_SCRIPT}"


# (option, FAKERUN_ variable, text value, FakeOptions field, parsed value)
FAKE_VALUES = [
    ("--fake-seed", "FAKERUN_SEED", "42", "seed", 42),
    ("--fake-speed", "FAKERUN_SPEED", "10", "speed", 10.0),
    ("--fake-speed", "FAKERUN_SPEED", "0.5", "speed", 0.5),
    ("--fake-max-steps", "FAKERUN_MAX_STEPS", "100", "max_steps", 100),
    ("--fake-max-time", "FAKERUN_MAX_TIME", "15m", "max_time", 900.0),
    ("--fake-nccl-timeout", "FAKERUN_NCCL_TIMEOUT", "30m", "nccl_timeout", 1800.0),
    ("--fake-start-step", "FAKERUN_START_STEP", "0", "start_step", 0),
    ("--fake-start-step", "FAKERUN_START_STEP", "7", "start_step", 7),
    ("--fake-model", "FAKERUN_MODEL", "llama3-8b", "model", "llama3-8b"),
    ("--fake-gpu", "FAKERUN_GPU", "h100.toml", "gpu", "h100.toml"),
    ("--fake-cluster", "FAKERUN_CLUSTER", "dgx", "cluster", "dgx"),
    ("--fake-log-format", "FAKERUN_LOG_FORMAT", "json", "log_format", "json"),
    ("--fake-log-format", "FAKERUN_LOG_FORMAT", "logfmt", "log_format", "logfmt"),
    ("--fake-log-level", "FAKERUN_LOG_LEVEL", "debug", "log_level", "debug"),
    ("--fake-log-level", "FAKERUN_LOG_LEVEL", " Warning ", "log_level", "warning"),
    ("--fake-trainer", "FAKERUN_TRAINER", "megatron", "trainer", "megatron"),
    ("--fake-trainer", "FAKERUN_TRAINER", " HF ", "trainer", "hf"),
    ("--fake-metrics", "FAKERUN_METRICS", "m.jsonl", "metrics", "m.jsonl"),
    ("--fake-fail", "FAKERUN_FAIL", "oom@5:1", "fail", ("oom@5:1",)),
    ("--fake-fail", "FAKERUN_FAIL", "nccl-timeout", "fail", ("nccl-timeout",)),
    ("--fake-fail", "FAKERUN_FAIL", " Random@12 ", "fail", ("random@12",)),
]
FAKE_FLAGS = [
    ("--fake-exec", "FAKERUN_EXEC", "exec"),
    ("--fake-loop", "FAKERUN_LOOP", "loop"),
    ("--fake-grid", "FAKERUN_GRID", "grid"),
    ("--fake-list-presets", "FAKERUN_LIST_PRESETS", "list_presets"),
]


class TestFakeOptions:
    """fakerun's own options come from the command line, FAKERUN_* variables or the TOML config file."""

    @pytest.mark.parametrize(("option", "env", "text", "field", "expected"), FAKE_VALUES)
    def test_command_line(self, option: str, env: str, text: str, field: str, expected: Any) -> None:
        """`--fake-<name> VALUE` sets the field and records the command line as its source."""
        fake = parse([option, text, "train.py"]).fake
        assert getattr(fake, field) == expected
        assert fake.sources[field] == "command line"

    @pytest.mark.parametrize(("option", "env", "text", "field", "expected"), FAKE_VALUES)
    def test_equals_form(self, option: str, env: str, text: str, field: str, expected: Any) -> None:
        """`--fake-<name>=VALUE` works too."""
        assert getattr(parse([f"{option}={text}", "train.py"]).fake, field) == expected

    @pytest.mark.parametrize(("option", "env", "text", "field", "expected"), FAKE_VALUES)
    def test_environment(self, option: str, env: str, text: str, field: str, expected: Any) -> None:
        """FAKERUN_<NAME> sets the field and is recorded as its source."""
        fake = parse(["train.py"], {env: text}).fake
        assert getattr(fake, field) == expected
        assert fake.sources[field] == env

    @pytest.mark.parametrize(("option", "env", "field"), FAKE_FLAGS)
    def test_flag_on_command_line(self, option: str, env: str, field: str) -> None:
        """A --fake-* flag turns its field on."""
        assert getattr(parse([option, "train.py"]).fake, field) is True

    @pytest.mark.parametrize(("option", "env", "field"), FAKE_FLAGS)
    @pytest.mark.parametrize(
        ("text", "expected"),
        [
            ("1", True),
            ("0", False),
            ("true", True),
            ("False", False),
            ("YES", True),
            ("no", False),
            ("on", True),
            ("OFF", False),
        ],
    )
    def test_flag_in_environment(self, option: str, env: str, field: str, text: str, expected: bool) -> None:
        """Flags in the environment accept 1/0, true/false, yes/no, on/off in any case."""
        assert getattr(parse(["train.py"], {env: text}).fake, field) is expected

    def test_empty_variable_is_unset(self) -> None:
        """An empty FAKERUN_* variable counts as unset."""
        assert parse(["train.py"], {"FAKERUN_SEED": "", "FAKERUN_EXEC": ""}).fake == FakeOptions()

    def test_unknown_variables_ignored(self) -> None:
        """FAKERUN_* variables that name no option are ignored."""
        assert parse(["train.py"], {"FAKERUN_NOPE": "1", "FAKERUN_": "x"}).fake == FakeOptions()

    @pytest.mark.parametrize(
        ("text", "seconds"),
        [
            ("90", 90.0),
            ("90s", 90.0),
            ("15m", 900.0),
            ("2h10m", 7800.0),
            ("1h30m15s", 5415.0),
            ("1.5h", 5400.0),
            ("2.5", 2.5),
            ("1m30s", 90.0),
        ],
    )
    def test_durations(self, text: str, seconds: float) -> None:
        """--fake-max-time accepts plain seconds and h/m/s combinations, stored as seconds."""
        assert parse(["--fake-max-time", text, "train.py"]).fake.max_time == seconds

    def test_list_presets_needs_no_script(self) -> None:
        """--fake-list-presets alone is a complete command line."""
        cmd = parse(["--fake-list-presets"])
        assert cmd.fake.list_presets is True
        assert cmd.torchrun.training_script == ""

    def test_list_presets_from_env_needs_no_script(self) -> None:
        """FAKERUN_LIST_PRESETS=1 with no script is a complete command line too."""
        assert parse(["--nnodes", "2"], {"FAKERUN_LIST_PRESETS": "1"}).fake.list_presets is True

    def test_list_presets_false_still_needs_script(self, capsys: pytest.CaptureFixture[str]) -> None:
        """FAKERUN_LIST_PRESETS=0 with no script is the usual usage error."""
        assert fails(capsys, [], {"FAKERUN_LIST_PRESETS": "0"})[-1] == f"fakerun: error: {MISSING_SCRIPT}"


class TestConfigFile:
    """The --fake-config TOML file supplies fakerun options below the environment and the command line."""

    def write(self, tmp_path: Path, text: str, name: str = "fake.toml") -> str:
        """Write a config file and return its path."""
        path = tmp_path / name
        path.write_text(text)
        return str(path)

    @pytest.mark.parametrize(
        ("text", "field", "expected"),
        [
            ("max_steps = 100", "max_steps", 100),
            ("max-steps = 100", "max_steps", 100),
            ("[fakerun]\nmax_steps = 100", "max_steps", 100),
            ("[fakerun]\nmax-time = '1h30m15s'", "max_time", 5415.0),
            ("max_time = 90", "max_time", 90.0),
            ("max_time = 1.5", "max_time", 1.5),
            ("seed = 7", "seed", 7),
            ("speed = 60", "speed", 60.0),
            ("speed = 2.5", "speed", 2.5),
            ("exec = true", "exec", True),
            ("loop = 'yes'", "loop", True),
            ("list-presets = false", "list_presets", False),
            ("model = 'llama3-70b'", "model", "llama3-70b"),
            ("log_format = 'json'", "log_format", "json"),
            ("log-level = 'debug'", "log_level", "debug"),
            ("start_step = 10", "start_step", 10),
        ],
    )
    def test_values(self, tmp_path: Path, text: str, field: str, expected: Any) -> None:
        """Keys in either spelling, at top level or under [fakerun], set the field."""
        path = self.write(tmp_path, text)
        fake = parse(["--fake-config", path, "train.py"]).fake
        assert getattr(fake, field) == expected
        assert fake.config == path
        assert fake.sources[field] == f"config file {path}"

    def test_config_from_environment(self, tmp_path: Path) -> None:
        """FAKERUN_CONFIG names the config file too."""
        path = self.write(tmp_path, "seed = 9")
        fake = parse(["train.py"], {"FAKERUN_CONFIG": path}).fake
        assert (fake.seed, fake.config, fake.sources["config"]) == (9, path, "FAKERUN_CONFIG")

    def test_command_line_config_beats_env_config(self, tmp_path: Path) -> None:
        """--fake-config wins over FAKERUN_CONFIG."""
        cli = self.write(tmp_path, "seed = 1", "cli.toml")
        env = self.write(tmp_path, "seed = 2", "env.toml")
        assert parse(["--fake-config", cli, "train.py"], {"FAKERUN_CONFIG": env}).fake.seed == 1

    @pytest.mark.parametrize(
        ("argv", "environ", "expected"),
        [
            (["--fake-seed", "1"], {"FAKERUN_SEED": "2"}, 1),
            ([], {"FAKERUN_SEED": "2"}, 2),
            ([], {}, 3),
        ],
    )
    def test_precedence(
        self, tmp_path: Path, argv: list[str], environ: dict[str, str], expected: int
    ) -> None:
        """Command line beats environment beats config file."""
        path = self.write(tmp_path, "seed = 3")
        assert parse(["--fake-config", path, *argv, "train.py"], environ).fake.seed == expected

    def test_default_below_config(self, tmp_path: Path) -> None:
        """Options the file does not set keep their defaults and have no source."""
        fake = parse(["--fake-config", self.write(tmp_path, "seed = 3"), "train.py"]).fake
        assert (fake.speed, fake.max_steps) == (1.0, None)
        assert "speed" not in fake.sources

    def test_overridden_bad_value_is_not_checked(self, tmp_path: Path) -> None:
        """A bad value in the file that the command line overrides is never used, so never reported."""
        path = self.write(tmp_path, "seed = 'x'")
        assert parse(["--fake-config", path, "--fake-seed", "4", "train.py"]).fake.seed == 4

    @pytest.mark.parametrize(
        ("text", "reason"),
        [
            ("seed = ", "invalid TOML"),
            ("nope = 1", "unknown key 'nope'"),
            ("[fakerun]\nnope = 1", "unknown key 'nope'"),
            ("[other]\nname = 'x'", "unknown key 'other'"),
            ("config = 'other.toml'", "unknown key 'config'"),
            ("fakerun = 1", "[fakerun]"),
            ("seed = 1\n[fakerun]\nseed = 2", "'seed'"),
            ("max_steps = 1\nmax-steps = 2", "max-steps"),
        ],
    )
    def test_bad_files(
        self, capsys: pytest.CaptureFixture[str], tmp_path: Path, text: str, reason: str
    ) -> None:
        """Invalid TOML, unknown keys and keys set twice are one-line errors naming the file."""
        path = self.write(tmp_path, text)
        line = one_line(capsys, ["--fake-config", path, "train.py"])
        assert line.startswith("fakerun: error: argument --fake-config: ")
        assert reason in line
        assert path in line

    def test_missing_file(self, capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
        """A missing config file is a one-line error."""
        path = str(tmp_path / "absent.toml")
        line = one_line(capsys, ["--fake-config", path, "train.py"])
        assert line == (
            f"fakerun: error: argument --fake-config: cannot read {path!r}: No such file or directory"
        )

    def test_missing_file_from_env(self, capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
        """A missing file named by FAKERUN_CONFIG says where the name came from."""
        path = str(tmp_path / "absent.toml")
        line = one_line(capsys, ["train.py"], {"FAKERUN_CONFIG": path})
        assert line.startswith("fakerun: error: argument --fake-config: ")
        assert line.endswith("(from FAKERUN_CONFIG)")

    def test_directory(self, capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
        """A directory is not a config file."""
        assert one_line(capsys, ["--fake-config", str(tmp_path), "t.py"]).startswith(
            "fakerun: error: argument --fake-config: cannot read "
        )

    def test_not_utf8(self, capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
        """A file that is not UTF-8 is invalid TOML, not a traceback."""
        path = tmp_path / "bin.toml"
        path.write_bytes(b"seed = '\xff'\n")
        assert "invalid TOML" in one_line(capsys, ["--fake-config", str(path), "t.py"])


class TestBadFakeValues:
    """A bad value of a --fake-* option from any source is one line on stderr and exit code 2."""

    def test_spec_example(self, capsys: pytest.CaptureFixture[str]) -> None:
        """The bad duration message names the option and the accepted forms."""
        assert one_line(capsys, ["--fake-max-time", "2x", "train.py"]) == (
            "fakerun: error: argument --fake-max-time: invalid duration '2x' "
            "(expected e.g. 90, 90s, 15m, 2h10m)"
        )

    @pytest.mark.parametrize(
        ("option", "text"),
        [
            ("--fake-seed", "x"),
            ("--fake-seed", "1.5"),
            ("--fake-seed", "-1"),
            ("--fake-speed", "0"),
            ("--fake-speed", "-2"),
            ("--fake-speed", "fast"),
            ("--fake-speed", "inf"),
            ("--fake-speed", "nan"),
            ("--fake-max-steps", "0"),
            ("--fake-max-steps", "ten"),
            ("--fake-max-time", "0"),
            ("--fake-max-time", "0s"),
            ("--fake-max-time", "h"),
            ("--fake-max-time", "1m2h"),
            ("--fake-max-time", "2h10"),
            ("--fake-max-time", "-5"),
            ("--fake-max-time", "inf"),
            ("--fake-start-step", "-1"),
            ("--fake-log-format", "xml"),
            ("--fake-trainer", "no-such-trainer"),
            ("--fake-model", ""),
            ("--fake-gpu", " "),
            ("--fake-config", ""),
        ],
    )
    def test_command_line(self, capsys: pytest.CaptureFixture[str], option: str, text: str) -> None:
        """The line names the option and quotes the value."""
        line = one_line(capsys, [option, text, "train.py"])
        assert line.startswith(f"fakerun: error: argument {option}: ")
        assert repr(text) in line

    @pytest.mark.parametrize(
        ("env", "option", "text"),
        [
            ("FAKERUN_MAX_TIME", "--fake-max-time", "2x"),
            ("FAKERUN_SEED", "--fake-seed", "x"),
            ("FAKERUN_SPEED", "--fake-speed", "0"),
            ("FAKERUN_EXEC", "--fake-exec", "maybe"),
            ("FAKERUN_LOOP", "--fake-loop", "2"),
            ("FAKERUN_LOG_FORMAT", "--fake-log-format", "yaml"),
            ("FAKERUN_LOG_LEVEL", "--fake-log-level", "trace"),
            ("FAKERUN_TRAINER", "--fake-trainer", "no-such-trainer"),
        ],
    )
    def test_environment(self, capsys: pytest.CaptureFixture[str], env: str, option: str, text: str) -> None:
        """The line names the option and the variable the value came from."""
        line = one_line(capsys, ["train.py"], {env: text})
        assert line.startswith(f"fakerun: error: argument {option}: ")
        assert repr(text) in line
        assert line.endswith(f"(from {env})")

    @pytest.mark.parametrize(
        ("text", "option"),
        [
            ("max_steps = true", "--fake-max-steps"),
            ("max_steps = 1.5", "--fake-max-steps"),
            ("max_steps = 0", "--fake-max-steps"),
            ("seed = [1]", "--fake-seed"),
            ("speed = -1", "--fake-speed"),
            ("speed = true", "--fake-speed"),
            ("max_time = '2x'", "--fake-max-time"),
            ("max_time = 0", "--fake-max-time"),
            ("exec = 'maybe'", "--fake-exec"),
            ("exec = 2", "--fake-exec"),
            ("model = 3", "--fake-model"),
            ("log_format = 'xml'", "--fake-log-format"),
            ("log_level = 'error'", "--fake-log-level"),
            ("trainer = 'no-such-trainer'", "--fake-trainer"),
            ("[fakerun]\nfail = {a = 1}", "--fake-fail"),
        ],
    )
    def test_config_file(
        self, capsys: pytest.CaptureFixture[str], tmp_path: Path, text: str, option: str
    ) -> None:
        """The line names the option and the config file the value came from."""
        path = tmp_path / "c.toml"
        path.write_text(text)
        line = one_line(capsys, ["--fake-config", str(path), "train.py"])
        assert line.startswith(f"fakerun: error: argument {option}: ")
        assert line.endswith(f"(from config file {path})")

    def test_list_presets_with_bad_value(self, capsys: pytest.CaptureFixture[str]) -> None:
        """With --fake-list-presets and no script, a bad value is still reported in one line."""
        line = one_line(capsys, ["--fake-list-presets", "--fake-seed", "x"])
        assert line.startswith("fakerun: error: argument --fake-seed: ")


class TestNoTraceback:
    """Bad input of any kind ends in SystemExit, never in another exception."""

    @pytest.mark.parametrize(
        ("argv", "environ"),
        [
            (["--fake-seed", "\x00"], {}),
            (["--fake-speed", "1e999", "t.py"], {}),
            (["--fake-max-time", "9" * 400 + "h", "t.py"], {}),
            (["--fake-config", "/dev/null/x", "t.py"], {}),
            (["t.py"], {"PET_NODE_RANK": ""}),
            (["t.py"], {"PET_VIRTUAL_LOCAL_RANK": "1.0"}),
            (["t.py"], {"PET_DUPLICATE_STDOUT_FILTERS": ""}),
            (["--fake-list-presets", "--bogus"], {}),
            (["--fake-model"], {}),
        ],
    )
    def test_exits_cleanly(
        self, capsys: pytest.CaptureFixture[str], argv: list[str], environ: dict[str, str]
    ) -> None:
        """Parsing either succeeds or raises SystemExit with a non-zero code and no traceback."""
        try:
            parse(argv, environ)
        except SystemExit as exc:
            assert exc.code in (1, 2)
        assert "Traceback" not in capsys.readouterr().err


class TestProgName:
    """The program name is argv[0]'s basename, and "fakerun" under `python -m fakerun`."""

    @pytest.mark.parametrize(
        ("argv0", "expected"),
        [
            ("/usr/local/bin/fakerun", "fakerun"),
            ("fakerun", "fakerun"),
            ("/opt/venv/bin/torchrun", "torchrun"),
            ("torchrun", "torchrun"),
            ("/work/main/fakerun/__main__.py", "fakerun"),
            ("", "fakerun"),
        ],
    )
    def test_prog_name(self, argv0: str, expected: str) -> None:
        """prog_name maps argv[0] to the name used in usage and error lines."""
        assert prog_name(argv0) == expected


def test_torchrun_args_fields_match_parser() -> None:
    """Every TorchrunArgs field is an argparse dest of the parser, so no value is silently dropped."""
    dests = {action.dest for action in build_parser("fakerun", launch=True)._actions}
    assert {f for f in TorchrunArgs.__dataclass_fields__} - {"explicit"} <= dests


def test_use_env_is_launch_only() -> None:
    """torch.distributed.launch's --use-env (both spellings, default off); torchrun refuses it."""
    assert parse_command_line(["train.py"], {}, "launch.py", launch=True).torchrun.use_env is False
    for spelling in ("--use-env", "--use_env"):
        cmd = parse_command_line([spelling, "train.py"], {}, "launch.py", launch=True)
        assert cmd.torchrun.use_env is True
    with pytest.raises(SystemExit) as info:
        parse_command_line(["--use-env", "train.py"], {}, "torchrun")
    assert info.value.code == 2


class TestExplicit:
    """TorchrunArgs.explicit tells options the user set from defaults (default node rank: play all nodes)."""

    @pytest.mark.parametrize(
        "argv,env,given",
        [
            (["--nnodes", "2", "train.py"], {}, False),
            (["--nnodes", "2", "--node-rank", "0", "train.py"], {}, True),
            (["--nnodes", "2", "--node_rank=0", "train.py"], {}, True),
            (["--nnodes", "2", "--node-r", "0", "train.py"], {}, True),
            (["--nnodes", "2", "train.py", "--node-rank", "3"], {}, False),
            (["--nnodes", "2", "train.py"], {"PET_NODE_RANK": "0"}, True),
        ],
    )
    def test_node_rank(self, argv: list[str], env: dict[str, str], given: bool) -> None:
        """Spelled either way, abbreviated or from PET_NODE_RANK counts; a script argument does not."""
        assert ("node_rank" in parse_command_line(argv, env).torchrun.explicit) is given


# --- hardening: values that pass the parser's types and would crash or hang later -------------------

HUGE = str(10**30)
NINES = "9" * 5000  # more digits than int() converts


class TestFakeLimits:
    """--fake-* numbers beyond fakerun's documented caps, from any source: one line, exit code 2."""

    @pytest.mark.parametrize(
        ("option", "text"),
        [
            ("--fake-speed", "1e-310"),
            ("--fake-speed", "0.0001"),
            ("--fake-speed", "1e10"),
            ("--fake-speed", "5e-324"),
            ("--fake-speed", "1e400"),
            ("--fake-seed", str(2**64)),
            ("--fake-seed", NINES),
            ("--fake-max-steps", str(10**12 + 1)),
            ("--fake-max-steps", HUGE),
            ("--fake-start-step", HUGE),
            ("--fake-max-time", "1000000001"),
            ("--fake-max-time", "277778h"),
            ("--fake-max-time", "99999999999h"),
            ("--fake-max-time", "9" * 400 + "h"),
        ],
    )
    def test_command_line(self, capsys: pytest.CaptureFixture[str], option: str, text: str) -> None:
        """The line names the option, and stays short however long the value."""
        line = one_line(capsys, [option, text, "train.py"])
        assert line.startswith(f"fakerun: error: argument {option}: ")
        assert len(line) < 300

    @pytest.mark.parametrize(
        ("text", "option"),
        [
            ("speed = 1e-310", "--fake-speed"),
            ("speed = inf", "--fake-speed"),
            ("speed = nan", "--fake-speed"),
            ("seed = 18446744073709551616", "--fake-seed"),
            ("max_time = 1e300", "--fake-max-time"),
            ("max_steps = 10000000000000", "--fake-max-steps"),
            ("fail = 'bogus'", "--fake-fail"),
            ("fail = 'oom@0'", "--fake-fail"),
        ],
    )
    def test_config_file(
        self, capsys: pytest.CaptureFixture[str], tmp_path: Path, text: str, option: str
    ) -> None:
        """A config file's value past the cap names the option and the file."""
        path = tmp_path / "c.toml"
        path.write_text(text)
        line = one_line(capsys, ["--fake-config", str(path), "train.py"])
        assert line.startswith(f"fakerun: error: argument {option}: ")
        assert line.endswith(f"(from config file {path})")

    def test_environment(self, capsys: pytest.CaptureFixture[str]) -> None:
        """A FAKERUN_* value past the cap names the variable."""
        line = one_line(capsys, ["train.py"], {"FAKERUN_SPEED": "1e-310"})
        assert line.startswith("fakerun: error: argument --fake-speed: ") and line.endswith(
            "(from FAKERUN_SPEED)"
        )

    @pytest.mark.parametrize(
        ("option", "text", "field", "expected"),
        [
            ("--fake-speed", "0.001", "speed", 0.001),
            ("--fake-speed", "1e9", "speed", 1e9),
            ("--fake-seed", str(2**64 - 1), "seed", 2**64 - 1),
            ("--fake-max-steps", str(10**12), "max_steps", 10**12),
            ("--fake-start-step", str(10**12), "start_step", 10**12),
            ("--fake-max-time", "1000000000", "max_time", 1e9),
        ],
    )
    def test_caps_are_inclusive(self, option: str, text: str, field: str, expected: object) -> None:
        """The documented caps themselves are accepted."""
        assert getattr(parse([option, text, "train.py"]).fake, field) == expected


class TestFakeFail:
    """--fake-fail SCENARIO[@STEP][:RANK]: known scenario names only, STEP >= 1, RANK >= 0."""

    @pytest.mark.parametrize("name", [*FAILURE_KINDS, "random"])
    @pytest.mark.parametrize("suffix", ["", "@1", ":0", "@250:7"])
    def test_known_names(self, name: str, suffix: str) -> None:
        """Every scenario of the simulation, and random, with or without a step and a rank."""
        assert parse(["--fake-fail", name + suffix, "train.py"]).fake.fail == (name + suffix,)

    def test_unknown_name_lists_the_known_ones(self, capsys: pytest.CaptureFixture[str]) -> None:
        """An unknown scenario is one line naming every scenario there is (it used to be ignored)."""
        line = one_line(capsys, ["--fake-fail", "bogus", "train.py"])
        assert line.startswith("fakerun: error: argument --fake-fail: invalid scenario 'bogus'")
        assert all(name in line for name in (*FAILURE_KINDS, "random"))

    @pytest.mark.parametrize(
        "text",
        [
            "",
            "bogus@5",
            "oom@0",
            "oom@-1",
            "oom@x",
            "oom@1.5",
            "oom@",
            "oom:",
            "oom:-1",
            "oom:x",
            "oom@5:1:2",
            HUGE,
        ],
    )
    def test_bad_forms(self, capsys: pytest.CaptureFixture[str], text: str) -> None:
        """A bad name, step or rank is one line that shows the syntax."""
        line = one_line(capsys, ["--fake-fail", text, "train.py"])
        assert line.startswith("fakerun: error: argument --fake-fail: ")
        assert "SCENARIO[@STEP][:RANK]" in line

    def test_repeated_and_listed(self) -> None:
        """Repeated on the command line, comma-separated in FAKERUN_FAIL: every scenario, in order."""
        argv = ["--fake-fail", "oom@5:1", "--fake-fail", "hang@9", "train.py"]
        assert parse(argv).fake.fail == ("oom@5:1", "hang@9")
        assert parse(["train.py"], {"FAKERUN_FAIL": "xid@3:2, node-loss"}).fake.fail == (
            "xid@3:2",
            "node-loss",
        )


class TestTorchrunLimits:
    """Counts and times no real job uses: usage and one `prog: error:` line, exit code 2, before any work."""

    @pytest.mark.parametrize(
        ("argv", "environ", "option"),
        [
            (["--nproc-per-node", "99999999999999999999"], {}, "--nproc-per-node/--nproc_per_node"),
            (["--nproc-per-node", "4097"], {}, "--nproc-per-node/--nproc_per_node"),
            ([], {"PET_NPROC_PER_NODE": "100000"}, "--nproc-per-node/--nproc_per_node"),
            (["--nnodes", "1:99999999999999"], {}, "--nnodes"),
            (["--nnodes", "65537"], {}, "--nnodes"),
            (["--max-restarts", HUGE], {}, "--max-restarts/--max_restarts"),
            (["--max-restarts", "1000001"], {}, "--max-restarts/--max_restarts"),
            (["--monitor-interval", "inf"], {}, "--monitor-interval/--monitor_interval"),
            (["--monitor-interval", "1e10"], {}, "--monitor-interval/--monitor_interval"),
            (["--shutdown-timeout", "1" + "0" * 400], {}, "--shutdown-timeout/--shutdown_timeout"),
        ],
    )
    def test_usage_error(
        self, capsys: pytest.CaptureFixture[str], argv: list[str], environ: dict[str, str], option: str
    ) -> None:
        """argparse's shape: the usage, then one short line naming the option."""
        lines = fails(capsys, [*argv, "train.py"], environ)
        assert lines[0].startswith("usage: fakerun ")
        assert lines[-1].startswith(f"fakerun: error: argument {option}: ")
        assert len(lines[-1]) < 300

    @pytest.mark.parametrize(
        "argv",
        [
            ["--nproc-per-node", "4096"],
            ["--nnodes", "1:65536"],
            ["--max-restarts", "1000000"],
            ["--monitor-interval", "86400"],
            ["--shutdown-timeout", "86400"],
            ["--nproc-per-node", "foo"],  # torchrun's own ValueError, reported by the plan
            ["--nnodes", "3:2"],
        ],
    )
    def test_within_caps_parse(self, argv: list[str]) -> None:
        """The caps themselves, and values torchrun refuses in its own words later, parse."""
        parse([*argv, "train.py"])


def launch(argv: list[str], environ: dict[str, str] | None = None) -> None:
    """Parse, plan and check_launch as main does; LaunchError on what torchrun would raise."""
    env = environ or {}
    args = parse([*argv, "train.py"], env).torchrun
    plan = make_plan(args, env, fqdn="localhost", free_port=39165, cpu_count=2)
    check_launch(plan, env)


class TestLaunchChecks:
    """Values torchrun accepts at parse time and dies of later: its exception line, exit code 1, at once."""

    @pytest.mark.parametrize(
        ("argv", "environ", "line"),
        [
            (
                ["--rdzv-backend", "foo"],
                {},
                "ValueError: The rendezvous backend 'foo' is not registered. "
                "Did you forget to call `register`?",
            ),
            (
                ["--rdzv-backend", "etcd3", "--nnodes", "2", "--rdzv-endpoint", "localhost:29400"],
                {},
                "ValueError: The rendezvous backend 'etcd3' is not registered. "
                "Did you forget to call `register`?",
            ),
            (
                ["--master-port", "70000"],
                {},
                "ValueError: The port number of the rendezvous endpoint '127.0.0.1:70000' must be an integer "
                "between 0 and 65536.",
            ),
            (
                ["--master-port", "-1"],
                {},
                "ValueError: The port number of the rendezvous endpoint '127.0.0.1:-1' must be an integer "
                "between 0 and 65536.",
            ),
            (
                ["--nnodes", "1", "--rdzv-backend", "c10d", "--rdzv-endpoint", "localhost:99999"],
                {},
                "ValueError: The port number of the rendezvous endpoint 'localhost:99999' must be an integer "
                "between 0 and 65536.",
            ),
            (
                ["--master-addr", "a b", "--master-port", "29500"],
                {},
                "ValueError: The hostname of the rendezvous endpoint 'a b:29500' must be a dot-separated "
                "list of labels, an IPv4 address, or an IPv6 address.",
            ),
            (["--monitor-interval", "-1"], {}, "ValueError: sleep length must be non-negative"),
            (["--monitor-interval", "nan"], {}, "ValueError: Invalid value NaN (not a number)"),
            (["--shutdown-timeout", "-1"], {}, "ValueError: shutdown_timeout must be non-negative, got -1"),
            (
                [],
                {"TORCH_ELASTIC_SHUTDOWN_TIMEOUT": "nan"},
                "ValueError: invalid literal for int() with base 10: 'nan'",
            ),
            (["--nnodes", "2", "--node-rank", "-1"], {}, "AssertionError: node_rank -1 must be >= 0"),
        ],
    )
    def test_torch_exception_line(self, argv: list[str], environ: dict[str, str], line: str) -> None:
        """The line is torch's own exception text; the exit code is torchrun's 1."""
        with pytest.raises(LaunchError) as info:
            launch(argv, environ)
        assert info.value.exc_line == line
        assert info.value.exit_code == 1

    def test_shutdown_timeout_variable_past_the_cap(self) -> None:
        """A TORCH_ELASTIC_SHUTDOWN_TIMEOUT torch would take and overflow on is fakerun's one line."""
        with pytest.raises(LaunchError) as info:
            launch([], {"TORCH_ELASTIC_SHUTDOWN_TIMEOUT": "1" + "0" * 400})
        assert info.value.exc_line.startswith("fakerun: error: TORCH_ELASTIC_SHUTDOWN_TIMEOUT=")
        assert info.value.exit_code == 1 and len(info.value.exc_line) < 200

    @pytest.mark.parametrize(
        ("argv", "environ"),
        [
            (["--rdzv-backend", "c10d"], {}),
            (["--rdzv-backend", "etcd"], {}),
            (["--rdzv-backend", "etcd-v2"], {}),
            (["--rdzv-backend", "bogus", "--standalone"], {}),  # --standalone replaces the backend
            (["--master-port", "0"], {}),
            (["--master-port", "65535"], {}),
            (["--monitor-interval", "0"], {}),
            (["--shutdown-timeout", "0"], {}),
            ([], {"TORCH_ELASTIC_SHUTDOWN_TIMEOUT": "-5"}),  # torch checks only an explicit option's sign
            (["--nnodes", "2", "--node-rank", "1"], {}),
        ],
    )
    def test_accepted(self, argv: list[str], environ: dict[str, str]) -> None:
        """What torch accepts passes the checks."""
        launch(argv, environ)
