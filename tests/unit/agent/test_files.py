"""Unit tests for tether.agent.files: confined path resolution and file operations."""

from __future__ import annotations

import ctypes
import errno
import os
import stat
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tether.agent import openat2
from tether.agent.files import RootFS, final_name_error, split_final
from tether.agent.openat2 import open_how


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


def test_absolute_symlink_reads_the_containers_file_not_the_hosts(fs: RootFS) -> None:
    assert read_all(fs, "/etc/link") == b"inside\n"
    assert read_all(fs, "/etc/escape").startswith(b"root:x:0:0::/root")
    assert errno_of(fs.stat, "/../outside/secret") == errno.ENOENT


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


# The same lookups as test_resolve_stays_inside, done the way every operation now does them:
# by the kernel, from the root fd. (path, follow, the entry it must land on, relative to root)
KERNEL_LOOKUPS = [
    ("/", True, ""),
    ("", True, ""),
    ("/etc/link", True, "etc/real"),
    ("/etc/link", False, "etc/link"),
    ("/etc/rel", True, "etc/real"),
    ("/etc/escape", True, "etc/passwd"),  # `..` beyond the root stays at the root
    ("/../../..", True, ""),
    ("/../../../etc/real", True, "etc/real"),
    ("etc/./real", True, "etc/real"),
    ("//etc//real", True, "etc/real"),
    ("/etc/dirlink/data", True, "var/lib/data"),
    ("/etc/dirlink/../lib/data", True, "var/lib/data"),
    ("/etc/dirlink", False, "etc/dirlink"),
    ("/etc/dirlink/", False, "var/lib"),
    ("/hostroot/etc/real", True, "etc/real"),  # "/" inside the container is its root
    ("/hostroot/..", True, ""),
]


@pytest.mark.parametrize(("path", "follow", "expected"), KERNEL_LOOKUPS)
def test_kernel_lookups_stay_inside(
    fs: RootFS, root: Path, path: str, follow: bool, expected: str
) -> None:
    st = fs.stat(path, follow)
    want = (root / expected).lstat() if expected else root.stat()
    assert (st["st_dev"], st["st_ino"]) == (want.st_dev, want.st_ino)


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
        ("/etc/dangling", errno.ENOENT),
        ("/../outside/secret", errno.ENOENT),
    ],
)
@pytest.mark.parametrize("op", ["stat", "listdir", "access", "open"])
def test_lookup_errors_of_every_operation(fs: RootFS, op: str, path: str, code: int) -> None:
    calls: dict[str, Callable[[], object]] = {
        "stat": lambda: fs.stat(path),
        "listdir": lambda: fs.listdir(path),
        "access": lambda: fs.access(path, os.F_OK),
        "open": lambda: fs.open(path, os.O_RDONLY),
    }
    with pytest.raises(OSError) as err:
        calls[op]()
    assert (err.value.errno, err.value.filename) == (code, path)


@pytest.mark.parametrize(
    ("path", "code"),
    [
        ("/etc/loop1/x", errno.ELOOP),
        ("/nope/x", errno.ENOENT),
        ("/etc/missing", errno.ENOENT),
        ("/etc/real/x", errno.ENOTDIR),
        ("/etc/real/..", errno.ENOTDIR),
        ("/etc/\0", errno.EINVAL),
        ("/../outside/secret", errno.ENOENT),
    ],
)
@pytest.mark.parametrize("op", ["lstat", "readlink"])
def test_lookup_errors_without_following(fs: RootFS, op: str, path: str, code: int) -> None:
    calls: dict[str, Callable[[], object]] = {
        "lstat": lambda: fs.stat(path, follow=False),
        "readlink": lambda: fs.readlink(path),
    }
    with pytest.raises(OSError) as err:
        calls[op]()
    assert (err.value.errno, err.value.filename) == (code, path)


@pytest.fixture
def outside(root: Path) -> Path:
    """The host directory next to the root, and links pointing at it from inside."""
    host = root.parent / "outside"
    (root / "etc" / "hostdir").symlink_to(host)  # the host's absolute path
    (root / "etc" / "updir").symlink_to("../../outside")
    return host


