"""The supervisor thread: it receives the notifications, decodes each into a typed call for
the handlers, and sees to it that every notification gets an answer.

The thread answers at once whatever a handler can decide from immutable configuration
(CONTINUE for local files, an errno, a write-back of emulated results); anything that needs
the agent or state the event loop keeps becomes a task on the loop (`spawn`). Replies may go
out of order: each carries its notification id.

Every notification gets an answer, and this module is the one place that says which. A
handler that fails on an OSError answers with its errno (the target vanished, or its memory
was unreadable). One that fails on anything else (a bug) answers with what `failure_answer`
says fits the call, and the first such failure is reported on stderr in one line. A dead
supervisor would make every trapped syscall fail with ENOSYS or hang, so if the thread itself
fails the process tree is ended (`on_fatal`).

Ownership: the thread owns the poll object and the counters (`count`, `by_nr`, `fatal`,
`failure`), which the loop reads only after `detach` has joined it. The loop owns
`internal_errors` and the tasks; a handler reaches the loop's state only through `spawn` or
`to_loop`.
"""

import asyncio
import collections
import errno
import logging
import select
import threading
from collections.abc import Callable, Coroutine
from typing import Any

from tether.intercept.seccomp import Listener, Notification, Syscall
from tether.local.exec.syscalls import Call, Memory, ProcessMemory, decode
from tether.local.session.progress import Progress
from tether.tunnel import RemoteOpError, TunnelClosedError

log = logging.getLogger("tether.supervisor")

# Notifications served in one go before the thread looks at its stop flag again.
_DRAIN = 64

# When handling a call fails inside tether (a bug, not the target's or the agent's error),
# the call still gets an answer. CONTINUE only where running it natively is harmless: a
# close (a pending write-back is sent again when the tree exits), the socket-name calls
# (the real loopback names), uname (the local host name), listen (incoming loses the port).
# A connect must not silently leave from this machine: ENETUNREACH. Anything else: EIO.
_CONTINUE_ON_FAILURE = frozenset(
    {Syscall.close, Syscall.getpeername, Syscall.getsockname, Syscall.uname, Syscall.listen}
)
_ERRNO_ON_FAILURE: dict[int, int] = {Syscall.connect: errno.ENETUNREACH}

Handler = Callable[[Notification, Call], None]


def failure_answer(nr: int) -> int | None:
    """The errno that answers syscall `nr` when handling it failed inside tether, or None for
    CONTINUE (see `_CONTINUE_ON_FAILURE`)."""
    if nr in _CONTINUE_ON_FAILURE:
        return None
    return _ERRNO_ON_FAILURE.get(nr, errno.EIO)


def _call_name(nr: int) -> str:
    try:
        return Syscall(nr).name
    except ValueError:
        return f"syscall {nr}"


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


