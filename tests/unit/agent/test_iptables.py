"""Tests for tether.agent.iptables: tether's iptables chains in a throwaway network
namespace (root only), with both iptables backends."""

from __future__ import annotations

import logging
import os
import socket
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator

import pytest

from tests.unit.agent.incoming.throwaway_netns import (
    CLIENT_ADDR,
    TARGET_ADDR,
    Netns,
    need_root,
    netns_pair,
    start_time,
    throwaway_netns,
)
from tether.agent import iptables as redirect
from tether.agent import programs
from tether.agent.incoming.sockopts import original_dst, set_bypass_mark
from tether.agent.iptables import RedirectError, Redirector
from tether.agent.netns import NetnsExecutor

TIMEOUT = 5.0


# -- backend choice and parsing (no root needed) ---------------------------------------------

EMPTY_NAT = "*nat\n:PREROUTING ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\nCOMMIT\n"
USER_CHAIN = "*filter\n:INPUT ACCEPT [0:0]\n:KUBE-FOO - [0:0]\nCOMMIT\n"
A_RULE = "*mangle\n:PREROUTING ACCEPT [0:0]\n-A PREROUTING -j MARK --set-mark 1\nCOMMIT\n"
TETHER = (
    "*nat\n:PREROUTING ACCEPT [0:0]\n:TETHER-PREROUTING - [0:0]\n"
    '-A PREROUTING -m comment --comment "tether agent pid=12 start=34" -j TETHER-PREROUTING\n'
    '-A TETHER-PREROUTING -p tcp -m tcp --dport 80 -m comment --comment "tether agent pid=12 '
    'start=34" -j REDIRECT --to-ports 81\nCOMMIT\n'
)


@pytest.mark.parametrize(
    ("legacy", "nft", "expected"),
    [
        ("", "", "nft"),
        (EMPTY_NAT, EMPTY_NAT, "nft"),  # tables with only built-in chains: not in use
        (USER_CHAIN, "", "legacy"),
        (A_RULE, EMPTY_NAT, "legacy"),
        ("", A_RULE, "nft"),
        (A_RULE, USER_CHAIN, "nft"),
        (A_RULE + TETHER, USER_CHAIN, "legacy"),
        (A_RULE + TETHER, USER_CHAIN + TETHER, "nft"),
    ],
)
def test_choose_backend(legacy: str, nft: str, expected: str) -> None:
    rulesets = {"legacy": redirect._parse(legacy), "nft": redirect._parse(nft)}
    assert redirect._choose_backend(rulesets) == expected
    assert redirect._choose_backend({"legacy": rulesets["legacy"]}) == "legacy"


def test_parse_finds_tether_chains_jumps_and_owners() -> None:
    rs = redirect._parse(A_RULE + TETHER)
    assert rs.in_use and rs.has_tether
    assert rs.chains == ["TETHER-PREROUTING"]
    assert rs.jumps == [
        '-A PREROUTING -m comment --comment "tether agent pid=12 start=34" -j TETHER-PREROUTING'
    ]
    assert rs.owners == {(12, 34)}
    script = redirect._script(redirect._removal_lines(rs))
    assert script.splitlines() == [
        "*nat",
        '-D PREROUTING -m comment --comment "tether agent pid=12 start=34" -j TETHER-PREROUTING',
        "-F TETHER-PREROUTING",
        "-X TETHER-PREROUTING",
        "COMMIT",
    ]


def test_stderr_tail_is_one_line() -> None:
    err = "iptables-restore v1.8.9: Chain 'X' does not exist\nError occurred at line: 3\n"
    err += "Try `iptables-restore -h' or 'iptables-restore --help' for more information.\n"
    assert programs._stderr_tail(err) == (
        "iptables-restore v1.8.9: Chain 'X' does not exist; Error occurred at line: 3"
    )


def test_run_tool_reports_failures() -> None:
    with pytest.raises(RedirectError, match=r"^doing it: .* is not installed$"):
        programs.run_tool(["/nonexistent/tool"], what="doing it")
    with pytest.raises(RedirectError, match=r"exited with status 3: oops$"):
        programs.run_tool(
            [sys.executable, "-c", "import sys; sys.stderr.write('oops\\n'); sys.exit(3)"]
        )


# -- in a namespace ----------------------------------------------------------------------------


@pytest.fixture
def pair() -> Iterator[tuple[Netns, Netns]]:
    need_root()
    with netns_pair() as namespaces:
        yield namespaces


@pytest.fixture
def ns() -> Iterator[Netns]:
    need_root()
    with throwaway_netns() as n:
        yield n


