"""tether.local.exec.syscalls: a notification and the caller's memory to a typed call
(table-driven, with a fake memory: no child process)."""

import errno
import os
import socket
import struct

import pytest

from tether.intercept.memory import STATX_BASIC_STATS, STATX_BTIME, pack_sockaddr
from tether.intercept.seccomp import Notification, Syscall
from tether.local.exec.syscalls import (
    ALLOW_IF,
    ARGS,
    AT_EMPTY_PATH,
    AT_FDCWD,
    AT_REMOVEDIR,
    AT_SYMLINK_NOFOLLOW,
    TRAPPED,
    WRITE_TRAPPED,
    Access,
    Call,
    Close,
    Connect,
    Listen,
    Mkdir,
    Open,
    Readlink,
    Rmdir,
    SocketName,
    Stat,
    Uname,
    Unlink,
    decode,
    i32,
)

# Addresses in the fake caller's memory.
PATH, RELATIVE, ODD, EMPTY, HOW, SA, BUF, LEN = (0x1000 * n for n in range(1, 9))
AUDIT_ARCH_X86_64 = 0xC000003E
FDCWD = AT_FDCWD & 0xFFFFFFFFFFFFFFFF  # as the register holds it


class FakeMemory:
    """Bytes at made-up addresses; anything else is unreadable (EFAULT), as a bad pointer
    would be. Remembers what was read."""

    def __init__(self, blocks: dict[int, bytes]) -> None:
        self.blocks = blocks
        self.reads: list[tuple[int, int]] = []

    def read(self, address: int, size: int) -> bytes:
        self.reads.append((address, size))
        for start, data in self.blocks.items():
            if start <= address and address + size <= start + len(data):
                return data[address - start : address - start + size]
        raise OSError(errno.EFAULT, f"unreadable: {address:#x}")

    def string(self, address: int) -> bytes:
        data = self.read(address, 1) + self.blocks[address][1:]
        return data.split(b"\0", 1)[0]


MEMORY = {
    PATH: b"/etc/shop/config.yaml\0",
    RELATIVE: b"data/x\0",
    ODD: b"/tmp/\xff\0",
    EMPTY: b"\0",
    HOW: struct.pack("<QQQ", os.O_RDWR | os.O_CREAT, 0o100600, 0),
    SA: pack_sockaddr(socket.AF_INET, "10.0.0.1", 80).ljust(128, b"\0"),
}
V6 = pack_sockaddr(socket.AF_INET6, "fd00::1%2", 443)
UNIX = struct.pack("=H", socket.AF_UNIX) + b"/run/nscd/socket\0"
SHOP = "/etc/shop/config.yaml"
RO = os.O_RDONLY | os.O_CLOEXEC
WC = os.O_WRONLY | os.O_CREAT


def notif(nr: int, *args: int) -> Notification:
    a = [*args, 0, 0, 0, 0, 0, 0]
    return Notification(1, 4242, 0, nr, AUDIT_ARCH_X86_64, 0, (a[0], a[1], a[2], a[3], a[4], a[5]))


