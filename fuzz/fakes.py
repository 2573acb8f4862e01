"""In-memory stand-ins for what the HTTP routers talk to (the harnesses http1 and http2):
the client connection, fed from the fuzz input, and the event loop and log they run in."""

from __future__ import annotations

import asyncio
import collections
import logging
from collections.abc import Coroutine
from typing import Any

from fuzz.common import InvariantViolation, check

# Loop turns a reader waits before it reports EOF, so that exchanges already under way (an
# upstream answering, a response being relayed) finish first: everything here is in memory,
# so they need turns, never time.
QUIET_TURNS = 200
# Wall-clock bound on one connection; exceeding it means the router hangs.
HANG_SECONDS = 20.0


async def quiet() -> None:
    """Give every other task QUIET_TURNS turns of the loop."""
    for _ in range(QUIET_TURNS):
        await asyncio.sleep(0)


class ClientPipe:
    """The client's connection: each read gives the router the next piece of the input, and
    EOF once they are used up; what the router writes is kept in `received`."""

    def __init__(self, pieces: list[bytes]) -> None:
        self._pieces = collections.deque(pieces)
        self.received = bytearray()
        self.eof_written = False
        self.aborted = False
        self.closed = False

    async def read(self) -> bytes:
        if self._pieces:
            await asyncio.sleep(0)
            return self._pieces.popleft()
        await quiet()
        return b""

    async def write(self, data: bytes) -> None:
        if self.aborted or self.closed or self.eof_written:
            raise ConnectionResetError("the client connection is closed")
        self.received += data

    def write_eof(self) -> None:
        self.eof_written = True

    def abort(self) -> None:
        self.aborted = True

    async def close(self) -> None:
        self.closed = True


class QueuePipe:
    """The upstream end of an in-memory connection: reads come from `feed` (b"" is EOF);
    subclasses handle what the router writes."""

    def __init__(self) -> None:
        self._inbox: asyncio.Queue[bytes] = asyncio.Queue()
        self._eof = False
        self.aborted = False
        self.closed = False

    def feed(self, data: bytes) -> None:
        """Queue bytes for the router to read (b"": EOF, after which reads give b"")."""
        if not self._eof:
            self._inbox.put_nowait(data)
            self._eof = not data

    async def read(self) -> bytes:
        if self.aborted:
            raise ConnectionResetError("the upstream connection was reset")
        data = await self._inbox.get()
        if not data:
            self._inbox.put_nowait(b"")  # every later read sees EOF too
        return data

    async def write(self, data: bytes) -> None:
        if self.aborted or self.closed:
            raise ConnectionResetError("the upstream connection is closed")
        self.received(data)

    def received(self, data: bytes) -> None:
        """What the router sent; the subclass answers."""

    def write_eof(self) -> None:
        self.feed(b"")

    def abort(self) -> None:
        self.aborted = True
        self.feed(b"")

    async def close(self) -> None:
        self.closed = True
        self.feed(b"")


class LogRecorder(logging.Handler):
    """Keeps the records of a logger (the routers log unexpected failures, then carry on)."""

    def __init__(self, name: str) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []
        logger = logging.getLogger(name)
        logger.setLevel(logging.DEBUG)
        logger.propagate = False
        logger.addHandler(self)

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)

    def check_no_unexpected_errors(self, expected: tuple[type[BaseException], ...]) -> None:
        """No record carries an exception (or an argument that is one) outside `expected`:
        the routers' catch-all branches log what nobody anticipated."""
        for record in self.records:
            errors = [a for a in _args(record) if isinstance(a, BaseException)]
            if record.exc_info and record.exc_info[1] is not None:
                errors.append(record.exc_info[1])
            for error in errors:
                if not isinstance(error, expected):
                    raise InvariantViolation(
                        f"unexpected {error!r} logged as {record.getMessage()!r}"
                    ) from error


def _args(record: logging.LogRecord) -> tuple[Any, ...]:
    args = record.args
    if isinstance(args, tuple):
        return args
    return () if args is None else (args,)


class Loop:
    """One event loop for the whole run (a new one per input would cost more than the
    input's work)."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()

    def run(self, coro: Coroutine[Any, Any, None]) -> None:
        """Run `coro` to completion: a hang is a violation, and so is a task left behind."""

        async def bounded() -> None:
            try:
                async with asyncio.timeout(HANG_SECONDS):
                    await coro
            except TimeoutError:
                raise InvariantViolation(f"no end within {HANG_SECONDS} s") from None

        self.loop.run_until_complete(bounded())
        self.loop.run_until_complete(asyncio.sleep(0))
        left = [t for t in asyncio.all_tasks(self.loop) if not t.done()]
        for task in left:
            task.cancel()
        if left:
            self.loop.run_until_complete(asyncio.wait(left))
        check(not left, f"tasks left running after the connection ended: {left!r}")
