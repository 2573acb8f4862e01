"""Incoming traffic on the devcluster: mirror and steal of deployment/frontend's port 8080 in
shop, with and without HTTP filters, several sessions at once, and a session killed -9.

Requests go from this machine to the frontend Service's cluster IP (kube-proxy DNATs them to
the pod), so they enter the pod the way any client's would: through its PREROUTING chain.
"""

import http.client
import json
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from concurrent import futures
from contextlib import contextmanager, suppress
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.cleanup import remove_tether_chains_of, sweep, tether_chains_of
from tests.e2e.cli import (
    AGENT,
    agent_objects,
    free_port,
    one_line_error,
    tether,
    tether_env,
    wait_no_agent_objects,
)
from tests.e2e.kube import (
    AGENT_IMAGE,
    PYTHON_IMAGE,
    create_namespace,
    get,
    kubectl,
    one_container,
    ready_pod,
)

FRONTEND = ["--target", "deployment/frontend", "-n", "shop", *AGENT]


def frontend_ip() -> str:
    """The frontend Service's cluster IP (port 80 -> the pod's 8080)."""
    return str(get("service", "frontend", "shop")["spec"]["clusterIP"])


def frontend_pod() -> str:
    """The name of the frontend pod serving now."""
    return str(ready_pod("shop", "frontend")["metadata"]["name"])


class LocalApp:
    """An HTTP server on this machine standing in for the developer's local app: it answers
    {"service": "local", "name": NAME} and records every request it gets."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.requests: list[tuple[str, dict[str, str]]] = []
        app = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            disable_nagle_algorithm = True

            def do_GET(self) -> None:
                app.requests.append((self.path, dict(self.headers.items())))
                body = json.dumps({"service": "local", "name": app.name}).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", free_port()), Handler)
        self.port = int(self.server.server_address[1])
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> "LocalApp":
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()

    def seen(self, marker: str) -> int:
        """How many recorded requests carry `marker` in their path."""
        return sum(1 for path, _ in list(self.requests) if marker in path)


class Tether:
    """`tether ARGS` in the background in its own process group, its stderr collected."""

    def __init__(self, *args: str, cwd: str | None = None) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "tether", *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=tether_env(),
            cwd=cwd,
            start_new_session=True,
        )
        self.lines: list[str] = []
        self.read_at: list[float] = []
        """The wall-clock time each of `lines` was read."""
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self.read_at.append(time.time())
            self.lines.append(line.rstrip("\n"))

    @property
    def stderr(self) -> str:
        return "\n".join(self.lines)

    def first_at(self, needle: str) -> float | None:
        """The wall-clock time of the first stderr line holding `needle`, if any."""
        for at, line in zip(list(self.read_at), list(self.lines), strict=False):
            if needle in line:
                return at
        return None

    def wait_for(self, needle: str, within: float = 90) -> None:
        """Wait until a stderr line contains `needle`; fail with the output if it exits."""
        deadline = time.monotonic() + within
        while time.monotonic() < deadline:
            if any(needle in line for line in list(self.lines)):
                return
            if self.proc.poll() is not None:
                self._reader.join(5)
                raise AssertionError(f"tether exited ({self.proc.returncode}):\n{self.stderr}")
            time.sleep(0.1)
        raise AssertionError(f"no {needle!r} from tether within {within} s:\n{self.stderr}")

    def stop(self, sig: int = signal.SIGINT, timeout: float = 30) -> int:
        """Signal the process (group, for SIGKILL) and reap it; fail if it does not end."""
        if self.proc.poll() is None:
            if sig == signal.SIGKILL:
                os.killpg(self.proc.pid, sig)
            else:
                self.proc.send_signal(sig)
        try:
            code = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()
            self._reader.join(5)
            raise AssertionError(f"tether did not end within {timeout} s:\n{self.stderr}") from None
        self._reader.join(5)
        return code


@contextmanager
def running(*args: str, ready: str = "incoming:", cwd: str | None = None) -> Iterator[Tether]:
    """A background tether that reached `ready`; stopped (SIGTERM) and reaped at the end."""
    t = Tether(args[0], "-v", *args[1:], cwd=cwd)
    try:
        t.wait_for(ready)
        yield t
    except BaseException as exc:
        # The session's own account of what happened is what a failure needs most.
        exc.add_note(f"tether's output:\n{t.stderr}")
        raise
    finally:
        try:
            # SIGTERM, not SIGINT: a CI runner may start us with SIGINT ignored, and exec's
            # program would inherit that and never end.
            t.stop(signal.SIGTERM)
        finally:
            # Whatever the session started locally (exec's app) goes with it.
            with suppress(ProcessLookupError):
                os.killpg(t.proc.pid, signal.SIGKILL)


def request(
    conn: http.client.HTTPConnection, path: str, headers: dict[str, str] | None = None
) -> dict[str, Any]:
    """GET over an open (keep-alive) connection; the decoded JSON answer."""
    conn.request("GET", path, headers=headers or {})
    resp = conn.getresponse()
    body = resp.read()
    assert resp.status == 200, (resp.status, body[:300])
    return dict(json.loads(body))


def fresh_get(path: str, headers: dict[str, str] | None = None) -> dict[str, Any]:
    """GET on a new connection to the frontend Service."""
    conn = http.client.HTTPConnection(frontend_ip(), 80, timeout=10)
    try:
        return request(conn, path, headers)
    finally:
        conn.close()


def served_by_pod(path: str) -> bool:
    """Whether a new request is answered by the pod (False on any failure)."""
    try:
        return bool(fresh_get(path)["service"] == "frontend")
    except (OSError, AssertionError, http.client.HTTPException, ValueError):
        return False


def wait_until(predicate: Any, within: float, what: str) -> None:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.1)
    raise AssertionError(f"not within {within} s: {what}")


def tether_chains() -> str:
    """The tether rules and chains in the frontend pod's network namespace, both backends."""
    return tether_chains_of("shop", "frontend")


