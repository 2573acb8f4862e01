"""Resilient sessions on the devcluster: a dropped port-forward (an API-server or kubelet
restart, a stopped CLI) is a pause, and the program's own connections live through it."""

import hashlib
import http.client
import json
import os
import signal
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any

import pytest

from devcluster.procs import Daemon
from tests.e2e.cleanup import AGENT_SELECTOR, sweep
from tests.e2e.cli import agent_objects, wait_no_agent_objects
from tests.e2e.kube import devcluster, kubectl, one_container
from tests.e2e.test_incoming import (
    FRONTEND,
    LocalApp,
    Tether,
    frontend_ip,
    request,
    tether_chains,
    throwaway_pod,
    wait_until,
)
from tether.agent.target import find_container_pid

PYTHON_IMAGE = "docker.io/tether-devcluster/python:3.11"

# One keep-alive connection to backend, a request every 0.2 s; any error ends it. "tick N"
# lines say how far it got; the last line is the verdict.
KEEPALIVE_CLIENT = textwrap.dedent(
    """
    import json, socket, sys, time
    n = int(sys.argv[1])
    s = socket.create_connection(("backend", 80), timeout=120)
    f = s.makefile("rb")
    ok, errors = 0, []
    for i in range(n):
        try:
            s.sendall(b"GET /ka/%d HTTP/1.1\\r\\nHost: backend\\r\\n\\r\\n" % i)
            status = f.readline()
            length = 0
            while (line := f.readline()) not in (b"\\r\\n", b""):
                if line.lower().startswith(b"content-length:"):
                    length = int(line.split(b":")[1])
            body = json.loads(f.read(length))
            assert status.startswith(b"HTTP/1.1 200"), status
            assert body["path"] == "/ka/%d" % i, body
            ok += 1
        except Exception as exc:
            errors.append(repr(exc))
            break
        print("tick", i, flush=True)
        time.sleep(0.2)
    print(json.dumps({"ok": ok, "errors": errors}), flush=True)
    """
)


class Program:
    """`tether exec` of a Python program in the background; its stdout lines collected."""

    def __init__(self, script: str, *args: str, config: Path | None = None) -> None:
        extra = ["-f", str(config)] if config is not None else []
        self.tether = Tether(
            "exec", "-v", *FRONTEND, *extra, "--", sys.executable, "-c", script, *args
        )  # fmt: skip
        self.out: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        stdout = self.tether.proc.stdout
        assert stdout is not None
        for line in stdout:
            self.out.append(line.rstrip("\n"))

    def wait_line(self, needle: str, within: float = 90) -> None:
        deadline = time.monotonic() + within
        while time.monotonic() < deadline:
            if any(needle in line for line in list(self.out)):
                return
            if self.tether.proc.poll() is not None:
                break
            time.sleep(0.05)
        raise AssertionError(f"no {needle!r} within {within} s: {self.out[-5:]}\n{self.stderr}")

    def result(self, within: float = 120) -> dict[str, Any]:
        code = self.tether.proc.wait(within)
        self._reader.join(5)
        assert code == 0, f"exit {code}: {self.out[-5:]}\n{self.stderr}"
        return dict(json.loads(self.out[-1]))

    @property
    def stderr(self) -> str:
        return self.tether.stderr

    def kill(self) -> None:
        with suppress(ProcessLookupError):
            os.killpg(self.tether.proc.pid, signal.SIGKILL)
        self.tether.proc.wait(30)


@contextmanager
def program(script: str, *args: str, config: Path | None = None) -> Iterator[Program]:
    p = Program(script, *args, config=config)
    try:
        yield p
    except BaseException as exc:
        exc.add_note(f"tether's output:\n{p.stderr}")
        raise
    finally:
        p.kill()


@pytest.fixture(autouse=True)
def clean_after() -> Iterator[None]:
    yield
    try:
        # After an API-server restart the garbage collector can take a minute or two to
        # remove a deleted Job's pod.
        wait_until(lambda: agent_objects("shop") == (0, 0), 240, "agent Job and pod gone")
    except AssertionError as exc:
        swept = sweep()
        raise AssertionError(f"{exc}; cleaned up {swept}") from None


