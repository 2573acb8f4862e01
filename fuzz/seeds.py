"""Writes the seed corpora, fuzz/corpus/NAME/seed-*: a few small valid inputs per harness,
spelled with `Script` so that each one means what its name says.

Run `python -m fuzz.seeds` after changing how a harness reads its input. Files named
crash-* (inputs that found a bug, kept as regression cases) are left alone.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import h2.config
import h2.connection

from fuzz.common import Script
from tether.agent.incoming.http2 import PREFACE
from tether.agent.target import _CGROUP_PREFIXES
from tether.config import env_settings
from tether.protocol import Connection, Role
from tether.protocol.frames import PROTOCOL_VERSION, FrameType, encode, pack

CORPUS = Path(__file__).parent / "corpus"
SECRET = b"s" * 32  # as in fuzz.protocol
MAX_ID = (1 << 32) - 1


# -- protocol ---------------------------------------------------------------------------------


def _raw(state: int, data: bytes, cuts: tuple[int, ...] = ()) -> bytes:
    script = Script().number(0, 2, 0).number(0, 3, state).number(0, 4096, len(data)).data(data)
    rest = len(data)
    for cut in cuts:
        script.number(1, rest, cut)
        rest -= cut
    return script.build()


def _ops(script: Script, ops: list[tuple[int, int, int, bytes]]) -> Script:
    """(side, kind, index, payload) each; see fuzz.protocol.read_ops for the kinds."""
    script.number(0, 40, len(ops))
    for side, kind, index, payload in ops:
        script.number(0, 1, side).number(0, 7, kind).number(0, 7, index)
        if kind in (1, 2):
            script.number(0, 2048, len(payload)).data(payload)
        elif kind == 5:
            script.number(0, 16, len(payload)).data(payload)
        elif kind == 6:
            script.number(0, 80, len(payload)).data(payload)
    return script


SESSION = [
    (0, 0, 0, b""),  # the client opens stream 1
    (0, 1, 0, b"hello agent"),
    (1, 0, 0, b""),  # the agent opens stream 2
    (1, 1, 1, b"x" * 1500),  # more than the window: sent as credit allows
    (0, 5, 0, b"stat"),
    (1, 6, 0, b"ping"),
    (0, 3, 0, b""),  # the client ends stream 1
    (1, 1, 0, b"reply"),
    (1, 3, 0, b""),
    (0, 0, 0, b""),  # stream 3 is refused (ids divisible by 3 are reset)
    (0, 4, 1, b""),
    (1, 7, 0, b""),  # GOAWAY
]


def protocol() -> Iterator[tuple[str, bytes]]:
    hello = Connection(Role.CLIENT, secret=SECRET, version="0.1.0")
    hello.initiate()
    hello_bytes = hello.data_to_send()
    yield "hello", _raw(0, hello_bytes)
    yield "hello-in-pieces", _raw(0, hello_bytes, (1, 8, 20))
    wrong = Connection(Role.CLIENT, secret=b"wrong", version="0.1.0")
    wrong.initiate()
    yield "hello-wrong-secret", _raw(0, wrong.data_to_send())
    welcome = encode(
        FrameType.WELCOME, 0, pack({"v": PROTOCOL_VERSION, "version": "0.1.0", "info": {}})
    )
    yield "welcome", _raw(1, welcome)
    reject = encode(FrameType.REJECT, 0, pack({"code": "secret", "reason": "wrong"}))
    yield "reject-then-garbage", _raw(1, reject + b"\xff" * 9)
    frames = b"".join(
        [
            encode(FrameType.DATA, 1, b"payload"),
            encode(FrameType.WINDOW, 2, (100).to_bytes(4, "big")),
            encode(FrameType.PING, 0, b"12345678"),
            encode(FrameType.REQUEST, 7, pack({"op": "stat", "args": {"path": "/"}})),
            encode(FrameType.RESPONSE, 1, pack({"result": {"ok": True}})),
            encode(FrameType.EOF, 1),
            encode(FrameType.RESET, 3, pack({"code": "ECONNRESET", "message": "bye"})),
            encode(FrameType.OPEN, 7, pack({"kind": "tcp", "params": {}, "window": 65536})),
            encode(FrameType.GOAWAY, 0, pack({"reason": "done"})),
        ]
    )
    yield "agent-frames", _raw(2, frames)
    yield "agent-frames-in-pieces", _raw(2, frames, (3, 9, 10, 40))
    client_frames = b"".join(
        [
            encode(FrameType.DATA, 2, b"from the agent"),
            encode(FrameType.ACCEPT, 3, pack({"window": 4096, "info": {}})),
            encode(FrameType.RESPONSE, 1, pack({"error": {"code": "ENOENT", "message": "x"}})),
            encode(FrameType.PONG, 0, b"12345678"),
            encode(FrameType.OPEN, 4, pack({"kind": "udp", "params": {}, "window": 10})),
        ]
    )
    yield "client-frames", _raw(3, client_frames)
    session = Script().number(0, 2, 1).number(1, 8192, 1024).number(0, MAX_ID, 7)
    yield "session", _ops(session, SESSION).build()
    for how in range(4):
        damaged = Script().number(0, 2, 2).number(1, 8192, 1024)
        damaged.number(0, 63, 3).number(0, 3, how).number(0, 1 << 20, 5).number(1, 255, 0x40)
        damaged.number(1, 16, 4).data(b"\x00\x00\x00\x09").number(0, MAX_ID, 7)
        yield f"session-damaged-{how}", _ops(damaged, SESSION).build()


# -- HTTP -------------------------------------------------------------------------------------

HTTP1 = {
    "keep-alive": b"GET / HTTP/1.1\r\nHost: shop\r\n\r\n"
    b"GET /cart HTTP/1.1\r\nHost: shop\r\nX-Dev: alice\r\n\r\n",
    "pipelined-bodies": b"POST /api/orders HTTP/1.1\r\nHost: shop\r\nContent-Length: 5\r\n\r\n"
    b"hello"
    b"PUT /x HTTP/1.1\r\nHost: shop\r\nx-dev: alice\r\nContent-Length: 0\r\n\r\n"
    b"HEAD /h HTTP/1.1\r\nHost: shop\r\n\r\n",
    "chunked-trailers": b"POST /up HTTP/1.1\r\nHost: shop\r\nTransfer-Encoding: chunked\r\n\r\n"
    b"5\r\nhello\r\n0\r\nX-Sum: 1\r\n\r\n",
    "http10-no-host": b"GET /old HTTP/1.0\r\nUser-Agent: kube-probe/1.30\r\n\r\n",
    "connect": b"CONNECT db:5432 HTTP/1.1\r\nHost: db:5432\r\n\r\nraw bytes after",
    "upgrade": b"GET /ws HTTP/1.1\r\nHost: shop\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n"
    b"x-dev: alice\r\n\r\n",
    "expect-continue": b"POST /api/big HTTP/1.1\r\nHost: shop\r\nExpect: 100-continue\r\n"
    b"Content-Length: 3\r\n\r\nabc",
    "bad-request": b"GET / HTTP/1.1\r\nHost: shop\r\nBad Header\r\n\r\n",
}


def http1() -> Iterator[tuple[str, bytes]]:
    for name, raw in HTTP1.items():
        yield name, Script().number(0, 4096, len(raw)).data(raw).data(b" HTTP/1.").build()
    raw = HTTP1["pipelined-bodies"]
    cut = Script().number(0, 4096, len(raw)).data(raw).data(b"\r\nmore\r\n")
    cut.number(1, len(raw), 3).number(1, len(raw) - 3, 60)
    yield "pipelined-in-pieces", cut.build()


def _h2_client() -> h2.connection.H2Connection:
    conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
    conn.initiate_connection()
    return conn


def _request(path: str, method: str = "GET", *extra: tuple[str, str]) -> list[tuple[str, str]]:
    return [
        (":method", method),
        (":path", path),
        (":scheme", "http"),
        (":authority", "shop"),
        *extra,
    ]


def _h2_sessions() -> Iterator[tuple[str, bytes]]:
    conn = _h2_client()
    conn.send_headers(1, _request("/", "GET", ("x-dev", "alice")), end_stream=True)
    conn.send_headers(3, _request("/api/orders", "POST"))
    conn.send_data(3, b"order", end_stream=True)
    conn.send_headers(5, _request("/other"), end_stream=True)
    yield "requests", conn.data_to_send()

    conn = _h2_client()
    conn.send_headers(1, _request("/grpc.Shop/Buy", "POST", ("content-type", "application/grpc")))
    conn.send_data(1, b"\x00\x00\x00\x00\x02hi")
    conn.send_headers(1, [("grpc-timeout", "1S")], end_stream=True)
    conn.ping(b"12345678")
    conn.increment_flow_control_window(1000)
    yield "grpc-trailers", conn.data_to_send()

    conn = _h2_client()
    conn.update_settings({1: 0, 4: 10})  # no header table, a tiny window
    conn.send_headers(1, _request("/slow", "GET", ("x-dev", "alice")), end_stream=True)
    conn.send_headers(3, _request("/gone"), end_stream=False)
    conn.reset_stream(3)
    conn.close_connection()
    yield "settings-reset-goaway", conn.data_to_send()


def http2() -> Iterator[tuple[str, bytes]]:
    for name, data in _h2_sessions():
        body = data[len(PREFACE) :]
        yield name, Script().number(0, 3, 1).number(0, 4096, len(body)).data(body).build()
        if name == "requests":
            pieces = Script().number(0, 3, 1).number(0, 4096, len(body)).data(body)
            pieces.number(1, len(PREFACE) + len(body), 5).number(
                1, len(PREFACE) + len(body) - 5, 30
            )
            yield "requests-preface-in-pieces", pieces.build()
    goaway = bytes.fromhex("000008 07 00 00000000") + bytes(8)
    ping = bytes.fromhex("000008 06 00 00000000") + b"12345678"
    long_goaway = bytes.fromhex("00000c 07 00 00000000") + bytes(8) + b"dbg!"
    frames = ping + goaway + ping + long_goaway + bytes.fromhex("000001 07 00 00000000") + b"x"
    for skip in (False, True):
        data = (PREFACE if skip else b"") + frames
        script = Script().number(0, 3, 0).flag(skip).number(0, 4096, len(data)).data(data)
        script.number(1, len(data), 11).number(1, len(data) - 11, 17)
        yield f"splitter-{'preface' if skip else 'frames'}", script.build()


# -- config ---------------------------------------------------------------------------------

CONFIG_TOML = b"""target = "deployment/shop/container/app"
namespace = "dev"
kubeconfig = "kube/config"

