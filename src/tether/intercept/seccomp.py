"""seccomp user notification on x86_64: the filter, its installation and the listener fd.

The target process installs a classic-BPF filter that turns chosen syscalls into notifications
on a listener fd; the supervisor receives each one with an ioctl, inspects the target's memory
(`tether.intercept.memory`) and answers: let the syscall run (CONTINUE), fake its result, or
install an fd of ours in the target as its result (ADDFD with SEND).

Kernel floor is 5.14 (ADDFD_FLAG_SEND). 5.19 adds WAIT_KILLABLE_RECV, without which a signal
storm makes trapped syscalls restart endlessly; 6.6 adds SYNC_WAKE_UP, which roughly halves the
round trip by waking the supervisor on the target's CPU. Both are used when present.
"""

from __future__ import annotations

import ctypes
import enum
import os
import re
import struct
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from errno import EINTR, EINVAL, ENOENT
from typing import Final

from tether.errors import UserError


class Syscall(enum.IntEnum):
    """x86_64 syscall numbers of the calls the interceptor may trap."""

    read = 0
    write = 1
    open = 2
    close = 3
    stat = 4
    fstat = 5
    lstat = 6
    access = 21
    socket = 41
    connect = 42
    accept = 43
    sendto = 44
    recvfrom = 45
    sendmsg = 46
    recvmsg = 47
    bind = 49
    listen = 50
    getsockname = 51
    getpeername = 52
    getsockopt = 55
    execve = 59
    uname = 63
    getcwd = 79
    chdir = 80
    readlink = 89
    mkdir = 83
    rmdir = 84
    unlink = 87
    getppid = 110
    getdents64 = 217
    openat = 257
    mkdirat = 258
    newfstatat = 262
    unlinkat = 263
    readlinkat = 267
    faccessat = 269
    accept4 = 288
    sendmmsg = 307
    execveat = 322
    statx = 332
    openat2 = 437
    faccessat2 = 439


AUDIT_ARCH_X86_64: Final = 0xC000003E
X32_SYSCALL_BIT: Final = 0x40000000

SECCOMP_SET_MODE_FILTER: Final = 1
SECCOMP_FILTER_FLAG_NEW_LISTENER: Final = 1 << 3
SECCOMP_FILTER_FLAG_WAIT_KILLABLE_RECV: Final = 1 << 5

SECCOMP_RET_ALLOW: Final = 0x7FFF0000
SECCOMP_RET_USER_NOTIF: Final = 0x7FC00000
SECCOMP_RET_ERRNO: Final = 0x00050000

SECCOMP_USER_NOTIF_FLAG_CONTINUE: Final = 1
SECCOMP_ADDFD_FLAG_SETFD: Final = 1
SECCOMP_ADDFD_FLAG_SEND: Final = 2
SECCOMP_USER_NOTIF_FD_SYNC_WAKE_UP: Final = 1

# _IOWR('!', n, struct) and friends, precomputed for x86_64.
SECCOMP_IOCTL_NOTIF_RECV: Final = 0xC0502100
SECCOMP_IOCTL_NOTIF_SEND: Final = 0xC0182101
SECCOMP_IOCTL_NOTIF_ID_VALID: Final = 0x40082102
SECCOMP_IOCTL_NOTIF_ADDFD: Final = 0x40182103
SECCOMP_IOCTL_NOTIF_SET_FLAGS: Final = 0x40082104

PR_SET_NO_NEW_PRIVS: Final = 38
_NR_PRCTL: Final = 157
_NR_SECCOMP: Final = 317
_ENOSYS: Final = 38

# Classic BPF opcodes (linux/bpf_common.h) and the seccomp_data offsets the filter reads.
BPF_LD_W_ABS: Final = 0x20
BPF_JEQ_K: Final = 0x15
BPF_JSET_K: Final = 0x45
BPF_RET_K: Final = 0x06
SECCOMP_DATA_NR: Final = 0
SECCOMP_DATA_ARCH: Final = 4
# args[] start after nr, arch and the instruction pointer; the low word comes first (LE).
SECCOMP_DATA_ARGS: Final = 16
BPF_MAXINSNS: Final = 4096