@pytest.mark.parametrize("component", ["apiserver", "kubelet"])
def test_one_keep_alive_connection_lives_through_a_restart(component: str) -> None:
    with program(KEEPALIVE_CLIENT, "50") as p:
        p.wait_line("tick 5")
        devcluster("restart", component, "--grace", "1", timeout=300)
        got = p.result()
    assert got == {"ok": 50, "errors": []}
    if component == "apiserver":
        assert "connection to the agent lost" in p.stderr and "reconnected after" in p.stderr


BULK_SERVER = textwrap.dedent(
    """
    import hashlib, socket
    srv = socket.create_server(("", 9100))
    while True:
        c, _ = srv.accept()
        for i in range(1024):
            c.sendall(hashlib.sha256(str(i).encode()).digest() * 2048)
        c.close()
    """
)

# Reads slowly, so that the download spans the restart; prints the sha256 of what it got.
BULK_CLIENT = textwrap.dedent(
    """
    import hashlib, socket, sys, time
    s = socket.create_connection((sys.argv[1], 9100), timeout=120)
    h, got = hashlib.sha256(), 0
    while chunk := s.recv(65536):
        h.update(chunk)
        if got < 1 << 20 <= got + len(chunk):
            print("started", flush=True)
        got += len(chunk)
        time.sleep(0.01)
    print('{"size": %d, "sha256": "%s"}' % (got, h.hexdigest()), flush=True)
    """
)


def _expected_bulk() -> tuple[int, str]:
    h = hashlib.sha256()
    for i in range(1024):
        h.update(hashlib.sha256(str(i).encode()).digest() * 2048)
    return 64 << 20, h.hexdigest()


def test_a_64_mib_download_lives_through_an_api_server_restart() -> None:
    pod = throwaway_pod(
        "t-bulk", one_container(PYTHON_IMAGE, ["python3", "-c", BULK_SERVER])["containers"]
    )
    kubectl("apply", "-f", "-", input=json.dumps(pod))
    try:
        kubectl("-n", "shop", "wait", "--for=condition=Ready", "pod/t-bulk", "--timeout=120s")
        ip = json.loads(kubectl("-n", "shop", "get", "pod", "t-bulk", "-o", "json"))["status"][
            "podIP"
        ]
        with program(BULK_CLIENT, ip) as p:
            p.wait_line("started")
            devcluster("restart", "apiserver", "--grace", "1", timeout=300)
            got = p.result(within=300)
        size, digest = _expected_bulk()
        assert got == {"size": size, "sha256": digest}
    finally:
        kubectl("-n", "shop", "delete", "pod", "t-bulk", "--wait=false", check=False)


def test_a_filtered_steal_lives_through_an_api_server_restart(tmp_path: Path) -> None:
    answers: list[tuple[float, str]] = []
    failures: list[str] = []
    stop = threading.Event()

    ip = frontend_ip()  # looked up once: the API server will be away

    def client() -> None:
        i = 0
        while not stop.is_set():
            conn = http.client.HTTPConnection(ip, 80, timeout=10)
            try:
                answer = request(conn, f"/steal/{i}", {"X-Dev": "alice"})
                answers.append((time.monotonic(), str(answer["service"])))
            except Exception as exc:
                failures.append(repr(exc))
            finally:
                conn.close()
            i += 1
            time.sleep(0.1)

    with LocalApp("alice") as app:
        t = Tether(
            "port-forward", "-v", *FRONTEND, "-R", f"8080:{app.port}",
            "--http-header-filter", "^x-dev: alice$",
        )  # fmt: skip
        thread = threading.Thread(target=client, daemon=True)
        try:
            t.wait_for("incoming:")
            thread.start()
            wait_until(lambda: any(s == "local" for _, s in answers), 20, "a stolen request")
            devcluster("restart", "apiserver", "--grace", "1", timeout=300)
            back = time.monotonic()
            # Within 2 s of the API server answering, matching requests are ours again.
            wait_until(
                lambda: any(at > back and s == "local" for at, s in answers), 10, "local again"
            )
            first_local = next(at for at, s in answers if at > back and s == "local")
            assert first_local - back <= 2.0, first_local - back
            time.sleep(1)
        finally:
            stop.set()
            thread.join(15)
            t.stop(signal.SIGTERM)
    # None lost: every request got an answer, from the pod while the session was away.
    assert failures == []
    assert all(s in ("local", "frontend") for _, s in answers)
    assert "reconnected after" in t.stderr, t.stderr


