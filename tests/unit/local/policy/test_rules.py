"""tether.local.policy.rules: which side serves each file, connection and DNS name
(table-driven)."""

from typing import Final, Literal

import pytest

from tether.config.models import DnsConfig, FsConfig, NetworkConfig, OutgoingConfig
from tether.local.policy.rules import (
    ALWAYS_REMOTE_FILES,
    LOCAL_FILES,
    LOCAL_TREES,
    DnsRules,
    FileAction,
    FileRules,
    NetRules,
    Side,
    program_dirs,
)

L, RO, RW, NF = FileAction.LOCAL, FileAction.REMOTE_READ, FileAction.REMOTE_RW, FileAction.NOT_FOUND

CWD = "/home/dev/proj"
HOME = "/home/dev"
EXE = "/srv/tools/app"
TEMP = ("/scratch/tmp",)


def rules(
    config: FsConfig | None = None, /, *, cwd: str = CWD, home: str = HOME, executable: str = EXE
) -> FileRules:
    return FileRules(
        config or FsConfig(), cwd=cwd, home=home, executable=executable, temp_dirs=TEMP
    )


def check(rules: FileRules, path: str, write: bool, expected: FileAction) -> None:
    assert rules.decide(path, write=write) is expected, (path, write)


# --- Files: defaults ---

DEFAULT_LOCAL = [
    *LOCAL_TREES,
    *(tree + "/some/file" for tree in LOCAL_TREES),
    *sorted(LOCAL_FILES),
    "/usr/lib/python3.11/os.py",
    "/proc/self/maps",
    "/dev/null",
    "/var/run/docker.sock",
    "/etc/ld.so.cache",
    "/etc/ld.so.preload",
    "/etc/ld.so.conf.d/libc.conf",
    "/etc/python3.11/sitecustomize.py",
    "/etc/nodejs/npmrc",
    "/etc/java-17-openjdk/security/java.security",
    "/etc/ssl/certs/ca-certificates.crt",
    # The working, home and temporary directories and the executable, with what is below and
    # the directories leading to them.
    CWD,
    CWD + "/src/main.go",
    CWD + "/.git/HEAD",
    HOME,
    HOME + "/.bashrc",
    "/home",
    "/scratch/tmp",
    "/scratch/tmp/x",
    "/scratch",
    EXE,
    "/srv/tools",
    "/srv",
    # Interpreter and library files anywhere.
    "/app/main.py",
    "/app/main.pyc",
    "/app/main.pyi",
    "/app/easy.pth",
    "/app/libx.so",
    "/app/libssl.so.3",
    "/app/libx.so.1.2.3",
    "/app/libx.a",
    "/app/index.js",
    "/app/index.mjs",
    "/app/index.cjs",
    "/app/addon.node",
    "/app/lib.jar",
    "/app/Main.class",
    "/app/app.rb",
    "/app/app.pl",
    "/app/Mod.pm",
    "/app/node_modules",
    "/app/node_modules/pkg/package.json",
    "/app/node_modules/pkg/README",
    "/app/__pycache__/x.cpython-311.opt-1",
    "/app/lib/site-packages/pkg/data.txt",
    "/app/lib/dist-packages/pkg/data.txt",
]

DEFAULT_REMOTE = [
    "/",
    "/etc",
    "/etc/shop/config.yaml",
    "/etc/os-release",
    "/var",
    "/var/log/app.log",
    "/srv/tools/other",
    "/srv/data",
    "/home/other/file",
    "/home/dev2/file",  # a sibling of the home directory, not under it
    "/app/config.json",
    "/app/main.pyx",
    "/app/libx.so.txt",
    "/app/site-packages-notes.txt",
    "/app/my_node_modules/x",
    "/scratch/other",
    "/tmpfoo",
    "/usrx/bin",
]


