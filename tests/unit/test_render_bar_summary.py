"""Rank 0's bar (tqdm's meter) and the summary table."""

from __future__ import annotations

import math
import os
import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from tqdm.std import tqdm

from fakerun.render import bar
from fakerun.render.summary import summary_table


class TestMeter:
    """The bar reads like tqdm's."""

    def test_tqdm_layout(self) -> None:
        """Prefix, %, bar, n/total, elapsed<remaining ((10000-1234)/0.5 s = 4:52:12), rate, postfix."""
        text = bar.meter(1234, 10000, 3600.0, prefix="Epoch 1/1", postfix="loss=2.3456", rate=0.5)
        assert re.fullmatch(
            r"Epoch 1/1:  12%\|.{10}\| 1234/10000 \[1:00:00<4:52:12,  2\.00s/it, loss=2\.3456\]", text
        ), text

    def test_eta_from_rate(self) -> None:
        """The remaining time is steps left over the rate."""
        text = bar.meter(100, 200, 50.0, rate=2.0)
        assert "<00:50" in text

    @settings(max_examples=50, deadline=None)
    @given(st.integers(0, 10**6), st.integers(40, 200))
    def test_width_bound(self, n: int, ncols: int) -> None:
        """With a terminal width the meter never exceeds it (so the pinned line never wraps)."""
        total = 10**6
        text = bar.meter(
            n, total, 1234.5, prefix="Epoch 1/1", postfix="loss=2.1, lr=3.00e-04", rate=1.3, ncols=ncols
        )
        assert len(text) <= ncols

    @settings(max_examples=100, deadline=None)
    @given(st.integers(0, 1000), st.integers(20, 250))
    def test_as_tqdm_fits_it_where_it_fits(self, n: int, ncols: int) -> None:
        """Where tqdm's own meter at `ncols` keeps all its text (a bar of 1+ characters), it is the meter."""
        kw = {"prefix": "Epoch 1/1", "postfix": "loss=2.1000, lr=3.00e-04", "rate": 1.3}
        ref = tqdm.format_meter(n, 1000, 1234.5, ncols=ncols, **kw)  # type: ignore[arg-type]
        if ref.endswith("]"):
            assert bar.meter(n, 1000, 1234.5, ncols=ncols, **kw) == ref  # type: ignore[arg-type]

    @pytest.mark.parametrize("ncols", [50, 60, 70, 80])
    def test_too_narrow_keeps_the_closing_bracket(self, ncols: int) -> None:
        """tqdm would cut the end; here the postfix loses fields from its end, the count and `]` stay."""
        post = "loss=2.3456, ppl=10.44, lr=3.00e-04, tok/s=113k"
        text = bar.meter(37, 19073, 17.0, prefix="Epoch 1/1", postfix=post, rate=0.8, ncols=ncols)
        assert len(text) == ncols and text.endswith("]") and "| 37/19073 [" in text
        fields = text[text.index("[") + 1 : -1].split(", ")
        assert post.startswith(", ".join(fields[2:]))  # the first fields kept, in order

    def test_description_cut_last(self) -> None:
        """With no postfix field left to drop, the description is cut from its end; the rest is whole."""
        text = bar.meter(37, 19073, 17.0, prefix="Epoch 1/1", postfix="loss=2.3456", ncols=50)
        ref = tqdm.format_meter(37, 19073, 17.0, prefix="Epoch 1/1")  # its figures, its 10-column bar
        r_bar = ref[ref.index("| ", ref.index("%|") + 2) :]  # `| 37/19073 [elapsed<remaining, rate]`
        assert text == "Epoch " + "   0%|" + " " + r_bar  # `Epoch 1/1:` lost 4 characters, the bar is 1

    def test_refit_after_a_shrink_is_tqdm_at_the_new_width(self) -> None:
        """A meter drawn for 200 columns, refitted to 119 from its text alone, reads as tqdm's at 119."""
        kw = {"prefix": "Epoch 1/1", "postfix": "loss=2.3456, tok/s=113k", "rate": 0.5}
        wide = tqdm.format_meter(50, 200, 99.0, ncols=200, **kw)  # type: ignore[arg-type]
        assert bar.fit(wide, 119) == tqdm.format_meter(50, 200, 99.0, ncols=119, **kw)  # type: ignore[arg-type]
        # tqdm's padding after a longer refresh is no part of the meter.
        assert bar.fit(wide + " " * 30, 200) == wide

    def test_width_is_shared_with_forked_workers(self) -> None:
        """The launcher's update after the fork is what the worker reads."""
        width = bar.BarWidth(200)
        go_r, go_w = os.pipe()
        out_r, out_w = os.pipe()
        pid = os.fork()
        if pid == 0:  # pragma: no cover - the worker
            os.read(go_r, 1)
            os.write(out_w, str(width.columns).encode())
            os._exit(0)
        width.set(80)
        os.write(go_w, b"x")
        seen = os.read(out_r, 16)
        os.waitpid(pid, 0)
        for fd in (go_r, go_w, out_r, out_w):
            os.close(fd)
        assert seen == b"80"

    def test_ema_rate(self) -> None:
        """tqdm's smoothing: constant step times give their inverse; none gives None."""
        assert bar.ema_rate([]) is None
        assert bar.ema_rate([0.5] * 10) == pytest.approx(2.0)
        assert 1 / 3.0 < bar.ema_rate([1.0, 3.0]) < 1.0  # type: ignore[operator]

    @pytest.mark.parametrize(
        "value,text", [(950, "950"), (2_100_000, "2.1M"), (15_300, "15.3k"), (3.2e9, "3.2G")]
    )
    def test_human_count(self, value: float, text: str) -> None:
        """Counts get a k/M/G suffix with three significant digits."""
        assert bar.human_count(value) == text

    def test_postfix_narrow_keeps_loss_and_lr(self) -> None:
        """Below 100 columns the postfix keeps loss and lr, below 90 loss only; ppl is exp(loss)."""
        wide = bar.train_postfix(2.0, 3e-4, 2.1e6, width=None)
        assert f"ppl={math.exp(2.0):.4g}" in wide and "tok/s=2.1M" in wide
        assert bar.train_postfix(2.0, 3e-4, 2.1e6, width=95) == "loss=2.0000, lr=3.00e-04"
        assert bar.train_postfix(2.0, 3e-4, 2.1e6, width=80) == "loss=2.0000"


class TestSummary:
    """The boxed summary table."""

    def test_rows_aligned_and_boxed(self) -> None:
        """Every line has the same width; each row shows its key and value."""
        rows = [("model", "Llama 3 8B"), ("MFU", "41.2%")]
        lines = summary_table("Training summary", rows)
        assert len({len(line) for line in lines}) == 1
        assert any("model" in line and "Llama 3 8B" in line for line in lines)
        assert "Training summary" in lines[1]

    def test_long_values_cut_to_width(self) -> None:
        """A value too long for the width is cut with an ellipsis."""
        lines = summary_table("t", [("k", "x" * 500)], width=80)
        assert all(len(line) <= 80 for line in lines)
        assert any("…" in line for line in lines)
