"""Bounded reads of the small files fakerun is given: regular files of at most 1 MiB, TOML nested 32 deep."""

from __future__ import annotations

import os
import stat
import sys
from typing import Any

from fakerun.limits import MAX_FILE_BYTES, MAX_TOML_DEPTH

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib  # type: ignore[import-not-found,unused-ignore]

__all__ = ["FileError", "TomlError", "load", "loads", "read_bytes", "read_text", "size_text"]


class FileError(Exception):
    """A file that cannot be read as a small regular file; the message is the one-line reason."""

    def __init__(self, reason: str, *, missing: bool = False) -> None:
        super().__init__(reason)
        self.reason = reason
        self.missing = missing


class TomlError(ValueError):
    """Text that is not TOML fakerun accepts; the message is the one-line reason."""


def size_text(n: int) -> str:
    """A byte count as the limits are stated: `1 MiB`, `64 KiB` or `100 bytes`."""
    for unit, size in (("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n >= size and n % size == 0:
            return f"{n // size} {unit}"
    return f"{n} bytes"


def read_bytes(path: str, limit: int = MAX_FILE_BYTES) -> bytes:
    """The contents of a regular file of at most `limit` bytes; FileError otherwise."""
    # O_NONBLOCK: opening a FIFO for reading would otherwise wait for a writer forever; the file type is
    # checked before anything is read, so /dev/zero, FIFOs and terminals are refused, never read from.
    flags = os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | getattr(os, "O_CLOEXEC", 0)
    try:
        fd = os.open(path, flags)
    except OSError as exc:
        raise FileError(exc.strerror or str(exc), missing=isinstance(exc, FileNotFoundError)) from None
    try:
        info = os.fstat(fd)
        if stat.S_ISDIR(info.st_mode):
            raise FileError("Is a directory")
        if not stat.S_ISREG(info.st_mode):
            raise FileError("not a regular file")
        if info.st_size > limit:
            raise FileError(f"larger than {size_text(limit)}")
        chunks: list[bytes] = []
        total = 0
        # Read one byte past the limit: a file that grows after fstat is refused too, never read whole.
        while total <= limit:
            chunk = os.read(fd, limit + 1 - total)
            if not chunk:
                break
            chunks.append(chunk)
            total += len(chunk)
    except OSError as exc:
        raise FileError(exc.strerror or str(exc)) from None
    finally:
        os.close(fd)
    if total > limit:
        raise FileError(f"larger than {size_text(limit)}")
    return b"".join(chunks)


def read_text(path: str, limit: int = MAX_FILE_BYTES) -> str:
    """The UTF-8 text of a regular file of at most `limit` bytes; FileError otherwise."""
    data = read_bytes(path, limit)
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise FileError(f"not UTF-8 text ({exc.reason} at byte {exc.start})") from None


def _one_line(text: str) -> str:
    return " ".join(text.split())


def _check_depth(data: dict[str, Any]) -> None:
    """TomlError when tables and arrays nest deeper than MAX_TOML_DEPTH (checked without recursion)."""
    pending: list[tuple[object, int]] = [(data, 1)]
    while pending:
        value, depth = pending.pop()
        if depth > MAX_TOML_DEPTH:
            raise TomlError(f"tables or arrays nested more than {MAX_TOML_DEPTH} deep")
        children = value.values() if isinstance(value, dict) else value if isinstance(value, list) else ()
        pending.extend((child, depth + 1) for child in children if isinstance(child, (dict, list)))


def loads(text: str) -> dict[str, Any]:
    """TOML text as a dict; TomlError (one line) when it is invalid or nested too deeply."""
    try:
        data: dict[str, Any] = tomllib.loads(text)
    except RecursionError:
        # tomllib parses nested arrays and inline tables recursively: thousands of `[` exhaust the stack.
        raise TomlError(f"tables or arrays nested more than {MAX_TOML_DEPTH} deep") from None
    except ValueError as exc:  # TOMLDecodeError, or an integer of more digits than int() converts
        raise TomlError(_one_line(str(exc))) from None
    _check_depth(data)
    return data


def load(path: str, limit: int = MAX_FILE_BYTES) -> dict[str, Any]:
    """A small TOML file as a dict: FileError when it cannot be read, TomlError when it is not valid TOML."""
    data = read_bytes(path, limit)
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise TomlError(f"not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    return loads(text)