@pytest.mark.parametrize("path", DEFAULT_LOCAL)
@pytest.mark.parametrize("mode", ["read", "write", "local"])
@pytest.mark.parametrize("write", [False, True])
def test_local_defaults(path: str, mode: Literal["read", "write", "local"], write: bool) -> None:
    check(rules(FsConfig(mode=mode)), path, write, L)


@pytest.mark.parametrize("path", DEFAULT_REMOTE)
@pytest.mark.parametrize(
    ("mode", "write", "expected"),
    [
        ("read", False, RO),
        ("read", True, L),
        ("write", False, RW),
        ("write", True, RW),
        ("local", False, L),
        ("local", True, L),
    ],
)
def test_other_paths_follow_the_mode(
    path: str, mode: Literal["read", "write", "local"], write: bool, expected: FileAction
) -> None:
    check(rules(FsConfig(mode=mode)), path, write, expected)


@pytest.mark.parametrize("path", sorted(ALWAYS_REMOTE_FILES))
@pytest.mark.parametrize(
    ("mode", "write", "expected"),
    [
        ("read", False, RO),
        ("read", True, RO),  # EROFS: neither the pod's nor this machine's file changes
        ("write", False, RO),
        ("write", True, RO),
        ("local", False, L),
        ("local", True, L),
    ],
)
def test_name_resolution_files_are_the_targets(
    path: str, mode: Literal["read", "write", "local"], write: bool, expected: FileAction
) -> None:
    check(rules(FsConfig(mode=mode)), path, write, expected)


@pytest.mark.parametrize("path", sorted(ALWAYS_REMOTE_FILES))
def test_name_resolution_files_local_when_dns_is(path: str) -> None:
    local_dns = FileRules(FsConfig(), cwd=CWD, home=HOME, executable=EXE, remote_dns_files=False)
    check(local_dns, path, False, L)
    explicit = FileRules(
        FsConfig(read_only=["/etc/hosts"]),
        cwd=CWD,
        home=HOME,
        executable=EXE,
        remote_dns_files=False,
    )
    check(explicit, "/etc/hosts", False, RO)


def test_resolution_files_beat_a_working_directory_around_them() -> None:
    check(rules(cwd="/etc"), "/etc/resolv.conf", False, RO)
    check(rules(cwd="/etc"), "/etc/shop/config.yaml", False, L)


@pytest.mark.parametrize(
    ("context", "path", "expected"),
    [
        ({"cwd": "/"}, "/srv/data", RO),
        ({"home": "/"}, "/srv/data", RO),
        ({"cwd": "/", "home": "/"}, "/etc/shop/x", RO),
        ({"cwd": "/home/dev/proj/"}, "/home/dev/proj/x", L),  # normalized
        ({"cwd": "/work/proj"}, "/work/proj2/x", RO),  # a sibling is not under it
        ({"cwd": "/work/proj"}, "/work", L),
        ({"executable": "/srv/tools/../bin2/app"}, "/srv/bin2/app", L),
    ],
)
def test_context_edge_cases(context: dict[str, str], path: str, expected: FileAction) -> None:
    check(rules(**context), path, False, expected)


@pytest.mark.parametrize("key", ["cwd", "home", "executable"])
def test_relative_context_is_rejected(key: str) -> None:
    with pytest.raises(ValueError, match=key):
        rules(**{key: "relative/dir"})
    with pytest.raises(ValueError, match="temp_dirs"):
        FileRules(FsConfig(), cwd=CWD, home=HOME, executable=EXE, temp_dirs=["tmp"])


def test_relative_path_is_rejected() -> None:
    with pytest.raises(ValueError, match="absolute"):
        rules().decide("etc/hosts", write=False)


# --- Files: explicit patterns and their precedence ---

PATTERNS = FsConfig(
    not_found=["/srv/app/secret*", "*.pem", "/usr/share/doc/**"],
    local=["/srv/app/secret-local", "/srv/app/local/**", "/etc/shop/dev.yaml"],
    read_write=["/srv/app/**", "/var/log/app/"],
    read_only=["/srv/app/**", "/usr/share/zoneinfo/**", "~/proj/fixtures/**", "*.py"],
)

