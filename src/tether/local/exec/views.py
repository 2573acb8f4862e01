"""Local mirrors of remote directories. A remote directory opened for listing becomes a
local directory of empty entries of the right types, so getdents works on it natively; a path
inside a mirror maps back to the remote path it stands for."""

import posixpath
import shutil
import tempfile
from pathlib import Path
from typing import Final

_DT_DIR: Final = 4
_DT_LNK: Final = 10


def view_source(path: str, views: str) -> str | None:
    """The remote directory (or path below it) that `path` mirrors, if it is inside the
    `views` directory: a view of remote directory D lives at `views/<serial>/D`."""
    if not path.startswith(views + "/"):
        return None
    _serial, slash, rest = path[len(views) + 1 :].partition("/")
    return "/" + rest if slash else "/"


def _mirror_listing(views: str, serial: int, path: str, entries: list[tuple[str, int, int]]) -> str:
    """A new local directory mirroring remote directory `path`: an empty entry of the right
    type per remote entry (getdents then works natively)."""
    view = posixpath.join(views, str(serial), path.lstrip("/"))
    Path(view).mkdir(parents=True)
    for name, dtype, _ino in entries:
        if "/" in name or name in (".", ".."):
            continue
        entry = Path(view, name)
        if dtype == _DT_DIR:
            entry.mkdir()
        elif dtype == _DT_LNK:
            entry.symlink_to(".")
        else:
            entry.touch()
    return view


class DirViews:
    """Remote directories opened for listing, mirrored under a private temporary directory;
    a path inside a mirror maps back to the remote one (`source`)."""

    def __init__(self) -> None:
        self.root = tempfile.mkdtemp(prefix="tether-views-")  # never changes: both threads
        self._serial = 0  # the loop's

    def source(self, path: str) -> str | None:
        """The remote path that `path` stands for, if it is inside a mirror."""
        return view_source(path, self.root)

    def mirror(self, path: str, entries: list[tuple[str, int, int]]) -> str:
        """A new mirror of remote directory `path` (on the loop only)."""
        self._serial += 1
        return _mirror_listing(self.root, self._serial, path, entries)

    def cleanup(self) -> None:
        """Remove every mirror."""
        shutil.rmtree(self.root, ignore_errors=True)
