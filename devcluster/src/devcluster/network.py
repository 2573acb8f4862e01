"""Node networking: bridges, routes, sysctls and the guard chains that keep traffic on-machine.

Guard chains live in the mangle table (kube-proxy never touches it) and at the top of FORWARD;
all carry the TDC- prefix so `down` and crash recovery can find them.
"""

import contextlib
import ipaddress
import shlex
from pathlib import Path

from devcluster import layout
from devcluster.errors import DevclusterError
from devcluster.shell import out, run

GUARD_IN = "TDC-GUARD-IN"
GUARD_OUT = "TDC-GUARD-OUT"
GUARD_FWD = "TDC-GUARD-FWD"
_OURS = ("lo", layout.POD_BRIDGE, layout.NODE_BRIDGE)
# Control-plane ports that must never be reachable from another machine.
_CONTROL_PORTS = "2379,2380,2381,6443,10248,10249,10250,10256,10257,10259"


def _sysctl(path: str, value: str) -> None:
    p = Path("/proc/sys") / path
    try:
        if p.read_text().strip() != value:
            p.write_text(value)
    except OSError as exc:
        raise DevclusterError(f"cannot set sysctl {path}={value}: {exc.strerror}") from exc


def guard_rules() -> dict[tuple[str, str], list[list[str]]]:
    """The guard chains' rules, keyed by (table, chain). Pure, so it can be unit-tested."""
    net = str(layout.GUARD_NET)
    accept_ours_in = [["-i", i, "-j", "RETURN"] for i in _OURS]
    accept_ours_out = [["-o", i, "-j", "RETURN"] for i in _OURS]
    return {
        ("mangle", GUARD_IN): [
            *accept_ours_in,
            ["-s", net, "-j", "DROP"],
            ["-d", net, "-j", "DROP"],
            ["-p", "tcp", "-m", "multiport", "--dports", _CONTROL_PORTS, "-j", "DROP"],
        ],
        ("mangle", GUARD_OUT): [
            *accept_ours_out,
            ["-s", net, "-j", "DROP"],
            ["-d", net, "-j", "DROP"],
        ],
        # Pods talk to each other and to the node (INPUT), never through the host to elsewhere.
        ("filter", GUARD_FWD): [
            ["-i", layout.POD_BRIDGE, "-o", layout.POD_BRIDGE, "-j", "RETURN"],
            ["-i", layout.POD_BRIDGE, "-j", "DROP"],
            ["-o", layout.POD_BRIDGE, "-j", "DROP"],
            ["-s", net, "-j", "DROP"],
            ["-d", net, "-j", "DROP"],
        ],
    }


_HOOKS = {
    ("mangle", GUARD_IN): "PREROUTING",
    ("mangle", GUARD_OUT): "POSTROUTING",
    ("filter", GUARD_FWD): "FORWARD",
}


def _link_exists(name: str) -> bool:
    return Path(f"/sys/class/net/{name}").exists()


def is_mountpoint(path: Path) -> bool:
    """Whether `path` is a mount point (per /proc/self/mountinfo)."""
    with open("/proc/self/mountinfo") as f:
        return any(line.split()[4] == str(path) for line in f)


def share_netns_dir() -> None:
    """Make /run/netns a shared mount of itself, as `ip netns add` does on first use.

    If it were not one when containerd mounts pod network namespaces there, a later
    `ip netns add` (by anyone) would stack a bind mount over the directory and hide those
    mounts, which could then never be removed.
    """
    netns_dir = Path("/run/netns")
    netns_dir.mkdir(parents=True, exist_ok=True)
    if not is_mountpoint(netns_dir):
        run(["mount", "--bind", str(netns_dir), str(netns_dir)])
    run(["mount", "--make-shared", str(netns_dir)])


def setup() -> None:
    """Create bridges, addresses, routes, sysctls and guard chains (idempotent)."""
    share_netns_dir()
    _sysctl("net/ipv4/ip_forward", "1")
    # Service traffic between pods on one bridge must pass iptables for kube-proxy's DNAT.
    _sysctl("net/bridge/bridge-nf-call-iptables", "1")
    install_guards()
    for bridge in (layout.NODE_BRIDGE, layout.POD_BRIDGE):
        if not _link_exists(bridge):
            run(["ip", "link", "add", bridge, "type", "bridge"])
        run(["ip", "link", "set", bridge, "up"])
    node_addr = f"{layout.NODE_IP}/{layout.NODE_NET.prefixlen}"
    if node_addr not in out(["ip", "-4", "addr", "show", "dev", layout.NODE_BRIDGE]):
        run(["ip", "addr", "add", node_addr, "dev", layout.NODE_BRIDGE])
    pod_addr = f"{layout.POD_GATEWAY}/{layout.POD_CIDR.prefixlen}"
    if pod_addr not in out(["ip", "-4", "addr", "show", "dev", layout.POD_BRIDGE]):
        run(["ip", "addr", "add", pod_addr, "dev", layout.POD_BRIDGE])
    # Service IPs are virtual: route them at the node bridge so kube-proxy's OUTPUT DNAT runs.
    run(
        [
            "ip", "route", "replace", str(layout.SERVICE_CIDR),
            "dev", layout.NODE_BRIDGE, "src", str(layout.NODE_IP),
        ]
    )  # fmt: skip
    # Whatever in the range has no more specific route goes nowhere.
    run(["ip", "route", "replace", "blackhole", str(layout.GUARD_NET)])


