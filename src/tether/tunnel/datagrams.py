"""Datagrams over a byte stream: each one framed by a 2-byte big-endian length, so a "udp"
stream carries connected UDP with its message boundaries intact."""

import asyncio
import errno
import socket
import struct

from tether.tunnel.stream import StreamResetError, TunnelStream

_LEN = struct.Struct("!H")
# A UDP flow with no datagram either way for this long is closed: UDP has no end-of-stream.
IDLE_TIMEOUT = 120.0


def frame(datagram: bytes) -> bytes:
    """One datagram, length-prefixed."""
    return _LEN.pack(len(datagram)) + datagram


class Deframer:
    """Splits a byte stream back into datagrams."""

    def __init__(self) -> None:
        self._buf = bytearray()

    def feed(self, data: bytes) -> list[bytes]:
        """Add bytes; return the complete datagrams."""
        self._buf += data
        out: list[bytes] = []
        pos = 0
        while len(self._buf) - pos >= 2:
            (size,) = _LEN.unpack_from(self._buf, pos)
            if len(self._buf) - pos - 2 < size:
                break
            out.append(bytes(self._buf[pos + 2 : pos + 2 + size]))
            pos += 2 + size
        del self._buf[:pos]
        return out


async def relay_datagrams(stream: TunnelStream, sock: socket.socket) -> None:
    """Pump datagrams between a connected UDP socket and a "udp" stream until either side
    ends or the flow stays idle for IDLE_TIMEOUT."""
    loop = asyncio.get_running_loop()
    deframer = Deframer()
    activity = asyncio.Event()

    async def outbound() -> None:
        while data := await stream.read():
            for datagram in deframer.feed(data):
                await loop.sock_sendall(sock, datagram)
            activity.set()

    async def inbound() -> None:
        while True:
            datagram = await loop.sock_recv(sock, 65535)
            await stream.write(frame(datagram))
            activity.set()

    async def idle() -> None:
        while True:
            activity.clear()
            try:
                await asyncio.wait_for(activity.wait(), IDLE_TIMEOUT)
            except TimeoutError:
                return

    tasks = [asyncio.ensure_future(c) for c in (outbound(), inbound(), idle())]
    try:
        await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    except (OSError, StreamResetError):
        pass
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        sock.close()
        stream.reset("ECONNABORTED", "udp flow closed", errno.ECONNABORTED)
