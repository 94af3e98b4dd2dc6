"""Frames between the service and an execution environment.

A frame is an 8-byte header (the sizes of the two parts that follow), a small JSON
document (request id, deadline, outcome...) and an opaque blob: the invocation's payload
on the way in, the handler's response on the way out. The blob travels as the bytes it
is: the service has already checked that a payload is JSON, and wrapping it in the
document would make the service encode it as a JSON string and the environment decode
it twice, on every invocation.
"""

from __future__ import annotations

import json
import socket
import struct
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # the environment side must not import asyncio: it stays small
    import asyncio

#: the sizes of the document and of the blob, in bytes
_HEADER = struct.Struct("!II")
#: one encoder for every frame (``json.dumps`` with options builds one per call)
_ENCODER = json.JSONEncoder(separators=(",", ":"))

Frame = tuple[dict[str, Any], bytes]


def encode(doc: dict[str, Any], blob: bytes = b"") -> bytes:
    """One frame carrying ``doc`` (JSON-serialisable) and ``blob`` (any bytes)."""
    meta = _ENCODER.encode(doc).encode()
    return _HEADER.pack(len(meta), len(blob)) + meta + blob


def _decode(data: bytes, meta_size: int) -> Frame:
    doc: dict[str, Any] = json.loads(data[:meta_size])
    return doc, data[meta_size:]


async def read_frame(reader: asyncio.StreamReader) -> Frame:
    """One frame; raises ``asyncio.IncompleteReadError`` when the environment is gone."""
    meta_size, blob_size = _HEADER.unpack(await reader.readexactly(_HEADER.size))
    return _decode(await reader.readexactly(meta_size + blob_size), meta_size)


def recv_frame(sock: socket.socket) -> Frame | None:
    """Blocking read of one frame (environment side); None when the service hung up."""
    header = _recv_exactly(sock, _HEADER.size)
    if header is None:
        return None
    meta_size, blob_size = _HEADER.unpack(header)
    data = _recv_exactly(sock, meta_size + blob_size)
    if data is None:
        return None
    return _decode(data, meta_size)


def _recv_exactly(sock: socket.socket, size: int) -> bytes | None:
    data = sock.recv(size)
    if len(data) == size:  # nearly always: the frame arrived in one piece
        return data
    chunks = bytearray(data)
    while data and len(chunks) < size:
        data = sock.recv(size - len(chunks))
        chunks += data
    return bytes(chunks) if len(chunks) == size else None