@pytest.fixture(autouse=True)
def no_leftovers() -> Iterator[None]:
    """Each test starts and ends with the pod serving by itself and no tether chain in it."""
    yield
    try:
        wait_until(lambda: not tether_chains(), 30, "tether chains gone from the pod")
        wait_until(lambda: agent_objects("shop") == (0, 0), 60, "agent Job and pod gone")
    except AssertionError as exc:
        # Clean up before failing: the next test starts clean, so one failure stays one.
        left = tether_chains()
        remove_tether_chains_of("shop", "frontend")
        swept = sweep()
        raise AssertionError(f"{exc}; cleaned up: chains {left!r}, objects {swept}") from None


def test_mirror_copies_requests_and_leaves_answers_alone() -> None:
    pod = frontend_pod()
    with (
        LocalApp("mirror") as app,
        running("port-forward", *FRONTEND, "-R", f"8080:{app.port}", "--mirror"),
    ):
        marker = uuid.uuid4().hex
        conn = http.client.HTTPConnection(frontend_ip(), 80, timeout=10)
        try:
            answers = [request(conn, f"/m/{marker}/{i}", {"X-Trace": marker}) for i in range(5)]
        finally:
            conn.close()
        for answer in answers:
            assert answer["service"] == "frontend" and answer["pod"] == pod, answer
            assert answer["backend"]["headers"]["X-Trace"] == marker
        wait_until(lambda: app.seen(marker) == 5, 10, f"5 mirrored requests ({app.requests})")
        copies = [h for p, h in app.requests if marker in p]
        assert all(h.get("X-Trace") == marker for h in copies)
    assert fresh_get("/after")["pod"] == pod


LOCAL_APP = """
import json, os
from http.server import BaseHTTPRequestHandler, HTTPServer

class H(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def do_GET(self):
        body = json.dumps({"service": "local", "mode": os.environ.get("SHOP_MODE")}).encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    def log_message(self, *a):
        pass

HTTPServer(("127.0.0.1", int(os.environ["LOCAL_PORT"])), H).serve_forever()
"""


