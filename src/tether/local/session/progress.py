"""Progress lines on stderr while a session starts: quiet with -q, more with -v."""

import sys
import time
from typing import TextIO


class Progress:
    """Prints `tether: <message> (+N.Ns)` lines; verbosity 0 quiet, 1 normal, 2 verbose."""

    def __init__(self, verbosity: int = 1, stream: TextIO | None = None) -> None:
        self.verbosity = verbosity
        self.stream = stream or sys.stderr
        self.started = time.monotonic()

    def _emit(self, message: str) -> None:
        elapsed = time.monotonic() - self.started
        print(f"tether: {message} (+{elapsed:.1f}s)", file=self.stream, flush=True)

    def step(self, message: str) -> None:
        """A phase the user should see (target chosen, agent ready, listening...)."""
        if self.verbosity >= 1:
            self._emit(message)

    def detail(self, message: str) -> None:
        """Extra detail shown with -v (agent pod phases, streams opened...)."""
        if self.verbosity >= 2:
            self._emit(message)

    def warn(self, message: str) -> None:
        """Always shown, even with -q."""
        print(f"tether: warning: {message}", file=self.stream, flush=True)
