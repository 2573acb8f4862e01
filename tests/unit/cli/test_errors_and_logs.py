"""One output channel and the one-line rule: user errors, bugs, and tether's own logs."""

import io
import logging

import pytest

from tether.cli.logs import route_logs
from tether.cli.main import run_async
from tether.config.errors import ConfigError
from tether.config.ports import PortSpecError
from tether.errors import UserError
from tether.kube.errors import KubeError
from tether.local.proxies.forward import ForwardSpecError
from tether.local.session.progress import Progress
from tether.local.session.session import SessionError
from tether.tunnel import RemoteOpError, TunnelClosedError


@pytest.mark.parametrize(
    "kind", [ConfigError, KubeError, SessionError, ForwardSpecError, PortSpecError,
             TunnelClosedError, RemoteOpError]
)  # fmt: skip
def test_every_user_facing_error_has_one_root(kind: type[Exception]) -> None:
    assert issubclass(kind, UserError)


def _run(exc: BaseException, capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    async def command() -> int:
        raise exc

    with pytest.raises(SystemExit) as info:
        run_async(command())
    return int(info.value.code or 0), capsys.readouterr().err


def test_a_user_error_is_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    code, err = _run(SessionError("the agent said no\nsecond line"), capsys)
    assert (code, err) == (1, "tether: error: the agent said no\n")


def test_a_bug_is_one_line_too(capsys: pytest.CaptureFixture[str]) -> None:
    code, err = _run(KeyError("port"), capsys)
    assert code == 1
    assert (
        err == "tether: error: internal error: KeyError: 'port' (a bug in tether; -v shows where)\n"
    )


@pytest.mark.parametrize(
    ("verbosity", "shown"),
    [
        (0, ["tether: warning: disk full"]),
        (1, ["tether: warning: disk full"]),
        (2, ["tether.x: starting", "tether: warning: disk full"]),
    ],
)
def test_logs_go_through_progress(verbosity: int, shown: list[str]) -> None:
    out = io.StringIO()
    route_logs(Progress(verbosity, out))
    log = logging.getLogger("tether.x")
    log.debug("starting")
    log.warning("disk\nfull")
    lines = out.getvalue().splitlines()
    assert len(lines) == len(shown)
    for line, want in zip(lines, shown, strict=True):
        assert want in line
    route_logs(Progress(1, io.StringIO()))  # leave the default routing for other tests
