"""torch's CUDA out-of-memory error as a rank of a training script prints it: its traceback and message."""

from __future__ import annotations

from fakerun.sim.memory import OomFigures

# torch 2.13's frames of `loss.backward()` down to the autograd engine (site-packages relative): file, line,
# function, the source line, and the carets Python 3.11+ draws under a call spanning the whole line (column,
# count) or None.
_BACKWARD: tuple[tuple[str, int, str, str, tuple[int, int] | None], ...] = (
    ("torch/_tensor.py", 647, "backward", "torch.autograd.backward(", None),
    ("torch/autograd/__init__.py", 364, "backward", "_engine_run_backward(", None),
    (
        "torch/autograd/graph.py",
        865,
        "_engine_run_backward",
        "return Variable._execution_engine.run_backward(  "
        "# Calls into the C++ engine to run the backward pass",
        (7, 96),
    ),
)
# The training script's own frames: the module's entry, its train loop, the backward of the step.
_SCRIPT: tuple[tuple[int, str, str], ...] = (
    (412, "<module>", "main()"),
    (398, "main", "train(model, optimizer, train_loader, args)"),
    (297, "train", "loss.backward()"),
)


def format_size(nbytes: float) -> str:
    """c10's format_size: bytes, KiB, MiB or GiB with two decimals (`1.96 GiB`, `512 bytes`)."""
    size = int(nbytes)
    if size <= 1024:
        return f"{size} bytes"
    if size <= 1048576:
        return f"{size / 1024.0:.2f} KiB"
    if size <= 1073741824:
        return f"{size / 1048576.0:.2f} MiB"
    return f"{size / 1073741824.0:.2f} GiB"


def oom_message(figures: OomFigures, device: int) -> str:
    """torch.OutOfMemoryError's text (CUDACachingAllocator.cpp), its double spaces and all."""
    return (
        f"CUDA out of memory. Tried to allocate {format_size(figures.tried_to_allocate)}. GPU {device} has a "
        f"total capacity of {format_size(figures.capacity)} of which {format_size(figures.free)} is free. "
        f"Including non-PyTorch memory, this process has {format_size(figures.in_use)} memory in use. "
        f"Of the allocated memory {format_size(figures.allocated)} is allocated by PyTorch, and "
        f"{format_size(figures.reserved_unallocated)} is reserved by PyTorch but unallocated. "
        "If reserved but unallocated memory is large try setting "
        "PYTORCH_ALLOC_CONF=expandable_segments:True to avoid fragmentation.  "
        "See documentation for Memory Management  "
        "(https://pytorch.org/docs/stable/notes/cuda.html#environment-variables)"
    )


def oom_traceback(rank: int, script: str, site_packages: str, figures: OomFigures, device: int) -> str:
    """The uncaught OutOfMemoryError of `loss.backward()`, every line prefixed `[rankN]: ` by torch's hook."""
    lines = ["Traceback (most recent call last):"]
    for lineno, func, code in _SCRIPT:
        lines += [f'  File "{script}", line {lineno}, in {func}', f"    {code}"]
    site = site_packages.rstrip("/")
    for path, lineno, func, code, carets in _BACKWARD:
        lines += [f'  File "{site}/{path}", line {lineno}, in {func}', f"    {code}"]
        if carets is not None:
            column, count = carets
            lines.append("    " + " " * column + "^" * count)
    lines.append(f"torch.OutOfMemoryError: {oom_message(figures, device)}")
    return "".join(f"[rank{rank}]: {line}\n" for line in lines)