def test_exec_steal_takes_requests_and_gives_them_back(tmp_path: Path) -> None:
    pod = frontend_pod()
    port = free_port()
    (tmp_path / "app.py").write_text(LOCAL_APP)
    env_file = tmp_path / "tether.toml"
    env_file.write_text(f'[env.override]\nLOCAL_PORT = "{port}"\n')
    with running(
        "exec", *FRONTEND, "-f", str(env_file), "--steal", "--port-map", f"8080:{port}",
        "--", sys.executable, str(tmp_path / "app.py"),
        cwd=str(tmp_path),
    ):  # fmt: skip
        for i in range(5):
            answer = fresh_get(f"/s/{i}")
            # The local app runs with the pod's environment: SHOP_MODE comes from the pod.
            assert answer == {"service": "local", "mode": "staging"}, answer
    # tether exited: the pod serves again, at once.
    assert fresh_get("/after")["pod"] == pod


def test_header_filter_routes_each_request_over_keep_alive() -> None:
    pod = frontend_pod()
    with (
        LocalApp("alice") as app,
        running(
            "port-forward", *FRONTEND, "-R", f"8080:{app.port}",
            "--http-header-filter", "^x-dev: alice$",
        ),
    ):  # fmt: skip
        conn = http.client.HTTPConnection(frontend_ip(), 80, timeout=10)
        try:
            for i in range(10):
                mine = i % 2 == 0
                answer = request(conn, f"/f/{i}", {"X-Dev": "alice"} if mine else {"X-Dev": "bob"})
                if mine:
                    assert answer == {"service": "local", "name": "alice"}, (i, answer)
                else:
                    assert answer["service"] == "frontend" and answer["pod"] == pod, (i, answer)
        finally:
            conn.close()
        assert app.seen("/f/") == 5


def test_an_agent_in_a_namespace_of_its_own_serves_the_target(tmp_path: Path) -> None:
    # agent.namespace: an admin's namespace where privileged pods are allowed, while the
    # target stays in its own; the hostPID agent reaches it on its node.
    agents = f"tether-e2e-agents-{uuid.uuid4().hex[:6]}"
    create_namespace(agents)
    try:
        (tmp_path / "tether.toml").write_text(f'[agent]\nnamespace = "{agents}"\n')
        env = tether("env", *FRONTEND, cwd=str(tmp_path))
        assert env.returncode == 0, env.stderr
        assert "SHOP_MODE=staging" in env.stdout.splitlines()
        pod = frontend_pod()
        with (
            LocalApp("alice") as app,
            running(
                "port-forward", *FRONTEND, "-R", f"8080:{app.port}",
                "--http-header-filter", "^x-dev: alice$", cwd=str(tmp_path),
            ),
        ):  # fmt: skip
            assert agent_objects(agents) == (1, 1)
            assert agent_objects("shop") == (0, 0)
            conn = http.client.HTTPConnection(frontend_ip(), 80, timeout=10)
            try:
                mine = request(conn, "/ns/a", {"X-Dev": "alice"})
                theirs = request(conn, "/ns/b")
            finally:
                conn.close()
            assert mine == {"service": "local", "name": "alice"}
            assert theirs["service"] == "frontend" and theirs["pod"] == pod
        assert wait_no_agent_objects(agents) == (0, 0)
    finally:
        kubectl("delete", "namespace", agents, "--ignore-not-found", "--wait=false")