@pytest.fixture
async def executor(pair: tuple[Netns, Netns]) -> AsyncIterator[NetnsExecutor]:
    ex = NetnsExecutor(pair[0].path, max_workers=4)
    try:
        yield ex
    finally:
        ex.shutdown()


def _listen() -> socket.socket:
    sock = socket.create_server(("0.0.0.0", 0))
    sock.settimeout(TIMEOUT)
    return sock


def _connect(host: str, port: int, mark: bool = False) -> socket.socket:
    sock = socket.socket()
    try:
        if mark:
            set_bypass_mark(sock)
        sock.settimeout(TIMEOUT)
        sock.connect((host, port))
    except BaseException:
        sock.close()
        raise
    return sock


def _port(sock: socket.socket) -> int:
    port: int = sock.getsockname()[1]
    return port


def _nothing_pending(listener: socket.socket) -> bool:
    listener.settimeout(0)
    try:
        conn, _ = listener.accept()
    except BlockingIOError:
        return True
    finally:
        listener.settimeout(TIMEOUT)
    conn.close()
    return False


def _seed(ns: Netns, backend: str | None) -> None:
    """Make `backend` look in use in `ns`, as a pod's own iptables rules would."""
    if backend is not None:
        ns.run(f"iptables-{backend}", "-t", "filter", "-N", "APP-CHAIN")


@pytest.mark.root
@pytest.mark.parametrize("backend", ["nft", "legacy"])
async def test_redirect_end_to_end(
    backend: str, pair: tuple[Netns, Netns], executor: NetnsExecutor
) -> None:
    target, client = pair
    _seed(target, backend)
    r = Redirector(executor)
    agent = await executor.run(_listen)
    app = await executor.run(_listen)
    opened: list[socket.socket] = [agent, app]
    try:
        await r.setup()
        assert r.backend == backend
        port, to_port = _port(app), _port(agent)
        await r.add(port, to_port)
        assert r.ports == {port: to_port}

        # In-pod clients, over loopback and to the pod's own address (both via OUTPUT -o lo).
        for addr in ("127.0.0.1", TARGET_ADDR):
            opened.append(await executor.run(_connect, addr, port))
            conn, _ = agent.accept()
            opened.append(conn)
            assert original_dst(conn) == (addr, port)
        # A client outside the pod (PREROUTING).
        with client_executor(client) as outside:
            opened.append(await outside.run(_connect, TARGET_ADDR, port))
        conn, peer = agent.accept()
        opened.append(conn)
        assert peer[0] == CLIENT_ADDR
        assert original_dst(conn) == (TARGET_ADDR, port)
        assert _nothing_pending(app)

        # The agent's own connections to the app carry the bypass mark.
        opened.append(await executor.run(_connect, "127.0.0.1", port, True))
        opened.append(app.accept()[0])
        assert _nothing_pending(agent)

        await r.remove(port)
        assert r.ports == {}
        await r.remove(port)  # not redirected: nothing to do
        opened.append(await executor.run(_connect, "127.0.0.1", port))
        opened.append(app.accept()[0])
        assert _nothing_pending(agent)
        assert "TETHER-OUTPUT" in target.iptables_save()

        await r.teardown()
        assert "TETHER" not in target.iptables_save()
        assert "APP-CHAIN" in target.iptables_save()
        await r.teardown()  # idempotent
        assert r.backend is None
    finally:
        for s in opened:
            s.close()


class client_executor:  # noqa: N801 (used like a function)
    """A NetnsExecutor for `ns`, shut down on exit."""

    def __init__(self, ns: Netns) -> None:
        self.executor = NetnsExecutor(ns.path, max_workers=1)

    def __enter__(self) -> NetnsExecutor:
        return self.executor

    def __exit__(self, *exc: object) -> None:
        self.executor.shutdown()


@pytest.mark.root
@pytest.mark.parametrize("backend", ["nft", "legacy"])
async def test_add_replaces_and_rules_carry_the_owner(
    backend: str, ns: Netns, caplog: pytest.LogCaptureFixture
) -> None:
    _seed(ns, backend)
    with NetnsExecutor(ns.path, max_workers=2) as ex:
        r = Redirector(ex)
        await r.setup()
        await r.setup()  # already set up: nothing to do
        await r.add(8080, 9090)
        await r.add(8080, 9191)
        await r.add(8443, 9090)
        saved = ns.run(f"iptables-{backend}-save", "-t", "nat").stdout
        assert "--to-ports 9090" in saved and "--to-ports 9191" in saved
        assert saved.count("--dport 8080") == 2  # PREROUTING + OUTPUT, the old one replaced
        rules = [line for line in saved.splitlines() if line.startswith("-A")]
        assert rules and all(r.comment in line for line in rules)
        assert r.comment == f"tether agent pid={os.getpid()} start={start_time(os.getpid())}"
        with pytest.raises(ValueError, match="not a TCP port"):
            await r.add(0, 9090)
        await r.teardown()
        assert "TETHER" not in ns.iptables_save()


