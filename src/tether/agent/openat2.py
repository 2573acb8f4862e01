"""openat2(2) and faccessat2(2) on x86_64, through ctypes (Python's os module has neither).

openat2 with RESOLVE_IN_ROOT makes the kernel resolve a whole path as if the directory fd were
the process's root: absolute symlinks restart there and `..` stops there, atomically with
respect to renames, which no user-space walk can promise. Errors are OSError with the kernel's
errno and no filename (callers name the path as they see it). Kernel floor: 5.6 for openat2,
5.8 for faccessat2; without them the call fails with ENOSYS and says so, never falling back to
something weaker.
"""

from __future__ import annotations

import ctypes
import errno
import os
from typing import Final

_NR_OPENAT2: Final = 437
_NR_FACCESSAT2: Final = 439

RESOLVE_NO_XDEV: Final = 0x01
RESOLVE_NO_MAGICLINKS: Final = 0x02
RESOLVE_NO_SYMLINKS: Final = 0x04
RESOLVE_BENEATH: Final = 0x08
RESOLVE_IN_ROOT: Final = 0x10

AT_EMPTY_PATH: Final = 0x1000

# The kernel's x86_64 values where Python's differ or are missing: glibc's O_LARGEFILE is 0 on
# 64-bit, FASYNC and __O_TMPFILE have no os constant.
_O_LARGEFILE: Final = 0o100000
_FASYNC: Final = 0o20000
_O_TMPFILE_BIT: Final = 0o20000000
# VALID_OPEN_FLAGS (include/linux/fcntl.h): open(2) drops other bits, openat2(2) rejects them.
VALID_OPEN_FLAGS: Final = (
    os.O_RDONLY
    | os.O_WRONLY
    | os.O_RDWR
    | os.O_CREAT
    | os.O_EXCL
    | os.O_NOCTTY
    | os.O_TRUNC
    | os.O_APPEND
    | os.O_NONBLOCK
    | os.O_DSYNC
    | _FASYNC
    | os.O_DIRECT
    | _O_LARGEFILE
    | os.O_DIRECTORY
    | os.O_NOFOLLOW
    | os.O_NOATIME
    | os.O_CLOEXEC
    | os.O_SYNC
    | os.O_PATH
    | _O_TMPFILE_BIT
)
O_PATH_FLAGS: Final = os.O_DIRECTORY | os.O_NOFOLLOW | os.O_PATH | os.O_CLOEXEC
_S_IALLUGO: Final = 0o7777
# A rename or mount elsewhere during a scoped `..` makes the kernel give up with EAGAIN rather
# than risk a wrong answer; another try almost always succeeds.
_EAGAIN_TRIES: Final = 64

_libc = ctypes.CDLL(None, use_errno=True)
_syscall = _libc.syscall
_syscall.restype = ctypes.c_long


class OpenHow(ctypes.Structure):
    """struct open_how."""

    _fields_ = (
        ("flags", ctypes.c_uint64),
        ("mode", ctypes.c_uint64),
        ("resolve", ctypes.c_uint64),
    )


def _unavailable(call: str, release: str) -> OSError:
    return OSError(
        errno.ENOSYS,
        f"{call}(2) is not available: confining file access to the container needs "
        f"Linux {release} or later (this node runs {os.uname().release})",
    )


def _encode(path: str | bytes) -> bytes:
    raw = os.fsencode(path)
    if b"\0" in raw:
        # ctypes would silently cut the path at the NUL.
        raise OSError(errno.EINVAL, os.strerror(errno.EINVAL))
    return raw


def open_how(flags: int, mode: int) -> tuple[int, int]:
    """The (flags, mode) open(2) would hand the kernel for these arguments.

    open(2) ignores unknown flags, reduces O_PATH to the few flags it allows and ignores the
    mode unless a file may be created; openat2(2) instead fails with EINVAL on all of these.
    Passing its arguments through this keeps open(2)'s behaviour.
    """
    flags &= VALID_OPEN_FLAGS
    if flags & os.O_PATH:
        flags &= O_PATH_FLAGS
    creates = flags & (os.O_CREAT | _O_TMPFILE_BIT)
    return flags, (mode & _S_IALLUGO) if creates else 0


def openat2(dir_fd: int, path: str | bytes, flags: int, mode: int = 0, resolve: int = 0) -> int:
    """openat2(2): a new fd for `path` looked up from `dir_fd` under the `resolve` rules.

    The arguments go to the kernel as given (see `open_how` for open(2)'s leniency). EINTR
    and EAGAIN are retried, the latter a bounded number of times.
    """
    raw = _encode(path)
    how = OpenHow(flags, mode, resolve)
    for _ in range(_EAGAIN_TRIES):
        fd = _syscall(
            ctypes.c_long(_NR_OPENAT2),
            ctypes.c_long(dir_fd),
            ctypes.c_char_p(raw),
            ctypes.byref(how),
            ctypes.c_size_t(ctypes.sizeof(how)),
        )
        if fd >= 0:
            return int(fd)
        err = ctypes.get_errno()
        if err == errno.ENOSYS:
            raise _unavailable("openat2", "5.6")
        if err not in (errno.EINTR, errno.EAGAIN):
            break
    raise OSError(err, os.strerror(err))


def faccessat2(dir_fd: int, path: str | bytes, mode: int, flags: int = 0) -> None:
    """faccessat2(2) with the real uid and gid (unless AT_EACCESS); raises on denial."""
    raw = _encode(path)
    while True:
        rc = _syscall(
            ctypes.c_long(_NR_FACCESSAT2),
            ctypes.c_long(dir_fd),
            ctypes.c_char_p(raw),
            ctypes.c_long(mode),
            ctypes.c_long(flags),
        )
        if rc == 0:
            return
        err = ctypes.get_errno()
        if err == errno.ENOSYS:
            raise _unavailable("faccessat2", "5.8")
        if err != errno.EINTR:
            raise OSError(err, os.strerror(err))
