"""An HF example script's own frames in a traceback: where its main() calls trainer.train()."""

from __future__ import annotations

import os
import re
import sysconfig
from collections.abc import Sequence

from fakerun.frameworks import pytrace
from fakerun.frameworks.pytrace import Frame

__all__ = ["main_frames", "site_packages", "traceback"]

# run_clm.py's lines when the script cannot be read: transformers' main branch at check_min_version
# "4.57.0.dev0" (its 4.50.0 copy, the version the log lines pin, was not at hand to count).
_FALLBACK_TRAIN = (654, "main", "        train_result = trainer.train(resume_from_checkpoint=checkpoint)")
_FALLBACK_MAIN = (713, "    main()")
_TRAIN = re.compile(r"\btrainer\.train\(")
_DEF = re.compile(r"^(\s*)def (\w+)\(")
_MAIN_GUARD = re.compile(r"""^if __name__ == ['"]__main__['"]\s*:""")


def site_packages(package: str) -> str:
    """Where an installed package's sources are (the interpreter's purelib)."""
    return os.path.join(sysconfig.get_paths()["purelib"], package)


def _call(path: str, line: int, function: str, source: str, call: str) -> Frame:
    """A frame whose instruction is the call starting at `call` in `source`: Python 3.11 underlines it to
    the end of the line (the whole call, or its first line when it spans several)."""
    code = source.strip()
    return Frame(path, line, function, code, code[code.index(call) :].split("  #", 1)[0].rstrip())


def _read(script: str) -> list[str] | None:
    try:
        with open(script, encoding="utf-8") as f:
            return f.read().splitlines()
    except (OSError, UnicodeDecodeError):
        return None


def _found(path: str, lines: Sequence[str]) -> list[Frame] | None:
    """The script's frames from its text: the module's call of the function that calls trainer.train()."""
    at = next((i for i, line in enumerate(lines) if _TRAIN.search(line)), None)
    if at is None:
        return None
    indent = len(lines[at]) - len(lines[at].lstrip())
    function = "<module>"
    for i in range(at - 1, -1, -1):
        m = _DEF.match(lines[i])
        if m and len(m.group(1)) < indent:
            function = m.group(2)
            break
    train = _call(path, at + 1, function, lines[at], "trainer.train(")
    if function == "<module>":
        return [train]
    guard = next((i for i, line in enumerate(lines) if _MAIN_GUARD.match(line)), None)
    if guard is None:
        return None
    call = re.compile(rf"\b{re.escape(function)}\(")
    top = next((i for i in range(guard + 1, len(lines)) if call.search(lines[i])), None)
    if top is None:
        return None
    return [_call(path, top + 1, "<module>", lines[top], f"{function}("), train]


def main_frames(script: str) -> list[Frame]:
    """The script's frames down to its trainer.train() call: read from the script itself (its line numbers
    and source lines, as Python's traceback shows them), else run_clm.py's."""
    path = os.path.abspath(script)
    lines = _read(script)
    frames = _found(path, lines) if lines is not None else None
    if frames is not None:
        return frames
    line, function, source = _FALLBACK_TRAIN
    top, main = _FALLBACK_MAIN
    return [
        _call(path, top, "<module>", main, "main("),
        _call(path, line, function, source, "trainer.train("),
    ]


def traceback(frames: Sequence[Frame], exception: str) -> str:
    """The traceback a rank prints past init_process_group (TrainingArguments sets the process group up
    through accelerate), each line with torch's `[rankN]: `."""
    return pytrace.traceback_text(frames, exception, after_init=True)