def test_two_filtered_sessions_share_the_target_and_an_unfiltered_steal_is_refused() -> None:
    pod = frontend_pod()
    with (
        LocalApp("alice") as alice,
        LocalApp("bob") as bob,
        running(
            "port-forward", *FRONTEND, "-R", f"8080:{alice.port}",
            "--http-header-filter", "^x-dev: alice$",
        ),
        running(
            "port-forward", *FRONTEND, "-R", f"8080:{bob.port}",
            "--http-header-filter", "^x-dev: bob$",
        ),
    ):  # fmt: skip
        # One agent serves both sessions.
        assert agent_objects("shop")[0] == 1
        conn = http.client.HTTPConnection(frontend_ip(), 80, timeout=10)
        try:
            for i in range(9):
                who = ("alice", "bob", "nobody")[i % 3]
                answer = request(conn, f"/two/{i}", {"X-Dev": who})
                if who == "nobody":
                    assert answer["pod"] == pod, answer
                else:
                    assert answer == {"service": "local", "name": who}, (who, answer)
        finally:
            conn.close()
        third = tether("port-forward", *FRONTEND, "-R", "8080", "--steal")
        one_line_error(third, "port 8080 is taken", "--override")
        # The refused session left the others' steals alone.
        assert fresh_get("/still", {"X-Dev": "bob"}) == {"service": "local", "name": "bob"}
    assert fresh_get("/after", {"X-Dev": "alice"})["pod"] == pod


def test_kill_9_of_the_local_side_gives_the_pod_back(tmp_path: Path) -> None:
    pod = frontend_pod()
    config = tmp_path / "tether.toml"
    # The agent holds the vanished session (its rules let everything through to the pod)
    # for reconnect_timeout, in case it comes back; then the rules go.
    config.write_text(
        "[agent]\nidle_timeout = 3\nttl_seconds_after_finished = 0\nreconnect_timeout = 3\n"
    )
    with LocalApp("doomed") as app:
        t = Tether(
            "port-forward", *FRONTEND, "-f", str(config), "-R", f"8080:{app.port}", "--steal"
        )
        try:
            t.wait_for("incoming:")
            assert fresh_get("/k/0") == {"service": "local", "name": "doomed"}
            assert tether_chains()
        finally:
            t.stop(signal.SIGKILL)
        killed = time.monotonic()
        # Within 5 s every request is the pod's again.
        wait_until(lambda: served_by_pod("/k/probe"), 5, "the pod serves")
        assert time.monotonic() - killed <= 5
        for i in range(20):
            assert fresh_get(f"/k/{i}")["pod"] == pod
        wait_until(lambda: not tether_chains(), 3 + 5, "tether chains gone")
    # The agent exits after its idle timeout and Kubernetes removes its finished Job.
    assert wait_no_agent_objects("shop", within=60) == (0, 0)


GREETER = Path(__file__).with_name("assets") / "grpc_greeter.py"


@pytest.fixture(scope="module")
def greeter() -> Iterator[str]:
    """A gRPC Deployment and Service "greeter" in shop; yields the Service's cluster IP."""
    script = GREETER.read_text()
    manifest = {
        "apiVersion": "v1",
        "kind": "List",
        "items": [
            {
                "apiVersion": "v1",
                "kind": "ConfigMap",
                "metadata": {"name": "greeter", "namespace": "shop"},
                "data": {"greeter.py": script},
            },
            {
                "apiVersion": "apps/v1",
                "kind": "Deployment",
                "metadata": {"name": "greeter", "namespace": "shop"},
                "spec": {
                    "replicas": 1,
                    "selector": {"matchLabels": {"app": "greeter"}},
                    "template": {
                        "metadata": {"labels": {"app": "greeter"}},
                        "spec": {
                            "containers": [
                                {
                                    "name": "greeter",
                                    "image": AGENT_IMAGE,
                                    "imagePullPolicy": "Never",
                                    "command": ["python3", "/app/greeter.py"],
                                    "ports": [{"containerPort": 50051}],
                                    "readinessProbe": {"tcpSocket": {"port": 50051}},
                                    "volumeMounts": [{"name": "app", "mountPath": "/app"}],
                                }
                            ],
                            "volumes": [{"name": "app", "configMap": {"name": "greeter"}}],
                        },
                    },
                },
            },
            {
                "apiVersion": "v1",
                "kind": "Service",
                "metadata": {"name": "greeter", "namespace": "shop"},
                "spec": {
                    "selector": {"app": "greeter"},
                    "ports": [{"port": 50051, "targetPort": 50051}],
                },
            },
        ],
    }
    kubectl("apply", "-f", "-", input=json.dumps(manifest))
    try:
        kubectl("-n", "shop", "rollout", "status", "deployment/greeter", "--timeout=120s")
        yield str(get("service", "greeter", "shop")["spec"]["clusterIP"])
    finally:
        kubectl("delete", "-f", "-", "--wait=false", input=json.dumps(manifest), check=False)


