"""torch's c10d (dynamic) rendezvous rules for a round after a restart: when it completes, and who is in it.

As torch's DynamicRendezvousHandler: the round completes at once when max_nodes agents have joined; with at
least min_nodes it completes last_call_timeout after the latest join (each join restarts that wait); short
of that, or when the last call would end later, the agent's own join_timeout (counted from when it began the
round) ends it with RendezvousTimeoutError. A node whose agent is gone never joins again.
"""

from __future__ import annotations

import enum
import math
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from fakerun.launcher.plan import LaunchPlan

LAST_CALL_TIMEOUT_S = 30.0  # torch's default last_call_timeout (rdzv-conf `last_call_timeout`)
JOIN_TIMEOUT_S = 600.0  # torch's default join_timeout (rdzv-conf `join_timeout`)


class MeetError(Exception):
    """The rendezvous failed; `text` is what torchrun prints (traceback and exception line), then exit 1."""

    def __init__(self, text: str, exit_code: int = 1) -> None:
        super().__init__(text)
        self.text = text
        self.exit_code = exit_code


class Verdict(enum.Enum):
    """What the round is at a given moment."""

    WAIT = "wait"
    COMPLETE = "complete"
    TIMEOUT = "timeout"


@dataclass(frozen=True)
class RoundRules:
    """The limits of one job's rounds: --nnodes MIN:MAX and the two rdzv-conf timeouts, in seconds."""

    min_nodes: int
    max_nodes: int
    join_timeout_s: float = JOIN_TIMEOUT_S
    last_call_timeout_s: float = LAST_CALL_TIMEOUT_S

    def verdict(self, joined: int, began: float, last_join: float, now: float) -> Verdict:
        """The round with `joined` agents, begun (by this agent) at `began`, latest join at `last_join`."""
        if joined >= self.max_nodes:
            return Verdict.COMPLETE
        timeout = began + self.join_timeout_s
        # torch checks its join deadline before the last call's: a last call ending after it never ends.
        last_call = last_join + self.last_call_timeout_s
        if joined >= self.min_nodes and now >= last_call and last_call < timeout:
            return Verdict.COMPLETE
        if now >= timeout:
            return Verdict.TIMEOUT
        return Verdict.WAIT

    def deadline(self, joined: int, began: float, last_join: float) -> float:
        """When the verdict changes next unless another agent joins (WAIT only)."""
        timeout = began + self.join_timeout_s
        if joined >= self.min_nodes:
            return min(timeout, last_join + self.last_call_timeout_s)
        return timeout


def conf_seconds(conf: dict[str, str], key: str, default: float) -> float:
    """--rdzv-conf's `key` in seconds (`default` if absent); a value that is none raises MeetError."""
    try:
        value = float(conf.get(key, default))
    except ValueError:
        raise MeetError(f"ValueError: could not convert string to float: {conf[key]!r}\n") from None
    if not (math.isfinite(value) and value > 0):
        # nan never times out and breaks select(); inf and negative waits make no sense either.
        raise MeetError(f"fakerun: error: --rdzv-conf: {key}={conf[key]} is not a number of seconds > 0\n")
    return value


def round_rules(plan: LaunchPlan, speed: float) -> RoundRules | None:
    """The rules of an elastic job's rounds (c10d or standalone, --nnodes MIN:MAX); None for a fixed size.

    join_timeout is real seconds; the last call of a restart's round is the simulated cluster's wait for
    more agents, so it passes at --fake-speed (`speed`; 1 for the first round, which real agents join).
    """
    if plan.rdzv.form not in ("c10d", "standalone") or plan.min_nodes >= plan.max_nodes:
        return None
    conf = plan.rdzv.conf
    return RoundRules(
        plan.min_nodes,
        plan.max_nodes,
        join_timeout_s=conf_seconds(conf, "join_timeout", JOIN_TIMEOUT_S),
        last_call_timeout_s=conf_seconds(conf, "last_call_timeout", LAST_CALL_TIMEOUT_S) / speed,
    )


def regroup(members: Iterable[int]) -> dict[int, int]:
    """The new group rank of each member of a round, by its group rank in the previous one.

    The members keep their order: the agent that hosts the store (group rank 0) stays 0, as it is the one
    every other agent dials, and the others close up behind it.
    """
    return {old: new for new, old in enumerate(sorted(set(members)))}
