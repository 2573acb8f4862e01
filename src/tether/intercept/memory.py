"""The target's memory and file descriptors, and the C structs the interceptor reads or fakes.

process_vm_readv/writev and pidfd_getfd need ptrace-attach rights over the target, which the
supervisor has as its ancestor with the same uid (Yama scope 0-1; no root needed). Every call
raises OSError with the kernel's errno: ESRCH when the target is gone, EFAULT for a bad address,
EPERM/EACCES without rights.
"""

from __future__ import annotations

import ctypes
import os
import socket
import struct
from errno import EFAULT, ENAMETOOLONG, ESRCH
from typing import Final

PAGE_SIZE: Final = os.sysconf("SC_PAGE_SIZE")

_NR_PIDFD_OPEN: Final = 434
_NR_PIDFD_GETFD: Final = 438

_libc = ctypes.CDLL(None, use_errno=True)
_syscall = _libc.syscall
_syscall.restype = ctypes.c_long
# process_vm_readv/writev(pid, local_iov, liovcnt, remote_iov, riovcnt, flags)
_readv = _libc.process_vm_readv
_writev = _libc.process_vm_writev
for _fn in (_readv, _writev):
    _fn.restype = ctypes.c_ssize_t
    _fn.argtypes = [
        ctypes.c_int,
        ctypes.c_void_p,
        ctypes.c_ulong,
        ctypes.c_void_p,
        ctypes.c_ulong,
        ctypes.c_ulong,
    ]

# Two struct iovec back to back: [local base, local len, remote base, remote len].
_IOVECS = ctypes.c_size_t * 4
_IOVEC_SIZE: Final = 2 * ctypes.sizeof(ctypes.c_size_t)


def _error(what: str, pid: int) -> OSError:
    err = ctypes.get_errno()
    return OSError(err, f"{what} (pid {pid}): {os.strerror(err)}")


def tgid_of(tid: int) -> int:
    """The process (thread group) id of thread `tid`; ProcessLookupError if it is gone.

    /proc/<tid> exists for every thread even though /proc lists only processes.
    """
    try:
        with open(f"/proc/{tid}/status", "rb") as f:
            for line in f:
                if line.startswith(b"Tgid:"):
                    return int(line[5:])
    except FileNotFoundError:
        pass
    raise ProcessLookupError(ESRCH, f"no such thread: {tid}")


def _transfer(pid: int, address: int, local: int, size: int, write: bool) -> int:
    iov = _IOVECS(local, size, address, size)
    base = ctypes.addressof(iov)
    call = _writev if write else _readv
    n = call(pid, base, 1, base + _IOVEC_SIZE, 1, 0)
    if n < 0:
        raise _error("process_vm_writev" if write else "process_vm_readv", pid)
    return int(n)


def read_bytes(pid: int, address: int, size: int) -> bytes:
    """Read exactly `size` bytes at `address` in process/thread `pid` (EFAULT if short)."""
    if size <= 0:
        return b""
    buf = ctypes.create_string_buffer(size)
    n = _transfer(pid, address, ctypes.addressof(buf), size, write=False)
    if n != size:
        raise OSError(EFAULT, f"short read of {size} bytes at {address:#x} (pid {pid}): {n}")
    return buf.raw


_FIRST_READ = 256


def read_cstring(pid: int, address: int, limit: int = 4096) -> bytes:
    """Read the NUL-terminated string at `address` (without its NUL).

    `limit` counts the NUL, like PATH_MAX: a string with no NUL in its first `limit` bytes
    raises ENAMETOOLONG. Reads stop at page edges, because a read reaching into an unmapped page
    fails as a whole even when the string ended before it. An unreadable start raises EFAULT.
    """
    if address == 0:
        raise OSError(EFAULT, "NULL string pointer")
    buf = bytearray(limit)
    cbuf = (ctypes.c_char * limit).from_buffer(buf)
    base = ctypes.addressof(cbuf)
    done = 0
    while done < limit:
        # Most paths are short: a small first read is much cheaper than one to the page edge.
        first = _FIRST_READ if done == 0 else PAGE_SIZE
        chunk = min(limit - done, PAGE_SIZE - (address + done) % PAGE_SIZE, first)
        n = _transfer(pid, address + done, base + done, chunk, write=False)
        end = buf.find(0, done, done + n)
        if end >= 0:
            return bytes(buf[:end])
        done += n
        if n < chunk:
            raise OSError(EFAULT, f"unterminated string at {address:#x} (pid {pid})")
    raise OSError(ENAMETOOLONG, f"string at {address:#x} longer than {limit - 1} bytes")


