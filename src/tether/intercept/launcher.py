"""Start the target under the seccomp filter, learn whether its exec worked, relay signals.

The order of events matters. The child installs the filter *before* exec (a filter cannot be
attached to another process), so the new image's very first trapped syscalls (the dynamic
loader's openat, for instance) already wait for the supervisor. Hence `spawn` must not wait for
the exec: it returns as soon as the child has handed over the listener fd, and the caller
serves notifications while it learns the exec's outcome from `Launch.exec_error_fd` (EOF: the
exec happened; 5 bytes: it failed) with `Launch.wait_exec` or `Launch.exec_done`.

Between installing the filter and exec the child only calls sendmsg (to pass the listener),
then execve, so those two must not be trapped; spawn refuses a filter that traps sendmsg. A
trapped execve works (the caller is serving by then) but every exec in the tree then costs a
round trip.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import struct
from collections.abc import Callable, Iterable, Mapping
from errno import EACCES, EIO, ENOENT, ETIMEDOUT
from typing import Final, NoReturn

from tether.errors import UserError
from tether.intercept.seccomp import (
    FilterProgram,
    Listener,
    Syscall,
    build_filter,
    install_filter,
    probe_features,
    require_kernel,
)

_REPORT: Final = struct.Struct("=ci")  # stage, errno: written by the child when it gives up
_STAGE_CWD: Final = b"C"
_STAGE_SETUP: Final = b"S"
_STAGE_EXEC: Final = b"E"

# Signals that a terminal sends to its whole foreground process group (SIGHUP reaches it from
# the shell's job control when the terminal hangs up).
_TTY_SIGNALS: Final = frozenset({signal.SIGINT, signal.SIGQUIT, signal.SIGWINCH, signal.SIGHUP})
FORWARDED_SIGNALS: Final = (
    signal.SIGINT,
    signal.SIGTERM,
    signal.SIGHUP,
    signal.SIGQUIT,
    signal.SIGUSR1,
    signal.SIGUSR2,
    signal.SIGWINCH,
)


class LaunchError(UserError):
    """The child could not be prepared (bad cwd, filter refused, timeout); it has been reaped."""

    def __init__(self, errno: int, message: str) -> None:
        super().__init__(message)
        self.errno = errno


class CommandError(Exception):
    """exec failed. The message is the shell's, e.g. `tether: ./x: Permission denied`.

    `exit_code` is the shell's too (126, or 127 for not found), and also the child's exit code.
    """

    def __init__(self, command: str, errno: int, exit_code: int, message: str) -> None:
        super().__init__(message)
        self.command = command
        self.errno = errno
        self.exit_code = exit_code


class CommandNotFoundError(CommandError):
    """exec failed with ENOENT: `tether: foo: command not found` (exit code 127)."""


def _command_error(command: str, err: int) -> CommandError:
    if err == ENOENT:
        if "/" in command:
            message = f"tether: {command}: {os.strerror(err)}"
        else:
            message = f"tether: {command}: command not found"
        return CommandNotFoundError(command, err, 127, message)
    return CommandError(command, err, 126, f"tether: {command}: {os.strerror(err)}")


class Launch:
    """A started child: its pid, its listener, and the pipe that tells how its exec went.

    The caller owns `listener` (close it when done; `close` here closes both fds). Reaping the
    child (waitpid or a pidfd) is the caller's job too.
    """

    def __init__(self, pid: int, listener: Listener, exec_error_fd: int, command: str) -> None:
        self.pid = pid
        self.listener = listener
        self.exec_error_fd = exec_error_fd
        self.command = command
        self.sync_wake_up = False
        self.error: CommandError | None = None
        self._known = False

    def exec_done(self) -> bool:
        """Read the exec pipe without blocking: True once the outcome is known.

        Known means the exec succeeded, failed (`error` is then set), or the child died before
        exec (its wait status tells). False while the child has not reached exec yet.
        """
        if self._known or self.exec_error_fd < 0:  # closed by `close`: nothing more to learn
            return True
        try:
            data = os.read(self.exec_error_fd, 64)
        except BlockingIOError:
            return False
        if len(data) >= _REPORT.size:
            _, err = _REPORT.unpack_from(data)
            self.error = _command_error(self.command, err)
        self._known = True
        os.close(self.exec_error_fd)
        self.exec_error_fd = -1
        return True

    def exec_error(self) -> str | None:
        """The shell-style message if the exec failed, else None (also while still unknown)."""
        self.exec_done()
        return None if self.error is None else str(self.error)

    def check_exec(self) -> None:
        """Raise the CommandError if the exec is known to have failed."""
        if self.exec_done() and self.error is not None:
            raise self.error

    async def wait_exec(self) -> None:
        """Wait (while the loop serves the listener) for the exec; raise CommandError if failed."""
        if not self.exec_done():
            loop = asyncio.get_running_loop()
            ready = loop.create_future()
            fd = self.exec_error_fd

            def wake() -> None:
                if not ready.done():
                    ready.set_result(None)

            loop.add_reader(fd, wake)
            try:
                while not self.exec_done():
                    await ready
                    ready = loop.create_future()
            finally:
                loop.remove_reader(fd)
        self.check_exec()

    def close(self) -> None:
        """Close the exec pipe and the listener (idempotent)."""
        if self.exec_error_fd >= 0:
            os.close(self.exec_error_fd)
            self.exec_error_fd = -1
        self.listener.close()


def _child(
    argv: list[str],
    env: dict[str, str],
    cwd: str | None,
    stdio: tuple[int | None, int | None, int | None],
    program: FilterProgram,
    flags: int,
    sock: socket.socket,
    report_fd: int,
) -> NoReturn:
    """The forked child: never returns (exec or _exit)."""
    stage, err = _STAGE_SETUP, EIO
    try:
        # Undo what Python (or the parent's event loop) set that exec would keep: ignored
        # SIGPIPE/SIGXFSZ, a blocked mask. The wakeup fd is the parent's loop's: a signal here
        # must not wake it.
        with contextlib.suppress(ValueError):
            signal.set_wakeup_fd(-1)
        for sig in (signal.SIGPIPE, signal.SIGXFSZ):
            signal.signal(sig, signal.SIG_DFL)
        signal.pthread_sigmask(signal.SIG_SETMASK, ())
        for target, fd in enumerate(stdio):
            if fd is not None:
                if fd == target:
                    os.set_inheritable(fd, True)
                else:
                    os.dup2(fd, target)
        if cwd is not None:
            stage = _STAGE_CWD
            os.chdir(cwd)
        stage = _STAGE_SETUP
        listener = install_filter(program, flags=flags)
        # From here on, only sendmsg and execve (untrapped). The listener fd and the socket are
        # close-on-exec, so nothing needs closing, which also keeps close(2) out of the way.
        socket.send_fds(sock, [b"L"], [listener])
        stage = _STAGE_EXEC
        os.execvpe(argv[0], argv, env)
    except OSError as exc:
        err = exc.errno or EIO
    except BaseException:
        err = EIO
    code = 127 if stage == _STAGE_EXEC and err == ENOENT else 126
    try:
        os.write(report_fd, _REPORT.pack(stage, err))
    finally:
        os._exit(code)


def _reap(pid: int) -> None:
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, 0)


def spawn(
    argv: list[str],
    env: dict[str, str],
    syscalls: Iterable[int],
    *,
    cwd: str | None = None,
    stdin: int | None = None,
    stdout: int | None = None,
    stderr: int | None = None,
    timeout: float = 10.0,
    allow_if: Mapping[int, tuple[int, int]] | None = None,
) -> Launch:
    """Fork `argv` (looked up in `env`'s PATH) with `syscalls` trapped; return once the
    supervisor can serve it, before the exec (see the module docstring).

    The child stays in our process group, so it keeps the terminal (job control, Ctrl-C, tty
    reads). `stdin`/`stdout`/`stderr` are fds of ours to put at 0/1/2 in the child (default:
    inherit). SYNC_WAKE_UP is enabled on the listener when the kernel has it
    (`Launch.sync_wake_up`). `allow_if` is build_filter's. Raises UnsupportedKernelError,
    ValueError (empty argv, sendmsg trapped) or LaunchError; an exec failure comes later, from
    the Launch.
    """
    if not argv:
        raise ValueError("empty command")
    nrs = set(syscalls)
    if Syscall.sendmsg in nrs:
        raise ValueError("spawn cannot trap sendmsg: the child passes the listener with it")
    features = probe_features()
    require_kernel(features)
    program = FilterProgram(build_filter(nrs, allow_if))
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    report_r, report_w = os.pipe2(os.O_CLOEXEC)
    try:
        pid = os.fork()
        if pid == 0:
            _child(
                argv,
                env,
                cwd,
                (stdin, stdout, stderr),
                program,
                features.filter_flags,
                theirs,
                report_w,
            )
    except BaseException:
        os.close(report_r)
        ours.close()
        raise
    finally:
        theirs.close()
        os.close(report_w)
    try:
        ours.settimeout(timeout)
        try:
            msg, fds, _, _ = socket.recv_fds(ours, 1, 1, socket.MSG_CMSG_CLOEXEC)
        except TimeoutError:
            raise LaunchError(ETIMEDOUT, "tether: the child did not start in time") from None
        if not fds:
            if msg:  # sent but the fd got lost (RLIMIT_NOFILE?): the child must not run on
                os.kill(pid, signal.SIGKILL)
            data = os.read(report_r, 64)  # the child exits right after writing: no hang
            stage, err = _REPORT.unpack_from(data) if len(data) >= _REPORT.size else (b"", EIO)
            if stage == _STAGE_CWD:
                message = f"tether: cd: {cwd}: {os.strerror(err)}"
            else:
                message = f"tether: cannot start {argv[0]}: {os.strerror(err)}"
                if err == EACCES:
                    message += " (installing the seccomp filter was refused)"
            raise LaunchError(err, message)
        listener = Listener(fds[0])
        for extra in fds[1:]:
            os.close(extra)
    except BaseException:
        os.close(report_r)
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
        _reap(pid)
        raise
    finally:
        ours.close()
    os.set_blocking(report_r, False)
    launch = Launch(pid, listener, report_r, argv[0])
    launch.sync_wake_up = features.sync_wake_up and listener.enable_sync_wakeup()
    return launch


def _in_foreground(pid: int, tty: int) -> bool:
    """Whether `pid` is in the foreground process group of our controlling terminal."""
    if tty < 0:
        return False
    try:
        return os.tcgetpgrp(tty) == os.getpgid(pid)
    except OSError:  # hung up (EIO), gone (ESRCH): better a second signal than none
        return False


def forward_signals(pid: int, loop: asyncio.AbstractEventLoop) -> Callable[[], None]:
    """Relay SIGINT, SIGTERM, SIGHUP, SIGQUIT, SIGUSR1, SIGUSR2 and SIGWINCH to `pid`.

    Returns the function that removes the handlers. Terminal-generated signals (SIGINT,
    SIGQUIT, SIGWINCH, and SIGHUP from the shell) go to the whole foreground process group,
    which already holds the child: those four are relayed only when the child is *not* in the
    terminal's foreground group (no terminal, running in the background, or the child moved to
    its own group), so one Ctrl-C is one SIGINT. The price: `kill -INT <tether>` is not relayed
    while the child is in the foreground; SIGTERM always is. Call from the main thread.
    """
    try:
        tty = os.open("/dev/tty", os.O_RDONLY | os.O_NOCTTY | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError:
        tty = -1  # no controlling terminal

    def relay(sig: signal.Signals) -> None:
        if sig in _TTY_SIGNALS and _in_foreground(pid, tty):
            return
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, sig)

    installed: list[signal.Signals] = []
    try:
        for sig in FORWARDED_SIGNALS:
            loop.add_signal_handler(sig, relay, sig)
            installed.append(sig)
    except BaseException:
        for sig in installed:
            loop.remove_signal_handler(sig)
        if tty >= 0:
            os.close(tty)
        raise

    def uninstall() -> None:
        nonlocal tty
        for sig in installed:
            loop.remove_signal_handler(sig)
        installed.clear()
        if tty >= 0:
            os.close(tty)
            tty = -1

    return uninstall


def wait_status_to_exit_code(status: int) -> int:
    """A waitpid status as a shell reports it: the exit code, or 128 + the killing signal."""
    if os.WIFEXITED(status):
        return os.WEXITSTATUS(status)
    if os.WIFSIGNALED(status):
        return 128 + os.WTERMSIG(status)
    raise ValueError(f"not a termination status: {status:#x}")
