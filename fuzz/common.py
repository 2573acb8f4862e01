"""What the harnesses share: running atheris, invariant checks, fragmenting inputs."""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import atheris

# Enough pieces to exercise every boundary of a small input; more only slows a run down.
MAX_PIECES = 64


class InvariantViolation(AssertionError):  # noqa: N818 (reads as what it is in a crash report)
    """A harness invariant failed: the input shows a bug even though nothing crashed."""


def check(condition: bool, message: str) -> None:
    """Raise InvariantViolation with `message` unless `condition` (kept under python -O)."""
    if not condition:
        raise InvariantViolation(message)


def provider(data: bytes) -> Any:
    """An atheris.FuzzedDataProvider over `data` (atheris ships no type information)."""
    return atheris.FuzzedDataProvider(data)


def flag(fdp: Any) -> bool:
    """A boolean from the back of the input, like the numbers (see Script.bool)."""
    return bool(fdp.ConsumeIntInRange(0, 1))


def text(fdp: Any, most: int) -> str:
    """Up to `most` bytes of the input as text (UTF-8, undecodable bytes replaced): any
    string can come out, and a seed can spell one plainly."""
    data: bytes = fdp.ConsumeBytes(fdp.ConsumeIntInRange(0, most))
    return data.decode("utf-8", "replace")


def split(fdp: Any, data: bytes, max_pieces: int = MAX_PIECES) -> list[bytes]:
    """`data` cut into pieces at points the fuzzer chooses; the pieces join to `data`.

    Once the provider runs dry the rest goes as one piece, so a short input cannot force a
    long input into one-byte pieces.
    """
    pieces: list[bytes] = []
    pos = 0
    while pos < len(data):
        rest = len(data) - pos
        if len(pieces) == max_pieces - 1 or fdp.remaining_bytes() == 0:
            size = rest
        else:
            size = int(fdp.ConsumeIntInRange(1, rest))
        pieces.append(data[pos : pos + size])
        pos += size
    return pieces


class Script:
    """The input that makes a FuzzedDataProvider return chosen values, to write seeds with:
    ConsumeBytes takes from the front of the input, ConsumeIntInRange from its back (the
    first number from the last bytes, most significant byte last)."""

    def __init__(self) -> None:
        self._front = bytearray()
        self._back: list[bytes] = []

    def number(self, low: int, high: int, value: int) -> Script:
        """What ConsumeIntInRange(low, high) will return: `value`."""
        if not low <= value <= high:
            raise ValueError(f"{value} is not in {low}..{high}")
        width = ((high - low).bit_length() + 7) // 8
        self._back.append((value - low).to_bytes(width, "little"))
        return self

    def flag(self, value: bool) -> Script:
        """What `flag(fdp)` will return (the harnesses' booleans: atheris's ConsumeBool and
        ConsumeInt take bytes from the front, where they would interleave with the data)."""
        return self.number(0, 1, int(value))

    def data(self, data: bytes) -> Script:
        """What the next ConsumeBytes will return."""
        self._front += data
        return self

    def text(self, value: str, most: int) -> Script:
        """What `text(fdp, most)` will return."""
        data = value.encode("utf-8")
        return self.number(0, most, len(data)).data(data)

    def build(self) -> bytes:
        """The input."""
        return bytes(self._front) + b"".join(reversed(self._back))


def scratch_dir(harness: str) -> Path:
    """A directory for the files a harness writes, on tmpfs when there is one.

    libFuzzer ends the process without Python's clean-up (atexit, finally), so each run
    removes what runs before it left instead: directories named after processes now gone.
    """
    base = Path("/dev/shm") if Path("/dev/shm").is_dir() else Path(tempfile.gettempdir())
    prefix = f"tether-fuzz-{harness}-"
    for old in base.glob(prefix + "*"):
        pid = old.name.removeprefix(prefix)
        if pid.isdigit() and not _alive(int(pid)):
            shutil.rmtree(old, ignore_errors=True)
    work = base / f"{prefix}{os.getpid()}"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir()
    return work


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's process
    return True


def run(test_one_input: Callable[[bytes], None], argv: list[str] | None = None) -> None:
    """Hand `test_one_input` to libFuzzer with the command line's flags; does not return."""
    atheris.Setup(sys.argv if argv is None else argv, test_one_input)
    atheris.Fuzz()