@pytest.mark.root
@pytest.mark.parametrize("seed", ["legacy", "nft", None])
async def test_setup_picks_the_backend_in_use(seed: str | None, ns: Netns) -> None:
    _seed(ns, seed)
    with NetnsExecutor(ns.path, max_workers=2) as ex:
        r = Redirector(ex)
        await r.setup()
        try:
            assert r.backend == (seed or "nft")
            saved = ns.run(f"iptables-{r.backend}-save", "-t", "nat").stdout
            assert ":TETHER-PREROUTING" in saved
        finally:
            await r.teardown()


def _owner_process() -> subprocess.Popen[bytes]:
    return subprocess.Popen(["sleep", "60"])


@pytest.mark.root
@pytest.mark.parametrize("backend", ["nft", "legacy"])
async def test_stale_chains_of_a_dead_owner_are_replaced(
    backend: str, ns: Netns, caplog: pytest.LogCaptureFixture
) -> None:
    _seed(ns, backend)
    owner = _owner_process()
    try:
        with NetnsExecutor(ns.path, max_workers=2) as ex:
            old = Redirector(ex, owner_pid=owner.pid)
            await old.setup()
            await old.add(8080, 9090)
            owner.kill()
            owner.wait()
            r = Redirector(ex)
            with caplog.at_level(logging.WARNING, logger=redirect.__name__):
                await r.setup()
            assert f"pid {owner.pid}, which is gone" in caplog.text
            saved = ns.run(f"iptables-{backend}-save", "-t", "nat").stdout
            assert f"pid={owner.pid} " not in saved
            assert "--dport 8080" not in saved
            assert saved.count("-j TETHER-") == 2  # our two jumps, not four
            # The dead owner's Redirector (were it still around) leaves our chains alone.
            await old.teardown()
            assert r.comment in ns.run(f"iptables-{backend}-save", "-t", "nat").stdout
            await r.teardown()
            assert "TETHER" not in ns.iptables_save()
    finally:
        owner.kill()
        owner.wait()


@pytest.mark.root
async def test_stale_chains_without_owner_are_removed(ns: Netns) -> None:
    ns.run(
        "iptables-nft-restore",
        "--noflush",
        stdin="*nat\n:TETHER-PREROUTING - [0:0]\n:TETHER-OLD - [0:0]\n"
        "-A PREROUTING -j TETHER-PREROUTING\n-A TETHER-PREROUTING -j TETHER-OLD\nCOMMIT\n",
    )
    with NetnsExecutor(ns.path, max_workers=2) as ex:
        r = Redirector(ex)
        await r.setup()
        saved = ns.run("iptables-nft-save", "-t", "nat").stdout
        assert "TETHER-OLD" not in saved
        assert saved.count("-j TETHER-PREROUTING") == 1
        await r.teardown()
    assert "TETHER" not in ns.iptables_save()


@pytest.mark.root
async def test_live_foreign_owner_makes_setup_fail(ns: Netns) -> None:
    owner = _owner_process()
    try:
        with NetnsExecutor(ns.path, max_workers=2) as ex:
            theirs = Redirector(ex, owner_pid=owner.pid)
            await theirs.setup()
            await theirs.add(8080, 9090)
            r = Redirector(ex)
            with pytest.raises(RedirectError, match=rf"another tether agent \(pid {owner.pid}\)"):
                await r.setup()
            assert r.backend is None
            await r.teardown()  # never set up: leaves theirs alone
            assert "--dport 8080" in ns.run("iptables-nft-save", "-t", "nat").stdout
            await theirs.teardown()
            assert "TETHER" not in ns.iptables_save()
    finally:
        owner.kill()
        owner.wait()


@pytest.mark.root
async def test_remove_tether_chains_in_current_netns(ns: Netns) -> None:
    with NetnsExecutor(ns.path, max_workers=1) as ex:
        r = Redirector(ex)
        await r.setup()
        await r.add(8080, 9090)
        await ex.run(redirect.remove_tether_chains)
        assert "TETHER" not in ns.iptables_save()
        await ex.run(redirect.remove_tether_chains, "legacy")  # nothing there: fine
        await ex.run(redirect.remove_tether_chains)
        await r.teardown()  # already gone: fine
