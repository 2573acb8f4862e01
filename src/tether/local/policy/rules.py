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
from collections.abc import Callable, Iterable, Mapping, Sequence
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
    "program_dirs",
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
# Files that say how the interpreter finds the program's code: a virtual environment's
# configuration (next to its bin/, so outside it) and a node package's manifest (read in every
# directory on the way up from a script, and for each directory that is required).
_CODE_NAMES = frozenset({"pyvenv.cfg", "package.json"})
# Versioned shared libraries (libssl.so.3, libc.so.6), not any name with ".so." in it.
_SO_VERSION = re.compile(r"\.so(?:\.[0-9]+)+$")
# Package directories; a .json under node_modules is covered by the whole tree being local.
_CODE_DIRS = re.compile(r"/(?:node_modules|__pycache__|site-packages|dist-packages)(?:/|$)")


def _is_code(path: str) -> bool:
    base = path[path.rfind("/") + 1 :]
    if base.endswith(_CODE_SUFFIXES) or base in _CODE_NAMES:
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


# Where a program's own place can never be: the root, the directory of every home, and the
# system's configuration and variable data, where the pod's own files are (a program run from
# /srv/app makes /srv/app local; a `cat /etc/os-release` must not make /etc local).
_NOT_PROGRAM_PLACES = frozenset({"/", "/home"})
_NOT_PROGRAM_TREES = ("/etc", "/var")


def _is_program_place(path: str) -> bool:
    if path in _NOT_PROGRAM_PLACES:
        return False
    return not any(path == tree or path.startswith(tree + "/") for tree in _NOT_PROGRAM_TREES)


def _within_or_above(path: str, directory: str) -> bool:
    """Whether `path` is `directory`, below it, or one of the directories leading to it."""
    if path == directory or path.startswith(directory + "/"):
        return True
    return path != "/" and directory.startswith(path + "/")


PathKind = Literal["dir", "file"] | None

_MAX_PATH = 4096


def program_dirs(
    argv: Sequence[str],
    env: Mapping[str, str],
    *,
    cwd: str,
    kind: Callable[[str], PathKind],
) -> tuple[str, ...]:
    """The directories that hold a program's own files, from how it is started: every entry
    of PYTHONPATH and NODE_PATH, every directory named on the command line (`-C DIR`,
    `--app-dir=DIR`), and the directory of every file named there (the script, a makefile).

    Only paths that exist on this machine count (`kind` tells what a local path is, None if
    nothing is there): a path the user typed that exists only in the pod is the pod's. A word
    without a `/` is skipped, since relative to `cwd` it is inside it. `cwd` must be absolute.
    """
    candidates: list[str] = []
    for variable in ("PYTHONPATH", "NODE_PATH"):
        candidates.extend(entry for entry in env.get(variable, "").split(":") if entry)
    for arg in argv[1:]:
        if arg.startswith("-"):
            arg = arg.partition("=")[2]
        if "/" in arg:
            candidates.append(arg)
    found: dict[str, None] = {}
    for candidate in candidates:
        if "\0" in candidate or len(candidate) > _MAX_PATH:
            continue
        path = posixpath.normpath(posixpath.join(cwd, candidate))
        what = kind(path)
        if what == "dir":
            found[path] = None
        elif what == "file":
            found[posixpath.dirname(path)] = None
    return tuple(found)


def _compile_any(regexes: Iterable[str]) -> re.Pattern[str] | None:
    parts = [f"(?:{regex})" for regex in regexes]
    return re.compile("|".join(parts)) if parts else None


