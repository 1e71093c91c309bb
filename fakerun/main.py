"""`fakerun`: parse torchrun's command line, plan the job, run it, and turn the outcome into an exit code.

A --fake-exec launcher loads the launcher alone: the simulation (dialects, hints, the coordinator, the
worker's trainer, the presets) is imported by the simulated path's functions, all of it by
preload_simulation() before the first fork (tests/unit/test_lazy_imports.py holds `import fakerun.main` free
of it); the multi-node rendezvous is imported by a job of several nodes.
"""

from __future__ import annotations

import dataclasses
import functools
import importlib
import os
import runpy
import selectors
import shutil
import socket
import sys
import time
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

from fakerun import names
from fakerun.cli import misspelled_env, parse_command_line, prog_name
from fakerun.launcher import glog, preflight, report
from fakerun.launcher.console import STDERR, STDOUT, Console, open_std_streams, quiet_broken_pipe
from fakerun.launcher.elastic import MeetError, RoundRules, round_rules
from fakerun.launcher.envs import WorkerSlot, worker_argv, worker_env, worker_slots
from fakerun.launcher.logdir import LogDir, LogDirError
from fakerun.launcher.messages import LauncherLog, TorchrunVoice, log_level, python_executable, site_packages
from fakerun.launcher.outfile import OutputFile, notice, reason, set_notice_clock, warning
from fakerun.launcher.plan import LaunchError, LaunchPlan, NodePlan, check_launch, make_plan
from fakerun.launcher.procs import ChildMain, exec_child
from fakerun.launcher.ranklogs import RankLogs
from fakerun.launcher.runtime import ChildFactory, FatalSignal, LocalWorkerGroup, die_of, run_job
from fakerun.launcher.slurm import apply_slurm, simulated_hosts, slurm_job
from fakerun.options import CommandLine
from fakerun.paths import state_dir
from fakerun.render.bar import BarWidth
from fakerun.sim import identity
from fakerun.sim.clock import JobClock
from fakerun.tools.pydoors import PYLIB, module_path

if TYPE_CHECKING:
    from fakerun import presets
    from fakerun.launcher.cluster import Membership, NameHosts
    from fakerun.launcher.control import ControlHub, SavedStep
    from fakerun.launcher.meet import Links
    from fakerun.worker.trainer import SimContext

# Every module a simulated job runs, which its launcher imports before it forks the first worker: a worker
# then imports nothing (each import after the fork would cost every rank its time and private memory; the
# audit is tests/integration/test_fork_imports.py). The worker's entry point brings the trainer, its printer,
# every dialect and the simulation; the rest is what the launcher's side of a simulated job adds.
SIMULATION_MODULES = (
    "fakerun.worker.main",
    "fakerun.dialects",
    "fakerun.jobconfig",
    "fakerun.coordinator",
    "fakerun.launcher.control",
    "fakerun.launcher.cluster",
    "fakerun.render.c10",
    "fakerun.sim.failures",
    "fakerun.sim.run",
)

# The most output copies (fakerun-tail's rank files) kept open at once.
RANK_FILES_OPEN = 128
# The model simulated when neither --fake-model nor the script's arguments name one.
DEFAULT_MODEL = "llama3-8b"


