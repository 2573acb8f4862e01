"""The agent's server: accepts tunnel connections on 127.0.0.1 inside its own pod (reachable
only through the API server's port-forward), authenticates them with the session secret, and
serves requests and streams inside the target's namespaces."""

import asyncio
import contextlib
import errno
import ipaddress
import itertools
import logging
import os
import secrets
import signal
import socket
import time
from collections.abc import Callable

from tether import __version__
from tether.agent.incoming.manager import IncomingManager, SessionRef
from tether.agent.netns import NetnsExecutor
from tether.agent.ops import Operations, resolve_error
from tether.agent.resolver import PodResolver, ResolveError
from tether.agent.target import Target, incoming_refusal
from tether.protocol import Connection, LocalProtocolError, RemoteError, ResumeRequested, Role
from tether.protocol.events import TARGET_GONE, TARGET_GONE_REASON
from tether.protocol.launch import ready_line
from tether.tunnel import StreamTransport, Tunnel, TunnelClosedError, TunnelStream
from tether.tunnel.datagrams import relay_datagrams

log = logging.getLogger("tether.agent")

CONNECT_TIMEOUT = 10.0
HANDSHAKE_TIMEOUT = 5.0
# The longest a disconnected session is held for its resume, whatever the client asks.
MAX_RESUME_GRACE = 900.0
# A client pings every few seconds (local/session); this long without a byte from it means
# its transport is dead even if the port-forward's socket never says so (a stopped laptop).
SILENCE_LIMIT = 12.0