PRECEDENCE = [
    # path, write, expected, why
    ("/srv/app/secret.txt", False, NF, "not_found beats read_write"),
    ("/srv/app/secret.txt", True, NF, "not_found even for O_CREAT"),
    ("/srv/app/secret-local", False, NF, "not_found beats local"),
    ("/home/dev/.ssh/id.pem", False, NF, "not_found beats the home default"),
    ("/usr/share/doc/x", False, NF, "not_found beats the system default"),
    ("/srv/app/local/x", True, L, "local beats read_write"),
    ("/srv/app/local", False, L, "a /** pattern holds its directory"),
    ("/etc/shop/dev.yaml", False, L, "local beats the mode"),
    ("/srv/app/data.db", False, RW, "read_write beats read_only"),
    ("/srv/app/data.db", True, RW, "read_write writes remotely"),
    ("/srv/app/main.py", False, RW, "read_write beats read_only and the code default"),
    ("/var/log/app/today.log", True, RW, "read_write even in read mode"),
    ("/usr/share/zoneinfo/UTC", False, RO, "read_only beats the system default"),
    ("/usr/share/zoneinfo/UTC", True, RO, "read_only: a write gets EROFS"),
    ("/home/dev/proj/fixtures/a.json", False, RO, "read_only beats the working directory"),
    ("/home/dev/proj/tool.py", False, RO, "a relative pattern at any depth beats code"),
    ("/home/dev/proj/notes.txt", False, L, "no pattern: the working directory default"),
    ("/etc/shop/config.yaml", False, RO, "no pattern: the mode"),
    ("/etc/shop/config.yaml", True, L, "no pattern: the mode, writing"),
]


@pytest.mark.parametrize(("path", "write", "expected", "why"), PRECEDENCE)
def test_precedence(path: str, write: bool, expected: FileAction, why: str) -> None:
    assert rules(PATTERNS).decide(path, write=write) is expected, why


@pytest.mark.parametrize(
    ("path", "write", "expected"),
    [
        ("/srv/app/secret.txt", False, NF),
        ("/srv/app/local/x", False, L),
        ("/srv/app/data.db", True, RW),
        ("/usr/share/zoneinfo/UTC", False, RO),
        ("/etc/shop/config.yaml", False, L),
        ("/etc/shop/config.yaml", True, L),
        ("/etc/hosts", False, L),
    ],
)
def test_patterns_still_apply_in_local_mode(path: str, write: bool, expected: FileAction) -> None:
    config = PATTERNS.model_copy(update={"mode": "local"})
    check(rules(config), path, write, expected)


@pytest.mark.parametrize(
    ("path", "write", "expected"),
    [
        ("/etc/shop/config.yaml", True, RW),
        ("/usr/share/zoneinfo/UTC", True, RO),
        ("/home/dev/proj/notes.txt", True, L),
    ],
)
def test_patterns_in_write_mode(path: str, write: bool, expected: FileAction) -> None:
    config = PATTERNS.model_copy(update={"mode": "write"})
    check(rules(config), path, write, expected)


def test_home_pattern_uses_the_given_home() -> None:
    config = FsConfig(mode="local", read_only=["~/.aws/**"])
    check(rules(config, home="/Users/x"), "/Users/x/.aws/credentials", False, RO)
    check(rules(config, home="/Users/x"), "/home/dev/.aws/credentials", False, L)


def test_cache_is_per_instance_and_keyed_by_write() -> None:
    read_mode, write_mode = rules(FsConfig(mode="read")), rules(FsConfig(mode="write"))
    for _ in range(3):
        check(read_mode, "/etc/shop/config.yaml", False, RO)
        check(read_mode, "/etc/shop/config.yaml", True, L)
        check(write_mode, "/etc/shop/config.yaml", False, RW)


