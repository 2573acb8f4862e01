"""Which side serves what the local process touches: files, outgoing connections, DNS names.

Pure decisions, no I/O: each rule class is built once from the configuration (and, for files,
the local context: working directory, home, executable, temporary directories) and then
answers per intercepted call, so the patterns are compiled up front and `decide` does cheap
string work. The pattern syntax is documented (and validated) in `tether.config.models`.
"""

import enum
import functools
import ipaddress
import posixpath
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Literal

from tether.config.models import (
    FsConfig,
    IPNetwork,
    NetworkConfig,
    name_pattern_regex,
    parse_outgoing_filter,
    path_pattern_regex,
)

__all__ = [
    "ALWAYS_REMOTE_FILES",
    "LOCAL_FILES",
    "LOCAL_PREFIXES",
    "LOCAL_TREES",
    "DnsRules",
    "FileAction",
    "FileRules",
    "NetRules",
    "Side",
]


class Side(enum.Enum):
    """Where something is served: on this machine or in the target pod."""

    LOCAL = "local"
    REMOTE = "remote"


class FileAction(enum.Enum):
    """What to do with one file access."""

    LOCAL = "local"
    """Use the local file."""
    REMOTE_READ = "remote_read"
    """Read the target's file; an open for writing must fail with EROFS."""
    REMOTE_RW = "remote_rw"
    """Read and write the target's file."""
    NOT_FOUND = "not_found"
    """Pretend the file does not exist: ENOENT, even for an open with O_CREAT."""


# --- File defaults ---

# Directory trees served locally: the system's programs, libraries and kernel interfaces, and
# the local scratch and state directories. Each is the directory and everything below it.
LOCAL_TREES: tuple[str, ...] = (
    "/usr",
    "/lib",
    "/lib32",
    "/lib64",
    "/libx32",
    "/bin",
    "/sbin",
    "/opt",
    "/nix",
    "/snap",
    "/proc",
    "/sys",
    "/dev",
    "/run",
    "/var/run",
    "/tmp",
    "/var/tmp",
    "/var/cache",
    "/var/lib",
    "/boot",
    # Configuration that belongs to the local libraries and runtimes, not to the app.
    "/etc/ssl",
    "/etc/pki",
    "/etc/ca-certificates",
    "/etc/crypto-policies",
    "/etc/alternatives",
    "/etc/fonts",
    "/etc/terminfo",
    "/etc/perl",
)

# Prefixes of names (not directories): /etc/ld.so.cache, /etc/python3.11/, /etc/nodejs/...
LOCAL_PREFIXES: tuple[str, ...] = (
    "/etc/ld.so.",
    "/etc/python",
    "/etc/node",
    "/etc/java",
)

# Single files served locally. /etc/passwd, /etc/group and /etc/nsswitch.conf are the local
# user database as the local libc expects it (tether serves its own versions separately).
LOCAL_FILES: frozenset[str] = frozenset(
    {
        "/etc/localtime",
        "/etc/timezone",
        "/etc/passwd",
        "/etc/group",
        "/etc/shadow",
        "/etc/gshadow",
        "/etc/nsswitch.conf",
        "/etc/gai.conf",
        "/etc/host.conf",
        "/etc/mime.types",
        "/etc/ca-certificates.conf",
        "/etc/locale.alias",
        "/etc/locale.conf",
        "/etc/inputrc",
    }
)

# The target's name-resolution files: the process resolves names as the pod does. Read-only,
# since a process writing them would change the pod's (or, locally, the machine's) resolution.
ALWAYS_REMOTE_FILES: frozenset[str] = frozenset({"/etc/resolv.conf", "/etc/hosts", "/etc/hostname"})

# Interpreter and library files are the local program's own wherever they live.
_CODE_SUFFIXES = (
    ".py",
    ".pyc",
    ".pyi",
    ".pth",
    ".so",
    ".a",
    ".js",
    ".mjs",
    ".cjs",
    ".node",
    ".jar",
    ".class",
    ".rb",
    ".pl",
    ".pm",
)
# Versioned shared libraries (libssl.so.3, libc.so.6), not any name with ".so." in it.
_SO_VERSION = re.compile(r"\.so(?:\.[0-9]+)+$")
# Package directories; a .json under node_modules is covered by the whole tree being local.
_CODE_DIRS = re.compile(r"/(?:node_modules|__pycache__|site-packages|dist-packages)(?:/|$)")