def install_guards() -> None:
    """(Re)create the guard chains and hook them first in their built-in chains."""
    for (table, chain), rules in guard_rules().items():
        hook = _HOOKS[(table, chain)]
        if run(["iptables", "-t", table, "-n", "-L", chain], check=False).returncode != 0:
            run(["iptables", "-t", table, "-N", chain])
        run(["iptables", "-t", table, "-F", chain])
        for rule in rules:
            run(["iptables", "-t", table, "-A", chain, *rule])
        # kube-proxy prepends its own jumps when it starts: move ours back to the very top.
        while run(["iptables", "-t", table, "-D", hook, "-j", chain], check=False).returncode == 0:
            pass
        run(["iptables", "-t", table, "-I", hook, "1", "-j", chain])


def first_jump(rules: str, hook: str) -> str | None:
    """The target of the first rule of chain `hook` in `iptables -S` output, if any."""
    for line in rules.splitlines():
        parts = shlex.split(line)  # comments are quoted and may hold spaces
        if parts[:2] == ["-A", hook]:
            target = parts.index("-j") + 1 if "-j" in parts else len(parts)
            return parts[target] if target < len(parts) else None
    return None


def guards_first() -> bool:
    """Whether every guard chain is still the first rule of its built-in chain."""
    for (table, chain), hook in _HOOKS.items():
        rules = run(["iptables", "-t", table, "-S", hook], check=False).stdout.decode()
        if first_jump(rules, hook) != chain:
            return False
    return True


def _chains(table: str) -> list[str]:
    text = run(["iptables-save", "-t", table], check=False).stdout.decode()
    return [line[1:].split()[0] for line in text.splitlines() if line.startswith(":")]


def remove_chains(prefixes: tuple[str, ...] = ("TDC-", "KUBE-", "CNI-")) -> None:
    """Delete every chain with one of `prefixes` (ours, kube-proxy's, the CNI plugins')."""
    for table in ("mangle", "filter", "nat"):
        text = run(["iptables-save", "-t", table], check=False).stdout.decode()
        # First unhook: delete every rule in a built-in chain that jumps to one of ours.
        for line in text.splitlines():
            if not line.startswith("-A "):
                continue
            parts = shlex.split(line)
            chain = parts[1]
            if chain.startswith(prefixes):
                continue
            if "-j" in parts and parts[parts.index("-j") + 1].startswith(prefixes):
                run(["iptables", "-t", table, "-D", *parts[1:]], check=False)
        ours = [c for c in _chains(table) if c.startswith(prefixes)]
        for chain in ours:
            run(["iptables", "-t", table, "-F", chain], check=False)
        for chain in ours:
            run(["iptables", "-t", table, "-X", chain], check=False)


def leftover_chains() -> list[str]:
    """TDC-/KUBE-/CNI- chains still present, as table/chain."""
    found = []
    for table in ("mangle", "filter", "nat"):
        found += [f"{table}/{c}" for c in _chains(table) if c.startswith(("TDC-", "KUBE-", "CNI-"))]
    return found


def teardown() -> None:
    """Remove bridges (their addresses and routes go with them), the blackhole route, chains."""
    for bridge in (layout.POD_BRIDGE, layout.NODE_BRIDGE):
        if _link_exists(bridge):
            run(["ip", "link", "del", bridge], check=False)
    run(["ip", "route", "del", "blackhole", str(layout.GUARD_NET)], check=False)
    remove_chains()


def leftover_links() -> list[str]:
    """Our bridges and pod veths that still exist."""
    links = [b for b in (layout.POD_BRIDGE, layout.NODE_BRIDGE) if _link_exists(b)]
    return links


def route_present() -> bool:
    """Whether the blackhole route for the guarded range is still installed."""
    return str(layout.GUARD_NET) in out(["ip", "route", "show", "type", "blackhole"], check=False)


def in_guard(addr: str) -> bool:
    """Whether `addr` is inside the devcluster's address range."""
    with contextlib.suppress(ValueError):
        return ipaddress.ip_address(addr) in layout.GUARD_NET
    return False