# --- Outgoing connections ---

T: Final = "tcp"
U: Final = "udp"

NET_CASES: list[tuple[OutgoingConfig, str, int, str | None, Literal["tcp", "udp"], Side]] = []


def net_table(
    config: OutgoingConfig,
    rows: list[tuple[str, int, str | None, Literal["tcp", "udp"], Side]],
) -> None:
    NET_CASES.extend((config, *row) for row in rows)


LOOPBACKS = ["127.0.0.1", "127.1.2.3", "::1", "0.0.0.0", "::", "::ffff:127.0.0.1"]

# Defaults: everything remote but loopback.
net_table(
    OutgoingConfig(),
    [
        *((ip, 80, None, T, Side.LOCAL) for ip in LOOPBACKS),
        *((ip, 53, None, U, Side.LOCAL) for ip in LOOPBACKS),
        ("127.0.0.1", 80, "localhost", T, Side.LOCAL),
        ("10.0.0.5", 80, None, T, Side.REMOTE),
        ("10.0.0.5", 53, None, U, Side.REMOTE),
        ("8.8.8.8", 443, "dns.google", T, Side.REMOTE),
        ("2001:db8::1", 80, None, T, Side.REMOTE),
        ("::ffff:10.0.0.5", 80, None, T, Side.REMOTE),
        ("fe80::1%eth0", 80, None, T, Side.REMOTE),
    ],
)

# Remote mode with local exceptions; local beats remote.
net_table(
    OutgoingConfig(
        local=["*.example.com", "10.1.0.0/16:5432", ":6379", "[2001:db8::1]:443"],
        remote=["api.example.com", "10.1.2.3", "[2001:db8::/32]", "0.0.0.0/0"],
    ),
    [
        ("10.9.9.9", 443, "api.example.com", T, Side.LOCAL),
        ("10.9.9.9", 443, "API.Example.COM.", T, Side.LOCAL),
        ("10.9.9.9", 443, "example.com", T, Side.REMOTE),
        ("10.9.9.9", 443, None, T, Side.REMOTE),
        ("10.1.2.3", 5432, None, T, Side.LOCAL),
        ("10.1.2.3", 80, None, T, Side.REMOTE),
        ("10.1.9.9", 5432, None, T, Side.LOCAL),
        ("10.2.9.9", 5432, None, T, Side.REMOTE),
        ("192.0.2.1", 6379, None, T, Side.LOCAL),
        ("2001:db8::2", 6379, None, U, Side.LOCAL),
        ("2001:db8::1", 443, None, T, Side.LOCAL),
        ("2001:db8::1", 80, None, T, Side.REMOTE),
        ("127.0.0.1", 80, None, T, Side.LOCAL),
    ],
)

# Local mode with remote exceptions.
net_table(
    OutgoingConfig(
        mode="local",
        remote=[
            "*.svc.cluster.local",
            "10.96.0.0/12",
            "[fd00::/8]:80",
            ":9000",
            "db:5432",
            "db-?.internal",
        ],
    ),
    [
        ("10.244.0.5", 80, "backend.shop.svc.cluster.local", T, Side.REMOTE),
        ("10.244.0.5", 80, "svc.cluster.local", T, Side.LOCAL),
        ("10.244.0.5", 80, None, T, Side.LOCAL),
        ("10.96.0.10", 53, None, U, Side.REMOTE),
        ("10.111.255.255", 80, None, T, Side.REMOTE),
        ("10.112.0.1", 80, None, T, Side.LOCAL),
        ("::ffff:10.96.0.1", 443, None, T, Side.REMOTE),
        ("fd00::5", 80, None, T, Side.REMOTE),
        ("fd00::5", 81, None, T, Side.LOCAL),
        ("8.8.8.8", 9000, None, T, Side.REMOTE),
        ("192.0.2.9", 5432, "db", T, Side.REMOTE),
        ("192.0.2.9", 5433, "db", T, Side.LOCAL),
        ("192.0.2.9", 5432, "dbx", T, Side.LOCAL),
        ("192.0.2.9", 1, "db-1.internal", T, Side.REMOTE),
        ("192.0.2.9", 1, "db-12.internal", T, Side.LOCAL),
    ],
)

