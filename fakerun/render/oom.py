"""A training script's uncaught errors as a rank prints them through torch's excepthook: the CUDA
out-of-memory error and a dead DataLoader worker, with their tracebacks."""

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


# Python 3.11's first entries under `python -m module` (runpy's frozen frames show no source line).
RUNPY = (
    '  File "<frozen runpy>", line 198, in _run_module_as_main',
    '  File "<frozen runpy>", line 88, in _run_code',
)


def oom_traceback(
    rank: int, script: str, site_packages: str, figures: OomFigures, device: int, *, module: bool = False
) -> str:
    """The uncaught OutOfMemoryError of `loss.backward()`, every line prefixed `[rankN]: ` by torch's hook;
    `module`: the script ran as `python -m` (runpy's frames first)."""
    lines = ["Traceback (most recent call last):", *(RUNPY if module else ())]
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


# torch 2.13's DataLoader frames from the training loop's `for` down to the check that finds a worker dead.
_LOADER: tuple[tuple[str, int, str, str], ...] = (
    ("torch/utils/data/dataloader.py", 741, "__next__", "data = self._next_data()"),
    ("torch/utils/data/dataloader.py", 1486, "_next_data", "idx, data = self._get_data()"),
    ("torch/utils/data/dataloader.py", 1448, "_get_data", "success, data = self._try_get_data()"),
    (
        "torch/utils/data/dataloader.py",
        1295,
        "_try_get_data",
        'raise RuntimeError(f"DataLoader worker (pid(s) {pids_str}) exited unexpectedly") from e',
    ),
)


def crash_traceback(rank: int, script: str, site_packages: str, worker_pid: int) -> str:
    """A DataLoader worker killed by a bus error (shared memory exhausted): the worker's own line, then the
    training loop's RuntimeError through torch's hook, every line prefixed `[rankN]: `."""
    lines = ["Traceback (most recent call last):"]
    for lineno, func, code in (*_SCRIPT[:2], (281, "train", "for step, batch in enumerate(train_loader):")):
        lines += [f'  File "{script}", line {lineno}, in {func}', f"    {code}"]
    site = site_packages.rstrip("/")
    for path, lineno, func, code in _LOADER:
        lines += [f'  File "{site}/{path}", line {lineno}, in {func}', f"    {code}"]
    lines.append(f"RuntimeError: DataLoader worker (pid(s) {worker_pid}) exited unexpectedly")
    shm = (
        "ERROR: Unexpected bus error encountered in worker. This might be caused by insufficient shared "
        "memory (shm).\n"
    )
    return shm + "".join(f"[rank{rank}]: {line}\n" for line in lines)