def _grpc_server(port: int, name: bytes) -> Any:
    import grpc

    def hello(request: bytes, context: Any) -> bytes:
        return name + b":" + request

    handler = grpc.method_handlers_generic_handler(
        "greet.Greeter", {"Hello": grpc.unary_unary_rpc_method_handler(hello)}
    )
    server = grpc.server(
        futures.ThreadPoolExecutor(4),
        handlers=[handler],
        options=[("grpc.so_reuseport", 0)],
    )
    server.add_insecure_port(f"127.0.0.1:{port}")
    server.start()
    return server


def test_header_filter_routes_grpc_calls_over_h2c(greeter: str) -> None:
    import grpc

    port = free_port()
    server = _grpc_server(port, b"local")
    try:
        with (
            running(
                "port-forward", "--target", "deployment/greeter", "-n", "shop", *AGENT,
                "-R", f"50051:{port}", "--http-header-filter", "^x-dev: alice$",
            ),
            # No proxy: grpc would honour http_proxy from the environment.
            grpc.insecure_channel(
                f"{greeter}:50051", options=[("grpc.enable_http_proxy", 0)]
            ) as channel,
        ):  # fmt: skip
            hello = channel.unary_unary("/greet.Greeter/Hello")
            for i in range(10):
                mine = i % 2 == 0
                metadata = [("x-dev", "alice" if mine else "bob")]
                answer = hello(f"call{i}".encode(), metadata=metadata, timeout=10)
                expected = f"{'local' if mine else 'pod'}:call{i}".encode()
                assert answer == expected, (i, answer)
    finally:
        server.stop(0)


@pytest.mark.parametrize("reset", [True, False], ids=["reset", "no-reset"])
def test_a_steal_resets_keep_alive_connections_opened_before_it(reset: bool) -> None:
    pod = frontend_pod()
    flags = [] if reset else ["--no-reset-connections"]
    old = http.client.HTTPConnection(frontend_ip(), 80, timeout=10)
    try:
        assert request(old, "/before")["pod"] == pod
        with (
            LocalApp("thief") as app,
            running("port-forward", *FRONTEND, "-R", f"8080:{app.port}", "--steal", *flags),
        ):
            if reset:
                # Reset when the steal started: the client learns it on its next request and
                # reconnects, through the redirect this time.
                with pytest.raises((ConnectionError, http.client.HTTPException)):
                    request(old, "/old")
            else:
                assert request(old, "/old")["pod"] == pod
            assert fresh_get("/new") == {"service": "local", "name": "thief"}
    finally:
        old.close()


def throwaway_pod(name: str, containers: list[dict[str, Any]]) -> dict[str, Any]:
    """A bare pod in shop for one test (quick to delete)."""
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": "shop"},
        "spec": {"terminationGracePeriodSeconds": 1, "containers": containers},
    }