# A request, a pause longer than the CLI is stopped, another request.
PAUSED_CLIENT = textwrap.dedent(
    """
    import json, time, urllib.request
    def get(path):
        return json.loads(urllib.request.urlopen("http://backend" + path, timeout=60).read())
    print("first", get("/a")["path"], flush=True)
    time.sleep(70)
    print(json.dumps({"next": get("/b")["path"]}), flush=True)
    """
)


def test_a_stopped_cli_carries_on_after_sigcont() -> None:
    with program(PAUSED_CLIENT) as p:
        p.wait_line("first /a")
        os.kill(p.tether.proc.pid, signal.SIGSTOP)  # a closed lid
        try:
            time.sleep(60)
        finally:
            os.kill(p.tether.proc.pid, signal.SIGCONT)
        assert p.result() == {"next": "/b"}


def test_past_the_reconnect_timeout_one_line_and_nothing_left(tmp_path: Path) -> None:
    config = tmp_path / "tether.toml"
    config.write_text(
        "[agent]\nreconnect_timeout = 3\nidle_timeout = 3\nttl_seconds_after_finished = 0\n"
    )
    script = "import time\nprint('up', flush=True)\ntime.sleep(600)\n"
    kubelet = Daemon("kubelet").pid()
    assert kubelet is not None
    with program(script, config=config) as p:
        p.wait_line("up")
        # A stopped kubelet answers nothing: the tunnel goes silent and no new port-forward
        # can be made, for longer than the reconnect timeout.
        os.kill(kubelet, signal.SIGSTOP)
        try:
            code = p.tether.proc.wait(60)
        finally:
            os.kill(kubelet, signal.SIGCONT)
        p.tether._reader.join(5)
    errors = [line for line in p.tether.lines if line.startswith("tether: error:")]
    assert code != 0 and len(errors) == 1, p.stderr
    assert "connection to the agent lost" in errors[0] and "within 3 s" in errors[0]
    assert "Traceback" not in p.stderr
    assert wait_no_agent_objects("shop", within=90) == (0, 0)


def test_kill_9_of_the_agent_cannot_be_resumed_and_says_so(tmp_path: Path) -> None:
    with LocalApp("alice") as app:
        t = Tether("port-forward", "-v", *FRONTEND, "-R", f"8080:{app.port}", "--steal")
        try:
            t.wait_for("incoming:")
            assert tether_chains()
            pods = json.loads(
                kubectl("-n", "shop", "get", "pods", "-l", AGENT_SELECTOR, "-o", "json")
            )["items"]
            (agent,) = [p for p in pods if p["status"].get("phase") == "Running"]
            # The container's main process is the agent's exit guard; the agent serves in
            # its child. SIGKILL that: the sockets go with it, the guard removes the rules.
            guard = find_container_pid(agent["status"]["containerStatuses"][0]["containerID"])
            children = Path(f"/proc/{guard}/task/{guard}/children").read_text().split()
            assert children, "the agent's serving process"
            for child in children:
                os.kill(int(child), signal.SIGKILL)
            code = t.proc.wait(60)
        finally:
            t.stop(signal.SIGKILL)
    errors = [line for line in t.lines if line.startswith("tether: error:")]
    assert code != 0 and len(errors) == 1, t.stderr
    assert "cannot be resumed" in errors[0], errors[0]
    assert "Traceback" not in t.stderr
    wait_until(lambda: not tether_chains(), 10, "the agent's guard removed its rules")
    assert wait_no_agent_objects("shop", within=60) == (0, 0)
