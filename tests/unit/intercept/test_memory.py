"""tether.intercept.memory against our own process, and its struct packers against libc."""

from __future__ import annotations

import ctypes
import errno
import mmap
import os
import socket
import struct
from collections.abc import Iterator
from pathlib import Path

import pytest

from tether.intercept.memory import (
    PAGE_SIZE,
    STATX_BASIC_STATS,
    STATX_BTIME,
    dup_from,
    pack_sockaddr,
    pack_stat,
    pack_statx,
    parse_sockaddr,
    pidfd_getfd,
    pidfd_open,
    read_bytes,
    read_cstring,
    tgid_of,
    write_bytes,
)

libc = ctypes.CDLL(None, use_errno=True)
PROT_NONE = 0
AT_FDCWD = -100
ME = os.getpid()


@pytest.fixture
def guarded() -> Iterator[tuple[mmap.mmap, int]]:
    """Two pages whose second one is inaccessible: (the mapping, the first page's address)."""
    mm = mmap.mmap(-1, 2 * PAGE_SIZE)
    anchor = ctypes.c_char.from_buffer(mm)
    address = ctypes.addressof(anchor)
    assert libc.mprotect(ctypes.c_void_p(address + PAGE_SIZE), PAGE_SIZE, PROT_NONE) == 0
    try:
        yield mm, address
    finally:
        del anchor
        mm.close()


def test_read_and_write_bytes() -> None:
    buf = ctypes.create_string_buffer(b"hello, tether", 32)
    address = ctypes.addressof(buf)
    assert read_bytes(ME, address, 5) == b"hello"
    assert read_bytes(ME, address, 0) == b""
    write_bytes(ME, address + 7, b"TETHER")
    assert buf.value == b"hello, TETHER"
    write_bytes(ME, address, b"")


def test_read_cstring_stops_at_the_page_edge(guarded: tuple[mmap.mmap, int]) -> None:
    mm, address = guarded
    text = b"/etc/hostname"
    start = PAGE_SIZE - len(text) - 1
    mm[start:PAGE_SIZE] = text + b"\0"  # the NUL is the last readable byte
    assert read_cstring(ME, address + start) == text
    assert read_cstring(ME, address + start + 5) == b"hostname"
    with pytest.raises(OSError) as info:  # no NUL before the unmapped page
        mm[PAGE_SIZE - 1] = 0x41
        read_cstring(ME, address + start)
    assert info.value.errno == errno.EFAULT
    with pytest.raises(OSError) as info:
        read_bytes(ME, address + PAGE_SIZE - 4, 8)  # straddles into the guard page
    assert info.value.errno == errno.EFAULT


def test_read_cstring_spans_pages_and_honours_the_limit() -> None:
    long = b"x" * (PAGE_SIZE + 100)
    buf = ctypes.create_string_buffer(long)
    assert read_cstring(ME, ctypes.addressof(buf), limit=len(long) + 1) == long
    with pytest.raises(OSError) as info:
        read_cstring(ME, ctypes.addressof(buf), limit=len(long))  # the NUL does not fit
    assert info.value.errno == errno.ENAMETOOLONG
    empty = ctypes.create_string_buffer(b"")
    assert read_cstring(ME, ctypes.addressof(empty)) == b""
    with pytest.raises(OSError) as info:
        read_cstring(ME, 0)
    assert info.value.errno == errno.EFAULT


def test_errors_carry_the_errno() -> None:
    with pytest.raises(OSError) as info:
        read_bytes(ME, 8, 4)
    assert info.value.errno == errno.EFAULT
    with pytest.raises(OSError) as info:
        write_bytes(ME, 8, b"x")
    assert info.value.errno == errno.EFAULT
    with pytest.raises(ProcessLookupError):
        tgid_of(2**22 + 12345)  # above pid_max's default ceiling
    with pytest.raises(OSError) as info:
        pidfd_open(2**22 + 12345)
    assert info.value.errno == errno.ESRCH


def test_tgid_of_a_thread_and_dup_from() -> None:
    import threading

    tid = 0
    seen = threading.Event()
    leave = threading.Event()

    def worker() -> None:
        nonlocal tid
        tid = threading.get_native_id()
        seen.set()
        leave.wait(10)

    thread = threading.Thread(target=worker)
    thread.start()
    try:
        seen.wait(10)
        assert tid != ME
        assert tgid_of(tid) == ME
        assert tgid_of(ME) == ME
        r, w = os.pipe()
        try:
            dup = dup_from(tid, w)  # a thread id works: it goes through the tgid
            try:
                os.write(dup, b"via dup")
                assert os.read(r, 100) == b"via dup"
                assert not os.get_inheritable(dup)
            finally:
                os.close(dup)
        finally:
            os.close(r)
            os.close(w)
    finally:
        leave.set()
        thread.join()


def test_pidfd_getfd_of_a_missing_fd() -> None:
    pidfd = pidfd_open(ME)
    try:
        with pytest.raises(OSError) as info:
            pidfd_getfd(pidfd, 1_000_000)
        assert info.value.errno == errno.EBADF
    finally:
        os.close(pidfd)