def write_bytes(pid: int, address: int, data: bytes) -> None:
    """Write `data` at `address` in process/thread `pid`; OSError (EFAULT) if not all written."""
    if not data:
        return
    buf = ctypes.create_string_buffer(data, len(data))
    n = _transfer(pid, address, ctypes.addressof(buf), len(data), write=True)
    if n != len(data):
        raise OSError(EFAULT, f"short write of {len(data)} bytes at {address:#x} (pid {pid}): {n}")


def pidfd_open(pid: int) -> int:
    """pidfd_open(2) (close-on-exec). `pid` must be a process, not a non-leader thread."""
    fd = _syscall(ctypes.c_long(_NR_PIDFD_OPEN), ctypes.c_long(pid), ctypes.c_long(0))
    if fd < 0:
        raise _error("pidfd_open", pid)
    return int(fd)


def pidfd_getfd(pidfd: int, target_fd: int) -> int:
    """pidfd_getfd(2): our own close-on-exec fd for the target's `target_fd`.

    It shares the open file description: flags (O_NONBLOCK) and socket state are the target's.
    """
    fd = _syscall(
        ctypes.c_long(_NR_PIDFD_GETFD),
        ctypes.c_long(pidfd),
        ctypes.c_long(target_fd),
        ctypes.c_long(0),
    )
    if fd < 0:
        err = ctypes.get_errno()
        raise OSError(err, f"pidfd_getfd(fd {target_fd}): {os.strerror(err)}")
    return int(fd)


def dup_from(tid: int, target_fd: int) -> int:
    """Our copy of fd `target_fd` of the process containing thread `tid`."""
    pidfd = pidfd_open(tgid_of(tid))
    try:
        return pidfd_getfd(pidfd, target_fd)
    finally:
        os.close(pidfd)


_SA_FAMILY: Final = struct.Struct("=H")
_SOCKADDR_IN: Final = struct.Struct("=H2s4s8x")  # family, port (network order), addr, zero
_SOCKADDR_IN6: Final = struct.Struct("=H2sI16sI")  # family, port, flowinfo, addr, scope_id


def parse_sockaddr(data: bytes) -> tuple[int, str, int] | tuple[int, str] | None:
    """Decode a sockaddr: (AF_INET/AF_INET6, host, port), (AF_UNIX, path) or None.

    An IPv6 scope id shows as `%N` after the host. A Unix path is cut at its first NUL; an
    abstract name keeps its leading NUL (`"\\0name"`); an unnamed address is `""`. Non-UTF-8
    bytes come back as surrogate escapes. Too short for its family, or another family: None.
    """
    if len(data) < 2:
        return None
    (family,) = _SA_FAMILY.unpack_from(data)
    if family == socket.AF_INET and len(data) >= 8:
        port, addr = data[2:4], data[4:8]
        return (family, socket.inet_ntop(socket.AF_INET, addr), int.from_bytes(port, "big"))
    if family == socket.AF_INET6 and len(data) >= 24:
        port, addr = data[2:4], data[8:24]
        scope = int.from_bytes(data[24:28], "little") if len(data) >= 28 else 0
        host = socket.inet_ntop(socket.AF_INET6, addr)
        if scope:
            host = f"{host}%{scope}"
        return (family, host, int.from_bytes(port, "big"))
    if family == socket.AF_UNIX:
        raw = data[2:]
        if raw[:1] != b"\0":
            raw = raw.split(b"\0", 1)[0]
        return (family, os.fsdecode(raw))
    return None


