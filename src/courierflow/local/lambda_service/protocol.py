"""Frames between the service and an execution environment: 4-byte length + JSON."""

from __future__ import annotations

import json
import socket
import struct
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # the environment side must not import asyncio: it stays small
    import asyncio

_HEADER = struct.Struct("!I")
#: one encoder for every frame (``json.dumps`` with options builds one per call)
_ENCODER = json.JSONEncoder(separators=(",", ":"))


def encode(doc: dict[str, Any]) -> bytes:
    body = _ENCODER.encode(doc).encode()
    return _HEADER.pack(len(body)) + body


async def read_frame(reader: asyncio.StreamReader) -> dict[str, Any]:
    """One frame; raises ``asyncio.IncompleteReadError`` when the environment is gone."""
    (size,) = _HEADER.unpack(await reader.readexactly(_HEADER.size))
    doc: dict[str, Any] = json.loads(await reader.readexactly(size))
    return doc


def recv_frame(sock: socket.socket) -> dict[str, Any] | None:
    """Blocking read of one frame (environment side); None when the service hung up."""
    header = _recv_exactly(sock, _HEADER.size)
    if header is None:
        return None
    (size,) = _HEADER.unpack(header)
    body = _recv_exactly(sock, size)
    if body is None:
        return None
    doc: dict[str, Any] = json.loads(body)
    return doc


def _recv_exactly(sock: socket.socket, size: int) -> bytes | None:
    chunks = bytearray()
    while len(chunks) < size:
        chunk = sock.recv(size - len(chunks))
        if not chunk:
            return None
        chunks += chunk
    return bytes(chunks)
