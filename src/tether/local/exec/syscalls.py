"""The trapped syscalls as typed calls: which syscalls the filter traps, where each one's
arguments sit, and `decode`, which turns a seccomp notification into one of the
dataclasses below.

Pure apart from the `Memory` it is given: the real one reads the caller's memory, a test
passes bytes at made-up addresses. Nothing here decides anything. Paths come back as the
process wrote them (a relative one is resolved by the handler, which knows the views),
pointers the handler writes through stay pointers, and what to answer is the handlers'
business. Memory is read only where the call's meaning depends on it (a path, a sockaddr,
openat2's flags), and in the order the handlers used to read it.
"""

import struct
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Final, Protocol

from tether.intercept.memory import parse_sockaddr, read_bytes, read_cstring
from tether.intercept.seccomp import Notification, Syscall

AT_FDCWD: Final = -100
AT_SYMLINK_NOFOLLOW: Final = 0x100
AT_REMOVEDIR: Final = 0x200  # unlinkat(2)'s flag: remove a directory
AT_EMPTY_PATH: Final = 0x1000
# A sockaddr longer than this is no IPv4/IPv6 address (sockaddr_storage is 128 bytes).
_SOCKADDR_MAX: Final = 128
_OPEN_HOW: Final = struct.Struct("<QQ")  # struct open_how's flags and mode (resolve follows)

# Every syscall the filter traps. stat-like calls are trapped so remote paths exist for the
# process; uname so it sees the pod's hostname; listen so incoming traffic knows the ports.
TRAPPED = (
    Syscall.open, Syscall.openat, Syscall.openat2, Syscall.stat, Syscall.lstat,
    Syscall.newfstatat, Syscall.statx, Syscall.access, Syscall.faccessat, Syscall.faccessat2,
    Syscall.readlink, Syscall.readlinkat, Syscall.connect, Syscall.getpeername,
    Syscall.getsockname, Syscall.uname,
    Syscall.listen,
)  # fmt: skip
# With remote writes possible, close (to send a file's content back) and the calls that change
# the directory tree are trapped too.
WRITE_TRAPPED = (
    Syscall.close, Syscall.unlink, Syscall.unlinkat, Syscall.mkdir, Syscall.mkdirat,
    Syscall.rmdir,
)  # fmt: skip


def i32(value: int) -> int:
    """A syscall argument (u64) as the C int it holds (fds, lengths)."""
    value &= 0xFFFFFFFF
    return value - (1 << 32) if value & 0x80000000 else value


class Memory(Protocol):
    """The caller's memory as the decoder reads it; OSError (EFAULT, ESRCH) if unreadable."""

    def read(self, address: int, size: int) -> bytes:
        """Exactly `size` bytes at `address`."""
        ...

    def string(self, address: int) -> bytes:
        """The NUL-terminated string at `address`, without its NUL."""
        ...


class ProcessMemory:
    """The memory of thread `pid` (process_vm_readv)."""

    def __init__(self, pid: int) -> None:
        self.pid = pid

    def read(self, address: int, size: int) -> bytes:
        """Exactly `size` bytes at `address`."""
        return read_bytes(self.pid, address, size)

    def string(self, address: int) -> bytes:
        """The NUL-terminated string at `address`, without its NUL."""
        return read_cstring(self.pid, address)


# -- the typed calls -------------------------------------------------------------------------
# Slotted and not frozen: one is made per trapped syscall, and a frozen dataclass's __init__
# (object.__setattr__ per field) costs about 0.35 us more, on a path that takes 12. Nothing
# changes a call after decoding.
# `dirfd` is AT_FDCWD for the calls that take none; `path` is as the process passed it
# (surrogate escapes for bytes that are not UTF-8), relative or not.


@dataclass(slots=True)
class Open:
    """open, openat, openat2. `mode` holds the permission bits (0o7777) only."""

    dirfd: int
    path: str
    flags: int
    mode: int


@dataclass(slots=True)
class Stat:
    """stat, lstat, newfstatat, statx. `path` None: an empty path with AT_EMPTY_PATH (an
    fstat of `dirfd`). `statx_mask` is statx's mask, None for the calls that fill a
    `struct stat` at `buf`."""

    dirfd: int
    path: str | None
    follow: bool
    buf: int
    statx_mask: int | None


@dataclass(slots=True)
class Access:
    """access, faccessat, faccessat2 (whose flags are not looked at)."""

    dirfd: int
    path: str
    mode: int


