"""fakerun's own style: the early-stopping counter, the OOM message, and the rule behind early stopping."""

from __future__ import annotations

import re

from fakerun.dialects import events as ev
from fakerun.dialects.base import Line, Seat
from fakerun.dialects.fakerun import FakerunDialect
from fakerun.render.oom import format_size, oom_message, oom_traceback
from fakerun.sim.memory import OomFigures
from fakerun.sim.stopping import Patience

GIB = 1024.0**3


def dialect(rank: int = 0) -> FakerunDialect:
    """fakerun's style on `rank` of a 2-GPU job."""
    return FakerunDialect(Seat(rank=rank, local_rank=rank, world_size=2, nproc_per_node=2, hosts=("h0",)))


def check(strikes: int, patience: int = 3) -> ev.EarlyStoppingCheck:
    """A validation with `strikes` in a row without improvement."""
    return ev.EarlyStoppingCheck(
        step=200, val_loss=2.5, best=2.4, best_step=100, strikes=strikes, patience=patience
    )


class TestPatience:
    """The rule: a validation that does not beat the best so far is a strike; `patience` in a row stop."""

    def test_strikes_reset_on_improvement(self) -> None:
        """Improvements reset the count, non-improvements (ties and NaN included) add to it."""
        p = Patience(2)
        assert not p.observe(1, 3.0)
        assert not p.observe(2, 3.0)  # a tie is no improvement
        assert p.strikes == 1
        assert not p.observe(3, 2.9)
        assert (p.strikes, p.best, p.best_step) == (0, 2.9, 3)
        assert not p.observe(4, float("nan"))
        assert p.would_stop(3.5) and not p.would_stop(2.0)
        assert p.strikes == 1  # would_stop records nothing
        assert p.observe(5, 3.5)


class TestEarlyStoppingLines:
    """The counter after each validation on rank 0, and the line that stops the run."""

    def test_counter_and_stop_line(self) -> None:
        """`patience=k/N` after each validation; at N/N a warning that training stops."""
        d = dialect()
        texts = []
        for strikes in (0, 1, 3):
            out = d.render(check(strikes), 0.0)
            assert len(out) == 1 and isinstance(out[0], Line)
            texts.append(out[0].text)
        assert "val_loss improved" in texts[0] and "patience=0/3" in texts[0]
        assert "[info     ]" in texts[1] and "patience=1/3" in texts[1] and "best_step=100" in texts[1]
        assert "[warning  ]" in texts[2] and "stopping training" in texts[2] and "patience=3/3" in texts[2]

    def test_only_rank_0(self) -> None:
        """Other ranks print no counter."""
        assert dialect(1).render(check(1), 0.0) == ()


class TestOomMessage:
    """torch's CUDA OOM message and traceback."""

    FIGURES = OomFigures(1.96 * GIB, 79.11 * GIB, 1.02 * GIB, 78.08 * GIB, 75.21 * GIB, 1.38 * GIB)

    def test_format_size_units(self) -> None:
        """c10's format_size: bytes up to 1 KiB, then KiB, MiB, GiB with two decimals."""
        assert format_size(512) == "512 bytes"
        assert format_size(1536) == "1.50 KiB"
        assert format_size(20 * 1024**2) == "20.00 MiB"
        assert format_size(2.5 * GIB) == "2.50 GiB"

    def test_message_wording(self) -> None:
        """The issue's example message, word for word (PYTORCH_ALLOC_CONF as torch 2.10+ spells it)."""
        expected = (
            "CUDA out of memory. Tried to allocate 1.96 GiB. GPU 0 has a total capacity of 79.11 GiB of "
            "which 1.02 GiB is free. Including non-PyTorch memory, this process has 78.08 GiB memory in use. "
            "Of the allocated memory 75.21 GiB is allocated by PyTorch, and 1.38 GiB is reserved by PyTorch "
            "but unallocated. If reserved but unallocated memory is large try setting "
            "PYTORCH_ALLOC_CONF=expandable_segments:True to avoid fragmentation.  See documentation for "
            "Memory Management  (https://pytorch.org/docs/stable/notes/cuda.html#environment-variables)"
        )
        assert oom_message(self.FIGURES, 0) == expected

    def test_traceback_prefixed_and_ends_in_the_error(self) -> None:
        """Every line `[rankN]: `, Python's traceback shape, the exception last."""
        text = oom_traceback(3, "/job/train.py", "/env/lib/python3.11/site-packages", self.FIGURES, 3)
        lines = text.splitlines()
        assert all(line.startswith("[rank3]: ") for line in lines)
        assert lines[0] == "[rank3]: Traceback (most recent call last):"
        assert re.match(r"\[rank3\]: torch\.OutOfMemoryError: CUDA out of memory\. .* GPU 3 has", lines[-1])
        frames = [line for line in lines if line.startswith('[rank3]:   File "')]
        assert frames[0].startswith('[rank3]:   File "/job/train.py"')
        assert frames[-1].startswith(
            '[rank3]:   File "/env/lib/python3.11/site-packages/torch/autograd/graph.py"'
        )