def test_a_symlink_to_a_host_directory_is_looked_up_inside(
    fs: RootFS, root: Path, outside: Path
) -> None:
    assert errno_of(fs.listdir, "/etc/hostdir") == errno.ENOENT
    assert errno_of(fs.listdir, "/etc/updir") == errno.ENOENT
    assert errno_of(fs.open, "/etc/hostdir/secret", os.O_RDONLY, 0) == errno.ENOENT
    mirror = root / str(outside).lstrip("/")
    mirror.mkdir(parents=True)
    (mirror / "mirror").write_text("inside\n")
    (root / "outside").mkdir()
    assert [name for name, _, _ in fs.listdir("/etc/hostdir")] == ["mirror"]
    assert fs.listdir("/etc/updir") == []
    assert read_all(fs, "/etc/hostdir/mirror") == b"inside\n"
    fs.close(fs.open("/etc/updir/created", os.O_CREAT | os.O_WRONLY, 0o600))
    assert (root / "outside" / "created").exists()
    assert sorted(p.name for p in outside.iterdir()) == ["secret"]


def test_names_changes_through_dotdot_stay_inside(fs: RootFS, root: Path, outside: Path) -> None:
    fs.mkdir("/../../made")
    assert (root / "made").is_dir()
    fs.rename("/etc/real", "/../made/real")
    assert (root / "made" / "real").read_text() == "inside\n"
    assert errno_of(fs.unlink, "/../outside/secret") == errno.ENOENT
    assert errno_of(fs.unlink, "/etc/hostdir/secret") == errno.ENOENT
    assert errno_of(fs.rename, "/made/real", "/etc/hostdir/stolen") == errno.ENOENT
    assert errno_of(fs.mkdir, "/etc/updir/made") == errno.ENOENT
    assert errno_of(fs.rmdir, "/etc/hostdir") == errno.ENOTDIR  # the link, not followed
    fs.unlink("/etc/hostdir")  # the link itself goes, not the host's directory
    assert sorted(p.name for p in outside.iterdir()) == ["secret"]


@pytest.mark.parametrize(
    ("op", "path", "code"),
    [
        ("mkdir", "/", errno.EEXIST),
        ("mkdir", "/etc/.", errno.EEXIST),
        ("mkdir", "/etc/..", errno.EEXIST),
        ("mkdir", "/etc/../", errno.EEXIST),
        ("mkdir", "/nope/..", errno.ENOENT),  # the parent first, as the kernel
        ("mkdir", "/etc/real/..", errno.ENOTDIR),
        ("unlink", "/", errno.EISDIR),
        ("unlink", "/etc/.", errno.EISDIR),
        ("unlink", "/etc/..", errno.EISDIR),
        ("unlink", "/etc/real/", errno.ENOTDIR),
        ("unlink", "/etc/nope/", errno.ENOENT),
        ("rmdir", "/", errno.EBUSY),
        ("rmdir", "/var/.", errno.EINVAL),
        ("rmdir", "/var/lib/..", errno.ENOTEMPTY),
        ("rmdir", "/etc/dirlink/", errno.ENOTDIR),  # a trailing slash does not follow it
        ("rename", "/", errno.EBUSY),
        ("rename", "/etc/..", errno.EBUSY),
        ("rename", "/etc/.", errno.EBUSY),
        ("rename", "/etc/\0", errno.EINVAL),
        ("rename_to", "/", errno.EBUSY),
        ("rename_to", "/etc/..", errno.EBUSY),
        ("rename_to", "/var/lib/.", errno.EBUSY),
        ("rename_to", "/etc/real/", errno.ENOTDIR),  # not a directory: no trailing slash
    ],
)
def test_final_names_that_are_not_names(fs: RootFS, op: str, path: str, code: int) -> None:
    calls: dict[str, Callable[[], object]] = {
        "mkdir": lambda: fs.mkdir(path),
        "unlink": lambda: fs.unlink(path),
        "rmdir": lambda: fs.rmdir(path),
        "rename": lambda: fs.rename(path, "/etc/moved"),
        "rename_to": lambda: fs.rename("/etc/passwd", path),
    }
    with pytest.raises(OSError) as err:
        calls[op]()
    assert err.value.errno == code
    assert path in (err.value.filename, err.value.filename2)