[agent]
image = "ghcr.io/tether-dev/tether-agent:0.1.0"
port = 47047
labels = { team = "shop" }

[env]
include = ["*"]
exclude = ["AWS_*"]
override = { LOG_LEVEL = "debug" }

[fs]
mode = "read"
local = ["~/.cache/**", "*.py"]
not_found = ["/etc/shop/secret"]

[network.outgoing]
mode = "remote"
local = ["*.internal.example.com", "10.0.0.0/8:5432", ":6379"]

[network.dns]
local = ["*.localhost"]

[incoming]
mode = "steal"
ports = [8080]
port_map = { 8080 = 3000 }
http_filter = { header = ["^x-dev: alice$"], methods = ["GET"] }
"""

CONFIG_YAML = b"""target: pod/shop-0
agent:
  idle_timeout: 10.5
  image_pull_policy: IfNotPresent
network:
  outgoing:
    remote: ["[fd00::1]:443", "db.example.com"]
incoming:
  mode: steal
  http_filter:
    path: ^/api/
    match: any
"""


def config() -> Iterator[tuple[str, bytes]]:
    files = [
        ("toml", 0, CONFIG_TOML),
        ("yaml", 1, CONFIG_YAML),
        ("yml-empty", 2, b""),
        ("json", 3, json.dumps({"target": "targetless", "fs": {"mode": "local"}}).encode()),
        ("unknown-suffix", 4, b"target = 1"),
        ("toml-bad-key", 0, b"[agent]\nport = 0\nnope = 1\n"),
    ]
    for name, suffix, content in files:
        yield f"file-{name}", Script().flag(False).number(0, 4, suffix).data(content).build()
    # Inputs of bugs found (the parsers raised more than their own errors): kept as seeds.
    regressions = [
        ("yaml-impossible-date", 1, b"target: 2001-02-30\n"),
        ("json-nested-deep", 3, b"[" * 1200),
        ("toml-nested-deep", 0, b"a = " + b"[" * 600),
        ("json-copied-deep", 3, b'{"target": ' + b"[" * 700 + b"]" * 700 + b"}"),
        ("toml-long-integer", 0, b"namespace = " + b"1" * 4400),
        ("kubeconfig-unknown-user", 1, b"kubeconfig: ~nosuchuser-tether/config\n"),
        (
            "regex-repeat-overflow",
            1,
            b"incoming: {mode: steal, http_filter: {path: 'a{9999999999}'}}",
        ),
        ("glob-reversed-range", 0, b'[fs]\nlocal = ["/src/[x-d]*"]\n'),
    ]
    for name, suffix, content in regressions:
        yield f"bug-{name}", Script().flag(False).number(0, 4, suffix).data(content).build()
    names = [s.name for s in env_settings()]
    variables = [
        ("TETHER_AGENT_IMAGE", "registry.local/agent:dev"),
        ("TETHER_ENV_EXCLUDE", "AWS_*, GCP_*"),
        ("TETHER_AGENT_LABELS", '{"team": "shop"}'),
        ("TETHER_INCOMING_PORTS", "[8080, 9090]"),
    ]
    script = Script().flag(True).number(1, 4, len(variables))
    for name, value in variables:
        script.number(0, len(names) - 1, names.index(name)).text(value, 200)
    yield "env", script.build()
    bad = Script().flag(True).number(1, 4, 1)
    bad.number(0, len(names) - 1, names.index("TETHER_AGENT_PORT")).text("port", 200)
    yield "env-bad", bad.build()
    deep = Script().flag(True).number(1, 4, 1)
    deep.number(0, len(names) - 1, names.index("TETHER_INCOMING_PORTS"))
    yield "bug-env-json-nested-deep", deep.text("[" * 40 + "]" * 40, 200).build()


# -- cgroup and resolv.conf -----------------------------------------------------------------


def _cgroup_lines(script: Script, lines: list[list[tuple[int, bool] | bytes]]) -> None:
    """Each line's parts: (prefix index, with .scope) for the container, bytes for others."""
    script.number(0, 7, 1).number(1, 4, len(lines))
    for parts in lines:
        script.number(0, 4, len(parts))
        for part in parts:
            if isinstance(part, tuple):
                script.number(0, 3, 0).number(0, len(_CGROUP_PREFIXES) - 1, part[0]).flag(part[1])
            else:
                script.number(0, 3, 1).number(0, 24, len(part)).data(part)
        script.flag(False)