# No UDP through the target, whatever the filters say.
net_table(
    OutgoingConfig(udp=False, remote=["10.0.0.0/8"]),
    [
        ("10.0.0.1", 53, None, U, Side.LOCAL),
        ("10.0.0.1", 53, None, T, Side.REMOTE),
        ("192.0.2.1", 443, None, U, Side.LOCAL),
        ("192.0.2.1", 443, None, T, Side.REMOTE),
    ],
)


@pytest.mark.parametrize(("config", "ip", "port", "hostname", "proto", "expected"), NET_CASES)
def test_net_rules(
    config: OutgoingConfig,
    ip: str,
    port: int,
    hostname: str | None,
    proto: Literal["tcp", "udp"],
    expected: Side,
) -> None:
    net = NetRules(NetworkConfig(outgoing=config))
    names = () if hostname is None else (hostname,)
    assert net.decide(ip, port, hostnames=names, proto=proto) is expected
    # Again, from the cache.
    assert net.decide(ip, port, hostnames=names, proto=proto) is expected
    if not net.needs_names(ip, proto=proto):
        assert net.decide(ip, port, proto=proto) is expected, "names cannot change it"


# Several names behind one address (CNAMEs, virtual hosts): a pattern matching any applies,
# and local still wins.
MANY_NAMES = OutgoingConfig(local=["db.example.com:5432"], remote=["*.example.com"])


@pytest.mark.parametrize(
    ("names", "port", "in_remote_mode", "in_local_mode"),
    [
        ((), 5432, Side.REMOTE, Side.LOCAL),
        (("db.example.com",), 5432, Side.LOCAL, Side.LOCAL),
        (("db.example.com",), 80, Side.REMOTE, Side.REMOTE),
        (("alias.example.com", "db.example.com"), 5432, Side.LOCAL, Side.LOCAL),
        (("db.example.com", "alias.example.com"), 5432, Side.LOCAL, Side.LOCAL),
        (("other.test", "alias.example.com"), 80, Side.REMOTE, Side.REMOTE),
        (("other.test",), 80, Side.REMOTE, Side.LOCAL),
    ],
)
def test_net_rules_with_several_names(
    names: tuple[str, ...], port: int, in_remote_mode: Side, in_local_mode: Side
) -> None:
    for mode, expected in (("remote", in_remote_mode), ("local", in_local_mode)):
        config = NetworkConfig(outgoing=MANY_NAMES.model_copy(update={"mode": mode}))
        got = NetRules(config).decide("192.0.2.7", port, hostnames=names, proto="tcp")
        assert got is expected, mode


@pytest.mark.parametrize(
    ("config", "ip", "proto", "expected"),
    [
        (OutgoingConfig(), "10.0.0.1", T, False),  # no name patterns at all
        (OutgoingConfig(local=["10.0.0.0/8", ":53"]), "10.0.0.1", T, False),
        (OutgoingConfig(local=["*.test"]), "10.0.0.1", T, True),
        (OutgoingConfig(remote=["db.test:5432"]), "10.0.0.1", U, True),
        (OutgoingConfig(local=["*.test"]), "127.0.0.1", T, False),  # always local
        (OutgoingConfig(local=["*.test"]), "::ffff:127.0.0.1", T, False),
        (OutgoingConfig(local=["*.test"]), "::", T, False),
        (OutgoingConfig(local=["*.test"], udp=False), "10.0.0.1", U, False),
        (OutgoingConfig(local=["*.test"], udp=False), "10.0.0.1", T, True),
    ],
)
def test_net_rules_say_when_names_matter(
    config: OutgoingConfig, ip: str, proto: Literal["tcp", "udp"], expected: bool
) -> None:
    assert NetRules(NetworkConfig(outgoing=config)).needs_names(ip, proto=proto) is expected