def test_sessions_on_two_containers_of_one_pod_share_its_agent() -> None:
    """The containers of a pod share its network namespace, so they share one agent (the
    owner of the redirect rules); each session still gets its own container's env."""
    pod = throwaway_pod(
        "t-two",
        [
            {
                "name": name,
                "image": PYTHON_IMAGE,
                "imagePullPolicy": "Never",
                "command": ["python3", "-m", "http.server", port],
                "env": [{"name": "WHO", "value": name}],
            }
            for name, port in (("left", "8081"), ("right", "8082"))
        ],
    )
    kubectl("apply", "-f", "-", input=json.dumps(pod))
    try:
        kubectl("-n", "shop", "wait", "--for=condition=Ready", "pod/t-two", "--timeout=120s")
        left = ["--target", "pod/t-two/container/left", "-n", "shop", *AGENT]
        right = ["--target", "pod/t-two/container/right", "-n", "shop", *AGENT]
        with LocalApp("left") as app, running("port-forward", *left, "-R", f"8081:{app.port}"):
            env = tether("env", *right, "--include", "WHO")
            assert env.returncode == 0, env.stderr
            assert env.stdout == "WHO=right\n"
            assert "joined job" in tether("env", "-v", *right).stderr
            assert agent_objects("shop")[0] == 1
    finally:
        kubectl("-n", "shop", "delete", "pod", "t-two", "--wait=false", check=False)


def test_a_deleted_target_pod_ends_the_session_with_one_line() -> None:
    pod = throwaway_pod(
        "t-gone",
        one_container(PYTHON_IMAGE, ["python3", "-m", "http.server", "8080"])["containers"],
    )
    kubectl("apply", "-f", "-", input=json.dumps(pod))
    try:
        kubectl("-n", "shop", "wait", "--for=condition=Ready", "pod/t-gone", "--timeout=120s")
        with LocalApp("gone") as app:
            t = Tether(
                "port-forward", "--target", "pod/t-gone", "-n", "shop", *AGENT,
                "-R", f"8080:{app.port}", "--steal",
            )  # fmt: skip
            try:
                t.wait_for("incoming:")
                kubectl("-n", "shop", "delete", "pod", "t-gone", "--wait=false")
                code = t.proc.wait(30)
            finally:
                t.stop(signal.SIGKILL)
        errors = [line for line in t.lines if line.startswith("tether: error:")]
        assert code != 0 and len(errors) == 1, t.stderr
        assert "the target container exited" in errors[0], errors[0]
        assert "Traceback" not in t.stderr
    finally:
        kubectl("-n", "shop", "delete", "pod", "t-gone", "--wait=false", check=False)


@pytest.mark.parametrize("policy", ["stop", "keep"])
def test_exec_on_a_deleted_pod_stops_the_program_unless_asked(policy: str, tmp_path: Path) -> None:
    name = f"t-gone-exec-{policy}"
    pod = throwaway_pod(name, one_container(PYTHON_IMAGE, ["sleep", "3600"])["containers"])
    kubectl("apply", "-f", "-", input=json.dumps(pod))
    pidfile = tmp_path / "pid"
    program = (
        f"import os, time; open({str(pidfile)!r}, 'w').write(str(os.getpid())); time.sleep(600)"
    )
    try:
        kubectl("-n", "shop", "wait", "--for=condition=Ready", f"pod/{name}", "--timeout=120s")
        t = Tether(
            "exec", "-v", "--target", f"pod/{name}", "-n", "shop", *AGENT,
            "--on-target-lost", policy, "--", sys.executable, "-c", program,
        )  # fmt: skip
        try:
            t.wait_for("started")
            wait_until(pidfile.exists, 30, "the program started")
            pid = int(pidfile.read_text())
            kubectl("-n", "shop", "delete", "pod", name, "--wait=false")
            if policy == "stop":
                code = t.proc.wait(60)
                errors = [line for line in t.lines if line.startswith("tether: error:")]
                assert code != 0 and len(errors) == 1, t.stderr
                assert "the program was stopped" in errors[0], errors[0]
                assert "Traceback" not in t.stderr
                assert not Path(f"/proc/{pid}").exists() or _zombie(pid)
            else:
                t.wait_for("the program runs on without the target", within=60)
                assert t.proc.poll() is None and Path(f"/proc/{pid}").exists()
        finally:
            t.stop(signal.SIGTERM)
    finally:
        kubectl("-n", "shop", "delete", "pod", name, "--wait=false", check=False)


def _zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except OSError:
        return True
