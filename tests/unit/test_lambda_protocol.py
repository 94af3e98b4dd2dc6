"""Frames between the Lambda service and an environment carry the payload as it came:
the bytes the caller sent are the bytes the handler's environment reads."""

from __future__ import annotations

import asyncio
import socket
import threading

import pytest

from courierflow.local.lambda_service.protocol import encode, read_frame, recv_frame

pytestmark = pytest.mark.unit

#: JSON whose bytes a re-encoding would change (spacing, escapes, non-ASCII text)
PAYLOAD = '{"order_id": "ORD-1",  "notes": "caf\\u00e9 \\"back\\" door", "who": "Zoë"}'.encode()


def test_an_environment_reads_the_document_and_the_payload_bytes_unchanged() -> None:
    service, environment = socket.socketpair()
    with service, environment:
        service.sendall(encode({"request_id": "r-1", "tail": False}, PAYLOAD))
        frame = recv_frame(environment)
    assert frame == ({"request_id": "r-1", "tail": False}, PAYLOAD)


def test_a_frame_without_a_payload_carries_an_empty_one() -> None:
    service, environment = socket.socketpair()
    with service, environment:
        environment.sendall(encode({"pid": 42}))
        assert recv_frame(service) == ({"pid": 42}, b"")


def test_a_frame_split_across_many_writes_is_read_whole() -> None:
    data = encode({"request_id": "r-2"}, PAYLOAD * 1000)
    service, environment = socket.socketpair()
    with service, environment:

        def trickle() -> None:
            for start in range(0, len(data), 997):
                service.sendall(data[start : start + 997])

        writer = threading.Thread(target=trickle)
        writer.start()
        frame = recv_frame(environment)
        writer.join()
    assert frame == ({"request_id": "r-2"}, PAYLOAD * 1000)


@pytest.mark.parametrize("cut", [0, 3, 8, 20])
def test_a_service_that_hung_up_mid_frame_ends_the_environment(cut: int) -> None:
    service, environment = socket.socketpair()
    with environment:
        service.sendall(encode({"request_id": "r-3"}, PAYLOAD)[:cut])
        service.close()
        assert recv_frame(environment) is None


def test_the_service_reads_the_reply_and_the_response_bytes_unchanged() -> None:
    async def read(data: bytes) -> tuple[dict[str, object], bytes]:
        reader = asyncio.StreamReader()
        reader.feed_data(data)
        reader.feed_eof()
        return await read_frame(reader)

    reply = {"ok": True, "duration_ms": 1.5, "log": "", "exit": False}
    assert asyncio.run(read(encode(reply, b'{"delivered": true}'))) == (
        reply,
        b'{"delivered": true}',
    )
    with pytest.raises(asyncio.IncompleteReadError):
        asyncio.run(read(encode(reply, b"{}")[:-1]))
