"""torchtitan: its metrics line on every rank."""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import ClassVar

from fakerun.dialects.base import HintRule, Line, Output, log_time, words
from fakerun.dialects.events import Event, StepDone
from fakerun.dialects.fakerun import FakerunDialect

# torchtitan's options are `--section.key` of its TOML config's sections.
HINTS = HintRule(
    script=re.compile(r"titan"),
    sections=words(
        "job profiling metrics model optimizer lr_scheduler training parallelism checkpoint "
        "activation_checkpoint float8 mx comm memory_estimation fault_tolerance experimental validation "
        "debug compile"
    ),
)


def step_line(
    *,
    timestamp: str,
    step: int,
    loss: float,
    grad_norm: float,
    memory_gib: float,
    memory_pct: float,
    tps: float,
    tflops: float,
    mfu_pct: float,
) -> str:
    """torchtitan's metrics line (every rank logs it; tps and tflops differ in the last digits)."""
    return (
        f"[titan] {timestamp} - root - INFO - step: {step:2d}  loss: {loss:8.5f}  "
        f"grad_norm: {grad_norm:7.4f}  memory: {memory_gib:5.2f}GiB({memory_pct:.2f}%)  "
        f"tps: {round(tps):,}  tflops: {tflops:.2f}  mfu: {mfu_pct:.2f}%"
    )


class TitanDialect(FakerunDialect):
    """torchtitan's step line on every rank; the rest still in fakerun's events (until it has its own)."""

    name: ClassVar[str] = "titan"
    hints: ClassVar[HintRule] = HINTS
    grid: ClassVar[bool] = False  # the grid is fakerun's own: --fake-grid shows it

    def wants(self, kind: type[Event]) -> bool:
        """Every rank logs the step line."""
        return kind is StepDone or super().wants(kind)

    def render(self, event: Event, at: float) -> Sequence[Output]:
        """torchtitan's form of the step event (every rank, throughput as the rank measured it)."""
        if isinstance(event, StepDone):
            n = event.numbers
            out: list[Output] = [self.step_bar(event)] if self.seat.rank == 0 else []
            if event.logged:
                out.append(
                    Line(
                        step_line(
                            timestamp=log_time(at),
                            step=n.step,
                            loss=n.loss,
                            grad_norm=n.grad_norm,
                            memory_gib=n.mem_gib,
                            memory_pct=n.mem_pct,
                            tps=n.rank_tokens_per_s,
                            tflops=event.rank_tflops,
                            mfu_pct=100.0 * event.rank_mfu,
                        )
                    )
                )
            return out
        return super().render(event, at)