def pack_sockaddr(family: int, host: str, port: int) -> bytes:
    """Encode a sockaddr_in (16 bytes) or sockaddr_in6 (28 bytes; `%N` sets the scope id)."""
    port_be = port.to_bytes(2, "big")
    if family == socket.AF_INET:
        return _SOCKADDR_IN.pack(family, port_be, socket.inet_pton(socket.AF_INET, host))
    if family == socket.AF_INET6:
        addr, _, scope = host.partition("%")
        return _SOCKADDR_IN6.pack(
            family, port_be, 0, socket.inet_pton(socket.AF_INET6, addr), int(scope or 0)
        )
    raise ValueError(f"unsupported address family: {family}")


# x86_64 struct stat (asm/stat.h): dev, ino, nlink, mode, uid, gid, pad, rdev, size, blksize,
# blocks, then atime, mtime, ctime as (sec, nsec) pairs, and three reserved longs.
_STAT: Final = struct.Struct("=QQQIIIIQqqqqQqQqQ24x")

STATX_TYPE: Final = 0x1
STATX_MODE: Final = 0x2
STATX_NLINK: Final = 0x4
STATX_UID: Final = 0x8
STATX_GID: Final = 0x10
STATX_ATIME: Final = 0x20
STATX_MTIME: Final = 0x40
STATX_CTIME: Final = 0x80
STATX_INO: Final = 0x100
STATX_SIZE: Final = 0x200
STATX_BLOCKS: Final = 0x400
STATX_BASIC_STATS: Final = 0x7FF
STATX_BTIME: Final = 0x800

# struct statx (linux/stat.h) up to stx_dev_minor; the rest of its 256 bytes stays zero.
_STATX: Final = struct.Struct("=IIQIIIH2xQQQQ" + "qI4x" * 4 + "IIII")
_STATX_SIZE: Final = 256


def _split_ns(ns: int) -> tuple[int, int]:
    sec, nsec = divmod(ns, 1_000_000_000)  # floor division keeps nsec in [0, 1e9) before 1970
    return sec, nsec


def pack_stat(st: dict[str, int]) -> bytes:
    """An x86_64 `struct stat` (144 bytes) from os.stat_result-style keys (missing ones are 0).

    Keys: st_dev, st_ino, st_nlink, st_mode, st_uid, st_gid, st_rdev, st_size, st_blksize,
    st_blocks, st_atime_ns, st_mtime_ns, st_ctime_ns.
    """
    g = st.get
    return _STAT.pack(
        g("st_dev", 0),
        g("st_ino", 0),
        g("st_nlink", 0),
        g("st_mode", 0),
        g("st_uid", 0),
        g("st_gid", 0),
        0,
        g("st_rdev", 0),
        g("st_size", 0),
        g("st_blksize", 0),
        g("st_blocks", 0),
        *_split_ns(g("st_atime_ns", 0)),
        *_split_ns(g("st_mtime_ns", 0)),
        *_split_ns(g("st_ctime_ns", 0)),
    )


def pack_statx(st: dict[str, int], mask: int) -> bytes:
    """A `struct statx` (256 bytes) from the same keys as `pack_stat`.

    `mask` is what the caller asked for (statx's 4th argument). Like the kernel, every basic
    field is filled and reported whatever was asked; the birth time only if asked and the
    dict has `st_birthtime_ns`. Attributes, mount id and DIO alignment are left empty.
    """
    g = st.get
    stx_mask = STATX_BASIC_STATS
    btime = (0, 0)
    if mask & STATX_BTIME and "st_birthtime_ns" in st:
        stx_mask |= STATX_BTIME
        btime = _split_ns(st["st_birthtime_ns"])
    dev, rdev = g("st_dev", 0), g("st_rdev", 0)
    packed = _STATX.pack(
        stx_mask,
        g("st_blksize", 0),
        0,  # stx_attributes
        g("st_nlink", 0),
        g("st_uid", 0),
        g("st_gid", 0),
        g("st_mode", 0),
        g("st_ino", 0),
        g("st_size", 0),
        g("st_blocks", 0),
        0,  # stx_attributes_mask
        *_split_ns(g("st_atime_ns", 0)),
        *btime,
        *_split_ns(g("st_ctime_ns", 0)),
        *_split_ns(g("st_mtime_ns", 0)),
        os.major(rdev),
        os.minor(rdev),
        os.major(dev),
        os.minor(dev),
    )
    return packed + bytes(_STATX_SIZE - len(packed))
