"""The end-of-run summary table rank 0 prints."""

from __future__ import annotations

from collections.abc import Sequence


def summary_table(title: str, rows: Sequence[tuple[str, str]], *, width: int = 100) -> list[str]:
    """A boxed two-column table: a title bar, one row per figure, values cut to fit `width` columns."""
    key_w = max((len(k) for k, _ in rows), default=0)
    val_w = max((len(v) for _, v in rows), default=0)
    val_w = max(1, min(val_w, width - key_w - 7, 200))
    inner = key_w + val_w + 5
    title_w = max(inner, len(title) + 2)
    val_w += title_w - inner
    top = "+" + "-" * title_w + "+"
    lines = [
        top,
        "|" + f" {title}".ljust(title_w) + "|",
        "+" + "-" * (key_w + 2) + "+" + "-" * (val_w + 2) + "+",
    ]
    for key, value in rows:
        if len(value) > val_w:
            value = value[: val_w - 1] + "…"
        lines.append(f"| {key.ljust(key_w)} | {value.ljust(val_w)} |")
    lines.append("+" + "-" * (key_w + 2) + "+" + "-" * (val_w + 2) + "+")
    return lines