class FileRules:
    """Decides, for each absolute path the process opens, which side serves it.

    Precedence: the explicit patterns (`not_found`, then `local`, `read_write`, `read_only`);
    in mode "local" everything else is local. Otherwise the defaults: /etc/resolv.conf,
    /etc/hosts and /etc/hostname are the target's (read-only); local are the system trees, the
    program's places (each with everything below it, and the directories leading to it: the
    working, home and temporary directories, the `program_dirs`, and the calling process's
    current directory wherever it moved), the executable and the directories leading to it,
    and interpreter/library files anywhere (by extension, a few names such as package.json
    and pyvenv.cfg, or under node_modules/, __pycache__/, site-packages/, dist-packages/).
    Anything else follows the mode: "read" reads the target's file and writes a local one;
    "write" reads and writes the target's.

    The working, home and temporary directories are skipped when they are `/`, which would
    otherwise make every file local. The `program_dirs` and current directories are also
    skipped when they are /home or at or under /etc or /var, where the pod's own files live.
    """

    def __init__(
        self,
        config: FsConfig,
        *,
        cwd: str,
        home: str,
        executable: str,
        temp_dirs: Sequence[str] = (),
        program_dirs: Sequence[str] = (),
        remote_dns_files: bool = True,
        cache_size: int = 65536,
    ) -> None:
        """Compile `config` for this process.

        `cwd`, `home`, `executable`, `temp_dirs` and `program_dirs` (see `program_dirs()`) must
        be absolute. `remote_dns_files` False (for a session whose DNS is local, see
        `DnsRules.through_pod`) makes /etc/resolv.conf, /etc/hosts and /etc/hostname local
        defaults instead of the target's.
        """
        cwd = _absolute("cwd", cwd)
        home = _absolute("home", home)
        executable = _absolute("executable", executable)
        trees = [cwd, home, *(_absolute("temp_dirs entry", t) for t in temp_dirs)]
        trees = [tree for tree in trees if tree != "/"]
        places = (_absolute("program_dirs entry", d) for d in program_dirs)
        trees.extend(place for place in places if _is_program_place(place))

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

    def decide(
        self, path: str, *, write: bool, cwd: Callable[[], str | None] | None = None
    ) -> FileAction:
        """The action for `path` (absolute and normalized), opened for writing when `write`
        (O_WRONLY, O_RDWR, O_CREAT, O_TRUNC or O_APPEND).

        `cwd` gives the calling process's current directory (absolute and normalized; None if
        unknown); it is called only when the answer depends on it, so it may do I/O.
        """
        action, by_mode = self._cached(path, write)
        if by_mode and cwd is not None:
            current = cwd()
            if (
                current is not None
                and _is_program_place(current)
                and _within_or_above(path, current)
            ):
                return FileAction.LOCAL
        return action

    def _decide(self, path: str, write: bool) -> tuple[FileAction, bool]:
        """The action, and whether only the mode decided it (so a default may still apply)."""
        if not path.startswith("/"):
            raise ValueError(f"not an absolute path: {path!r}")
        if self._not_found is not None and self._not_found.fullmatch(path):
            return FileAction.NOT_FOUND, False
        if self._local is not None and self._local.fullmatch(path):
            return FileAction.LOCAL, False
        if self._read_write is not None and self._read_write.fullmatch(path):
            return FileAction.REMOTE_RW, False
        if self._read_only is not None and self._read_only.fullmatch(path):
            return FileAction.REMOTE_READ, False
        if self._mode == "local":
            return FileAction.LOCAL, False
        if path in ALWAYS_REMOTE_FILES:
            return self._dns_files, False
        if path in self._local_exact or path.startswith(self._local_prefixes) or _is_code(path):
            return FileAction.LOCAL, False
        if self._mode == "write":
            return FileAction.REMOTE_RW, True
        return (FileAction.LOCAL if write else FileAction.REMOTE_READ), True


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


def _name_patterns(filters: Iterable[_Filter]) -> re.Pattern[str] | None:
    """The names of the filters that send every connection to a name one way (no port)."""
    names = [f.name.pattern for f in filters if f.name is not None and f.port is None]
    return _compile_any(names)


def _unmapped(host_ip: str) -> _IPAddress:
    ip = ipaddress.ip_address(host_ip)
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    return ip


