"""Metric lines of the Megatron-LM, HF Trainer and torchtitan dialects (shapes from reference/reallogs)."""

from __future__ import annotations

import ast
import math
import re
import struct

import pytest

from fakerun.dialects import hf, titan
from fakerun.dialects import megatron as mg

MEGATRON = re.compile(
    r"^ \[\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\] iteration +(\d+)/ +(\d+) \| consumed samples: +(\d+) \| "
    r"elapsed time per iteration \(ms\): (\d+\.\d) \| throughput per GPU \(TFLOP/s/GPU\): (\d+\.\d) \| "
    r"learning rate: (\d\.\d{6}E[+-]\d\d) \| global batch size: +(\d+) \| lm loss: (\d\.\d{6}E[+-]\d\d) \| "
    r"(?:load_balancing_loss: \S+ \| )?loss scale: 1\.0 \| grad norm: (\d+\.\d{3}) \| "
    r"number of skipped iterations: +(\d+) \| number of nan iterations: +(\d+) \|$"
)
TITAN = re.compile(
    r"^\[titan\] \d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} - root - INFO - step: +(\d+)  loss: +(\d+\.\d{5})  "
    r"grad_norm: +(\d+\.\d{4})  memory: +(\d+\.\d\d)GiB\((\d+\.\d\d)%\)  tps: ([\d,]+)  tflops: (\d+\.\d\d)  "
    r"mfu: (\d+\.\d\d)%$"
)


def megatron(**kw: object) -> str:
    args: dict[str, object] = {
        "timestamp": "2026-11-22 08:00:00",
        "step": 43,
        "total": 100,
        "samples": 5504,
        "step_ms": 5444.94,
        "tflops": 239.81,
        "lr": 8.6e-6,
        "global_batch": 128,
        "loss": 1.825991,
        "grad_norm": 1.4261,
        "loss_scale": 1.0,
        "skipped": 0,
        "nan_iters": 0,
    }
    args.update(kw)
    return mg.iteration_line(**args)  # type: ignore[arg-type]


class TestMegatron:
    """Megatron-core's iteration line, memory report and validation block."""

    def test_iteration_fields_parse_back(self) -> None:
        """The line matches the real layout and its numbers read back."""
        m = MEGATRON.match(megatron())
        assert m, megatron()
        assert (int(m[1]), int(m[2]), int(m[3]), int(m[7])) == (43, 100, 5504, 128)
        assert float(m[4]) == pytest.approx(5444.9) and float(m[8]) == pytest.approx(1.825991)

    @pytest.mark.parametrize("step,total", [(1, 10), (99999, 500000), (12345678, 99999999)])
    def test_fixed_widths(self, step: int, total: int) -> None:
        """Iteration counters are right-aligned in 8 columns, samples in 12, batch in 5."""
        text = megatron(step=step, total=total)
        assert f"iteration {step:>8d}/{total:>8d} |" in text

    def test_moe_aux_loss_and_nan(self) -> None:
        """MoE jobs add load_balancing_loss; a NaN step prints nan loss and grad norm."""
        text = megatron(aux_loss=1.0197, loss=math.nan, grad_norm=math.nan, skipped=1, nan_iters=1)
        assert MEGATRON.match(
            text.replace("lm loss: nan", "lm loss: 0.000000E+00").replace(
                "grad norm: nan", "grad norm: 0.000"
            )
        )
        assert "load_balancing_loss: 1.019700E+00 |" in text and "lm loss: nan |" in text

    def test_memory_report(self) -> None:
        """`[Rank N] (after K iterations) memory (MB) | allocated: ... | max reserved: ...`."""
        text = mg.memory_line(44, 1, 15492.84619140625, 15492.84619140625, 18418.0)
        assert text.startswith("[Rank 44] (after 1 iterations) memory (MB) | allocated: 15492.84619140625 |")
        assert text.endswith("reserved: 18418.0 | max reserved: 18418.0")

    def test_validation_block_rules_match_width(self) -> None:
        """The dashed rules frame the validation line."""
        rule, body, rule2 = mg.validation_block("iteration 10 on validation set", 9.64748, 15482.72)
        assert rule == rule2 and set(rule) == {"-"} and len(rule) == len(body) + 1
        assert "validation loss at iteration 10 on validation set | lm loss value: 9.647480E+00 |" in body


class TestHf:
    """HF Trainer's dict lines."""

    def test_log_dict_is_a_python_dict(self) -> None:
        """A dict repr: loss to 4 places, the grad norm as a float32 `.item()`, the lr, epoch to 2."""
        text = hf.log_dict(1.55449, 2.383980345174379, 9.659320146057262e-05, 0.3812)
        d = ast.literal_eval(text)
        assert list(d) == ["loss", "grad_norm", "learning_rate", "epoch"]
        assert d == {
            "loss": 1.5545,
            # torch's grad norm is a float32 tensor: its .item() is the nearest float32, widened.
            "grad_norm": struct.unpack("f", struct.pack("f", 2.383980345174379))[0],
            "learning_rate": 9.659320146057262e-05,
            "epoch": 0.38,
        }

    def test_eval_dict_rates(self) -> None:
        """Samples and steps per second are the counts over the runtime."""
        d = ast.literal_eval(hf.eval_dict(1.249, 49.1914, 5875, 3, 0.44))
        assert d["eval_samples_per_second"] == pytest.approx(5875 / 49.1914, abs=1e-3)
        assert d["eval_steps_per_second"] == pytest.approx(3 / 49.1914, abs=1e-3)


class TestTitan:
    """torchtitan's metrics line."""

    @pytest.mark.parametrize("step,loss", [(4, 7.62585), (10, 10.2391), (57, 2.84575)])
    def test_layout(self, step: int, loss: float) -> None:
        """Double-spaced fields, thousands separators in tps, GiB with the percentage of the device."""
        text = titan.step_line(
            timestamp="2026-11-22 08:00:00,123",
            step=step,
            loss=loss,
            grad_norm=16.1413,
            memory_gib=44.84,
            memory_pct=47.19,
            tps=5615.4,
            tflops=325.2,
            mfu_pct=32.88,
        )
        m = TITAN.match(text)
        assert m, text
        assert int(m[1]) == step and float(m[2]) == pytest.approx(loss) and m[6] == "5,615"
