"""The protocol between fakerun agents: length-prefixed JSON frames and a mutual HMAC handshake.

Nothing received is ever unpickled or evaluated: a frame is a 4-byte big-endian length and a UTF-8 JSON
object, at most MAX_FRAME bytes once the peer has authenticated and MAX_HANDSHAKE_FRAME before, nested at
most MAX_DEPTH deep. A connection proves it knows the job's secret before anything else: the listener sends
a nonce, the dialer answers HMAC-SHA256(secret, nonce) with a nonce of its own, and the listener answers
that in turn, so neither side talks to an impostor. Every way a frame or a handshake message can be wrong
is one WireError: the caller refuses the connection with one line.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import re
import secrets
import struct
from typing import Any

from fakerun.names import SECRET_VAR

MAX_FRAME = 1 << 20  # the largest message: a 1024-GPU grid is ~60 kB
MAX_HANDSHAKE_FRAME = 4096  # until the peer has proved the secret: the handshake's messages are ~150 bytes
MAX_DEPTH = 16  # our deepest message (replies -> items -> [rank, reply] -> grid -> row) is 6 levels
PROTOCOL = "fakerun/1"
_HEADER = struct.Struct(">I")
_HEX = re.compile(r"[0-9a-f]+")


class WireError(ValueError):
    """A peer sent something that is not our protocol (garbage, oversized, wrong secret); one line."""


def job_secret(environ: dict[str, str] | os._Environ[str], run_id: str) -> bytes:
    """FAKERUN_SECRET, or one derived from the run id (which keeps strangers' jobs apart, not attackers)."""
    given = environ.get(SECRET_VAR)
    if given:
        return given.encode(errors="surrogateescape")
    return hashlib.sha256(f"fakerun-job:{run_id}".encode(errors="surrogateescape")).digest()


def shown(value: object, limit: int = 200) -> str:
    """A peer's text as one printable line: control characters, newlines and lone surrogates escaped."""
    text = str(value)[:limit]
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


def encode(message: dict[str, Any]) -> bytes:
    """One frame."""
    try:
        body = json.dumps(message, separators=(",", ":"), allow_nan=False).encode()
    except ValueError:  # NaN or infinity: the peer's decoder would refuse it
        raise WireError("message holds a number that is not finite") from None
    if len(body) > MAX_FRAME:
        raise WireError(f"message of {len(body)} bytes exceeds {MAX_FRAME}")
    return _HEADER.pack(len(body)) + body


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _too_deep(message: object) -> bool:
    """Whether `message` nests deeper than MAX_DEPTH (iteratively: the check itself cannot recurse)."""
    todo: list[tuple[object, int]] = [(message, 1)]
    while todo:
        value, depth = todo.pop()
        if isinstance(value, dict):
            children: Any = value.values()
        elif isinstance(value, list):
            children = value
        else:
            continue
        if depth > MAX_DEPTH:
            return True
        todo.extend((child, depth + 1) for child in children)
    return False


def decode(body: bytes) -> dict[str, Any]:
    """One frame's body as a message; WireError for anything else."""
    try:
        text = body.decode("utf-8")
        message = json.loads(text, parse_constant=_no_constant)
    except RecursionError:
        raise WireError(f"frame nests deeper than {MAX_DEPTH} levels") from None
    except ValueError:  # not UTF-8, not JSON, NaN/Infinity, an integer of more than 4300 digits
        raise WireError("frame is not JSON") from None
    if not isinstance(message, dict) or not isinstance(message.get("k"), str):
        raise WireError("frame is not a message object")
    if _too_deep(message):
        raise WireError(f"frame nests deeper than {MAX_DEPTH} levels")
    return message


class FrameDecoder:
    """Turns a byte stream into messages; raises WireError at the first malformed frame."""

    def __init__(self, limit: int = MAX_HANDSHAKE_FRAME) -> None:
        self._buf = bytearray()
        self.limit = limit  # raised to MAX_FRAME once the peer has authenticated

    def feed(self, data: bytes) -> list[dict[str, Any]]:
        """The complete messages `data` finishes."""
        self._buf += data
        out: list[dict[str, Any]] = []
        while len(self._buf) >= _HEADER.size:
            (size,) = _HEADER.unpack_from(self._buf)
            if size > self.limit:
                raise WireError(f"frame of {size} bytes announced (limit {self.limit})")
            if len(self._buf) < _HEADER.size + size:
                break
            body = bytes(self._buf[_HEADER.size : _HEADER.size + size])
            del self._buf[: _HEADER.size + size]
            out.append(decode(body))
        return out


def _mac(secret: bytes, nonce: str, role: str) -> str:
    return hmac.new(secret, f"{PROTOCOL}:{role}:{nonce}".encode(), hashlib.sha256).hexdigest()


def _hex_field(message: dict[str, Any], key: str, length: int) -> str | None:
    """message[key] if it is `length` lowercase hex digits (what compare_digest and _mac can take)."""
    value = message.get(key)
    if isinstance(value, str) and len(value) == length and _HEX.fullmatch(value):
        return value
    return None


def challenge() -> dict[str, Any]:
    """The listener's first message."""
    return {"k": "challenge", "proto": PROTOCOL, "nonce": secrets.token_hex(16)}


def answer(secret: bytes, message: dict[str, Any]) -> dict[str, Any]:
    """The dialer's reply to a challenge: proof of the secret, and a nonce for the listener to answer."""
    if message.get("k") != "challenge" or message.get("proto") != PROTOCOL:
        raise WireError("the peer is not a fakerun agent (no challenge)")
    nonce = _hex_field(message, "nonce", 32)
    if nonce is None:
        raise WireError("malformed challenge")
    return {"k": "auth", "mac": _mac(secret, nonce, "dialer"), "nonce": secrets.token_hex(16)}


def verify_answer(secret: bytes, sent: dict[str, Any], message: dict[str, Any]) -> dict[str, Any]:
    """Checks the dialer's proof; returns the listener's own proof (the `welcome`)."""
    mac = _hex_field(message, "mac", 64)
    nonce = _hex_field(message, "nonce", 32)
    if message.get("k") != "auth" or mac is None or nonce is None:
        raise WireError("expected an authentication answer")
    if not hmac.compare_digest(mac, _mac(secret, str(sent["nonce"]), "dialer")):
        raise WireError("wrong secret (check FAKERUN_SECRET on every node)")
    return {"k": "welcome", "mac": _mac(secret, nonce, "listener")}


def verify_welcome(secret: bytes, sent: dict[str, Any], message: dict[str, Any]) -> None:
    """Checks the listener's proof."""
    mac = _hex_field(message, "mac", 64)
    if message.get("k") != "welcome" or mac is None:
        raise WireError("expected a welcome")
    if not hmac.compare_digest(mac, _mac(secret, str(sent["nonce"]), "listener")):
        raise WireError("the rendezvous host does not know the job's secret")
