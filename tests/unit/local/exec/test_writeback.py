"""tether.local.exec.writeback and .views: the store of files written on the pod (against a
fake `RemoteFiles`), and the local mirrors of remote directories."""

import os
from pathlib import Path
from typing import cast

import pytest

from tether.local.exec.remote_fs import RemoteFiles
from tether.local.exec.views import DirViews
from tether.local.exec.writeback import WriteBackStore, is_write_memfd, memfd_bytes
from tether.local.session.progress import Progress
from tether.protocol import RemoteError
from tether.tunnel import RemoteOpError

KEY = (4242, 5)  # (tgid, fd in the process)


class FakeRemote:
    """The pod's files as a dict; `sent` lists every write-back as (path, content)."""

    def __init__(self, files: dict[str, bytes], *, refuse: frozenset[str] = frozenset()) -> None:
        self.files = files
        self.refuse = refuse
        self.sent: list[tuple[str, bytes]] = []

    async def read_into_memfd(self, path: str, *, memfd_name: str | None = None) -> int:
        fd = os.memfd_create(memfd_name or "test", os.MFD_CLOEXEC)
        os.write(fd, self.files[path])
        os.lseek(fd, 0, os.SEEK_SET)
        return fd

    async def write_back(self, path: str, fd: int) -> None:
        if path in self.refuse:
            raise RemoteOpError(RemoteError("EACCES", "read-only", 13))
        self.sent.append((path, memfd_bytes(fd)))
        self.files[path] = memfd_bytes(fd)


def link_of(fd: int) -> str:
    """What /proc shows for our `fd` (the supervisor reads the process's the same way)."""
    return str(Path(f"/proc/self/fd/{fd}").readlink())


def store(remote: FakeRemote) -> WriteBackStore:
    return WriteBackStore(cast(RemoteFiles, remote))


async def test_an_existing_file_is_copied_and_sent_back_on_close() -> None:
    remote = FakeRemote({"/data/a.txt": b"old"})
    writes = store(remote)
    fd = await writes.open("/data/a.txt", os.O_WRONLY, 0o600, exists=True)
    assert memfd_bytes(fd) == b"old" and remote.sent == []
    assert is_write_memfd(link_of(fd))
    writes.track(KEY, "/data/a.txt")
    os.pwrite(fd, b"new", 0)
    await writes.close(KEY)
    assert remote.sent == [("/data/a.txt", b"new")]
    await writes.close(KEY)  # a second close of the same fd sends nothing
    assert len(remote.sent) == 1
    writes.forget("/data/a.txt")


@pytest.mark.parametrize(
    ("flags", "exists", "content", "sent"),
    [
        (os.O_WRONLY | os.O_TRUNC, True, b"", []),
        (os.O_WRONLY | os.O_CREAT, False, b"", [("/data/a.txt", b"")]),  # exists from now on
        (os.O_RDWR, True, b"old", []),
    ],
    ids=["truncated", "created", "read-write"],
)
async def test_what_an_open_starts_from(
    flags: int, exists: bool, content: bytes, sent: list[tuple[str, bytes]]
) -> None:
    remote = FakeRemote({"/data/a.txt": b"old"})
    writes = store(remote)
    fd = await writes.open("/data/a.txt", flags, 0, exists=exists)
    assert memfd_bytes(fd) == content
    assert remote.sent == sent
    assert writes.copy("/data/a.txt") == fd
    writes.forget("/data/a.txt")


async def test_append_mode_is_set_on_the_memfd() -> None:
    writes = store(FakeRemote({"/log": b"one\n"}))
    fd = await writes.open("/log", os.O_WRONLY | os.O_APPEND, 0, exists=True)
    os.write(fd, b"two\n")
    assert memfd_bytes(fd) == b"one\ntwo\n"
    writes.forget("/log")


async def test_a_second_open_sends_the_first_copy_back_first() -> None:
    remote = FakeRemote({"/data/a.txt": b"old"})
    writes = store(remote)
    first = await writes.open("/data/a.txt", os.O_WRONLY, 0, exists=True)
    os.pwrite(first, b"mine", 0)
    second = await writes.open("/data/a.txt", os.O_RDWR, 0, exists=True)
    assert remote.sent == [("/data/a.txt", b"mine")]
    assert memfd_bytes(second) == b"mine"
    assert writes.copy("/data/a.txt") == second
    with pytest.raises(OSError):
        os.fstat(first)  # the first copy was closed
    writes.forget("/data/a.txt")


async def test_forget_drops_the_copy() -> None:
    writes = store(FakeRemote({"/data/a.txt": b"old"}))
    fd = await writes.open("/data/a.txt", os.O_WRONLY, 0, exists=True)
    writes.forget("/data/a.txt")
    assert writes.copy("/data/a.txt") is None
    with pytest.raises(OSError):
        os.fstat(fd)
    writes.forget("/data/a.txt")  # twice is harmless


async def test_flush_sends_every_copy_and_warns_for_a_refused_one(
    capsys: pytest.CaptureFixture[str],
) -> None:
    remote = FakeRemote({"/a": b"a", "/b": b"b"}, refuse=frozenset({"/b"}))
    writes = store(remote)
    fds = [await writes.open(p, os.O_RDWR, 0, exists=True) for p in ("/a", "/b")]
    await writes.flush(Progress(1))
    assert remote.sent == [("/a", b"a")]
    assert "could not write /b back to the pod: read-only" in capsys.readouterr().err
    assert writes.copy("/a") is None and writes.copy("/b") is None
    for fd in fds:
        with pytest.raises(OSError):
            os.fstat(fd)


def test_a_mirror_has_an_entry_of_each_type() -> None:
    views = DirViews()
    try:
        entries = [("sub", 4, 1), ("link", 10, 2), ("file", 8, 3), ("..", 4, 4), ("a/b", 8, 5)]
        view = views.mirror("/etc/shop", entries)
        assert view == f"{views.root}/1/etc/shop"
        assert Path(view, "sub").is_dir() and Path(view, "link").is_symlink()
        assert Path(view, "file").is_file()
        assert sorted(p.name for p in Path(view).iterdir()) == ["file", "link", "sub"]
        assert views.source(view) == "/etc/shop"
        assert views.source(f"{view}/file") == "/etc/shop/file"
        assert views.mirror("/etc/shop", []).startswith(f"{views.root}/2/")
    finally:
        views.cleanup()
    assert not Path(views.root).exists()