def test_net_rules_reject_a_malformed_address() -> None:
    with pytest.raises(ValueError, match="nope"):
        NetRules(NetworkConfig()).decide("nope", 80, proto="tcp")
    with pytest.raises(ValueError, match="nope"):
        NetRules(NetworkConfig(outgoing=OutgoingConfig(local=["*.test"]))).needs_names(
            "nope", proto="tcp"
        )


# --- DNS ---

DNS_CASES: list[tuple[DnsConfig, str, Side]] = [
    *(
        (DnsConfig(), name, side)
        for name, side in [
            ("localhost", Side.LOCAL),
            ("LOCALHOST.", Side.LOCAL),
            ("foo.localhost", Side.LOCAL),
            ("notlocalhost", Side.REMOTE),
            ("localhost.example.com", Side.REMOTE),
            ("backend", Side.REMOTE),
            ("backend.shop.svc.cluster.local.", Side.REMOTE),
            ("example.com", Side.REMOTE),
        ]
    ),
    *(
        (DnsConfig(local=["*.internal.example.com", "printer"]), name, side)
        for name, side in [
            ("a.internal.example.com", Side.LOCAL),
            ("a.b.internal.example.com", Side.LOCAL),
            ("internal.example.com", Side.REMOTE),
            ("printer", Side.LOCAL),
            ("Printer.", Side.LOCAL),
            ("printers", Side.REMOTE),
        ]
    ),
    *(
        (
            DnsConfig(
                enabled=False,
                remote=["*.cluster.local", "backend", "x.svc.cluster.local"],
                local=["x.svc.cluster.local"],
            ),
            name,
            side,
        )
        for name, side in [
            ("backend", Side.REMOTE),
            ("b.shop.svc.cluster.local", Side.REMOTE),
            ("x.svc.cluster.local", Side.LOCAL),
            ("example.com", Side.LOCAL),
            ("localhost", Side.LOCAL),
        ]
    ),
    (DnsConfig(enabled=False), "backend", Side.LOCAL),
    (DnsConfig(enabled=False, remote=["*"]), "anything.at.all", Side.REMOTE),
    (DnsConfig(enabled=False, remote=["*"]), "localhost", Side.LOCAL),
]


@pytest.mark.parametrize(("config", "name", "expected"), DNS_CASES)
def test_dns_rules(config: DnsConfig, name: str, expected: Side) -> None:
    assert DnsRules(NetworkConfig(dns=config)).decide(name) is expected


# A name an outgoing filter sends one way (no port) resolves on the side that connects to it;
# explicit DNS patterns still come first, and a filter with a port leaves DNS alone.
FILTERS = OutgoingConfig(
    local=["*.dev.test", "db.shop.test:5432", "*.svc.cluster.local:5432", "10.0.0.0/8", ":6379"],
    remote=["*.shop.test", "api.dev.test", "*.corp.test:443"],
)
DNS_FILTER_CASES: list[tuple[DnsConfig, str, Side]] = [
    (DnsConfig(), "x.dev.test", Side.LOCAL),
    (DnsConfig(), "api.dev.test", Side.LOCAL),  # local wins, as for connections
    (DnsConfig(), "web.shop.test", Side.REMOTE),
    (DnsConfig(), "db.shop.test", Side.REMOTE),  # the port-less remote filter
    (DnsConfig(), "backend.shop.svc.cluster.local", Side.REMOTE),  # a filter with a port
    (DnsConfig(), "backend", Side.REMOTE),
    (DnsConfig(enabled=False), "web.shop.test", Side.REMOTE),
    (DnsConfig(enabled=False), "x.dev.test", Side.LOCAL),
    (DnsConfig(enabled=False), "www.corp.test", Side.LOCAL),  # a filter with a port
    (DnsConfig(enabled=False), "example.com", Side.LOCAL),
    (DnsConfig(remote=["x.dev.test"]), "x.dev.test", Side.REMOTE),  # dns patterns first
    (DnsConfig(enabled=False, local=["web.shop.test"]), "web.shop.test", Side.LOCAL),
    (DnsConfig(), "localhost", Side.LOCAL),
]


