"""One TCP stream to a pod port through the API server (port-forward, v4.channel.k8s.io)."""

import contextlib
import socket
from typing import TYPE_CHECKING, Any

from aiohttp import WSMsgType

from tether.kube.client import KubeClient
from tether.kube.errors import (
    ApiError,
    KubeError,
    NotFoundError,
    Operation,
    PortForwardError,
    TargetNotFoundError,
)

if TYPE_CHECKING:
    from aiohttp import ClientWebSocketResponse

DATA = 0
ERROR = 1
# Each channel's first frame from the server names the port (2 bytes, little-endian).
PORT_PREFIX = 2
# Frames we send stay well under the kubelet's WebSocket message limit.
MAX_WRITE = 1 << 20
_DATA_BYTE = bytes([DATA])
_CLOSED = (WSMsgType.CLOSE, WSMsgType.CLOSING, WSMsgType.CLOSED, WSMsgType.ERROR)


class PortForward:
    """A byte stream to one port of a pod. One reader task and any writers at a time.

    There is no half-close: the stream ends for both directions at once.
    """

    def __init__(self, ws: "ClientWebSocketResponse[Any]", namespace: str, pod: str, port: int):
        self._ws = ws
        self._where = f'pod "{pod}" port {port} in namespace "{namespace}"'
        self._prefix = [PORT_PREFIX, PORT_PREFIX]
        self._error: str | None = None
        self._eof = False

    async def read(self) -> bytes:
        """The next bytes from the pod; b"" when the stream closed. Raises PortForwardError
        with the server's text if it reported an error (e.g. nothing listens on the port)."""
        if self._error is not None:
            raise PortForwardError(self._error)
        ws = self._ws
        while not self._eof:
            msg = await ws.receive()
            kind = msg.type
            if kind is WSMsgType.BINARY:
                frame: bytes = msg.data
            elif kind is WSMsgType.TEXT:
                frame = msg.data.encode()
            elif kind in _CLOSED:
                self._eof = True
                if kind is WSMsgType.ERROR:
                    self._error = f"port-forward to {self._where} broke: {ws.exception()}"
                    raise PortForwardError(self._error)
                break
            else:
                continue
            if not frame:
                continue
            channel = frame[0]
            if channel > ERROR:
                continue
            skip = self._prefix[channel]
            if skip:
                skip = min(skip, len(frame) - 1)
                self._prefix[channel] -= skip
            payload = frame[1 + skip :]
            if not payload:
                continue
            if channel == DATA:
                return payload
            text = payload.decode("utf-8", "replace").strip()
            self._error = f"port-forward to {self._where} failed: {text}"
            raise PortForwardError(self._error)
        return b""

    async def write(self, data: bytes) -> None:
        """Send `data` to the pod. Raises PortForwardError once the stream is closed."""
        ws = self._ws
        try:
            if len(data) <= MAX_WRITE:
                await ws.send_bytes(_DATA_BYTE + data)
                return
            view = memoryview(data)
            for start in range(0, len(view), MAX_WRITE):
                await ws.send_bytes(_DATA_BYTE + view[start : start + MAX_WRITE])
        except (ConnectionError, RuntimeError) as exc:
            raise PortForwardError(f"port-forward to {self._where} is closed: {exc}") from None

    async def close(self) -> None:
        """Close the stream (both directions)."""
        self._eof = True
        with contextlib.suppress(Exception):
            await self._ws.close()

    @property
    def closed(self) -> bool:
        """True once the stream ended or was closed."""
        return self._eof or self._ws.closed


async def open_portforward(kc: KubeClient, namespace: str, pod: str, port: int) -> PortForward:
    """Open one port-forward stream to `pod`:`port` through the API server.

    Raises TargetNotFoundError (no such pod), ForbiddenError (RBAC), PortForwardError (pod
    not running).
    """
    op = Operation("create", "pods/portforward", namespace, pod)
    try:
        # The generated method only builds the request; the upgrade happens on the await.
        connecting = await kc.call(
            kc.ws_core.connect_get_namespaced_pod_portforward(
                pod, namespace, ports=str(port), _preload_content=False
            ),
            op,
        )
        ws = await kc.call(connecting, op)
    except NotFoundError:
        raise TargetNotFoundError(f'pod "{pod}" not found in namespace "{namespace}"') from None
    except ApiError as exc:
        raise PortForwardError(
            f'cannot port-forward to pod "{pod}" in namespace "{namespace}" ({exc};'
            " is the pod running?)"
        ) from None
    except KubeError:
        raise
    sock = ws.get_extra_info("socket")
    if sock is not None:
        # Small request/response exchanges must not wait for Nagle.
        with contextlib.suppress(OSError, AttributeError):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return PortForward(ws, namespace, pod, port)