class Dispatcher:
    """Receives `listener`'s notifications on a thread and hands each decoded call to
    `handle` (on that thread); `memory` reads a caller's memory for the decoder."""

    def __init__(
        self,
        listener: Listener,
        progress: Progress,
        handle: Handler,
        *,
        memory: Callable[[int], Memory] = ProcessMemory,
    ) -> None:
        self.listener = listener
        self.progress = progress
        self._handle = handle
        self._memory = memory
        # Called on the supervisor thread if it fails (end the process tree).
        self.on_fatal: Callable[[], None] | None = None

        # Owned by the supervisor thread; the loop reads them only after detach().
        self.count = 0
        self.by_nr: collections.Counter[int] = collections.Counter()
        self.fatal = False
        self.failure: BaseException | None = None
        self._poll = select.poll()
        self._poll.register(listener.fileno(), select.POLLIN)

        # Owned by the event loop.
        self.internal_errors = 0
        self._tasks: set[asyncio.Task[None]] = set()

        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._stopping = threading.Event()

    def attach(self, loop: asyncio.AbstractEventLoop) -> None:
        """Start serving notifications: a dedicated thread receives them and answers the
        quick ones itself; anything that needs the agent or the loop's state becomes a task
        on `loop`.

        Why a thread and not the event loop: a notification is exposed to signals until it is
        received (a caller without SA_RESTART then sees EINTR), and most of them (stat and open
        of local files during start-up) are answered with CONTINUE; a thread parked in poll()
        takes them without waiting for the loop to get round to it.
        """
        self._loop = loop
        self._thread = threading.Thread(target=self._run, name="tether-supervisor", daemon=True)
        self._thread.start()

    def detach(self) -> None:
        """Stop serving (the process tree is gone)."""
        self._stopping.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        for task in list(self._tasks):
            task.cancel()

    def _run(self) -> None:
        try:
            self._loop_notifications()
        except Exception as exc:
            # Without a supervisor every trapped call would fail with ENOSYS or hang: end the
            # process tree rather than leave it half-working (run_exec says why).
            log.debug("the supervisor thread failed", exc_info=exc)
            self.failure = exc
            self.fatal = True
            if self.on_fatal is not None:
                self.on_fatal()

    def _loop_notifications(self) -> None:
        while not self._stopping.is_set():
            events = self._poll.poll(100)
            if not events:
                continue
            if not any(mask & select.POLLIN for _, mask in events):
                if any(mask & (select.POLLHUP | select.POLLERR) for _, mask in events):
                    return  # every intercepted task is gone
                continue
            for _ in range(_DRAIN):
                self._serve_one()
                if not self._poll.poll(0):
                    break

    def _serve_one(self) -> None:
        # A receive that fails (other than for a target gone or a signal) is fatal: _run.
        notif = self.listener.receive()
        if notif is None:
            return
        self.count += 1
        self.by_nr[notif.nr] += 1
        try:
            call = decode(notif, self._memory(notif.pid))
            if call is None:
                self.listener.respond_continue(notif.id)
            else:
                self._handle(notif, call)
        except OSError as exc:
            # The target vanished mid-way (ESRCH), or its memory was unreadable (EFAULT).
            self.answer_errno(notif, exc.errno or errno.EIO)
        except Exception as exc:
            self.answer_failure(notif)
            self.to_loop(self._report, notif.nr, exc)

    def answer_errno(self, notif: Notification, err: int) -> None:
        """Fail the call with `err` (quietly, if the caller is gone meanwhile)."""
        try:
            self.listener.respond_error(notif.id, err)
        except OSError as exc:
            log.debug("could not answer %s", notif, exc_info=exc)

    def answer_failure(self, notif: Notification) -> None:
        """Answer a call whose handling failed inside tether (from either thread)."""
        answer = failure_answer(notif.nr)
        try:
            if answer is None:
                self.listener.respond_continue(notif.id)
            else:
                self.listener.respond_error(notif.id, answer)
        except OSError as exc:
            log.debug("could not answer %s", notif, exc_info=exc)

    def _report(self, nr: int, exc: BaseException) -> None:
        """Count an internal error (on the loop); the first one is shown, in one line."""
        self.internal_errors += 1
        log.debug("internal error handling %s", _call_name(nr), exc_info=exc)
        if self.internal_errors > 1:
            return
        answer = failure_answer(nr)
        how = (
            "let it run untrapped"
            if answer is None
            else f"failed it with {errno.errorcode[answer]}"
        )
        self.progress.warn(
            f"internal error handling {_call_name(nr)} ({_one_line(exc)}); tether {how}"
            " (later internal errors are counted, not shown)"
        )

    def to_loop(self, callback: Callable[..., None], *args: Any) -> None:
        """Run `callback(*args)` on the event loop (from the supervisor thread)."""
        assert self._loop is not None
        try:
            self._loop.call_soon_threadsafe(callback, *args)
        except RuntimeError:  # the loop is closed: tether is exiting
            log.debug("event loop closed; dropped %s", callback)

    def spawn(self, notif: Notification, coro: Coroutine[Any, Any, None]) -> None:
        """Run `coro`, which answers `notif`, on the loop (from the supervisor thread); if it
        fails, the failure is the answer: a remote or OS errno, or `failure_answer`."""
        assert self._loop is not None
        try:
            self._loop.call_soon_threadsafe(self._spawn_now, notif, coro)
        except BaseException:
            coro.close()
            raise

    def _spawn_now(self, notif: Notification, coro: Coroutine[Any, Any, None]) -> None:
        async def guarded() -> None:
            try:
                await coro
            except RemoteOpError as exc:
                self.answer_errno(notif, exc.error.errno or errno.EIO)
            except TunnelClosedError:
                self.answer_errno(notif, errno.EIO)
            except OSError as exc:
                self.answer_errno(notif, exc.errno or errno.EIO)
            except Exception as exc:
                self.answer_failure(notif)
                self._report(notif.nr, exc)

        try:
            task = asyncio.ensure_future(guarded())
        except Exception as exc:  # a callback's error would only be logged: answer here
            coro.close()
            self.answer_failure(notif)
            self._report(notif.nr, exc)
            return
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