_INSN: Final = struct.Struct("=HBBI")  # struct sock_filter
# struct seccomp_notif: id, pid, flags, then seccomp_data: nr, arch, instruction_pointer, args[6].
_NOTIF: Final = struct.Struct("=QIIiIQ6Q")
_RESP: Final = struct.Struct("=QqiI")  # struct seccomp_notif_resp: id, val, error, flags
_ADDFD: Final = struct.Struct("=QIIII")  # struct seccomp_notif_addfd
_U64: Final = struct.Struct("=Q")
_ZERO_NOTIF: Final = bytes(_NOTIF.size)

_libc = ctypes.CDLL(None, use_errno=True)
_syscall = _libc.syscall
_syscall.restype = ctypes.c_long
# A dedicated function object, so these argtypes cannot clash with another module's libc.ioctl.
_ioctl = ctypes.CDLL(None, use_errno=True).ioctl
_ioctl.restype = ctypes.c_int
# The request must be unsigned long: 0xC05... does not fit a C int.
_ioctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_void_p]


class UnsupportedKernelError(UserError, RuntimeError):
    """The running kernel (or machine) lacks what the interceptor needs."""


@dataclass(frozen=True)
class Features:
    """What the running kernel offers, as far as its version (and /proc) tell.

    `sync_wake_up` only says the version is recent enough; `Listener.enable_sync_wakeup` is the
    real check. `user_notif` is False only when /proc/sys/kernel/seccomp/actions_avail is
    readable and lacks `user_notif` (an unreadable file proves nothing).
    """

    release: str
    kernel: tuple[int, int, int]
    machine: str
    user_notif: bool
    addfd_send: bool
    wait_killable_recv: bool
    sync_wake_up: bool

    @property
    def filter_flags(self) -> int:
        """The seccomp() flags to install a filter with on this kernel."""
        flags = SECCOMP_FILTER_FLAG_NEW_LISTENER
        if self.wait_killable_recv:
            flags |= SECCOMP_FILTER_FLAG_WAIT_KILLABLE_RECV
        return flags


def _parse_release(release: str) -> tuple[int, int, int]:
    match = re.match(r"(\d+)\.(\d+)(?:\.(\d+))?", release)
    if match is None:
        return (0, 0, 0)
    return (int(match[1]), int(match[2]), int(match[3] or 0))


def probe_features(release: str | None = None, machine: str | None = None) -> Features:
    """Probe the running kernel (or the given `uname -r` / `uname -m`, for tests)."""
    uname = os.uname()
    release = uname.release if release is None else release
    machine = uname.machine if machine is None else machine
    kernel = _parse_release(release)
    user_notif = True
    try:
        with open("/proc/sys/kernel/seccomp/actions_avail") as f:
            user_notif = "user_notif" in f.read().split()
    except OSError:
        pass
    return Features(
        release=release,
        kernel=kernel,
        machine=machine,
        user_notif=user_notif,
        addfd_send=kernel >= (5, 14, 0),
        wait_killable_recv=kernel >= (5, 19, 0),
        sync_wake_up=kernel >= (6, 6, 0),
    )


def require_kernel(features: Features | None = None) -> None:
    """Raise UnsupportedKernelError (one line, naming what is missing) unless usable."""
    f = probe_features() if features is None else features
    if f.machine != "x86_64":
        raise UnsupportedKernelError(
            f"the interceptor supports x86_64 only (this machine is {f.machine})"
        )
    if not f.addfd_send:
        raise UnsupportedKernelError(
            "the interceptor needs Linux 5.14 or newer for seccomp ADDFD_FLAG_SEND "
            f"(this kernel is {f.release})"
        )
    if not f.user_notif:
        raise UnsupportedKernelError(
            f"this kernel ({f.release}) does not offer the seccomp user_notif action"
        )