class Agent:
    """Serves every session of one target until idle for `idle_timeout` seconds."""

    def __init__(
        self,
        target: Target,
        secret: bytes,
        idle_timeout: float,
        *,
        clock: Callable[[], float] = time.monotonic,
        tick: float = 1.0,
        secret_digest: bytes | None = None,
    ) -> None:
        self.target = target
        self.secret = secret
        # An ephemeral agent knows only the secret's SHA-256 (see launch.SECRET_DIGEST_ENV).
        self.secret_digest = secret_digest
        self.idle_timeout = idle_timeout
        # Injected so that tests drive idle time instead of waiting it out.
        self._clock = clock
        self._tick = tick
        self.executor = NetnsExecutor(target.netns_path)
        self.resolver = PodResolver(target.root, self.executor)
        self.incoming = (
            IncomingManager(self.executor, refusal=incoming_refusal(target))
            if target.netns_path
            else None
        )
        self.sessions: set[Tunnel] = set()
        # Every session by its resume token, for the client that comes back on a new
        # transport.
        self._by_token: dict[bytes, Tunnel] = {}
        self._leaving: set[Tunnel] = set()
        self._session_keys = itertools.count(1)
        # Set when the last session said goodbye: no new session may join an agent that is
        # about to exit (it would lose it); the joiner starts a new agent instead.
        self._exiting = False
        self._idle_since = clock()
        self._stop = asyncio.Event()
        self._why = "agent exiting"
        self._code = ""

    async def serve(
        self, host: str, port: int, on_ready: Callable[[int], None] | None = None
    ) -> None:
        """Listen, announce readiness (the log line, or `on_ready(port)`), run until idle or
        signalled."""
        server = await asyncio.start_server(self._accept, host, port)
        loop = asyncio.get_running_loop()
        if on_ready is None:
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.add_signal_handler(sig, self._stop.set)
        unwatch = self._watch_target(loop)
        bound = server.sockets[0].getsockname()[1]
        if on_ready is not None:
            on_ready(bound)
        else:
            # The CLI waits for exactly this line in the pod's log.
            print(ready_line(bound, __version__), flush=True)
        try:
            while not self._stop.is_set():
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._stop.wait(), self._tick)
                reason = self.exit_reason()
                if reason is not None:
                    log.info("%s: exiting", reason)
                    break
        finally:
            unwatch()
            server.close()
            for tunnel in list(self.sessions):
                await tunnel.close(self._why, self._code)
            if self.incoming is not None:
                await self.incoming.close()
            self.executor.shutdown()

    def exit_reason(self) -> str | None:
        """Why the agent should exit now (the last session said goodbye, or nobody came for
        `idle_timeout` seconds), or None while it has a session or time left."""
        if self.sessions:
            return None
        if self._exiting:
            return "the last session left"
        if self._clock() - self._idle_since >= self.idle_timeout:
            return f"no client for {self.idle_timeout:.0f} s"
        return None

    def _watch_target(self, loop: asyncio.AbstractEventLoop) -> Callable[[], None]:
        """End every session when the target process exits (its pod was deleted or its
        container restarted): they would otherwise go on against a namespace nobody uses."""
        if self.target.pid is None:
            return lambda: None
        try:
            pidfd = os.pidfd_open(self.target.pid)
        except OSError:
            self._target_gone()
            return lambda: None
        loop.add_reader(pidfd, self._target_gone)

        def unwatch() -> None:
            loop.remove_reader(pidfd)
            os.close(pidfd)

        return unwatch

    def _target_gone(self) -> None:
        if self._stop.is_set():
            return
        log.warning("the target process %s exited: ending every session", self.target.pid)
        self._why = TARGET_GONE_REASON
        self._code = TARGET_GONE
        self._stop.set()

    def stop(self) -> None:
        """Ask `serve` to return (closing every session)."""
        self._stop.set()

    def _leave(self, tunnel: Tunnel) -> bool:
        self._leaving.add(tunnel)
        if self.sessions - self._leaving:
            return False
        self._exiting = True
        return True

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self._exiting:
            writer.close()
            return
        token = secrets.token_bytes(16)
        conn = Connection(
            Role.AGENT,
            secret=self.secret,
            secret_digest=self.secret_digest,
            version=__version__,
            info={"pid": self.target.pid},
            resume_token=token,
        )
        ops = Operations(self.target, self.resolver, self.incoming)
        tunnel = Tunnel(
            conn, StreamTransport(reader, writer), on_request=ops, on_stream=self._stream
        )
        try:
            hello = await tunnel.start(timeout=HANDSHAKE_TIMEOUT)
        except TunnelClosedError as exc:
            log.warning("dropped a connection: %s", exc)
            return
        if isinstance(hello, ResumeRequested):
            await self._resume(tunnel, hello)
            return
        if self._exiting:
            # The last session said goodbye while this one shook hands: its agent is going.
            await tunnel.close("agent exiting")
            return
        ref = SessionRef(tunnel, next(self._session_keys))
        ops.session = ref
        ops.on_leave = lambda: self._leave(tunnel)
        grace = resume_grace(hello.info.get("resume_grace"))
        self.sessions.add(tunnel)
        self._by_token[token] = tunnel
        log.info("session connected (tether %s); %d active", conn.peer_version, len(self.sessions))
        try:
            why = await self._hold(tunnel, ref, grace)
            log.info("session ended: %s", why or "closed")
        finally:
            ops.close()
            if self.incoming is not None:
                await self.incoming.drop_session(ref)
            self.sessions.discard(tunnel)
            self._by_token.pop(token, None)
            self._leaving.discard(tunnel)
            if not self.sessions:
                self._idle_since = self._clock()

    async def _hold(self, tunnel: Tunnel, ref: SessionRef, grace: float) -> BaseException | None:
        """Run a session until it ends, through any number of lost transports: each time,
        its incoming traffic goes back to the pod and the session waits up to `grace`
        seconds for its client to resume it."""
        while True:
            watchdog = asyncio.ensure_future(self._watch_silence(tunnel))
            try:
                await tunnel.wait_interrupted()
            finally:
                watchdog.cancel()
            if tunnel.closed:
                return tunnel.closed_because
            if grace <= 0 or tunnel in self._leaving:
                tunnel.abandon(tunnel.lost_because or TunnelClosedError("transport lost"))
                return tunnel.closed_because
            log.info(
                "session lost its connection (%s); holding it %.0f s for a resume",
                tunnel.lost_because,
                grace,
            )
            if self.incoming is not None:
                self.incoming.suspend_session(ref)
            if not await tunnel.wait_connected(grace):
                tunnel.abandon(TunnelClosedError(f"not resumed within {grace:.0f} s"))
                return tunnel.closed_because
            log.info("session resumed")
            if self.incoming is not None:
                self.incoming.resume_session(ref)

    async def _watch_silence(self, tunnel: Tunnel) -> None:
        # The client pings often; long silence means a transport that died without a word.
        while True:
            quiet = self._clock() - tunnel.last_received
            if quiet >= SILENCE_LIMIT:
                tunnel.transport_failed(TimeoutError(f"nothing from the client for {quiet:.0f} s"))
                return
            await asyncio.sleep(min(self._tick, SILENCE_LIMIT - quiet))

    async def _resume(self, fresh: Tunnel, asked: ResumeRequested) -> None:
        session = self._by_token.get(asked.token)
        if session is None or session.closed:
            log.info("refused a resume of an unknown session")
            await fresh.refuse(
                "resume", "the agent no longer holds this session (it expired or was ended)"
            )
            return
        transport = fresh.hand_over()
        if not session.suspended:
            # The client noticed the cut before we did: this transport replaces the old.
            session.transport_failed(TunnelClosedError("the client came back on a new one"))
        try:
            session.adopt(transport, asked.received)
        except LocalProtocolError as exc:
            log.warning("refused a resume: %s", exc)
            await fresh.refuse("resume", f"the session cannot be resumed: {exc}")
            return
        log.info("session resumed on a new connection (tether %s)", asked.peer_version)

    async def _stream(self, stream: TunnelStream) -> None:
        if stream.kind not in ("tcp", "udp"):
            stream.reset("EOPNOTSUPP", f"unsupported stream kind {stream.kind!r}", errno.EOPNOTSUPP)
            return
        host = stream.params.get("host")
        port = stream.params.get("port")
        if not isinstance(host, str) or not isinstance(port, int) or not 0 < port < 65536:
            stream.reset("EINVAL", f"{stream.kind} stream needs host and port", errno.EINVAL)
            return
        try:
            ip = await self._address(host)
            if stream.kind == "udp":
                sock = await self.executor.open_udp(ip, port)
            else:
                sock = await self.executor.open_tcp(ip, port, CONNECT_TIMEOUT)
        except ResolveError as exc:
            err = resolve_error(exc).error
            stream.reset(err.code, err.message, err.errno)
            return
        except OSError as exc:
            err = RemoteError.from_os_error(exc)
            stream.reset(err.code, err.message, err.errno)
            return
        stream.accept({"ip": ip, "port": port})
        if stream.kind == "udp":
            await relay_datagrams(stream, sock)
            return
        reader, writer = await asyncio.open_connection(sock=sock)
        await stream.relay(reader, writer)

    async def _address(self, host: str) -> str:
        with contextlib.suppress(ValueError):
            return str(ipaddress.ip_address(host))
        addresses = await self.resolver.resolve(host, socket.AF_UNSPEC)
        v4 = [a for a in addresses if ":" not in a]
        return (v4 or addresses)[0]


def resume_grace(asked: object) -> float:
    """How long to hold a disconnected session: what its client asked for, within bounds
    (an old or odd client gets none)."""
    if isinstance(asked, bool) or not isinstance(asked, int | float):
        return 0.0
    return max(0.0, min(float(asked), MAX_RESUME_GRACE))
