"""Unit tests for tether.agent.files: confined path resolution and file operations."""

from __future__ import annotations

import errno
import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from tether.agent.files import RootFS


@pytest.fixture
def root(tmp_path: Path) -> Path:
    """A small container root; `outside` next to it stands for the host."""
    r = tmp_path / "root"
    (r / "etc").mkdir(parents=True)
    (r / "etc" / "real").write_text("inside\n")
    (r / "etc" / "passwd").write_text("root:x:0:0::/root:/bin/sh\n")
    (r / "etc" / "link").symlink_to("/etc/real")
    (r / "etc" / "rel").symlink_to("real")
    (r / "etc" / "escape").symlink_to("../../../../etc/passwd")
    (r / "etc" / "dangling").symlink_to("/etc/new-target")
    (r / "etc" / "loop1").symlink_to("loop2")
    (r / "etc" / "loop2").symlink_to("/etc/loop1")
    (r / "etc" / "dirlink").symlink_to("/var/lib")
    (r / "var" / "lib").mkdir(parents=True)
    (r / "var" / "lib" / "data").write_bytes(b"0123456789")
    (r / "hostroot").symlink_to("/")
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret").write_text("host\n")
    return r


@pytest.fixture
def fs(root: Path) -> Iterator[RootFS]:
    rootfs = RootFS(root)
    yield rootfs
    rootfs.close_all()


def read_all(fs: RootFS, path: str) -> bytes:
    h = fs.open(path, os.O_RDONLY, 0)
    try:
        return fs.read(h, 0, 1 << 16)
    finally:
        fs.close(h)


def errno_of(fn: object, *args: object) -> int | None:
    with pytest.raises(OSError) as err:
        fn(*args)  # type: ignore[operator]
    return err.value.errno


@pytest.mark.parametrize(
    ("path", "follow", "expected"),
    [
        ("/", True, ""),
        ("/etc/link", True, "etc/real"),
        ("/etc/link", False, "etc/link"),
        ("/etc/rel", True, "etc/real"),
        ("/etc/escape", True, "etc/passwd"),
        ("/../../..", True, ""),
        ("/../../../etc/real", True, "etc/real"),
        ("etc/./real", True, "etc/real"),
        ("//etc//real", True, "etc/real"),
        ("/etc/dirlink/data", True, "var/lib/data"),
        ("/etc/dirlink/../lib/data", True, "var/lib/data"),  # `..` of the link's target
        ("/etc/dirlink", False, "etc/dirlink"),
        ("/etc/dirlink/", False, "var/lib"),  # a trailing slash follows
        ("/hostroot/etc/real", True, "etc/real"),
        ("/etc/dangling", True, "etc/new-target"),
        ("/etc/missing", True, "etc/missing"),
    ],
)
def test_resolve_stays_inside(
    fs: RootFS, root: Path, path: str, follow: bool, expected: str
) -> None:
    assert fs.resolve(path, follow) == (root / expected if expected else root)


def test_absolute_symlink_reads_the_containers_file_not_the_hosts(fs: RootFS) -> None:
    assert read_all(fs, "/etc/link") == b"inside\n"
    assert read_all(fs, "/etc/escape").startswith(b"root:x:0:0::/root")
    assert errno_of(fs.stat, "/../outside/secret") == errno.ENOENT


@pytest.mark.parametrize(
    ("path", "code"),
    [
        ("/etc/loop1", errno.ELOOP),
        ("/etc/loop1/x", errno.ELOOP),
        ("/nope/x", errno.ENOENT),
        ("/etc/real/x", errno.ENOTDIR),
        ("/etc/real/", errno.ENOTDIR),
        ("/etc/real/..", errno.ENOTDIR),
        ("/etc/\0", errno.EINVAL),
    ],
)
def test_resolve_errors(fs: RootFS, path: str, code: int) -> None:
    with pytest.raises(OSError) as err:
        fs.resolve(path)
    assert err.value.errno == code
    assert err.value.filename == path  # the in-container path, never the host's