def build_filter(
    syscalls: Iterable[int], allow_if: Mapping[int, tuple[int, int]] | None = None
) -> bytes:
    """Compile a seccomp filter: an array of `struct sock_filter` (8 bytes each) as bytes.

    Non-x86_64 syscalls (an i386 `int 0x80` has another arch) are allowed: tracking them would
    need a second syscall table. x32 syscalls (nr with bit 30) fail with ENOSYS so they cannot
    slip around the x86_64 numbers. Each listed nr returns USER_NOTIF, anything else ALLOW.

    `allow_if` maps a listed nr to (argument index, mask): that call is allowed without a
    notification when the argument's low 32 bits intersect the mask (for example newfstatat
    with AT_EMPTY_PATH, which is an fstat and needs no path decision). The check runs in the
    kernel, so those calls cost no round trip to the supervisor.
    """
    nrs = sorted(set(syscalls))
    rules = dict(allow_if or {})
    for nr in nrs:
        if not 0 <= nr < X32_SYSCALL_BIT:
            raise ValueError(f"not an x86_64 syscall number: {nr}")
    for nr, (arg, _mask) in rules.items():
        if nr not in nrs or not 0 <= arg < 6:
            raise ValueError(f"allow_if rule for {nr} needs a listed syscall and an arg 0-5")
    # A jump offset is a u8; every JEQ must reach its target block.
    longest = len(nrs) + 1 + 4 * (len(rules) - 1) if rules else len(nrs)
    if longest > 255:
        raise ValueError(f"too many syscalls to trap ({len(nrs)} > 255)")
    count = len(nrs)
    insns = [
        (BPF_LD_W_ABS, 0, 0, SECCOMP_DATA_ARCH),
        (BPF_JEQ_K, 1, 0, AUDIT_ARCH_X86_64),
        (BPF_RET_K, 0, 0, SECCOMP_RET_ALLOW),
        (BPF_LD_W_ABS, 0, 0, SECCOMP_DATA_NR),
        (BPF_JSET_K, 0, 1, X32_SYSCALL_BIT),
        (BPF_RET_K, 0, 0, SECCOMP_RET_ERRNO | _ENOSYS),
    ]
    # After the JEQs: RET ALLOW, RET USER_NOTIF, then one 4-instruction block per allow_if rule
    # (load the argument, test the mask, allow or notify). Offsets count from the next insn.
    notify_at = count + 1
    block_at = {nr: count + 2 + 4 * i for i, nr in enumerate(sorted(rules))}
    for i, nr in enumerate(nrs):
        target = block_at.get(nr, notify_at)
        insns.append((BPF_JEQ_K, target - i - 1, 0, nr))
    insns += [(BPF_RET_K, 0, 0, SECCOMP_RET_ALLOW), (BPF_RET_K, 0, 0, SECCOMP_RET_USER_NOTIF)]
    for nr in sorted(rules):
        arg, mask = rules[nr]
        insns += [
            (BPF_LD_W_ABS, 0, 0, SECCOMP_DATA_ARGS + 8 * arg),
            (BPF_JSET_K, 0, 1, mask),
            (BPF_RET_K, 0, 0, SECCOMP_RET_ALLOW),
            (BPF_RET_K, 0, 0, SECCOMP_RET_USER_NOTIF),
        ]
    return b"".join(_INSN.pack(*insn) for insn in insns)


class _SockFprog(ctypes.Structure):
    _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]


