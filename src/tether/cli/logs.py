"""One output channel: tether's own log records go through the progress printer.

Without this, a `log.warning` or `log.exception` deep in the session went to Python's
last-resort handler, bypassing -q/-v and the one-line rule. Now warnings are progress
warnings, and with -v every record (debug included) is a detail line; tracebacks only with -v.
"""

import logging

from tether.local.session.progress import Progress

_ROOT = "tether"


class ProgressHandler(logging.Handler):
    """Sends log records to a Progress: WARNING and above as warnings, the rest as details."""

    def __init__(self, progress: Progress) -> None:
        super().__init__(logging.DEBUG)
        self.progress = progress

    def emit(self, record: logging.LogRecord) -> None:
        try:
            message = record.getMessage()
            if record.levelno >= logging.WARNING:
                self.progress.warn(" ".join(message.split()))
            else:
                self.progress.detail(f"{record.name}: {message}")
            if record.exc_info and self.progress.verbosity >= 2:
                self.progress.detail(
                    self.formatter_for_traceback().formatException(record.exc_info)
                )
        except Exception:
            self.handleError(record)

    @staticmethod
    def formatter_for_traceback() -> logging.Formatter:
        return logging.Formatter()


def route_logs(progress: Progress) -> None:
    """Send the `tether` loggers' records to `progress` (replacing an earlier routing)."""
    logger = logging.getLogger(_ROOT)
    for handler in list(logger.handlers):
        if isinstance(handler, ProgressHandler):
            logger.removeHandler(handler)
    logger.addHandler(ProgressHandler(progress))
    logger.setLevel(logging.DEBUG if progress.verbosity >= 2 else logging.WARNING)
    # Not also to the root logger's handlers (or Python's last-resort one).
    logger.propagate = False