@pytest.mark.parametrize(("config", "name", "expected"), DNS_FILTER_CASES)
def test_dns_rules_follow_the_outgoing_name_filters(
    config: DnsConfig, name: str, expected: Side
) -> None:
    network = NetworkConfig(dns=config, outgoing=FILTERS)
    assert DnsRules(network).decide(name) is expected


@pytest.mark.parametrize(
    ("enabled", "fs_mode", "through_pod", "backend"),
    [
        (True, "read", True, Side.REMOTE),
        (True, "write", True, Side.REMOTE),
        (True, "local", False, Side.LOCAL),
        (False, "read", False, Side.LOCAL),
    ],
)
def test_dns_rules_say_whether_the_process_resolves_through_the_pod(
    enabled: bool, fs_mode: Literal["local", "read", "write"], through_pod: bool, backend: Side
) -> None:
    rules = DnsRules(NetworkConfig(dns=DnsConfig(enabled=enabled)), fs_mode=fs_mode)
    assert rules.through_pod is through_pod
    assert rules.decide("backend") is backend


# --- Files: the program's own places ---

PLACES = ("/srv/app/pkg", "/workspaces/proj", "/etc/app", "/var/www/site", "/home", "/")


@pytest.mark.parametrize(
    ("path", "expected"),
    [
        # A program place holds everything below it; the directories on the way to it are
        # local too (realpath, importers walking up).
        ("/srv/app/pkg", L),
        ("/srv/app/pkg/shop/data.txt", L),
        ("/srv/app", L),
        ("/srv", L),
        ("/srv/app/other.txt", RO),
        ("/workspaces/proj/Makefile", L),
        ("/workspaces", L),
        # Never a program's place: / itself, /home, and /etc and /var with what is below.
        ("/etc/app/config.yaml", RO),
        ("/etc/app", RO),
        ("/var/www/site/index.html", RO),
        ("/home/other/file", RO),
        ("/etc/shop/config.yaml", RO),
        # Code files, and the manifests that tell interpreters where code is, anywhere.
        ("/mnt/proj/package.json", L),
        ("/mnt/proj/.venv/pyvenv.cfg", L),
        ("/mnt/proj/settings.json", RO),
    ],
)
def test_program_dirs_are_local_trees(path: str, expected: FileAction) -> None:
    files = FileRules(FsConfig(), cwd=CWD, home=HOME, executable=EXE, program_dirs=PLACES)
    check(files, path, False, expected)


def test_program_dirs_must_be_absolute() -> None:
    with pytest.raises(ValueError, match="program_dirs"):
        FileRules(FsConfig(), cwd=CWD, home=HOME, executable=EXE, program_dirs=["pkg"])


CWD_CASES: list[tuple[str | None, str, bool, FileAction, str]] = [
    # current directory, path, write, expected, why
    ("/data/other", "/data/other/Makefile", False, L, "a file in the current directory"),
    ("/data/other", "/data/other/sub/x", False, L, "below the current directory"),
    ("/data/other", "/data/other", False, L, "the current directory itself (listing .)"),
    ("/data/other", "/data", False, L, "a directory leading to it"),
    ("/data/other", "/data/else/x", False, RO, "a sibling is not"),
    ("/data/other", "/", False, RO, "the root never is"),
    ("/data/other", "/etc/shop/config.yaml", False, RO, "elsewhere the defaults hold"),
    ("/data/other", "/data/other/x", True, L, "writes too"),
    ("/etc", "/etc/shop/config.yaml", False, RO, "/etc is never the program's place"),
    ("/var/lib/x", "/var/lib/x/y", False, L, "a system tree is local anyway"),
    ("/var/www", "/var/www/index.html", False, RO, "/var is never the program's place"),
    ("/home", "/home/other/x", False, RO, "/home is never the program's place"),
    ("/", "/data/x", False, RO, "nor is /"),
    (None, "/data/other/Makefile", False, RO, "unknown current directory"),
]