class FilterProgram:
    """A filter held in C memory with its `struct sock_fprog`, ready for seccomp(2).

    Build it before fork(), so the child only has to make the syscall.
    """

    __slots__ = ("_buf", "fprog")

    def __init__(self, program: bytes) -> None:
        if not program or len(program) % _INSN.size or len(program) // _INSN.size > BPF_MAXINSNS:
            raise ValueError("a filter is 1 to 4096 8-byte sock_filter instructions")
        self._buf = ctypes.create_string_buffer(program, len(program))
        self.fprog = _SockFprog(len(program) // _INSN.size, ctypes.addressof(self._buf))


def _raise_errno(what: str) -> None:
    err = ctypes.get_errno()
    raise OSError(err, f"{what}: {os.strerror(err)}")


def install_filter(program: bytes | FilterProgram, *, flags: int) -> int:
    """Install `program` on the calling thread (child side, after fork) and return the listener fd.

    Sets NO_NEW_PRIVS first (required to install a filter without CAP_SYS_ADMIN; setuid binaries
    then gain nothing). NEW_LISTENER is always added to `flags`. If the kernel refuses
    WAIT_KILLABLE_RECV with EINVAL (a kernel older than its version says), it retries without.
    The filter applies to this thread only (no TSYNC): call it in a single-threaded child. Only
    prctl and seccomp are called; the listener fd comes back close-on-exec.
    """
    prog = program if isinstance(program, FilterProgram) else FilterProgram(program)
    one, zero = ctypes.c_long(1), ctypes.c_long(0)
    nnp = ctypes.c_long(PR_SET_NO_NEW_PRIVS)
    if _syscall(ctypes.c_long(_NR_PRCTL), nnp, one, zero, zero, zero) != 0:
        _raise_errno("prctl(PR_SET_NO_NEW_PRIVS)")
    flags |= SECCOMP_FILTER_FLAG_NEW_LISTENER
    while True:
        fd = _syscall(
            ctypes.c_long(_NR_SECCOMP),
            ctypes.c_long(SECCOMP_SET_MODE_FILTER),
            ctypes.c_long(flags),
            ctypes.byref(prog.fprog),
        )
        if fd >= 0:
            return int(fd)
        if ctypes.get_errno() == EINVAL and flags & SECCOMP_FILTER_FLAG_WAIT_KILLABLE_RECV:
            flags &= ~SECCOMP_FILTER_FLAG_WAIT_KILLABLE_RECV
            continue
        _raise_errno("seccomp(SECCOMP_SET_MODE_FILTER)")


class Notification:
    """One trapped syscall: `struct seccomp_notif` unpacked.

    `pid` is the *thread* id of the caller as seen from the supervisor's pid namespace (0 if the
    caller is not visible there); use `memory.tgid_of` before pidfd_open. `args` are the six raw
    register values as unsigned 64-bit ints (sign-extend fds and lengths yourself).
    """

    __slots__ = ("arch", "args", "flags", "id", "instruction_pointer", "nr", "pid")

    def __init__(
        self,
        id: int,
        pid: int,
        flags: int,
        nr: int,
        arch: int,
        instruction_pointer: int,
        args: tuple[int, int, int, int, int, int],
    ) -> None:
        self.id = id
        self.pid = pid
        self.flags = flags
        self.nr = nr
        self.arch = arch
        self.instruction_pointer = instruction_pointer
        self.args = args

    @property
    def tid(self) -> int:
        """The caller's thread id (an alias of `pid`, which is what the kernel calls it)."""
        return self.pid

    def __repr__(self) -> str:
        try:
            name = Syscall(self.nr).name
        except ValueError:
            name = str(self.nr)
        args = ", ".join(hex(a) for a in self.args)
        return f"<Notification id={self.id:#x} tid={self.pid} {name}({args})>"


class Listener:
    """The seccomp listener fd of one filter, with the notification ioctls.

    `receive` must be called from one thread at a time (it reuses one buffer); the `respond_*`,
    `add_fd` and `id_valid` calls are safe from any thread, so slow answers can be sent from
    workers, in any order. Every method that answers swallows ENOENT, which means the target
    was killed or (without WAIT_KILLABLE_RECV) interrupted by a signal: the syscall is gone.
    """

    __slots__ = ("_fd", "_recv", "_recv_addr", "_recv_c")

    def __init__(self, fd: int) -> None:
        """Take ownership of the listener `fd`."""
        self._fd = fd
        self._recv = bytearray(_NOTIF.size)
        self._recv_c = (ctypes.c_char * _NOTIF.size).from_buffer(self._recv)
        self._recv_addr = ctypes.addressof(self._recv_c)

    def fileno(self) -> int:
        """The listener fd (poll it: POLLIN = a notification waits, POLLHUP = no target left)."""
        if self._fd < 0:
            raise ValueError("listener is closed")
        return self._fd

    @property
    def closed(self) -> bool:
        """Whether `close` was called."""
        return self._fd < 0

    def enable_sync_wakeup(self) -> bool:
        """Ask for synchronous wake-ups (kernel 6.6+); False if the kernel does not know them.

        With it, the kernel wakes the supervisor on the target's CPU and the round trip stops
        being bimodal (about 10 µs instead of 10 or 60 µs).
        """
        if _ioctl(self._fd, SECCOMP_IOCTL_NOTIF_SET_FLAGS, SECCOMP_USER_NOTIF_FD_SYNC_WAKE_UP) == 0:
            return True
        if ctypes.get_errno() == EINVAL:
            return False
        _raise_errno("SECCOMP_IOCTL_NOTIF_SET_FLAGS")
        return False  # unreachable; keeps mypy's return analysis simple

    def receive(self) -> Notification | None:
        """Receive the next notification, or None if there was nothing to receive.

        The ioctl blocks while no notification is pending (the listener ignores O_NONBLOCK), so
        call it when the fd polls readable. None means the target died between poll and receive
        (ENOENT: the kernel withdrew the notification, and also what it says once no target is
        left) or a signal hit the supervisor (EINTR): just poll again.
        """
        buf = self._recv
        buf[:] = _ZERO_NOTIF  # the kernel refuses a non-zeroed struct with EINVAL
        if _ioctl(self._fd, SECCOMP_IOCTL_NOTIF_RECV, self._recv_addr) != 0:
            err = ctypes.get_errno()
            if err in (ENOENT, EINTR):
                return None
            raise OSError(err, f"SECCOMP_IOCTL_NOTIF_RECV: {os.strerror(err)}")
        nid, pid, flags, nr, arch, ip, a0, a1, a2, a3, a4, a5 = _NOTIF.unpack_from(buf)
        return Notification(nid, pid, flags, nr, arch, ip, (a0, a1, a2, a3, a4, a5))

    def id_valid(self, notif_id: int) -> bool:
        """Whether the notification is still pending (the target is still in that syscall).

        Check it after reading the target's memory and before acting on what was read: if the
        target died, its pid could be reused and the memory read could come from a stranger.
        """
        if _ioctl(self._fd, SECCOMP_IOCTL_NOTIF_ID_VALID, _U64.pack(notif_id)) == 0:
            return True
        if ctypes.get_errno() == ENOENT:
            return False
        _raise_errno("SECCOMP_IOCTL_NOTIF_ID_VALID")
        return False

    def _send(self, notif_id: int, val: int, error: int, flags: int) -> bool:
        # The kernel only reads the struct, so an immutable bytes object (one per call, safe
        # from any thread) serves as the buffer.
        if _ioctl(self._fd, SECCOMP_IOCTL_NOTIF_SEND, _RESP.pack(notif_id, val, error, flags)):
            if ctypes.get_errno() == ENOENT:
                return False
            _raise_errno("SECCOMP_IOCTL_NOTIF_SEND")
        return True

    def respond_continue(self, notif_id: int) -> bool:
        """Let the syscall run as if untrapped. False if the target went away."""
        return self._send(notif_id, 0, 0, SECCOMP_USER_NOTIF_FLAG_CONTINUE)

    def respond_value(self, notif_id: int, value: int) -> bool:
        """Complete the syscall with return `value` (>= 0). False if the target went away."""
        return self._send(notif_id, value, 0, 0)

    def respond_error(self, notif_id: int, errno: int) -> bool:
        """Fail the syscall with `errno` (positive; the sign is ignored). False if gone."""
        return self._send(notif_id, 0, -abs(errno), 0)

    def add_fd(
        self,
        notif_id: int,
        src_fd: int,
        *,
        cloexec: bool,
        send: bool = True,
        target_fd: int | None = None,
    ) -> int | None:
        """Install a copy of our `src_fd` in the target; return its fd number there.

        With `send` the syscall completes at once, atomically, returning that number (an
        emulated open); without, the syscall stays pending and still needs an answer.
        `target_fd` picks the number (SETFD: replaces whatever the target had there, like
        dup2). None if the target went away (then nothing was installed).
        """
        flags = (SECCOMP_ADDFD_FLAG_SEND if send else 0) | (
            SECCOMP_ADDFD_FLAG_SETFD if target_fd is not None else 0
        )
        request = _ADDFD.pack(
            notif_id,
            flags,
            src_fd,
            target_fd or 0,
            os.O_CLOEXEC if cloexec else 0,
        )
        fd = _ioctl(self._fd, SECCOMP_IOCTL_NOTIF_ADDFD, request)
        if fd < 0:
            if ctypes.get_errno() == ENOENT:
                return None
            _raise_errno("SECCOMP_IOCTL_NOTIF_ADDFD")
        return int(fd)

    def close(self) -> None:
        """Close the listener: every pending and future trapped syscall then fails with ENOSYS."""
        if self._fd >= 0:
            fd, self._fd = self._fd, -1
            os.close(fd)

    def __enter__(self) -> Listener:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