def cgroup() -> Iterator[tuple[str, bytes]]:
    cid = bytes(range(16))
    layouts: dict[str, tuple[int, list[list[tuple[int, bool] | bytes]]]] = {
        "containerd-systemd": (0, [[b"kubepods.slice", (1, True)]]),
        "crio-cgroupfs-v1": (1, [[b"kubepods", b"pod1", (2, False)], [b"kubepods"]]),
        "docker": (2, [[b"system.slice", (3, True)]]),
        "bare-id": (3, [[b"kubepods", b"besteffort", (0, False)]]),
    }
    for name, (scheme, lines) in layouts.items():
        script = Script().flag(False).number(0, 3, scheme).number(1, 32, len(cid)).data(cid)
        script.number(0, 5, 2)
        for pid, start in ((4242, 900), (17, 100)):
            script.number(1, 4 << 20, pid)
            _cgroup_lines(script, lines)
            script.number(0, 7, 1).number(0, 16, 9).data(b"app (x) y").number(0, 1 << 40, start)
        yield name, script.build()
    text = Script().flag(True).text("containerd://not/an id", 80).number(0, 5, 0)
    yield "malformed-id", text.build()


RESOLV = {
    "kubernetes": "nameserver 10.96.0.10\nsearch default.svc.cluster.local svc.cluster.local "
    "cluster.local\noptions ndots:5\n",
    "limits": "# comment\n; another\nnameserver ::1\nnameserver fe80::1%eth0\nnameserver 1.1.1.1"
    "\nnameserver 8.8.8.8\ndomain example.com.\noptions timeout:99 attempts:0 ndots:-3 rotate "
    "edns0 attempts:x\n",
    "hosts": "127.0.0.1 localhost\n::1 localhost ip6-localhost\n10.0.0.5 Shop shop.local # x\n",
}


def resolv() -> Iterator[tuple[str, bytes]]:
    for (name, text), host in zip(RESOLV.items(), ["api", "a.b.c.d.e.f", "shop."], strict=True):
        yield name, Script().text(host, 64).data(text.encode()).build()


HARNESSES = {
    "protocol": protocol,
    "http1": http1,
    "http2": http2,
    "config": config,
    "cgroup": cgroup,
    "resolv": resolv,
}


def main() -> None:
    """Write every harness's seed files, replacing the old ones."""
    for harness, seeds in HARNESSES.items():
        directory = CORPUS / harness
        directory.mkdir(parents=True, exist_ok=True)
        for old in directory.glob("seed-*"):
            old.unlink()
        for name, data in seeds():
            (directory / f"seed-{name}").write_bytes(data)


if __name__ == "__main__":
    main()
