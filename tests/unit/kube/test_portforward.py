"""PortForward framing against a scripted WebSocket (no cluster)."""

from typing import Any

import pytest
from aiohttp import WSMessage, WSMsgType

from tether.kube.errors import PortForwardError
from tether.kube.portforward import MAX_WRITE, PortForward


class FakeWs:
    """Replays messages; records what was sent."""

    def __init__(self, messages: list[WSMessage]) -> None:
        self.messages = list(messages)
        self.sent: list[bytes] = []
        self.closed = False

    async def receive(self) -> WSMessage:
        if not self.messages:
            return WSMessage(WSMsgType.CLOSED, None, None)
        return self.messages.pop(0)

    async def send_bytes(self, data: bytes) -> None:
        if self.closed:
            raise ConnectionResetError("closed")
        self.sent.append(bytes(data))

    async def close(self) -> None:
        self.closed = True

    def exception(self) -> BaseException | None:
        return None


def _bin(data: bytes) -> WSMessage:
    return WSMessage(WSMsgType.BINARY, data, None)


def _pf(messages: list[WSMessage]) -> tuple[PortForward, FakeWs]:
    ws = FakeWs(messages)
    fake: Any = ws
    return PortForward(fake, "shop", "backend-1", 8080), ws


PREFIXES = [_bin(b"\x00\x90\x1f"), _bin(b"\x01\x90\x1f")]


async def test_reads_skip_port_prefixes_and_end_with_empty() -> None:
    pf, _ = _pf([*PREFIXES, _bin(b"\x00hello"), _bin(b"\x00"), _bin(b"\x00 world")])
    assert await pf.read() == b"hello"
    assert await pf.read() == b" world"
    assert await pf.read() == b""
    assert await pf.read() == b""
    assert pf.closed


async def test_prefix_and_data_in_one_frame() -> None:
    pf, _ = _pf([_bin(b"\x00\x90\x1fdata"), _bin(b"\x01\x90\x1f")])
    assert await pf.read() == b"data"


async def test_error_channel_text_raises() -> None:
    error = WSMessage(WSMsgType.TEXT, "\x01error forwarding port 9999: connection refused", None)
    pf, _ = _pf([*PREFIXES, error, WSMessage(WSMsgType.CLOSE, 1000, "")])
    with pytest.raises(PortForwardError) as info:
        await pf.read()
    assert str(info.value) == (
        'port-forward to pod "backend-1" port 8080 in namespace "shop" failed: error forwarding'
        " port 9999: connection refused"
    )
    with pytest.raises(PortForwardError):
        await pf.read()


async def test_writes_have_only_the_channel_byte() -> None:
    pf, ws = _pf([])
    await pf.write(b"GET / HTTP/1.1\r\n\r\n")
    assert ws.sent == [b"\x00GET / HTTP/1.1\r\n\r\n"]


async def test_large_writes_are_split() -> None:
    pf, ws = _pf([])
    data = bytes(range(256)) * ((MAX_WRITE * 2 + 10) // 256 + 1)
    await pf.write(data)
    assert all(frame[0] == 0 and len(frame) <= MAX_WRITE + 1 for frame in ws.sent)
    assert b"".join(frame[1:] for frame in ws.sent) == data


async def test_write_after_close_raises() -> None:
    pf, _ = _pf([])
    await pf.close()
    with pytest.raises(PortForwardError, match="closed"):
        await pf.write(b"x")
