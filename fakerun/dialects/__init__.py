"""Trainer dialects: one module per training framework, and the table the script's arguments select from.

A rank's phase loop (worker/trainer.py) emits typed events (events.py) and knows no framework's format; its
printer (worker/printer.py) passes each event to torch's own lines (common.TorchLines), to the job's dialect,
and to fakerun's GPU grid where it is shown (common.GridLines), and is the worker's only writer.

How to add a dialect (say `nanogpt`):

1. Write `fakerun/dialects/nanogpt.py` with one class following base.Dialect:
   - `name = "nanogpt"`: the registry key and the value of `--fake-trainer` / FAKERUN_TRAINER;
   - `hints = HintRule(...)`: which script arguments select it (a script-path pattern, option names that
     only this framework spells so, torchtitan-style config sections) and what its argument parser does
     with them (`bool_words`, `arch_defaults`); `HintRule()` if only `--fake-trainer` selects it;
   - `grid = False`: a framework's log holds only what that framework prints (REALISM.md); the grid is
     fakerun's own and shows with `--fake-grid`;
   - `__init__(self, seat)`: the seat says which rank this is, the job's hosts, the terminal width,
     colour and fakerun's log format;
   - `render(self, event, at) -> Sequence[Output]`: the lines this rank prints for the event
     (`Line(text)` on stdout, `Line(text, "stderr")`, `BarDraw`/`BarClose` for a tqdm-style bar), with
     `at` the job clock's time for timestamps. Decide here which ranks print (rank 0, the last pipeline
     stage, every rank) and return nothing for events the framework does not print;
   - `wants(self, kind) -> bool`: whether this rank prints anything for events of that kind (the loop
     skips building costly events nobody prints, such as the summary).
   It must stay pure: no I/O, clock, environment or global RNG. Every figure comes in the events; if a
   framework prints a figure no event carries, add the field to the event in events.py and compute it in
   the phase loop from sim/, never in the dialect. Timestamp helpers are in base.py (log_time,
   seconds_time, iso_time, c10_prefix).
2. Add one row to DIALECTS below (earlier rows win when two script patterns match the script's path), and
   its name to fakerun/names.py's TRAINERS, which the command line checks without loading the dialects.
3. Test it as tests/unit/test_dialects.py does: feed events, parse the lines back with patterns taken from
   the real logs in reference/reallogs/.

A simulated job's launcher imports this package (and so every dialect module) before it forks the workers
(main.preload_simulation): a worker imports nothing after the fork (tests/integration/test_fork_imports.py).
A --fake-exec launcher never imports it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from fakerun.dialects.base import Dialect, Seat, Stream
from fakerun.dialects.deepspeed import DeepSpeedDialect
from fakerun.dialects.fakerun import FakerunDialect
from fakerun.dialects.files import Artifact, Removal, SaveRequest
from fakerun.dialects.hf import HfDialect
from fakerun.dialects.lightning import LightningDialect
from fakerun.dialects.llmc import LlmcDialect
from fakerun.dialects.llmc_py import LlmcPyDialect
from fakerun.dialects.megatron import MegatronDialect
from fakerun.dialects.megatron_ds import MegatronDeepSpeedDialect
from fakerun.dialects.nanogpt import NanoGptDialect
from fakerun.dialects.nemo import NemoDialect
from fakerun.dialects.titan import TitanDialect
from fakerun.dialects.torchtune import TorchtuneDialect
from fakerun.sim.failures import WATCHDOG_TIMEOUT_MS
from fakerun.sim.run import ENDING_FAKERUN

__all__ = [
    "DEFAULT",
    "DIALECTS",
    "artifacts",
    "bar_stream",
    "choose",
    "collective_timeouts",
    "ending",
    "make",
    "names",
    "select",
]

# name -> dialect. The order is the order in which script-path patterns are tried.
DIALECTS: dict[str, type[Dialect]] = {
    dialect.name: dialect
    for dialect in (
        FakerunDialect,
        TitanDialect,
        TorchtuneDialect,
        NemoDialect,
        NanoGptDialect,
        LlmcPyDialect,
        LlmcDialect,
        LightningDialect,
        MegatronDeepSpeedDialect,
        MegatronDialect,
        DeepSpeedDialect,
        HfDialect,
    )
}
# The dialect of a script whose arguments look like no known framework.
DEFAULT = FakerunDialect.name


def names() -> tuple[str, ...]:
    """The dialects' names, sorted (for --fake-trainer's help and errors)."""
    return tuple(sorted(DIALECTS))


def select(script: str, option_names: Sequence[str]) -> str:
    """The dialect whose options the arguments use most; the script's path breaks ties and decides alone."""
    votes = {name: 0 for name, d in DIALECTS.items() if d.hints.options or d.hints.exact or d.hints.sections}
    for option in option_names:
        for name in votes:
            votes[name] += DIALECTS[name].hints.votes(option)
    path = script.replace("\\", "/").lower()
    by_script = next(
        (name for name, d in DIALECTS.items() if d.hints.script is not None and d.hints.script.search(path)),
        DEFAULT,
    )
    best = max(votes.values(), default=0)
    if best == 0:
        return by_script
    winners = [name for name, n in votes.items() if n == best]
    if by_script in winners:
        return by_script
    return winners[0] if len(winners) == 1 else DEFAULT


def choose(explicit: str | None, hinted: str, log_format: str) -> str:
    """The job's dialect: --fake-trainer, else the script's; json and logfmt are fakerun's own events."""
    if log_format != "console":
        return DEFAULT
    return explicit if explicit is not None else hinted


def bar_stream(name: str) -> Stream:
    """The stream the dialect's progress bars go to: a `bar_stream` class attribute, else tqdm's stderr."""
    stream: Stream = getattr(DIALECTS[name], "bar_stream", "stderr")
    return stream


def ending(name: str, settings: Mapping[str, str]) -> tuple[str, bool]:
    """What follows the last step of a job the dialect `name` prints (sim/run.ENDINGS) and whether it
    evaluates a test split: the dialect's `ending` class method of the script's settings, else fakerun's."""
    decide = getattr(DIALECTS[name], "ending", None)
    if decide is None:
        return ENDING_FAKERUN, False
    chosen: tuple[str, bool] = decide(settings)
    return chosen


def collective_timeouts(name: str) -> tuple[float, float | None]:
    """The collective timeout (s) of the process groups the dialect `name`'s framework makes, and the one in
    force until step 1 ends when it differs: its `nccl_timeout_s` and `nccl_init_timeout_s` class
    attributes, else torch's NCCL default (init_process_group without a timeout)."""
    dialect = DIALECTS[name]
    timeout: float = getattr(dialect, "nccl_timeout_s", WATCHDOG_TIMEOUT_MS / 1000.0)
    first: float | None = getattr(dialect, "nccl_init_timeout_s", None)
    return timeout, first


def artifacts(name: str, request: SaveRequest) -> Sequence[Artifact | Removal]:
    """This rank's files of a save as the dialect `name`'s framework lays them out: its `artifacts` static
    method of the request, else none."""
    layout = getattr(DIALECTS[name], "artifacts", None)
    if layout is None:
        return ()
    files: Sequence[Artifact | Removal] = layout(request)
    return files


def make(name: str, seat: Seat) -> Dialect:
    """The dialect `name` for one rank (KeyError for an unknown name: the command line checked it)."""
    return DIALECTS[name](seat)