@pytest.mark.parametrize(
    ("family", "host", "port"),
    [
        (socket.AF_INET, "198.51.100.7", 80),
        (socket.AF_INET, "0.0.0.0", 65535),
        (socket.AF_INET6, "2001:db8::1", 443),
        (socket.AF_INET6, "fe80::1%2", 8080),
        (socket.AF_INET6, "::ffff:198.51.100.7", 1),
    ],
)
def test_sockaddr_round_trip(family: int, host: str, port: int) -> None:
    data = pack_sockaddr(family, host, port)
    assert len(data) == (16 if family == socket.AF_INET else 28)
    assert parse_sockaddr(data) == (family, host, port)


def test_sockaddr_matches_the_kernel() -> None:
    """What the kernel writes for getsockname parses, and what we pack it accepts."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
        udp.bind(("127.0.0.1", 0))
        port = udp.getsockname()[1]
        raw = ctypes.create_string_buffer(128)
        length = ctypes.c_uint32(128)
        assert libc.getsockname(udp.fileno(), raw, ctypes.byref(length)) == 0
        assert parse_sockaddr(raw.raw[: length.value]) == (socket.AF_INET, "127.0.0.1", port)
        assert raw.raw[: length.value] == pack_sockaddr(socket.AF_INET, "127.0.0.1", port)


def test_parse_unix_and_odd_addresses() -> None:
    family = struct.pack("=H", socket.AF_UNIX)
    assert parse_sockaddr(family + b"/run/x.sock\0garbage") == (socket.AF_UNIX, "/run/x.sock")
    assert parse_sockaddr(family + b"\0abstract") == (socket.AF_UNIX, "\0abstract")
    assert parse_sockaddr(family) == (socket.AF_UNIX, "")
    assert parse_sockaddr(family + b"/caf\xe9") == (socket.AF_UNIX, "/caf\udce9")
    assert parse_sockaddr(b"") is None
    assert parse_sockaddr(struct.pack("=H", socket.AF_INET) + b"\0\x50") is None  # truncated
    assert parse_sockaddr(struct.pack("=H", socket.AF_UNSPEC) + bytes(14)) is None
    v6 = pack_sockaddr(socket.AF_INET6, "::1", 53)
    assert parse_sockaddr(v6[:24]) == (socket.AF_INET6, "::1", 53)  # scope id left off
    with pytest.raises(ValueError):
        pack_sockaddr(socket.AF_UNIX, "/x", 0)


def _stat_dict(st: os.stat_result) -> dict[str, int]:
    return {
        "st_dev": st.st_dev,
        "st_ino": st.st_ino,
        "st_nlink": st.st_nlink,
        "st_mode": st.st_mode,
        "st_uid": st.st_uid,
        "st_gid": st.st_gid,
        "st_rdev": st.st_rdev,
        "st_size": st.st_size,
        "st_blksize": st.st_blksize,
        "st_blocks": st.st_blocks,
        "st_atime_ns": st.st_atime_ns,
        "st_mtime_ns": st.st_mtime_ns,
        "st_ctime_ns": st.st_ctime_ns,
    }


@pytest.fixture
def sample(tmp_path: Path) -> Path:
    path = tmp_path / "sample"
    path.write_bytes(b"z" * 5000)
    os.utime(path, ns=(1_234_567_891_234_567_891, -1_500_000_001))  # odd nsec, pre-1970 mtime
    return path


@pytest.mark.parametrize("which", ["file", "chardev", "dir"])
def test_pack_stat_is_byte_identical_to_libc_stat(sample: Path, which: str) -> None:
    path = {"file": str(sample), "chardev": "/dev/null", "dir": str(sample.parent)}[which]
    raw = ctypes.create_string_buffer(144)
    assert libc.stat(path.encode(), raw) == 0, os.strerror(ctypes.get_errno())
    packed = pack_stat(_stat_dict(Path(path).stat()))
    assert len(packed) == 144
    assert packed == raw.raw


def test_pack_statx_matches_the_kernel(sample: Path) -> None:
    for path in (str(sample), "/dev/null"):
        raw = ctypes.create_string_buffer(256)
        assert libc.statx(AT_FDCWD, path.encode(), 0, STATX_BASIC_STATS, raw) == 0
        packed = pack_statx(_stat_dict(Path(path).stat()), STATX_BASIC_STATS)
        assert len(packed) == 256
        # mask, blksize | nlink, uid, gid, mode | ino, size, blocks | atime | ctime, mtime, devs
        for start, end in ((4, 8), (16, 30), (32, 56), (64, 80), (96, 144)):
            assert packed[start:end] == raw.raw[start:end], (path, start)
        (kernel_mask,) = struct.unpack_from("=I", raw.raw)
        (our_mask,) = struct.unpack_from("=I", packed)
        assert our_mask == STATX_BASIC_STATS == kernel_mask & STATX_BASIC_STATS
        assert packed[144:] == bytes(112)


def test_pack_statx_birth_time_only_when_asked_and_known() -> None:
    st = {"st_mode": 0o100644, "st_birthtime_ns": 5_000_000_007}
    (mask,) = struct.unpack_from("=I", pack_statx(st, STATX_BASIC_STATS | STATX_BTIME))
    assert mask & STATX_BTIME
    assert struct.unpack_from("=qI", pack_statx(st, STATX_BTIME), 80) == (5, 7)
    (mask,) = struct.unpack_from("=I", pack_statx(st, STATX_BASIC_STATS))
    assert not mask & STATX_BTIME
    (mask,) = struct.unpack_from("=I", pack_statx({}, STATX_BTIME))
    assert mask == STATX_BASIC_STATS