CASES: list[tuple[str, Notification, dict[int, bytes], Call]] = [
    ("open", notif(Syscall.open, PATH, RO, 0), {}, Open(AT_FDCWD, SHOP, RO, 0)),
    ("open keeps the permission bits", notif(Syscall.open, PATH, WC, 0o100644), {},
     Open(AT_FDCWD, SHOP, WC, 0o644)),
    ("openat", notif(Syscall.openat, 3, PATH, WC, 0o640), {}, Open(3, SHOP, WC, 0o640)),
    ("openat AT_FDCWD", notif(Syscall.openat, FDCWD, RELATIVE, RO), {},
     Open(AT_FDCWD, "data/x", RO, 0)),
    ("openat2 reads open_how", notif(Syscall.openat2, FDCWD, PATH, HOW, 24), {},
     Open(AT_FDCWD, SHOP, os.O_RDWR | os.O_CREAT, 0o600)),
    ("a path that is not UTF-8", notif(Syscall.open, ODD, RO), {},
     Open(AT_FDCWD, "/tmp/\udcff", RO, 0)),
    ("stat", notif(Syscall.stat, PATH, BUF), {}, Stat(AT_FDCWD, SHOP, True, BUF, None)),
    ("lstat", notif(Syscall.lstat, PATH, BUF), {}, Stat(AT_FDCWD, SHOP, False, BUF, None)),
    ("newfstatat", notif(Syscall.newfstatat, 5, PATH, BUF, 0), {}, Stat(5, SHOP, True, BUF, None)),
    ("newfstatat nofollow", notif(Syscall.newfstatat, 5, PATH, BUF, AT_SYMLINK_NOFOLLOW), {},
     Stat(5, SHOP, False, BUF, None)),
    ("newfstatat of an fd", notif(Syscall.newfstatat, 5, EMPTY, BUF, AT_EMPTY_PATH), {},
     Stat(5, None, True, BUF, None)),
    ("AT_EMPTY_PATH with a path", notif(Syscall.newfstatat, 5, PATH, BUF, AT_EMPTY_PATH), {},
     Stat(5, SHOP, True, BUF, None)),
    ("statx", notif(Syscall.statx, FDCWD, PATH, 0, STATX_BASIC_STATS | STATX_BTIME, BUF), {},
     Stat(AT_FDCWD, SHOP, True, BUF, STATX_BASIC_STATS | STATX_BTIME)),
    ("statx of an fd", notif(Syscall.statx, 4, EMPTY, AT_EMPTY_PATH, STATX_BASIC_STATS, BUF),
     {}, Stat(4, None, True, BUF, STATX_BASIC_STATS)),
    ("access", notif(Syscall.access, PATH, os.R_OK), {}, Access(AT_FDCWD, SHOP, os.R_OK)),
    ("faccessat", notif(Syscall.faccessat, 3, PATH, os.W_OK), {}, Access(3, SHOP, os.W_OK)),
    ("faccessat2", notif(Syscall.faccessat2, 3, PATH, os.X_OK, 0x200), {},
     Access(3, SHOP, os.X_OK)),
    ("readlink", notif(Syscall.readlink, PATH, BUF, 4096), {}, Readlink(AT_FDCWD, SHOP, BUF, 4096)),
    ("readlinkat, size as a C int", notif(Syscall.readlinkat, 3, PATH, BUF, 0xFFFFFFFF), {},
     Readlink(3, SHOP, BUF, -1)),
    ("connect IPv4", notif(Syscall.connect, 7, SA, 16), {},
     Connect(7, (socket.AF_INET, "10.0.0.1", 80), 16)),
    ("connect IPv6", notif(Syscall.connect, 7, SA, len(V6)), {SA: V6},
     Connect(7, (socket.AF_INET6, "fd00::1%2", 443), len(V6))),
    ("connect AF_UNIX", notif(Syscall.connect, 7, SA, len(UNIX)), {SA: UNIX},
     Connect(7, (socket.AF_UNIX, "/run/nscd/socket"), len(UNIX))),
    ("connect reads at most 128 bytes", notif(Syscall.connect, 7, SA, 4096), {},
     Connect(7, (socket.AF_INET, "10.0.0.1", 80), 4096)),
    ("connect too short to read", notif(Syscall.connect, 7, 0, 1), {}, Connect(7, None, 1)),
    ("connect to an unknown family", notif(Syscall.connect, 7, SA, 16), {SA: b"\x11\0" * 8},
     Connect(7, None, 16)),
    ("getpeername", notif(Syscall.getpeername, 7, SA, LEN), {}, SocketName(True, 7, SA, LEN)),
    ("getsockname", notif(Syscall.getsockname, 7, SA, LEN), {}, SocketName(False, 7, SA, LEN)),
    ("listen", notif(Syscall.listen, 9, 128), {}, Listen(9)),
    ("uname", notif(Syscall.uname, BUF), {}, Uname(BUF)),
    ("close", notif(Syscall.close, 5), {}, Close(5)),
    ("unlink", notif(Syscall.unlink, PATH), {}, Unlink(AT_FDCWD, SHOP)),
    ("unlinkat", notif(Syscall.unlinkat, 3, PATH, 0), {}, Unlink(3, SHOP)),
    ("unlinkat AT_REMOVEDIR", notif(Syscall.unlinkat, 3, PATH, AT_REMOVEDIR), {}, Rmdir(3, SHOP)),
    ("rmdir", notif(Syscall.rmdir, PATH), {}, Rmdir(AT_FDCWD, SHOP)),
    ("mkdir", notif(Syscall.mkdir, PATH, 0o40755), {}, Mkdir(AT_FDCWD, SHOP, 0o755)),
    ("mkdirat", notif(Syscall.mkdirat, 3, PATH, 0o700), {}, Mkdir(3, SHOP, 0o700)),
]  # fmt: skip