def test_trailing_slashes_on_directories(fs: RootFS, root: Path) -> None:
    fs.mkdir("/var/new//")
    assert (root / "var" / "new").is_dir()
    fs.rename("/var/new/", "/var/renamed/")
    fs.rmdir("/var/renamed/")
    assert not (root / "var" / "renamed").exists()


@pytest.mark.parametrize(
    ("path", "expected"),
    [
        ("/", ("/", "")),
        ("", ("/", "")),
        ("///", ("/", "")),
        ("/a", ("/", "a")),
        ("a", ("/", "a")),
        ("/a/b", ("/a", "b")),
        ("a/b", ("a", "b")),
        ("/a/b/", ("/a", "b/")),
        ("/a/b///", ("/a", "b/")),
        ("//a//b", ("//a/", "b")),
        ("/a/..", ("/a", "..")),
        ("/a/./", ("/a", "./")),
    ],
)
def test_split_final(path: str, expected: tuple[str, str]) -> None:
    assert split_final(path) == expected


@pytest.mark.parametrize(
    ("op", "name", "code"),
    [
        ("mkdir", "x", None),
        ("mkdir", "x/", None),
        ("mkdir", "...", None),
        ("mkdir", ".x", None),
        ("mkdir", "", errno.EEXIST),
        ("mkdir", "..", errno.EEXIST),
        ("unlink", ".", errno.EISDIR),
        ("unlink", "../", errno.EISDIR),
        ("rmdir", "", errno.EBUSY),
        ("rmdir", ".", errno.EINVAL),
        ("rmdir", "..", errno.ENOTEMPTY),
        ("rename", "..", errno.EBUSY),
        ("rename", "a/b", errno.EINVAL),
        ("rename", "a/../b", errno.EINVAL),
        ("unlink", "a//", errno.EINVAL),
        ("mkdir", "a\0", errno.EINVAL),
    ],
)
def test_final_name_error(op: str, name: str, code: int | None) -> None:
    assert final_name_error(op, name) == code