def _is_code(path: str) -> bool:
    base = path[path.rfind("/") + 1 :]
    if base.endswith(_CODE_SUFFIXES):
        return True
    if ".so." in base and _SO_VERSION.search(base) is not None:
        return True
    return _CODE_DIRS.search(path) is not None


def _absolute(what: str, path: str) -> str:
    if not path.startswith("/"):
        raise ValueError(f"{what} must be an absolute path, got {path!r}")
    return posixpath.normpath(path).replace("//", "/")


def _ancestors(path: str) -> Iterable[str]:
    parent = posixpath.dirname(path)
    while parent != "/":
        yield parent
        parent = posixpath.dirname(parent)


def _compile_any(regexes: Iterable[str]) -> re.Pattern[str] | None:
    parts = [f"(?:{regex})" for regex in regexes]
    return re.compile("|".join(parts)) if parts else None


class FileRules:
    """Decides, for each absolute path the process opens, which side serves it.

    Precedence: the explicit patterns (`not_found`, then `local`, `read_write`, `read_only`);
    in mode "local" everything else is local. Otherwise the defaults: /etc/resolv.conf,
    /etc/hosts and /etc/hostname are the target's (read-only); system trees, the working
    directory, home directory and temporary directories (each with everything below it, and
    the directories leading to them), the executable, and interpreter/library files anywhere
    (by extension, or under node_modules/, __pycache__/, site-packages/, dist-packages/) are
    local. Anything else follows the mode: "read" reads the target's file and writes a local
    one; "write" reads and writes the target's.

    The working, home and temporary directories are skipped when they are `/`, which would
    otherwise make every file local.
    """

    def __init__(
        self,
        config: FsConfig,
        *,
        cwd: str,
        home: str,
        executable: str,
        temp_dirs: Sequence[str] = (),
        remote_dns_files: bool = True,
        cache_size: int = 65536,
    ) -> None:
        """Compile `config` for this process.

        `cwd`, `home`, `executable` and `temp_dirs` must be absolute. `remote_dns_files` False
        (for a session whose DNS is local, `network.dns.enabled` false) makes /etc/resolv.conf,
        /etc/hosts and /etc/hostname local defaults instead of the target's.
        """
        cwd = _absolute("cwd", cwd)
        home = _absolute("home", home)
        executable = _absolute("executable", executable)
        trees = [cwd, home, *(_absolute("temp_dirs entry", t) for t in temp_dirs)]
        trees = [tree for tree in trees if tree != "/"]

        self._mode = config.mode
        self._not_found = _compile_any(path_pattern_regex(p, home) for p in config.not_found)
        self._local = _compile_any(path_pattern_regex(p, home) for p in config.local)
        self._read_write = _compile_any(path_pattern_regex(p, home) for p in config.read_write)
        self._read_only = _compile_any(path_pattern_regex(p, home) for p in config.read_only)
        self._dns_files = FileAction.REMOTE_READ if remote_dns_files else FileAction.LOCAL

        exact = set(LOCAL_FILES) | set(LOCAL_TREES) | set(trees) | {executable}
        # Path resolution (realpath, getcwd, git's search for .git) stats each directory on
        # the way to a local tree; those must be the local ones too.
        for path in [*trees, executable]:
            exact.update(_ancestors(path))
        exact.discard("/")
        self._local_exact = frozenset(exact)
        self._local_prefixes = (
            *(tree + "/" for tree in LOCAL_TREES),
            *LOCAL_PREFIXES,
            *(tree + "/" for tree in trees),
        )
        # Bound to this instance (not the class) so that the cache dies with the rules.
        self._cached = functools.lru_cache(maxsize=cache_size)(self._decide)

    def decide(self, path: str, *, write: bool) -> FileAction:
        """The action for `path` (absolute and normalized), opened for writing when `write`
        (O_WRONLY, O_RDWR, O_CREAT, O_TRUNC or O_APPEND)."""
        return self._cached(path, write)

    def _decide(self, path: str, write: bool) -> FileAction:
        if not path.startswith("/"):
            raise ValueError(f"not an absolute path: {path!r}")
        if self._not_found is not None and self._not_found.fullmatch(path):
            return FileAction.NOT_FOUND
        if self._local is not None and self._local.fullmatch(path):
            return FileAction.LOCAL
        if self._read_write is not None and self._read_write.fullmatch(path):
            return FileAction.REMOTE_RW
        if self._read_only is not None and self._read_only.fullmatch(path):
            return FileAction.REMOTE_READ
        if self._mode == "local":
            return FileAction.LOCAL
        if path in ALWAYS_REMOTE_FILES:
            return self._dns_files
        if path in self._local_exact or path.startswith(self._local_prefixes) or _is_code(path):
            return FileAction.LOCAL
        if self._mode == "write":
            return FileAction.REMOTE_RW
        return FileAction.LOCAL if write else FileAction.REMOTE_READ