@dataclasses.dataclass
class Current:
    """The job as this agent's latest round made it: its plan and simulated run (an elastic job's round can
    shrink it), and the worker group and voice that follow them."""

    plan: LaunchPlan
    ctx: SimContext | None
    group: LocalWorkerGroup | None = None
    voice: TorchrunVoice | None = None
    rank_logs: RankLogs | None = None  # fakerun-tail's copies, whose meta.json follows the job's shape

    def regroup(self, cmd: CommandLine, bundle: presets.PresetBundle, membership: Membership) -> None:
        """A round went on with other nodes (this one keeps its place among `membership.members`)."""
        self.resize(cmd, bundle, membership.members.index(self.plan.nodes[0].group_rank), membership.hosts)

    def resize(self, cmd: CommandLine, bundle: presets.PresetBundle, me: int, hosts: tuple[str, ...]) -> None:
        """The job has the nodes `hosts`, this agent being group rank `me`: new sizes, same model and seed."""
        from fakerun.jobconfig import JobConfigError, build_run

        plan, ctx = self.plan, self.ctx
        assert ctx is not None
        plan = dataclasses.replace(plan, nodes=(NodePlan(me, hosts[me]),), group_world_size=len(hosts))
        job = ctx.run.job
        try:
            # The model is the job's, whatever default the other size would have picked.
            run, _ = build_run(
                cmd,
                dataclasses.replace(bundle, model=job.model),
                nnodes=len(hosts),
                nproc_per_node=plan.nproc_per_node,
                model_given=True,
                fresh_seed=job.seed,
            )
        except JobConfigError as exc:
            print(notice(f"the job keeps its simulated size: at {len(hosts)} nodes, {exc}"), file=sys.stderr)
            run = ctx.run
        self.plan, self.ctx = plan, dataclasses.replace(ctx, run=run, hosts=hosts, real_node=me)
        if self.group is not None:
            self.group.plan = plan
            # This agent's one run directory, under the node's new group rank.
            self.group.run_dirs = dict(zip([me], self.group.run_dirs.values(), strict=True))
        if self.voice is not None:
            self.voice.plan = plan
        if self.rank_logs is not None:
            self.rank_logs.describe(_rank_meta(cmd, plan))


def _free_port() -> int:
    """A port the kernel says is free now, as torch's c10d store picks for `localhost:0`."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("", 0))
        return int(s.getsockname()[1])


def host_gpu_count(driver_dir: str = "/proc/driver/nvidia/gpus") -> int:
    """The NVIDIA GPUs this host's driver lists (0 without a driver), which CUDA would count for the real
    scripts of --fake-exec; fakerun's own nvidia-smi shims cannot fool it."""
    try:
        return len(os.listdir(driver_dir))
    except OSError:
        return 0


def _launch_error_text(exc: LaunchError, argv0: str) -> str:
    """A LaunchError as torchrun prints it: its traceback and exception line, or the line alone."""
    if exc.traceback is None:
        return exc.exc_line + "\n"
    return report.exception_text(exc.exc_line, exc.traceback, argv0, site_packages(), exc.cause)


def _log_startup(plan: LaunchPlan, log: LauncherLog, log_dir: LogDir) -> None:
    """What torchrun prints before it starts workers: INFO blocks and the OMP_NUM_THREADS banner."""
    args = plan.args
    if args.standalone:
        log.block(
            "I",
            glog.RUN_PY_RDZV_INFO,
            glog.rendezvous_info_block(plan.rdzv.backend, plan.rdzv.endpoint, plan.rdzv.run_id),
        )
    log.log("I", glog.RUN_PY_USING_NPROC, glog.using_nproc(plan.nproc_per_node))
    if plan.set_omp_threads:
        for message in glog.omp_banner():
            log.log("W", glog.RUN_PY_OMP, message)
    if log.enabled("I"):
        log.block("I", glog.LAUNCHER_API_CONFIG, glog.launch_config_block(_config_view(plan, log_dir)))


def _config_view(plan: LaunchPlan, log_dir: LogDir) -> glog.LaunchConfigView:
    """The values torchrun's `Starting elastic_operator with launch configs` block shows."""
    args = plan.args
    # torch's order: --rdzv-conf as parsed (strings), then run.py's `rank` for a static rendezvous, then
    # LaunchConfig.__post_init__'s default timeout when none was given.
    conf: dict[str, object] = dict(plan.rdzv.conf)
    if plan.rdzv.backend == "static":
        conf["rank"] = args.node_rank
    conf.setdefault("timeout", 900)
    return glog.LaunchConfigView(
        entrypoint=args.training_script,
        min_nodes=plan.min_nodes,
        max_nodes=plan.max_nodes,
        nproc_per_node=plan.nproc_per_node,
        run_id=plan.rdzv.run_id,
        rdzv_backend=plan.rdzv.backend,
        rdzv_endpoint=plan.rdzv.endpoint,
        rdzv_configs=conf,
        max_restarts=args.max_restarts,
        monitor_interval=args.monitor_interval,
        log_dir=log_dir.base,
        metrics_cfg={},
        event_log_handler=args.event_log_handler,
        numa_options=None,
        signals_to_handle=args.signals_to_handle,
        duplicate_stdout_filters=args.duplicate_stdout_filters,
        duplicate_stderr_filters=args.duplicate_stderr_filters,
    )


