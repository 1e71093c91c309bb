"""launcher/elastic.py against torch's dynamic rendezvous: a round completes at max_nodes at once, at
min_nodes last_call_timeout after the latest join, and times out at join_timeout short of min_nodes."""

from __future__ import annotations

import pytest

from fakerun.launcher.elastic import RoundRules, Verdict, regroup

# --nnodes 2:3 with torch's defaults (join_timeout 600 s, last_call_timeout 30 s).
RULES = RoundRules(min_nodes=2, max_nodes=3)


def test_torch_defaults() -> None:
    """create_handler's defaults when --rdzv-conf names neither timeout."""
    assert (RULES.join_timeout_s, RULES.last_call_timeout_s) == (600.0, 30.0)


def test_max_nodes_complete_at_once() -> None:
    """_add_to_participants marks the round complete when the max_nodes-th agent joins: no last call."""
    assert RULES.verdict(3, began=0.0, last_join=5.0, now=5.0) is Verdict.COMPLETE


@pytest.mark.parametrize(("now", "verdict"), [(34.9, Verdict.WAIT), (35.0, Verdict.COMPLETE)])
def test_min_nodes_wait_for_the_last_call(now: float, verdict: Verdict) -> None:
    """Two of 2:3 joined, the second at t=5: the round completes at 5 + 30 s, not before."""
    assert RULES.verdict(2, began=0.0, last_join=5.0, now=now) is verdict
    assert RULES.deadline(2, began=0.0, last_join=5.0) == 35.0


def test_a_later_join_restarts_the_last_call() -> None:
    """Each join past min_nodes sets the deadline afresh (torch: deadline = utcnow() + last_call)."""
    assert RULES.verdict(2, began=0.0, last_join=20.0, now=35.0) is Verdict.WAIT
    assert RULES.deadline(2, began=0.0, last_join=20.0) == 50.0


def test_short_of_min_nodes_times_out_after_join_timeout() -> None:
    """One agent of 2:3 (the other two gone for good): it waits join_timeout, then RendezvousTimeoutError."""
    assert RULES.verdict(1, began=100.0, last_join=100.0, now=699.0) is Verdict.WAIT
    assert RULES.deadline(1, began=100.0, last_join=100.0) == 700.0
    assert RULES.verdict(1, began=100.0, last_join=100.0, now=700.0) is Verdict.TIMEOUT


def test_rdzv_conf_timeouts() -> None:
    """`--nnodes 1:2 --rdzv-conf join_timeout=5,last_call_timeout=2`: one survivor goes on after 2 s."""
    rules = RoundRules(1, 2, join_timeout_s=5.0, last_call_timeout_s=2.0)
    assert rules.verdict(1, began=0.0, last_join=0.0, now=1.9) is Verdict.WAIT
    assert rules.verdict(1, began=0.0, last_join=0.0, now=2.0) is Verdict.COMPLETE
    assert rules.deadline(1, began=0.0, last_join=0.0) == 2.0


def test_the_last_call_cannot_outlast_the_join_timeout() -> None:
    """A join at 590 s of a 600 s join_timeout: the last call would end at 620, the timeout comes first."""
    assert RULES.deadline(2, began=0.0, last_join=590.0) == 600.0
    # Looked at late (the loop was busy), the round still timed out rather than completed.
    assert RULES.verdict(2, began=0.0, last_join=590.0, now=625.0) is Verdict.TIMEOUT


def test_regroup_closes_up_behind_the_store_host() -> None:
    """Nodes 0, 2, 3 of four survive: they become 0, 1, 2; a returning node takes the next place."""
    assert regroup([3, 0, 2]) == {0: 0, 2: 1, 3: 2}
    assert regroup([0]) == {0: 0}
