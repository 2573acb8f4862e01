"""`tether port-forward -L [LOCAL_PORT:]HOST:PORT`: local listeners whose connections the
agent opens from the target's network namespace."""

import asyncio
import contextlib
import errno
import socket
from asyncio import StreamReader, StreamWriter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from tether.errors import UserError
from tether.local.session.progress import Progress
from tether.tunnel import RemoteOpError, Tunnel, TunnelClosedError


class ForwardSpecError(UserError, ValueError):
    """A -L value that does not parse; the message names the accepted form."""


@dataclass(frozen=True)
class LocalForward:
    """Listen on bind:local_port; connect to host:port from the target."""

    local_port: int
    host: str
    port: int
    bind: str = "127.0.0.1"

    def __str__(self) -> str:
        return f"{self.bind}:{self.local_port} -> {self.host}:{self.port}"


def _port(text: str, spec: str) -> int:
    if not text.isdigit() or not 0 <= int(text) < 65536:
        raise ForwardSpecError(f"-L {spec}: {text!r} is not a port (0-65535)")
    return int(text)


def parse_local_forward(spec: str) -> LocalForward:
    """Parse `[LOCAL_PORT:]HOST:PORT` (HOST may be a bracketed IPv6 address)."""
    form = "expected [LOCAL_PORT:]HOST:PORT, e.g. 18080:backend:80"
    text = spec.strip()
    host_end = text.rfind("]")
    if host_end != -1:
        open_at = text.find("[")
        if open_at == -1 or not text[host_end + 1 :].startswith(":"):
            raise ForwardSpecError(f"-L {spec}: {form}")
        head = text[:open_at].rstrip(":")
        host = text[open_at + 1 : host_end]
        port = text[host_end + 2 :]
        local = head or port
    else:
        parts = text.split(":")
        if len(parts) == 2:
            host, port = parts
            local = port
        elif len(parts) == 3:
            local, host, port = parts
        else:
            raise ForwardSpecError(f"-L {spec}: {form}")
    if not host:
        raise ForwardSpecError(f"-L {spec}: {form}")
    remote = _port(port, spec)
    if remote == 0:
        raise ForwardSpecError(f"-L {spec}: the remote port cannot be 0")
    return LocalForward(_port(local, spec), host, remote)


def bind_listeners(forwards: list[LocalForward]) -> list[socket.socket]:
    """Bind every local port first, so a port in use fails before anything is created in
    the cluster."""
    socks: list[socket.socket] = []
    try:
        for fwd in forwards:
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            socks.append(sock)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                sock.bind((fwd.bind, fwd.local_port))
            except OSError as exc:
                if exc.errno == errno.EADDRINUSE:
                    raise ForwardSpecError(
                        f"local port {fwd.local_port} is already in use (pick another: "
                        f"-L OTHER_PORT:{fwd.host}:{fwd.port})"
                    ) from None
                raise
            sock.listen(128)
            sock.setblocking(False)
    except BaseException:
        for s in socks:
            s.close()
        raise
    return socks


async def serve_forwards(
    tunnel: Tunnel, forwards: list[LocalForward], socks: list[socket.socket], progress: Progress
) -> None:
    """Accept on the bound sockets until the tunnel closes or the task is cancelled."""

    def handler(fwd: LocalForward) -> Callable[[StreamReader, StreamWriter], Awaitable[None]]:
        async def on_connect(reader: StreamReader, writer: StreamWriter) -> None:
            sock = writer.get_extra_info("socket")
            if sock is not None:
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            try:
                stream = await tunnel.open_stream("tcp", {"host": fwd.host, "port": fwd.port})
            except asyncio.CancelledError:
                writer.transport.abort()
                return
            except (RemoteOpError, TunnelClosedError) as exc:
                progress.warn(f"{fwd.host}:{fwd.port}: {exc}")
                writer.transport.abort()
                return
            progress.detail(f"{fwd.host}:{fwd.port} connected via {stream.info.get('ip')}")
            try:
                await stream.relay(reader, writer)
            except asyncio.CancelledError:
                # Shutting down. Ending normally instead of as cancelled keeps Python 3.11's
                # start_server callback from logging a spurious traceback.
                stream.reset("ECONNABORTED", "tether is exiting", 103)
                writer.transport.abort()

        return on_connect

    servers = []
    for fwd, sock in zip(forwards, socks, strict=True):
        servers.append(await asyncio.start_server(handler(fwd), sock=sock))
        bound = sock.getsockname()[1]
        progress.step(f"forwarding {fwd.bind}:{bound} -> {fwd.host}:{fwd.port}")
    try:
        await tunnel.wait_closed()
    finally:
        for server in servers:
            server.close()
        for server in servers:
            with contextlib.suppress(Exception):
                await server.wait_closed()