# --- Network ---

_IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


@dataclass(frozen=True)
class _Filter:
    network: IPNetwork | None
    name: re.Pattern[str] | None
    port: int | None

    def matches(self, ip: _IPAddress, port: int, name: str | None) -> bool:
        if self.port is not None and self.port != port:
            return False
        if self.network is not None:
            # `in` across IP versions is False, which is what a v4 range against a v6 peer means.
            return ip in self.network
        if self.name is not None:
            return name is not None and self.name.fullmatch(name) is not None
        return True


def _compile_filters(entries: Iterable[str]) -> tuple[_Filter, ...]:
    filters = []
    for entry in entries:
        parsed = parse_outgoing_filter(entry)
        name = None if parsed.name is None else re.compile(name_pattern_regex(parsed.name))
        filters.append(_Filter(parsed.network, name, parsed.port))
    return tuple(filters)


def _normalize_name(name: str) -> str:
    return name.lower().removesuffix(".")


class NetRules:
    """Decides which side makes each outgoing connection (TCP, or connected UDP).

    Loopback and unspecified addresses (127.0.0.0/8, ::1, 0.0.0.0, ::, and their IPv4-mapped
    forms) are always local; with `udp` false, so is all UDP. Then an entry of `local` wins,
    then one of `remote`, then `mode`. Name patterns match the name the process looked up, so
    they only apply when tether knows it.
    """

    def __init__(self, config: NetworkConfig, *, cache_size: int = 4096) -> None:
        """Compile the outgoing section of `config`."""
        outgoing = config.outgoing
        self._default = Side.REMOTE if outgoing.mode == "remote" else Side.LOCAL
        self._udp = outgoing.udp
        self._local = _compile_filters(outgoing.local)
        self._remote = _compile_filters(outgoing.remote)
        self._cached = functools.lru_cache(maxsize=cache_size)(self._decide)

    def decide(
        self,
        host_ip: str,
        port: int,
        *,
        hostname: str | None,
        proto: Literal["tcp", "udp"],
    ) -> Side:
        """The side that connects to `host_ip`:`port`; `hostname` is the name the process
        resolved to that address, when known. Raises ValueError for a malformed address."""
        return self._cached(host_ip, port, hostname, proto)

    def _decide(self, host_ip: str, port: int, hostname: str | None, proto: str) -> Side:
        ip = ipaddress.ip_address(host_ip)
        if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
            ip = ip.ipv4_mapped
        if ip.is_loopback or ip.is_unspecified:
            return Side.LOCAL
        if proto == "udp" and not self._udp:
            return Side.LOCAL
        name = None if hostname is None else _normalize_name(hostname)
        if any(f.matches(ip, port, name) for f in self._local):
            return Side.LOCAL
        if any(f.matches(ip, port, name) for f in self._remote):
            return Side.REMOTE
        return self._default


class DnsRules:
    """Decides which side resolves each name.

    localhost and *.localhost are always local; then a `local` pattern makes a name local;
    with DNS enabled everything else is the target's, otherwise only the `remote` patterns.
    """

    def __init__(self, config: NetworkConfig) -> None:
        """Compile the dns section of `config`."""
        dns = config.dns
        self._enabled = dns.enabled
        self._local = _compile_any(name_pattern_regex(p) for p in dns.local)
        self._remote = _compile_any(name_pattern_regex(p) for p in dns.remote)

    def decide(self, name: str) -> Side:
        """The side that resolves `name` (any case, with or without a trailing dot)."""
        name = _normalize_name(name)
        if name == "localhost" or name.endswith(".localhost"):
            return Side.LOCAL
        if self._local is not None and self._local.fullmatch(name):
            return Side.LOCAL
        if self._enabled:
            return Side.REMOTE
        if self._remote is not None and self._remote.fullmatch(name):
            return Side.REMOTE
        return Side.LOCAL
