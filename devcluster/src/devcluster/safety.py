"""Checking that no cluster traffic left the machine (the conntrack table as evidence)."""

import ipaddress
import re
import shutil

from devcluster import layout
from devcluster.errors import DevclusterError
from devcluster.shell import run

_LOOPBACK = (ipaddress.ip_network("127.0.0.0/8"), ipaddress.ip_network("::1/128"))
_LINK_LOCAL = ipaddress.ip_network("169.254.0.0/16")
_FLOW = re.compile(r"src=(\S+) dst=(\S+)")


def _inside(addr: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
    return any(addr in net for net in _LOOPBACK) or addr in layout.GUARD_NET


def leaks(conntrack_text: str) -> list[str]:
    """Flows joining the cluster range to an address outside it and loopback, or to 169.254/16.

    Judges each flow by its original direction (the first src/dst pair on the line).
    """
    found = []
    for line in conntrack_text.splitlines():
        m = _FLOW.search(line)
        if not m:
            continue
        src, dst = (ipaddress.ip_address(x) for x in m.groups())
        if dst in _LINK_LOCAL:
            found.append(line)
            continue
        src_in, dst_in = src in layout.GUARD_NET, dst in layout.GUARD_NET
        if src_in != dst_in and not _inside(dst if src_in else src):
            found.append(line)
    return found


def conntrack_table() -> str:
    """`conntrack -L` output (IPv4 and IPv6)."""
    if not shutil.which("conntrack"):
        raise DevclusterError("conntrack is not installed (apt-get install conntrack)")
    return run(["conntrack", "-L"], check=False).stdout.decode()