@dataclass(slots=True)
class Readlink:
    """readlink, readlinkat: the target goes to `buf`, at most `size` bytes."""

    dirfd: int
    path: str
    buf: int
    size: int


@dataclass(slots=True)
class Connect:
    """connect(fd, addr, length). `address` is what `parse_sockaddr` made of the first
    `length` bytes (None: too short, or a family it does not know)."""

    fd: int
    address: tuple[int, str, int] | tuple[int, str] | None
    length: int

    @property
    def ip(self) -> tuple[int, str, int] | None:
        """(family, host, port) for an IPv4 or IPv6 destination, else None."""
        address = self.address
        if address is None or len(address) != 3:
            return None
        return address


@dataclass(slots=True)
class SocketName:
    """getpeername (`peer`) or getsockname(fd, addr, addrlen): pointers, read and written
    only when the call is answered here."""

    peer: bool
    fd: int
    addr: int
    addrlen: int


@dataclass(slots=True)
class Listen:
    """listen(fd, backlog)."""

    fd: int


@dataclass(slots=True)
class Uname:
    """uname(buf)."""

    buf: int


@dataclass(slots=True)
class Close:
    """close(fd)."""

    fd: int


@dataclass(slots=True)
class Mkdir:
    """mkdir, mkdirat. `mode` holds the permission bits (0o7777) only."""

    dirfd: int
    path: str
    mode: int


@dataclass(slots=True)
class Rmdir:
    """rmdir, and unlinkat with AT_REMOVEDIR."""

    dirfd: int
    path: str


@dataclass(slots=True)
class Unlink:
    """unlink, and unlinkat without AT_REMOVEDIR."""

    dirfd: int
    path: str


Call = (
    Open | Stat | Access | Readlink | Connect | SocketName | Listen | Uname | Close | Mkdir
    | Rmdir | Unlink
)  # fmt: skip


# -- where the arguments are -----------------------------------------------------------------


@dataclass(slots=True)
class Args:
    """Where a call's arguments sit: indexes into `Notification.args` (None: it has none).
    `buf`/`size` are the call's buffer and its length (for the socket-name calls, a pointer
    to the length); `how` is openat2's struct open_how."""

    path: int | None = None
    dirfd: int | None = None
    flags: int | None = None
    mode: int | None = None
    buf: int | None = None
    size: int | None = None
    fd: int | None = None
    mask: int | None = None
    how: int | None = None


def _at(notif: Notification, index: int | None) -> int:
    if index is None:
        raise ValueError(f"{Syscall(notif.nr).name} has no such argument")
    return notif.args[index]


def _dirfd(notif: Notification, args: Args) -> int:
    return AT_FDCWD if args.dirfd is None else i32(notif.args[args.dirfd])


def _path(notif: Notification, args: Args, memory: Memory) -> str:
    return memory.string(_at(notif, args.path)).decode(errors="surrogateescape")


def _open(notif: Notification, args: Args, memory: Memory) -> Open:
    path = _path(notif, args, memory)
    if args.how is not None:  # openat2: flags and mode live in struct open_how
        flags, mode = _OPEN_HOW.unpack(memory.read(notif.args[args.how], _OPEN_HOW.size))
    else:
        flags, mode = _at(notif, args.flags), _at(notif, args.mode)
    return Open(_dirfd(notif, args), path, flags, mode & 0o7777)


def _stat(notif: Notification, args: Args, memory: Memory) -> Stat:
    if args.flags is None:
        flags, follow = 0, notif.nr == Syscall.stat  # lstat does not follow a final symlink
    else:
        flags = notif.args[args.flags]
        follow = not flags & AT_SYMLINK_NOFOLLOW
    address = _at(notif, args.path)
    path: str | None
    if flags & AT_EMPTY_PATH and memory.read(address, 1) == b"\0":
        path = None
    else:
        path = _path(notif, args, memory)
    mask = None if args.mask is None else notif.args[args.mask]
    return Stat(_dirfd(notif, args), path, follow, _at(notif, args.buf), mask)


def _access(notif: Notification, args: Args, memory: Memory) -> Access:
    return Access(_dirfd(notif, args), _path(notif, args, memory), _at(notif, args.mode))


def _readlink(notif: Notification, args: Args, memory: Memory) -> Readlink:
    path = _path(notif, args, memory)
    return Readlink(_dirfd(notif, args), path, _at(notif, args.buf), i32(_at(notif, args.size)))


def _connect(notif: Notification, args: Args, memory: Memory) -> Connect:
    length = i32(_at(notif, args.size))
    address = None
    if length >= 2:  # room for the family at least
        address = parse_sockaddr(memory.read(_at(notif, args.buf), min(length, _SOCKADDR_MAX)))
    return Connect(i32(_at(notif, args.fd)), address, length)