def test_stat_and_lstat(fs: RootFS, root: Path) -> None:
    st = fs.stat("/etc/link")
    assert stat.S_ISREG(st["st_mode"])
    assert st["st_size"] == len("inside\n")
    assert st["st_ino"] == (root / "etc" / "real").stat().st_ino
    assert set(st) >= {"st_mtime_ns", "st_blksize", "st_blocks", "st_rdev", "st_nlink"}
    assert stat.S_ISLNK(fs.stat("/etc/link", follow=False)["st_mode"])
    assert stat.S_ISDIR(fs.stat("/")["st_mode"])
    assert errno_of(fs.stat, "/etc/missing") == errno.ENOENT
    assert errno_of(fs.stat, "/etc/dangling") == errno.ENOENT


def test_listdir(fs: RootFS, root: Path) -> None:
    entries = {name: (kind, ino) for name, kind, ino in fs.listdir("/etc/dirlink/..")}
    assert entries == {"lib": (4, (root / "var" / "lib").stat().st_ino)}  # DT_DIR
    kinds = {name: kind for name, kind, _ in fs.listdir("/etc")}
    assert kinds["real"] == 8  # DT_REG
    assert kinds["link"] == 10  # DT_LNK
    assert "." not in kinds
    assert errno_of(fs.listdir, "/etc/real") == errno.ENOTDIR
    assert errno_of(fs.listdir, "/nope") == errno.ENOENT


def test_readlink(fs: RootFS) -> None:
    assert fs.readlink("/etc/link") == "/etc/real"
    assert fs.readlink("/etc/escape") == "../../../../etc/passwd"
    assert errno_of(fs.readlink, "/etc/real") == errno.EINVAL


def test_create_write_read_unlink_round_trip(fs: RootFS, root: Path) -> None:
    h = fs.open("/var/lib/new", os.O_CREAT | os.O_EXCL | os.O_RDWR, 0o640)
    assert fs.write(h, 0, b"hello") == 5
    assert fs.write(h, -1, b" world") == 6
    assert fs.write(h, 0, b"J") == 1
    assert fs.read(h, 0, 100) == b"Jello world"
    assert fs.read(h, 6, 3) == b"wor"
    assert fs.read(h, 100, 10) == b""
    assert fs.fstat(h)["st_size"] == 11
    assert stat.S_IMODE(fs.fstat(h)["st_mode"]) == 0o640 & ~_umask()
    fs.close(h)
    assert (root / "var" / "lib" / "new").read_bytes() == b"Jello world"
    assert errno_of(fs.open, "/var/lib/new", os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600) == (
        errno.EEXIST
    )
    fs.unlink("/var/lib/new")
    assert not (root / "var" / "lib" / "new").exists()
    assert errno_of(fs.unlink, "/var/lib/new") == errno.ENOENT


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def test_open_flags(fs: RootFS, root: Path) -> None:
    data = root / "var" / "lib" / "data"
    h = fs.open("/var/lib/data", os.O_WRONLY | os.O_APPEND, 0)
    fs.write(h, -1, b"AB")
    fs.close(h)
    assert data.read_bytes() == b"0123456789AB"
    fs.close(fs.open("/etc/dirlink/data", os.O_WRONLY | os.O_TRUNC, 0))
    assert data.read_bytes() == b""
    # O_CREAT through a dangling absolute symlink creates its target inside the root.
    fs.close(fs.open("/etc/dangling", os.O_CREAT | os.O_WRONLY, 0o600))
    assert (root / "etc" / "new-target").is_file()
    assert errno_of(fs.open, "/etc/link", os.O_RDONLY | os.O_NOFOLLOW, 0) == errno.ELOOP
    assert errno_of(fs.open, "/etc/link", os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600) == (
        errno.EEXIST
    )
    assert errno_of(fs.open, "/etc", os.O_WRONLY, 0) == errno.EISDIR
    assert errno_of(fs.open, "/etc/real/x", os.O_RDONLY, 0) == errno.ENOTDIR
    assert errno_of(fs.open, "/etc/missing", os.O_RDONLY, 0) == errno.ENOENT
    assert errno_of(fs.open, "/etc/real", os.O_RDONLY | os.O_DIRECTORY, 0) == errno.ENOTDIR
    h = fs.open("/", os.O_RDONLY | os.O_DIRECTORY, 0)
    assert errno_of(fs.read, h, 0, 10) == errno.EISDIR
    fs.close(h)