@pytest.mark.parametrize(("current", "path", "write", "expected", "why"), CWD_CASES)
def test_the_current_directory_wherever_it_moved_is_local(
    current: str | None, path: str, write: bool, expected: FileAction, why: str
) -> None:
    assert rules().decide(path, write=write, cwd=lambda: current) is expected, why


@pytest.mark.parametrize(
    ("path", "write", "expected"),
    [
        ("/data/other/fixtures/a.json", False, RO),  # an explicit pattern beats it
        ("/data/other/secret.pem", False, NF),
        ("/data/other/x", False, L),
        ("/data/other/resolv.conf", False, L),
    ],
)
def test_the_current_directory_yields_to_explicit_patterns(
    path: str, write: bool, expected: FileAction
) -> None:
    config = FsConfig(read_only=["/data/other/fixtures/**"], not_found=["*.pem"])
    assert rules(config).decide(path, write=write, cwd=lambda: "/data/other") is expected


def test_the_current_directory_is_asked_only_when_it_matters() -> None:
    asked = 0

    def cwd() -> str:
        nonlocal asked
        asked += 1
        return "/data/other"

    files = rules()
    for path in ("/usr/lib/x.so", CWD + "/a", "/etc/hosts", "/app/main.py"):
        files.decide(path, write=False, cwd=cwd)
    assert asked == 0
    files.decide("/data/other/x", write=False, cwd=cwd)
    assert asked == 1


FAKE_FS: dict[str, Literal["dir", "file"]] = {
    "/srv/app": "dir",
    "/srv/app/main.py": "file",
    "/srv/app/pkg": "dir",
    "/srv/lib": "dir",
    "/work/proj/sub": "dir",
    "/work/other": "dir",
    "/work/other/Makefile": "file",
    "/etc/os-release": "file",
}


@pytest.mark.parametrize(
    ("argv", "env", "expected"),
    [
        (["python3", "/srv/app/main.py"], {}, ("/srv/app",)),
        (["node", "/srv/app/missing.js"], {}, ()),  # only what exists here counts
        (["make", "-C", "/work/other"], {}, ("/work/other",)),
        (["uvicorn", "--app-dir=/srv/app", "m:app"], {}, ("/srv/app",)),
        (["make", "-f", "../other/Makefile"], {}, ("/work/other",)),  # relative to cwd
        (["make", "-C", "sub"], {}, ()),  # no `/`: inside the working directory anyway
        (["cat", "/etc/os-release"], {}, ("/etc",)),  # FileRules drops such places
        (["python3", "-c", "print('a/b')"], {}, ()),
        (
            ["python3"],
            {"PYTHONPATH": "/srv/app/pkg::/nowhere", "NODE_PATH": "/srv/lib"},
            ("/srv/app/pkg", "/srv/lib"),
        ),
        (["python3", "/srv/app/main.py", "/srv/app"], {"PYTHONPATH": "/srv/app"}, ("/srv/app",)),
        (["sh", "-c", "cd /srv/app\0 && ls"], {}, ()),
    ],
)
def test_program_dirs_from_the_command_line_and_environment(
    argv: list[str], env: dict[str, str], expected: tuple[str, ...]
) -> None:
    got = program_dirs(argv, env, cwd="/work/proj", kind=FAKE_FS.get)
    assert got == expected
