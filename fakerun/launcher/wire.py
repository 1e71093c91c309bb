"""The protocol between fakerun agents: length-prefixed JSON frames and a mutual HMAC handshake.

Nothing received is ever unpickled or evaluated: a frame is a 4-byte big-endian length and a UTF-8 JSON
object, at most MAX_FRAME bytes. A connection proves it knows the job's secret before anything else: the
listener sends a nonce, the dialer answers HMAC-SHA256(secret, nonce) with a nonce of its own, and the
listener answers that in turn, so neither side talks to an impostor.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import secrets
import struct
from typing import Any

MAX_FRAME = 1 << 20  # the largest message: a 1024-GPU grid is ~60 kB
PROTOCOL = "fakerun/1"
_HEADER = struct.Struct(">I")


class WireError(ValueError):
    """A peer sent something that is not our protocol (garbage, oversized, wrong secret); one line."""


def job_secret(environ: dict[str, str] | os._Environ[str], run_id: str) -> bytes:
    """FAKERUN_SECRET, or one derived from the run id (which keeps strangers' jobs apart, not attackers)."""
    given = environ.get("FAKERUN_SECRET")
    if given:
        return given.encode()
    return hashlib.sha256(f"fakerun-job:{run_id}".encode()).digest()


def encode(message: dict[str, Any]) -> bytes:
    """One frame."""
    body = json.dumps(message, separators=(",", ":")).encode()
    if len(body) > MAX_FRAME:
        raise WireError(f"message of {len(body)} bytes exceeds {MAX_FRAME}")
    return _HEADER.pack(len(body)) + body


class FrameDecoder:
    """Turns a byte stream into messages; raises WireError at the first malformed frame."""

    def __init__(self) -> None:
        self._buf = bytearray()

    def feed(self, data: bytes) -> list[dict[str, Any]]:
        """The complete messages `data` finishes."""
        self._buf += data
        out: list[dict[str, Any]] = []
        while len(self._buf) >= _HEADER.size:
            (size,) = _HEADER.unpack_from(self._buf)
            if size > MAX_FRAME:
                raise WireError(f"frame of {size} bytes announced (limit {MAX_FRAME})")
            if len(self._buf) < _HEADER.size + size:
                break
            body = bytes(self._buf[_HEADER.size : _HEADER.size + size])
            del self._buf[: _HEADER.size + size]
            try:
                message = json.loads(body)
            except (UnicodeDecodeError, ValueError):
                raise WireError("frame is not JSON") from None
            if not isinstance(message, dict) or not isinstance(message.get("k"), str):
                raise WireError("frame is not a message object")
            out.append(message)
        return out


def _mac(secret: bytes, nonce: str, role: str) -> str:
    return hmac.new(secret, f"{PROTOCOL}:{role}:{nonce}".encode(), hashlib.sha256).hexdigest()


def challenge() -> dict[str, Any]:
    """The listener's first message."""
    return {"k": "challenge", "proto": PROTOCOL, "nonce": secrets.token_hex(16)}


def answer(secret: bytes, message: dict[str, Any]) -> dict[str, Any]:
    """The dialer's reply to a challenge: proof of the secret, and a nonce for the listener to answer."""
    if message.get("k") != "challenge" or message.get("proto") != PROTOCOL:
        raise WireError("the peer is not a fakerun agent (no challenge)")
    nonce = message.get("nonce")
    if not isinstance(nonce, str) or len(nonce) != 32:
        raise WireError("malformed challenge")
    return {"k": "auth", "mac": _mac(secret, nonce, "dialer"), "nonce": secrets.token_hex(16)}


def verify_answer(secret: bytes, sent: dict[str, Any], message: dict[str, Any]) -> dict[str, Any]:
    """Checks the dialer's proof; returns the listener's own proof (the `welcome`)."""
    mac = message.get("mac")
    nonce = message.get("nonce")
    if message.get("k") != "auth" or not isinstance(mac, str) or not isinstance(nonce, str):
        raise WireError("expected an authentication answer")
    if not hmac.compare_digest(mac, _mac(secret, str(sent["nonce"]), "dialer")):
        raise WireError("wrong secret (check FAKERUN_SECRET on every node)")
    return {"k": "welcome", "mac": _mac(secret, nonce, "listener")}


def verify_welcome(secret: bytes, sent: dict[str, Any], message: dict[str, Any]) -> None:
    """Checks the listener's proof."""
    mac = message.get("mac")
    if message.get("k") != "welcome" or not isinstance(mac, str):
        raise WireError("expected a welcome")
    if not hmac.compare_digest(mac, _mac(secret, str(sent["nonce"]), "listener")):
        raise WireError("the rendezvous host does not know the job's secret")
