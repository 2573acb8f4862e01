"""Debian packages the devcluster needs, installed on first use, and the preflight check that
every program the set-up will call is there before the long build starts.

The two lists are kept apart on purpose: `PACKAGES` is what the set-up installs, `PROGRAMS` is
what it and the Kubernetes build call. A program that nothing installs (rsync was one: the
build needs it and only a machine where it had been installed by hand had it) is then caught
by `preflight()` in one line, before a five-minute build fails in a way that does not name it.
"""

import logging
import os
import shutil
from collections.abc import Iterable, Mapping
from pathlib import Path

from devcluster.errors import DevclusterError
from devcluster.shell import run

log = logging.getLogger("devcluster")

# What the set-up installs: the cluster's runtime pieces, the Kubernetes build's toolchain and
# the tools the image builders call. bootstrap.sh installs the Python and e2e-test tools.
PACKAGES = (
    "etcd-server",
    "containerd",
    "runc",
    "containernetworking-plugins",
    "iptables",
    "conntrack",
    "iproute2",
    # The Kubernetes build.
    "golang-go",
    "make",
    "gcc",
    "libc6-dev",
    "dpkg-dev",
    "rsync",
    # Images: the base images are assembled from Debian files, the agent image is
    # bootstrapped from the Debian registry.
    "busybox-static",
    "python3.11",
    "libc-bin",
    "debootstrap",
    "ca-certificates",
)

# Every program devcluster, the Kubernetes build and the image builders call -> the Debian
# package that provides it. A bare name is looked up on PATH (plus the sbin directories);
# an absolute path must exist as it is (CNI plugins are not on PATH).
PROGRAMS: Mapping[str, str] = {
    # Cluster runtime.
    "etcd": "etcd-server",
    "containerd": "containerd",
    "containerd-shim-runc-v2": "containerd",
    "ctr": "containerd",
    "runc": "runc",
    "/usr/lib/cni/bridge": "containernetworking-plugins",
    "/usr/lib/cni/host-local": "containernetworking-plugins",
    "/usr/lib/cni/loopback": "containernetworking-plugins",
    "/usr/lib/cni/portmap": "containernetworking-plugins",
    "iptables": "iptables",
    "iptables-save": "iptables",
    "iptables-restore": "iptables",
    "ip6tables": "iptables",
    "conntrack": "conntrack",
    "ip": "iproute2",
    "mount": "mount",
    "umount": "mount",
    # Fetching and building Kubernetes.
    "apt-get": "apt",
    "dpkg-source": "dpkg-dev",
    "dpkg-query": "dpkg",
    "tar": "tar",
    "gzip": "gzip",
    "make": "make",
    "go": "golang-go",
    "rsync": "rsync",
    "bash": "bash",
    "find": "findutils",
    "sed": "sed",
    "grep": "grep",
    "awk": "mawk",
    "diff": "diffutils",
    # Image builders.
    "gcc": "gcc",
    "ldd": "libc-bin",
    "busybox": "busybox-static",
    "python3.11": "python3.11",
    "debootstrap": "debootstrap",
    "chroot": "coreutils",
}

# Priority "required" packages: every Debian 12 system, a minbase bootstrap included, has them.
BASE_SYSTEM = frozenset(
    {"apt", "bash", "coreutils", "diffutils", "dpkg", "findutils", "grep", "gzip", "mawk", "mount"}
    | {"sed", "tar"}
)

_SBIN = ("/usr/local/sbin", "/usr/sbin", "/sbin")

SRC_LIST = Path("/etc/apt/sources.list.d/tether-devcluster-src.sources")
_SRC_ENTRY = """Types: deb-src
URIs: http://deb.debian.org/debian
Suites: bookworm
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
"""


def _search_path(environ: Mapping[str, str]) -> str:
    parts = [p for p in environ.get("PATH", "/usr/bin:/bin").split(":") if p]
    return ":".join([*parts, *(d for d in _SBIN if d not in parts)])


def missing_programs(
    programs: Mapping[str, str] = PROGRAMS, environ: Mapping[str, str] = os.environ
) -> dict[str, str]:
    """The programs of `programs` that cannot be found, with their packages."""
    path = _search_path(environ)
    missing: dict[str, str] = {}
    for prog, pkg in programs.items():
        found = Path(prog).is_file() if prog.startswith("/") else shutil.which(prog, path=path)
        if not found:
            missing[prog] = pkg
    return missing


def describe_missing(missing: Mapping[str, str]) -> str:
    """One line naming each missing program and the Debian package that provides it."""
    items = ", ".join(f"{prog} (Debian package {pkg})" for prog, pkg in missing.items())
    pkgs = " ".join(sorted(set(missing.values())))
    return f"missing: {items}; install with: apt-get install {pkgs}"


def preflight() -> None:
    """Raise DevclusterError, in one line, unless every program the set-up calls is there."""
    missing = missing_programs(PROGRAMS)
    if missing:
        raise DevclusterError(describe_missing(missing))


def installed(packages: Iterable[str]) -> set[str]:
    """Which of `packages` dpkg reports as installed."""
    names = list(packages)
    if not names:
        return set()
    # dpkg-query exits 1 when a name is unknown but still prints the others.
    proc = run(["dpkg-query", "-W", "-f", "${Package} ${db:Status-Status}\n", *names], check=False)
    seen = set()
    for line in proc.stdout.decode().splitlines():
        name, _, status = line.partition(" ")
        if status.strip() == "installed":
            seen.add(name.split(":")[0])
    return seen


def missing_packages() -> list[str]:
    """Packages of PACKAGES that are not installed."""
    return sorted(set(PACKAGES) - installed(PACKAGES))


def _has_bookworm_src() -> bool:
    files = [Path("/etc/apt/sources.list"), *Path("/etc/apt/sources.list.d").glob("*")]
    for f in files:
        try:
            text = f.read_text()
        except OSError:
            continue
        if "deb-src" in text and "bookworm" in text:
            return True
    return False


def ensure_deb_src() -> bool:
    """Enable bookworm's deb-src (for `apt-get source kubernetes`); True if newly added."""
    if _has_bookworm_src():
        return False
    SRC_LIST.write_text(_SRC_ENTRY)
    return True


def ensure_packages(need_source: bool) -> None:
    """apt-get install whatever is missing (running `apt-get update` only when needed)."""
    missing = missing_packages()
    added_src = ensure_deb_src() if need_source else False
    if not missing and not added_src:
        return
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    log.info("apt-get update")
    run(["apt-get", "update", "-q"], env=env, timeout=900)
    if missing:
        log.info("installing %s", " ".join(missing))
        run(
            ["apt-get", "install", "-y", "-q", "--no-install-recommends", *missing],
            env=env,
            timeout=1800,
        )