class NetRules:
    """Decides which side makes each outgoing connection (TCP, or connected UDP).

    Loopback and unspecified addresses (127.0.0.0/8, ::1, 0.0.0.0, ::, and their IPv4-mapped
    forms) are always local; with `udp` false, so is all UDP. Then an entry of `local` wins,
    then one of `remote`, then `mode`. Name patterns match the names the process looked up
    for the address (tether learns them from the DNS answers it carries); when several names
    led to it, a pattern matching any of them applies.
    """

    def __init__(self, config: NetworkConfig, *, cache_size: int = 4096) -> None:
        """Compile the outgoing section of `config`."""
        outgoing = config.outgoing
        self._default = Side.REMOTE if outgoing.mode == "remote" else Side.LOCAL
        self._udp = outgoing.udp
        self._local = _compile_filters(outgoing.local)
        self._remote = _compile_filters(outgoing.remote)
        self._named = any(f.name is not None for f in (*self._local, *self._remote))
        self._cached = functools.lru_cache(maxsize=cache_size)(self._decide)

    def needs_names(self, host_ip: str, *, proto: Literal["tcp", "udp"]) -> bool:
        """Whether the names behind `host_ip` may change `decide`'s answer: some filter has a
        name pattern and the address is not one that is always local. When False, `decide`
        without names is the answer. Raises ValueError for a malformed address."""
        if not self._named:
            return False
        ip = _unmapped(host_ip)
        if ip.is_loopback or ip.is_unspecified:
            return False
        return self._udp or proto != "udp"

    def decide(
        self,
        host_ip: str,
        port: int,
        *,
        hostnames: Sequence[str] = (),
        proto: Literal["tcp", "udp"],
    ) -> Side:
        """The side that connects to `host_ip`:`port`; `hostnames` are the names the process
        resolved to that address, as far as tether knows. Raises ValueError for a malformed
        address."""
        return self._cached(host_ip, port, tuple(hostnames), proto)

    def _decide(self, host_ip: str, port: int, hostnames: tuple[str, ...], proto: str) -> Side:
        ip = _unmapped(host_ip)
        if ip.is_loopback or ip.is_unspecified:
            return Side.LOCAL
        if proto == "udp" and not self._udp:
            return Side.LOCAL
        names: tuple[str | None, ...] = tuple(_normalize_name(n) for n in hostnames) or (None,)
        if any(f.matches(ip, port, name) for f in self._local for name in names):
            return Side.LOCAL
        if any(f.matches(ip, port, name) for f in self._remote for name in names):
            return Side.REMOTE
        return self._default


class DnsRules:
    """Decides how the process resolves names: through the pod or on this machine, per name.

    `through_pod` (`network.dns.enabled`, unless every file is local: `fs.mode` "local") means
    the process resolves as the pod does: tether serves it the pod's resolv.conf (made to use
    TCP) and an nsswitch.conf that asks DNS, and the pod's /etc/hosts and /etc/hostname.
    Either way its queries reach tether's DNS proxy, which asks `decide` for each name.

    `decide`: localhost and *.localhost are always local; then a `dns.local` pattern makes a
    name local and a `dns.remote` one remote; then a name pattern without a port in
    `network.outgoing.local` makes it local and one in `network.outgoing.remote` remote (every
    connection to such a name is made on that side, so it must get that side's address);
    then `through_pod`. A name filter with a port splits the name's connections between the
    sides, so it leaves the name's resolution alone (`*.svc.cluster.local:5432` must not stop
    the cluster's names from resolving); `dns.local`/`dns.remote` say where.
    """

    def __init__(
        self, config: NetworkConfig, *, fs_mode: Literal["local", "read", "write"] = "read"
    ) -> None:
        """Compile the dns section of `config` and the outgoing filters' name patterns."""
        dns = config.dns
        self.through_pod = dns.enabled and fs_mode != "local"
        self._local = _compile_any(name_pattern_regex(p) for p in dns.local)
        self._remote = _compile_any(name_pattern_regex(p) for p in dns.remote)
        self._connect_local = _name_patterns(_compile_filters(config.outgoing.local))
        self._connect_remote = _name_patterns(_compile_filters(config.outgoing.remote))

    def decide(self, name: str) -> Side:
        """The side that resolves `name` (any case, with or without a trailing dot)."""
        name = _normalize_name(name)
        if name == "localhost" or name.endswith(".localhost"):
            return Side.LOCAL
        for patterns, side in (
            (self._local, Side.LOCAL),
            (self._remote, Side.REMOTE),
            (self._connect_local, Side.LOCAL),
            (self._connect_remote, Side.REMOTE),
        ):
            if patterns is not None and patterns.fullmatch(name):
                return side
        return Side.REMOTE if self.through_pod else Side.LOCAL