def test_handles(root: Path) -> None:
    fs = RootFS(root, max_handles=2)
    a = fs.open("/etc/real", os.O_RDONLY, 0)
    b = fs.open("/etc/real", os.O_RDONLY, 0)
    assert a != b
    assert errno_of(fs.open, "/etc/real", os.O_RDONLY, 0) == errno.EMFILE
    fs.close(a)
    c = fs.open("/etc/real", os.O_RDONLY, 0)
    assert c not in (a, b)  # ids are never reused
    assert errno_of(fs.close, a) == errno.EBADF
    assert errno_of(fs.read, a, 0, 1) == errno.EBADF
    assert fs.open_handles == 2
    fs.close_all()
    assert fs.open_handles == 0
    assert errno_of(fs.fstat, b) == errno.EBADF


def test_directories_and_rename(fs: RootFS, root: Path) -> None:
    fs.mkdir("/var/cache", 0o755)
    assert (root / "var" / "cache").is_dir()
    assert errno_of(fs.mkdir, "/var/cache", 0o755) == errno.EEXIST
    assert errno_of(fs.mkdir, "/etc/dangling", 0o755) == errno.EEXIST
    assert errno_of(fs.mkdir, "/", 0o755) == errno.EEXIST
    assert errno_of(fs.mkdir, "/no/such", 0o755) == errno.ENOENT
    fs.rename("/etc/real", "/var/cache/moved")
    assert (root / "var" / "cache" / "moved").read_text() == "inside\n"
    fs.rename("/etc/link", "/var/cache/link")  # the link itself moves, not its target
    assert (root / "var" / "cache" / "link").is_symlink()
    assert errno_of(fs.rmdir, "/var/cache") == errno.ENOTEMPTY
    assert errno_of(fs.unlink, "/var/cache") == errno.EISDIR
    assert errno_of(fs.rmdir, "/var/cache/moved") == errno.ENOTDIR
    assert errno_of(fs.rmdir, "/") == errno.EBUSY
    assert errno_of(fs.rename, "/", "/x") == errno.EBUSY
    fs.unlink("/var/cache/moved")
    fs.unlink("/var/cache/link")
    fs.rmdir("/var/cache")
    assert not (root / "var" / "cache").exists()
    with pytest.raises(OSError) as err:
        fs.rename("/nope", "/var/x")
    assert (err.value.errno, err.value.filename, err.value.filename2) == (
        errno.ENOENT,
        "/nope",
        "/var/x",
    )


def test_access(fs: RootFS, root: Path) -> None:
    fs.access("/etc/link", os.R_OK)
    fs.access("/", os.R_OK | os.X_OK)
    assert errno_of(fs.access, "/etc/missing", os.F_OK) == errno.ENOENT
    (root / "etc" / "real").chmod(0o644)
    assert errno_of(fs.access, "/etc/link", os.X_OK) == errno.EACCES


def test_proc_root_of_a_real_process(tmp_path: Path) -> None:
    """/proc/PID/root is itself a symlink: it must still work as the root."""
    fs = RootFS(Path(f"/proc/{os.getpid()}/root"))
    (tmp_path / "f").write_text("x")
    assert fs.stat(str(tmp_path / "f"))["st_size"] == 1
    assert stat.S_ISDIR(fs.stat("/")["st_mode"])
    fs.close(fs.open("/", os.O_RDONLY | os.O_DIRECTORY, 0))