def test_magic_links_are_refused(tmp_path: Path) -> None:
    """/proc's fd and root links would jump anywhere: never followed, even as the last part."""
    fs = RootFS(Path(f"/proc/{os.getpid()}/root"))
    fd = os.open(tmp_path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        for path in (f"/proc/self/fd/{fd}", f"/proc/{os.getpid()}/cwd/x", "/proc/self/root/"):
            assert errno_of(fs.stat, path) == errno.ELOOP
            assert errno_of(fs.listdir, path) == errno.ELOOP
            assert errno_of(fs.open, path, os.O_RDONLY, 0) == errno.ELOOP
        assert errno_of(fs.mkdir, f"/proc/self/fd/{fd}/x") == errno.ELOOP
        # The link itself, unfollowed, is fine: its target is only text.
        assert stat.S_ISLNK(fs.stat(f"/proc/self/fd/{fd}", follow=False)["st_mode"])
        assert fs.readlink(f"/proc/self/fd/{fd}") == str(tmp_path)
        # /proc/self is an ordinary symlink (to the pid), not a magic one.
        assert stat.S_ISDIR(fs.stat("/proc/self/fd")["st_mode"])
    finally:
        os.close(fd)


def test_the_root_is_pinned_when_the_rootfs_is_made(tmp_path: Path) -> None:
    """Like /proc/PID/root when PID dies and is reused: the old root, or nothing."""
    (tmp_path / "root").mkdir()
    (tmp_path / "root" / "f").write_text("first")
    fs = RootFS(tmp_path / "root")
    (tmp_path / "root").rename(tmp_path / "moved")
    (tmp_path / "root").mkdir()
    (tmp_path / "root" / "f").write_text("second, longer")
    assert read_all(fs, "/f") == b"first"


def test_a_missing_root_fails_every_operation(tmp_path: Path) -> None:
    fs = RootFS(tmp_path / "gone")
    (tmp_path / "gone").mkdir()  # too late: it was not there when the RootFS was made
    for call in (
        lambda: fs.stat("/"),
        lambda: fs.listdir("/"),
        lambda: fs.open("/f", os.O_CREAT | os.O_WRONLY, 0o600),
        lambda: fs.mkdir("/d"),
        lambda: fs.access("/", os.F_OK),
    ):
        with pytest.raises(OSError) as err:
            call()
        assert err.value.errno == errno.ENOENT
        assert str(tmp_path / "gone") in str(err.value)
    assert list((tmp_path / "gone").iterdir()) == []


def test_without_openat2_every_operation_fails_closed(
    fs: RootFS, root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def no_such_syscall(*args: object) -> int:
        ctypes.set_errno(errno.ENOSYS)
        return -1

    monkeypatch.setattr(openat2, "_syscall", no_such_syscall)
    for call in (
        lambda: fs.stat("/etc/real"),
        lambda: fs.readlink("/etc/link"),
        lambda: fs.open("/etc/real", os.O_RDONLY),
        lambda: fs.unlink("/etc/real"),
        lambda: fs.rename("/etc/real", "/etc/moved"),
        lambda: fs.access("/etc/real", os.R_OK),
    ):
        with pytest.raises(OSError) as err:
            call()
        assert err.value.errno == errno.ENOSYS
        assert "openat2(2) is not available" in str(err.value)
        assert "Linux 5.6" in str(err.value)
    assert (root / "etc" / "real").read_text() == "inside\n"


@pytest.mark.parametrize(
    ("flags", "mode", "expected"),
    [
        (os.O_RDONLY, 0o666, (os.O_RDONLY, 0)),  # the mode only matters when creating
        (os.O_WRONLY | os.O_CREAT, 0o100644, (os.O_WRONLY | os.O_CREAT, 0o644)),
        (os.O_RDWR | os.O_CREAT, 0o7777, (os.O_RDWR | os.O_CREAT, 0o7777)),
        (os.O_RDWR | os.O_TMPFILE, 0o600, (os.O_RDWR | os.O_TMPFILE, 0o600)),
        (os.O_RDONLY | 1 << 30, 0, (os.O_RDONLY, 0)),  # unknown bits are dropped
        (os.O_PATH | os.O_NOCTTY | os.O_NOFOLLOW, 0, (os.O_PATH | os.O_NOFOLLOW, 0)),
        (os.O_PATH | os.O_CREAT | os.O_CLOEXEC, 0o600, (os.O_PATH | os.O_CLOEXEC, 0)),
    ],
)
def test_open_how_keeps_open2_leniency(flags: int, mode: int, expected: tuple[int, int]) -> None:
    assert open_how(flags, mode) == expected


def test_open_is_as_lenient_as_open2(fs: RootFS, root: Path) -> None:
    fs.close(fs.open("/etc/real", os.O_RDONLY | 1 << 30, 0o666))
    fs.close(fs.open("/etc/real", os.O_PATH | os.O_NOCTTY, 0o666))
    fs.close(fs.open("/var/new", os.O_CREAT | os.O_WRONLY, 0o100600))
    assert stat.S_IMODE((root / "var" / "new").stat().st_mode) == 0o600 & ~_umask()


def test_open_fd_and_read_file(fs: RootFS, root: Path) -> None:
    fd = fs.open_fd("/etc/link", os.O_RDONLY)
    try:
        assert os.read(fd, 100) == b"inside\n"
        assert os.get_inheritable(fd) is False
    finally:
        os.close(fd)
    assert fs.read_file("/etc/dirlink/data") == b"0123456789"
    assert fs.read_file("/etc/dirlink/data", 4) == b"0123"
    os.mkfifo(root / "etc" / "fifo")
    assert errno_of(fs.read_file, "/etc/fifo") == errno.EINVAL  # and it did not block
    assert errno_of(fs.read_file, "/etc") == errno.EINVAL
    assert errno_of(fs.read_file, "/etc/hostdir-nope") == errno.ENOENT


def test_without_faccessat2_access_fails_closed(
    fs: RootFS, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = openat2._syscall

    def old_kernel(nr: ctypes.c_long, *args: object) -> int:
        if nr.value == 439:  # faccessat2, Linux 5.8
            ctypes.set_errno(errno.ENOSYS)
            return -1
        return int(real(nr, *args))

    monkeypatch.setattr(openat2, "_syscall", old_kernel)
    assert stat.S_ISREG(fs.stat("/etc/real")["st_mode"])
    with pytest.raises(OSError) as err:
        fs.access("/etc/real", os.R_OK)
    assert err.value.errno == errno.ENOSYS
    assert "faccessat2(2) is not available" in str(err.value)
    assert err.value.filename == "/etc/real"