def _fresh_seed(plan: LaunchPlan) -> int:
    """A seed for a run given none: random when this launcher plays every node, else shared by run id."""
    from fakerun.jobconfig import draw_seed

    if len(plan.nodes) >= plan.group_world_size:
        return draw_seed()
    return draw_seed(f"{plan.rdzv.run_id}|{plan.rdzv.endpoint}")


def _check(cmd: CommandLine, plan: LaunchPlan, bundle: presets.PresetBundle, clock: JobClock) -> int:
    """--fake-check: the job's GPU-memory verdict on stdout, exit 0 if it fits and 1 if not."""
    from fakerun.jobconfig import check_report

    code, line = check_report(_sim_context(cmd, plan, bundle, clock).run.job)
    print(line)
    return code


def _sim_context(
    cmd: CommandLine, plan: LaunchPlan, bundle: presets.PresetBundle, clock: JobClock
) -> SimContext:
    """The simulated job every rank shares; a job that cannot be simulated ends the run with one line."""
    from fakerun import dialects, presets
    from fakerun.jobconfig import JobConfigError, build_run
    from fakerun.worker.trainer import SimContext

    try:
        run, hints = build_run(
            cmd,
            bundle,
            nnodes=plan.group_world_size,
            nproc_per_node=plan.nproc_per_node,
            model_given=cmd.fake.model is not None,
            fresh_seed=_fresh_seed(plan),
        )
    except JobConfigError as exc:
        print(f"{cmd.prog}: error: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
    for line in hints.notices:
        print(notice(line), file=sys.stderr)
    trainer = dialects.choose(cmd.fake.trainer, hints.style, cmd.fake.log_format)
    # Rank 0's bar reaches the terminal when torchrun would show its bar's stream there (no --redirects).
    bar_file, bar_bit = (sys.stdout, 1) if dialects.bar_stream(trainer) == "stdout" else (sys.stderr, 2)
    tty = bar_file.isatty() and not (plan.redirects.get(0, 0) & bar_bit)
    width = BarWidth(shutil.get_terminal_size().columns) if tty else None
    # Simulated names for every node; the ones this launcher plays keep the names the plan gave them.
    hosts = [presets.host_name(bundle.cluster, i) for i in range(plan.group_world_size)]
    for node in plan.nodes:
        hosts[node.group_rank] = node.host
    return SimContext(
        run=run,
        hosts=tuple(hosts),
        speed=cmd.fake.speed,
        log_format=cmd.fake.log_format,
        log_level=cmd.fake.log_level,
        loop=cmd.fake.loop,
        bar_width=width,
        color=sys.stdout.isatty() and "NO_COLOR" not in os.environ,
        trainer=trainer,
        grid=cmd.fake.grid or dialects.DIALECTS[trainer].grid,
        clock=clock,
        real_node=plan.nodes[0].group_rank,
        settings=tuple({**hints.settings, **_logger_version(trainer)}.items()),
        script_exit=hints.script_exit,
        script_stdout=hints.script_stdout,
        files=not cmd.fake.no_files,
        tensorboard=cmd.fake.tensorboard,
    )


def _logger_version(trainer: str) -> dict[str, str]:
    """The default logger's version (the bar's v_num): one past the highest lightning_logs/version_N."""
    from fakerun.dialects.lightning import LightningDialect

    if trainer != LightningDialect.name:
        return {}
    try:
        names = os.listdir("lightning_logs")
    except OSError:
        names = []
    numbers = [n.removeprefix("version_") for n in names if n.startswith("version_")]
    versions = [int(v) for v in numbers if v.isdigit() and os.path.isdir(f"lightning_logs/version_{v}")]
    return {"v_num": str(max(versions) + 1 if versions else 0)}


def _shown_pid(current: Current) -> Callable[[WorkerSlot, int, int], int] | None:
    """The pid a worker's own agent would name: real on the node this launcher is, drawn on the others."""
    if current.ctx is None:
        return None  # --fake-exec: the scripts are what they are and print their own pids

    def shown(slot: WorkerSlot, pid: int, restart_count: int) -> int:
        plan, ctx = current.plan, current.ctx
        assert ctx is not None
        if slot.node_index == plan.nodes[0].group_rank:
            return pid
        job = ctx.run.job
        pids = identity.worker_pids(job.seed, slot.node_index, plan.nproc_per_node, restart_count, job.nnodes)
        return pids[slot.local_rank]

    return shown


def _rank_meta(cmd: CommandLine, plan: LaunchPlan) -> dict[str, Any]:
    """The job as fakerun-tail reads it (meta.json): this launcher's nodes and their ranks."""
    return {
        "run_id": plan.rdzv.run_id,
        "script": cmd.torchrun.training_script,
        "nnodes": plan.group_world_size,
        "nproc_per_node": plan.nproc_per_node,
        "nodes": {str(node.group_rank): node.host for node in plan.nodes},
        "ranks": [slot.rank for slot in worker_slots(plan)],
    }


def _rank_logs(cmd: CommandLine, plan: LaunchPlan, console: Console) -> RankLogs | None:
    """The per-rank output copies fakerun-tail reads; without them (read-only /tmp) the job still runs."""
    directory = state_dir()
    try:
        return RankLogs(os.path.join(directory, f"job-{os.getpid()}"), _rank_meta(cmd, plan), console.warn)
    except OSError as exc:
        console.warn(
            notice(
                f"cannot write the job state in {directory}: {reason(exc)}; "
                "fakerun-tail and fakerun-smi will not see this job"
            )
        )
        return None


def _open_metrics(cmd: CommandLine, console: Console) -> OutputFile | None:
    """The --fake-metrics file, created now so that a bad path fails before anything starts."""
    if cmd.fake.metrics is None:
        return None

    def failed(f: OutputFile, exc: OSError) -> None:
        console.warn(warning("the metrics file", f.path, exc, "no more records are written to it"))

    try:
        return OutputFile.open(cmd.fake.metrics, failed)
    except OSError as exc:
        print(
            f"{cmd.prog}: error: cannot write the metrics file {cmd.fake.metrics}: {exc.strerror}",
            file=sys.stderr,
        )
        raise SystemExit(1) from None


def _control(
    current: Current,
    metrics: OutputFile | None,
    saved: SavedStep,
    links: Links | None,
    console: Console,
    publish: bool,
    rules: RoundRules | None,
    regroup: Callable[[Membership], None],
) -> Callable[[selectors.BaseSelector], ControlHub]:
    """Builds the coordinator's channels (and, on a multi-node job, the links to the other agents; an
    elastic job's root decides its rounds by `rules` and takes in agents that join it while it runs, and
    each agent follows a new membership)."""
    from fakerun.coordinator import Coordinator
    from fakerun.launcher.cluster import ClusterLink
    from fakerun.launcher.control import ControlHub
    from fakerun.sim.run import resumed

    plan, ctx = current.plan, current.ctx
    assert ctx is not None

    def warn(line: str) -> None:
        console.launcher_lines(line + "\n")

    def make(selector: selectors.BaseSelector) -> ControlHub:
        def coordinator(attempt: int, ranks: Iterable[int]) -> Coordinator:
            assert current.ctx is not None
            run = resumed(current.ctx.run, saved.step)
            return Coordinator(
                run,
                ranks=ranks,
                speed=ctx.speed,
                run_id=plan.rdzv.run_id,
                attempt=attempt,
                record_steps=metrics is not None,
                clock=ctx.clock,
            )

        hub = ControlHub(
            selector,
            coordinator,
            ctx.hosts,
            plan.nproc_per_node,
            metrics,
            saved=saved,
            warn=warn,
            loop=ctx.loop,
            state_failed=not publish,  # the state directory already failed (and was warned about)
        )
        if links is not None:
            hub.world_size = plan.world_size
            local = frozenset(slot.rank for slot in worker_slots(plan))
            root = links.assignment.group_rank == 0
            cluster = ClusterLink(
                selector,
                links.assignment.group_rank,
                local,
                plan.nproc_per_node,
                warn,
                peers=dict(links.peers),
                listener=links.listener,
                rules=rules if root else None,
                hosts=ctx.hosts,
                me=links.me if root and rules is not None else None,
                master=(plan.rdzv.master_addr, plan.rdzv.master_port),
                epoch=ctx.clock.mono0 if ctx.clock is not None else time.monotonic(),
                name_hosts=_host_namer(ctx.run.job.cluster, links.renamed),
                round_no=links.assignment.round,
            )
            links.peers.clear()  # the cluster owns them now
            links.listener = None
            hub.regroup = regroup
            hub.attach(cluster)
        return hub

    return make


def _host_namer(cluster: presets.ClusterSpec, renamed: bool) -> NameHosts:
    """How node 0 names the nodes of a round that takes in agents joining the running job: by their own host
    names, unless two would share one (agents sharing a machine); then every node takes the cluster's names,
    as at a first rendezvous of such agents (`renamed`), and later newcomers the cluster's first free ones."""
    from fakerun import presets

    shared = renamed

    def name(kept: tuple[str, ...], arriving: tuple[str, ...]) -> tuple[str, ...]:
        nonlocal shared
        hosts = kept + arriving
        if not shared and len(set(hosts)) == len(hosts):
            return hosts
        if not shared:
            shared = True
            return tuple(presets.host_name(cluster, i) for i in range(len(hosts)))
        named = list(kept)
        for host in arriving:
            free = (presets.host_name(cluster, i) for i in range(len(named) + 1))
            named.append(next((n for n in free if n not in named), f"{host}-{len(named)}"))
        return tuple(named)

    return name


def preload_simulation() -> None:
    """Imports SIMULATION_MODULES: a simulated job's launcher calls it before it forks any worker."""
    for name in SIMULATION_MODULES:
        importlib.import_module(name)
    # setproctitle relocates the process's environment on its first use: done once here, the workers share
    # the result instead of each copying it (they retitle themselves as torch's workers are named).
    import setproctitle

    setproctitle.getproctitle()


def _bar_stream(trainer: str) -> int:
    """The launcher's stream (STDOUT or STDERR) that the dialect `trainer` draws its progress bars on."""
    from fakerun import dialects

    return STDOUT if dialects.bar_stream(trainer) == "stdout" else STDERR


def _child_factory(cmd: CommandLine, current: Current, python: str, saved: SavedStep | None) -> ChildFactory:
    """What each forked worker runs: the real program (--fake-exec) or the simulated trainer (which resumes
    from the `saved` step)."""
    base_env = dict(os.environ)
    fake = cmd.fake
    spawned: dict[int, float] = {}  # by restart count: when the first worker of that attempt was made

    def make(slot: WorkerSlot, restart_count: int, error_file: str) -> ChildMain:
        plan, ctx = current.plan, current.ctx
        env = worker_env(base_env, plan, slot, restart_count=restart_count, error_file=error_file)
        argv = worker_argv(plan, python, slot.local_rank)
        if fake.exec and plan.args.run_path:
            return _run_path_child(argv[2:], env)
        if fake.exec:
            return exec_child(argv, env)
        from fakerun.sim.run import resumed
        from fakerun.worker.main import worker_main

        assert ctx is not None and saved is not None
        # A restarted attempt resumes from the newest checkpoint, as a real job's --resume would.
        rank_ctx = dataclasses.replace(
            ctx,
            run=resumed(ctx.run, saved.step),
            spawned=spawned.setdefault(restart_count, time.monotonic()),
        )
        return lambda: worker_main(argv, env, rank_ctx)

    return make


def _run_path_child(script_argv: list[str], env: dict[str, str]) -> ChildMain:
    """`--run-path`: run the script with runpy in the forked interpreter, as torch's fork start method."""

    def run() -> int:
        os.environ.clear()
        os.environ.update(env)
        sys.argv = list(script_argv)
        runpy.run_path(script_argv[0], run_name="__main__")
        return 0

    return run


def _load_presets(cmd: CommandLine) -> presets.PresetBundle:
    """The model, GPU and cluster presets of the job; a bad name or file ends the run with one line."""
    from fakerun import presets

    fake = cmd.fake
    try:
        return presets.resolve(fake.model or DEFAULT_MODEL, fake.gpu, fake.cluster, fake.storage)
    except presets.PresetError as exc:
        print(f"{cmd.prog}: error: {exc}", file=sys.stderr)
        raise SystemExit(2) from None


def _host_name(bundle: presets.PresetBundle, index: int) -> str:
    """The simulated cluster's name for node `index`."""
    from fakerun import presets

    return presets.host_name(bundle.cluster, index)


def _under_slurm(cmd: CommandLine) -> tuple[CommandLine, str | None]:
    """Under srun, SLURM's job fills the rendezvous options the command line left out; and names this node."""
    job = slurm_job(os.environ)
    if job is None:
        return cmd, None
    args = apply_slurm(cmd.torchrun, job, cmd.torchrun.explicit)
    host = job.node_name or simulated_hosts(job)[job.node_id]
    return dataclasses.replace(cmd, torchrun=args), host


def _install_shims(directory: str, prog: str) -> int:
    """`--fake-install-shims DIR`: torchrun, nvidia-smi and tune shims, then how to use them."""
    from fakerun.tools.shims import install_shims

    try:
        paths = install_shims(directory, python=sys.executable)
    except (OSError, ValueError) as exc:
        print(f"{prog}: error: cannot install the shims: {exc}", file=sys.stderr)
        return 1
    for path in paths:
        print(f"wrote {path}")
    shims = os.path.abspath(directory)
    pylib = os.path.join(shims, PYLIB)
    print(f'run jobs on fakerun with: export PATH="{shims}:$PATH"')
    pythonpath = f'export PYTHONPATH="{pylib}${{PYTHONPATH:+:$PYTHONPATH}}"'
    print(f"and `python -m torch.distributed.run|launch` with: {pythonpath}")
    return 0


def _print_presets() -> None:
    """`--fake-list-presets`: the shipped presets by kind, with their key figures."""
    from fakerun import listing

    print("\n".join(listing.preset_lines()))


def _print_failures() -> None:
    """`--fake-list-failures`: --fake-fail's scenarios, one line each."""
    width = max(len(name) for name in (*names.DESCRIPTIONS, names.RANDOM_FAILURE))
    for name, text in (
        *names.DESCRIPTIONS.items(),
        (names.RANDOM_FAILURE, names.RANDOM_DESCRIPTION),
    ):
        print(f"{name:<{width}}  {text}")
    print("as --fake-fail SCENARIO[@STEP][:RANK], repeatable (default: a seeded step and rank)")


def _source_paths(door: str) -> Callable[[str], str] | None:
    """How torch's log lines name their source under `python -m torch.distributed.run|launch` (relative to
    the first sys.path entry holding it, which is then the working directory); None: site-packages'."""
    if door == "torchrun":
        return None
    site, search = site_packages(), list(sys.path)

    @functools.cache
    def where(source: str) -> str:
        path, _, line = source.rpartition(":")
        return f"{module_path(path, search, site)}:{line}"

    return where


@quiet_broken_pipe
def main(argv: list[str] | None = None, *, door: str = "torchrun") -> int:
    """Console entry point of `fakerun` and `python -m fakerun`; `door` "run" or "launch": the launcher as
    `python -m torch.distributed.<door>` (tools/pydoors.py), argv[0] being that module's path."""
    started_wall, started_mono = time.time(), time.monotonic()
    open_std_streams()
    argv = list(sys.argv if argv is None else argv)
    prog = prog_name(argv[0] if argv else "fakerun")
    cmd = parse_command_line(argv[1:], os.environ, prog=prog, launch=door == "launch")
    for line in misspelled_env(os.environ):
        print(notice(line), file=sys.stderr)
    if cmd.fake.install_shims is not None:
        return _install_shims(cmd.fake.install_shims, prog)
    if not cmd.torchrun.use_env and cmd.torchrun.no_python:
        # launch.py's own check, before run(): a traceback, exit 1.
        line = "ValueError: When using the '--no-python' flag, you must also set the '--use-env' flag."
        sys.stderr.write(report.exception_text(line, "launch_no_python", argv[0], site_packages()))
        return 1
    fake = cmd.fake
    bundle = functools.cache(functools.partial(_load_presets, cmd))
    if not fake.exec or fake.model or fake.gpu or fake.cluster or fake.storage:
        # Loaded now, so that a bad name ends the run before anything starts. A real script's job with none
        # named needs them only for its simulated nodes' host names: their import and files are a fifth of
        # its launcher's start-up, which its first line waits for.
        bundle()
    if cmd.fake.version:
        from fakerun import listing
        from fakerun.sim.stack import stack_for

        print("\n".join(listing.version_lines(stack_for(bundle().cluster), bundle().cluster.name)))
        return 0
    if cmd.fake.list_presets:
        _print_presets()
        return 0
    if cmd.fake.list_failures:
        _print_failures()
        return 0
    try:
        cmd, slurm_host = _under_slurm(cmd)
    except ValueError as exc:
        print(f"{prog}: error: {exc}", file=sys.stderr)
        return 1
    try:
        plan = make_plan(
            cmd.torchrun,
            os.environ,
            fqdn=slurm_host or socket.getfqdn(),
            free_port=_free_port(),
            cpu_count=os.cpu_count() or 1,
            # The real scripts of --fake-exec see this host's GPUs (torch's `gpu` fails without any); a
            # simulated job has the preset's.
            gpus_per_node=host_gpu_count() if cmd.fake.exec else bundle().cluster.gpus_per_node,
            node_host=lambda i: _host_name(bundle(), i),
        )
    except LaunchError as exc:
        sys.stderr.write(_launch_error_text(exc, argv[0]))
        return exc.exit_code
    if cmd.fake.check and not cmd.fake.exec:
        return _check(cmd, plan, bundle(), JobClock(started_wall, started_mono, cmd.fake.speed))
    # Before anything is forked (or any agent met): a job the host cannot hold is refused in one line.
    fd_limit = preflight.raise_fd_limit()
    try:
        fds = preflight.check(
            plan, fd_limit, simulated=not cmd.fake.exec, memory=not cmd.fake.skip_memory_check, prog=prog
        )
    except preflight.Refused as exc:
        print(exc, file=sys.stderr)
        return 1
    # The job's one clock: every timestamp of a simulated job runs at --fake-speed (real scripts: real time).
    clock = JobClock(started_wall, started_mono, 1.0 if cmd.fake.exec else cmd.fake.speed)
    ctx = None
    if not cmd.fake.exec:
        preload_simulation()
        ctx = _sim_context(cmd, plan, bundle(), clock)
    console = Console(
        sys.stdout.buffer,
        sys.stderr.buffer,
        pin_bars=ctx is not None and ctx.bar_width is not None,
        bar_width=ctx.bar_width if ctx is not None else None,
        bar_stream=STDERR if ctx is None else _bar_stream(ctx.trainer),
    )
    metrics = _open_metrics(cmd, console) if ctx is not None else None
    # Under `python -m torch.distributed.run` (or fakerun) run.py's logger is `__main__`, which prints bare
    # text; launch.py imports run.py, whose logger then is `torch.distributed.run`, with torch's format.
    plain = door == "run" or os.path.basename(argv[0]) == "__main__.py"
    log = LauncherLog(
        console,
        log_level(os.environ),
        plain=plain,
        pid=os.getpid(),
        clock=lambda: clock.at(time.monotonic()),
        where=_source_paths(door),
    )
    set_notice_clock(log.clock)
    try:
        log_dir = LogDir.create(cmd.torchrun.log_dir)
    except OSError as exc:
        print(f"{prog}: error: cannot create the log directory: {exc}", file=sys.stderr)
        return 1
    python = python_executable()
    fatal = 0
    rank_logs: RankLogs | None = None
    links: Links | None = None
    rules: RoundRules | None = None
    try:
        _log_startup(plan, log, log_dir)
        try:
            check_launch(plan, os.environ, prog)
        except LaunchError as exc:
            # What torchrun raises once its start-up lines are out (an unknown rendezvous backend, a port
            # out of range...): after them, as there, and before any worker exists.
            console.launcher_lines(exc.exc_line + "\n")
            return exc.exit_code
        try:
            rules = round_rules(plan, clock.speed)
        except MeetError as exc:
            console.launcher_lines(exc.text)
            return exc.exit_code
        if plan.multi_node:
            # torch's agent says it is rendezvousing before it waits for the other nodes' agents.
            TorchrunVoice(plan, log, argv[0], python, lambda slot, attempt: "").rendezvousing(0)
            from fakerun.launcher.meet import Interrupted, meet

            try:
                plan, links = meet(
                    plan,
                    argv[0],
                    site_packages(),
                    lambda line: console.launcher_lines(line + "\n"),
                    job=None if ctx is None else ctx.run.job,
                    started=started_mono,
                )
            except MeetError as exc:
                console.launcher_lines(exc.text)
                return exc.exit_code
            except Interrupted:
                return 1
            # Every agent's clock starts when the job's first agent did, as synchronised hosts' clocks agree
            # (the launcher's lines so far move forward by (speed - 1) x the difference).
            age = links.assignment.epoch_age
            clock = JobClock(time.time() - age, time.monotonic() - age, clock.speed)
            if ctx is not None:
                ctx = dataclasses.replace(ctx, hosts=links.assignment.hosts, clock=clock)
            else:
                links.close()  # --fake-exec: the real scripts need only the environment the rendezvous gave
                links = None
        rank_logs = _rank_logs(cmd, plan, console)
        if rank_logs is not None:
            # The copies take what the ranks' channels leave of the limit, and no more than one for two
            # ranks, at most RANK_FILES_OPEN: a copy not written lately is closed and reopened at its next
            # write, so a simulated job holds under two descriptors per rank (its control socket, which
            # carries its output, and a share of the copies).
            ranks = len(plan.nodes) * plan.nproc_per_node
            share = max(preflight.MIN_RANK_FILES, ranks // 2)
            rank_logs.max_open = min(fds.spare, RANK_FILES_OPEN, share)
        console.rank_logs = rank_logs

        current = Current(plan, ctx, rank_logs=rank_logs)
        if links is not None and ctx is not None and len(ctx.hosts) != plan.group_world_size:
            # An elastic job this agent joined while it ran (or began short of MAX): the size it has.
            current.resize(cmd, bundle(), plan.nodes[0].group_rank, ctx.hosts)
            plan, ctx = current.plan, current.ctx

        def voice(group: LocalWorkerGroup) -> TorchrunVoice:
            current.group = group
            current.voice = TorchrunVoice(
                plan,
                log,
                argv[0],
                python,
                group.error_file_path,
                shown_pid=_shown_pid(current),
                announced=plan.multi_node,
            )
            return current.voice

        seed = None if ctx is None else ctx.run.job.seed
        # This launcher plays every node of a single-launcher job, so their agents' wait is simulated; an
        # agent that met the others over TCP has waited for real and only the store's round remains.
        rdzv_nodes = 1 if plan.multi_node else plan.group_world_size
        # A standalone elastic job's one agent waits for more in every round, until torch's last call.
        last_call_s = rules.last_call_timeout_s if rules is not None and not plan.multi_node else 0.0

        def rendezvous_s(restart_count: int) -> float:
            if seed is None:
                # --fake-exec, a light torchrun for tests: the real scripts start at once, after only the
                # last call of an elastic job (which decides who is in the round).
                return last_call_s
            from fakerun.sim.run import rendezvous_seconds  # preloaded

            return rendezvous_seconds(seed, rdzv_nodes, restart_count) / clock.speed + last_call_s

        publish = rank_logs is not None
        saved = control = None
        if ctx is not None:
            from fakerun.launcher.control import SavedStep

            # An agent that joined a running job resumes from the step its assignment named.
            saved = SavedStep(links.assignment.resume if links is not None else 0)
            control = _control(
                current,
                metrics,
                saved,
                links,
                console,
                publish,
                rules,
                lambda membership: current.regroup(cmd, bundle(), membership),
            )
        children = _child_factory(cmd, current, python, saved)
        return run_job(
            plan,
            console,
            voice,
            children,
            log_dir,
            control,
            child_fd_limit=fd_limit.original,
            rendezvous_s=rendezvous_s,
            worker_ttys=ctx is None,
        )
    except LogDirError as exc:
        console.launcher_lines(f"{prog}: error: {exc}\n")
        return 1
    except FatalSignal as exc:
        fatal = exc.signum
        return 128 + fatal
    finally:
        if links is not None:
            links.close()  # no-op once the run took them over (the hub closed them)
        log_dir.cleanup()
        if rank_logs is not None:
            rank_logs.close()
        if fatal:
            die_of(fatal)


if __name__ == "__main__":
    sys.exit(main())