@pytest.mark.parametrize(
    ("n", "memory", "expected"), [c[1:] for c in CASES], ids=[c[0] for c in CASES]
)
def test_decode(n: Notification, memory: dict[int, bytes], expected: Call) -> None:
    assert decode(n, FakeMemory({**MEMORY, **memory})) == expected


def test_calls_that_answer_through_pointers_read_nothing() -> None:
    for n in (
        notif(Syscall.getpeername, 7, SA, LEN),
        notif(Syscall.listen, 9),
        notif(Syscall.uname, BUF),
        notif(Syscall.close, 5),
        notif(Syscall.connect, 7, SA, 0),
    ):
        memory = FakeMemory({})
        decode(n, memory)
        assert memory.reads == [], Syscall(n.nr).name


def test_an_fstat_reads_one_byte_of_its_path() -> None:
    memory = FakeMemory(MEMORY)
    decode(notif(Syscall.newfstatat, 5, EMPTY, BUF, AT_EMPTY_PATH), memory)
    assert memory.reads == [(EMPTY, 1)]


@pytest.mark.parametrize(
    "n",
    [
        notif(Syscall.open, 0xDEAD, RO),
        notif(Syscall.openat2, FDCWD, PATH, 0xDEAD, 24),
        notif(Syscall.stat, 0xDEAD, BUF),
        notif(Syscall.connect, 7, 0xDEAD, 16),
    ],
    ids=["path", "open_how", "stat path", "sockaddr"],
)
def test_unreadable_memory_raises_efault(n: Notification) -> None:
    with pytest.raises(OSError) as info:
        decode(n, FakeMemory(MEMORY))
    assert info.value.errno == errno.EFAULT


def test_a_syscall_outside_the_table_is_none() -> None:
    assert decode(notif(Syscall.read, 0, BUF, 10), FakeMemory({})) is None
    assert decode(notif(9999), FakeMemory({})) is None


def test_the_table_covers_exactly_the_trapped_calls() -> None:
    assert set(ARGS) == {*TRAPPED, *WRITE_TRAPPED}
    # And every entry of it is exercised above.
    assert {n.nr for _, n, _, _ in CASES} == set(ARGS)


def test_fstat_style_calls_are_let_through_by_their_flags_argument() -> None:
    assert {Syscall.newfstatat: (3, AT_EMPTY_PATH), Syscall.statx: (2, AT_EMPTY_PATH)} == ALLOW_IF


@pytest.mark.parametrize(
    ("raw", "expected"),
    [(0, 0), (5, 5), (0x7FFFFFFF, 0x7FFFFFFF), (0xFFFFFFFF, -1), (FDCWD, AT_FDCWD),
     (0x80000000, -(1 << 31)), (0x1_0000_0003, 3)],
)  # fmt: skip
def test_i32(raw: int, expected: int) -> None:
    assert i32(raw) == expected


def test_connect_ip_is_only_for_internet_families() -> None:
    assert Connect(3, (socket.AF_INET6, "::1", 53), 28).ip == (socket.AF_INET6, "::1", 53)
    assert Connect(3, (socket.AF_UNIX, "/run/x"), 10).ip is None
    assert Connect(3, None, 1).ip is None
