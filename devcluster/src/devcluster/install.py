"""Debian packages the devcluster needs, installed on first use."""

import logging
import os
from pathlib import Path

from devcluster.shell import run

log = logging.getLogger("devcluster")

# A file that proves each package is installed -> the package providing it.
PACKAGES = {
    "/usr/bin/etcd": "etcd-server",
    "/usr/bin/containerd": "containerd",
    "/usr/sbin/runc": "runc",
    "/usr/lib/cni/bridge": "containernetworking-plugins",
    "/usr/sbin/xtables-nft-multi": "iptables",
    "/usr/sbin/conntrack": "conntrack",
    "/usr/bin/go": "golang-go",
    "/usr/bin/make": "build-essential",
    "/usr/bin/dpkg-source": "dpkg-dev",
    "/usr/bin/busybox": "busybox-static",
    "/usr/bin/python3.11": "python3.11",
    "/usr/sbin/ip": "iproute2",
    "/usr/bin/ldd": "libc-bin",
}

SRC_LIST = Path("/etc/apt/sources.list.d/tether-devcluster-src.sources")
_SRC_ENTRY = """Types: deb-src
URIs: http://deb.debian.org/debian
Suites: bookworm
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
"""


def missing_packages() -> list[str]:
    """Packages whose marker file is absent."""
    return sorted({pkg for path, pkg in PACKAGES.items() if not Path(path).exists()})


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
