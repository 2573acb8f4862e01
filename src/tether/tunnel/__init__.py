"""The asyncio shell around the sans-IO protocol, shared by the agent and the local side.

`Tunnel` runs one protocol `Connection` over a byte transport (a TCP connection in the agent, a
port-forward WebSocket on the local side), turning requests into awaitables and streams into
`TunnelStream` objects with back-pressure that follows the protocol's per-stream credit.
"""

from tether.tunnel.stream import TunnelStream
from tether.tunnel.transport import StreamTransport, Transport
from tether.tunnel.tunnel import RemoteOpError, Tunnel, TunnelClosedError

__all__ = [
    "RemoteOpError",
    "StreamTransport",
    "Transport",
    "Tunnel",
    "TunnelClosedError",
    "TunnelStream",
]