def _socket_name(notif: Notification, args: Args, memory: Memory) -> SocketName:
    peer = notif.nr == Syscall.getpeername
    return SocketName(peer, i32(_at(notif, args.fd)), _at(notif, args.buf), _at(notif, args.size))


def _listen(notif: Notification, args: Args, memory: Memory) -> Listen:
    return Listen(i32(_at(notif, args.fd)))


def _uname(notif: Notification, args: Args, memory: Memory) -> Uname:
    return Uname(_at(notif, args.buf))


def _close(notif: Notification, args: Args, memory: Memory) -> Close:
    return Close(i32(_at(notif, args.fd)))


def _mkdir(notif: Notification, args: Args, memory: Memory) -> Mkdir:
    path = _path(notif, args, memory)
    return Mkdir(_dirfd(notif, args), path, _at(notif, args.mode) & 0o7777)


def _remove(notif: Notification, args: Args, memory: Memory) -> Rmdir | Unlink:
    path = _path(notif, args, memory)
    flags = 0 if args.flags is None else notif.args[args.flags]
    if notif.nr == Syscall.rmdir or flags & AT_REMOVEDIR:
        return Rmdir(_dirfd(notif, args), path)
    return Unlink(_dirfd(notif, args), path)


_Decoder = Callable[[Notification, Args, Memory], Call]

# The one place that knows each trapped call's argument positions (x86_64 syscall ABI).
_TABLE: Final[Mapping[int, tuple[_Decoder, Args]]] = {
    Syscall.open: (_open, Args(path=0, flags=1, mode=2)),
    Syscall.openat: (_open, Args(dirfd=0, path=1, flags=2, mode=3)),
    Syscall.openat2: (_open, Args(dirfd=0, path=1, how=2)),
    Syscall.stat: (_stat, Args(path=0, buf=1)),
    Syscall.lstat: (_stat, Args(path=0, buf=1)),
    Syscall.newfstatat: (_stat, Args(dirfd=0, path=1, buf=2, flags=3)),
    Syscall.statx: (_stat, Args(dirfd=0, path=1, flags=2, mask=3, buf=4)),
    Syscall.access: (_access, Args(path=0, mode=1)),
    Syscall.faccessat: (_access, Args(dirfd=0, path=1, mode=2)),
    Syscall.faccessat2: (_access, Args(dirfd=0, path=1, mode=2)),
    Syscall.readlink: (_readlink, Args(path=0, buf=1, size=2)),
    Syscall.readlinkat: (_readlink, Args(dirfd=0, path=1, buf=2, size=3)),
    Syscall.connect: (_connect, Args(fd=0, buf=1, size=2)),
    Syscall.getpeername: (_socket_name, Args(fd=0, buf=1, size=2)),
    Syscall.getsockname: (_socket_name, Args(fd=0, buf=1, size=2)),
    Syscall.listen: (_listen, Args(fd=0)),
    Syscall.uname: (_uname, Args(buf=0)),
    Syscall.close: (_close, Args(fd=0)),
    Syscall.unlink: (_remove, Args(path=0)),
    Syscall.unlinkat: (_remove, Args(dirfd=0, path=1, flags=2)),
    Syscall.mkdir: (_mkdir, Args(path=0, mode=1)),
    Syscall.mkdirat: (_mkdir, Args(dirfd=0, path=1, mode=2)),
    Syscall.rmdir: (_remove, Args(path=0)),
}
ARGS: Final[Mapping[int, Args]] = {nr: args for nr, (_, args) in _TABLE.items()}


def _empty_path_flag(nr: int) -> tuple[int, int]:
    index = ARGS[nr].flags
    assert index is not None
    return index, AT_EMPTY_PATH


# fstat-style calls (an fd, no path) are answered by the kernel without a round trip: the
# filter lets a call through natively when this argument has this bit set.
ALLOW_IF: Final[dict[int, tuple[int, int]]] = {
    nr: _empty_path_flag(nr) for nr in (Syscall.newfstatat, Syscall.statx)
}


def decode(notif: Notification, memory: Memory) -> Call | None:
    """The typed call `notif` is, reading what it needs from `memory`; None for a syscall
    this table does not know. OSError if the caller's memory cannot be read."""
    entry = _TABLE.get(notif.nr)
    if entry is None:
        return None
    decoder, args = entry
    return decoder(notif, args, memory)
