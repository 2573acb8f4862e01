"""The guard chains keep the cluster range on the machine."""

from devcluster import layout, network


def test_guard_chains_drop_the_range_on_foreign_interfaces() -> None:
    rules = network.guard_rules()
    for key in (("mangle", network.GUARD_IN), ("mangle", network.GUARD_OUT)):
        chain = rules[key]
        returns = [r for r in chain if r[-1] == "RETURN"]
        drops = [r for r in chain if r[-1] == "DROP"]
        # Our own interfaces are let through first; anything else in the range is dropped.
        assert chain.index(returns[-1]) < chain.index(drops[0])
        ifaces = {r[1] for r in returns}
        assert ifaces == {"lo", layout.POD_BRIDGE, layout.NODE_BRIDGE}
        assert ["-s", "198.18.0.0/15", "-j", "DROP"] in drops
        assert ["-d", "198.18.0.0/15", "-j", "DROP"] in drops


def test_control_plane_ports_closed_from_outside() -> None:
    chain = network.guard_rules()[("mangle", network.GUARD_IN)]
    ports = next(r for r in chain if "--dports" in r)
    listed = ports[ports.index("--dports") + 1].split(",")
    for port in ("2379", "6443", "10250"):
        assert port in listed


def test_forward_guard_only_lets_pods_talk_to_pods() -> None:
    chain = network.guard_rules()[("filter", network.GUARD_FWD)]
    assert chain[0] == ["-i", layout.POD_BRIDGE, "-o", layout.POD_BRIDGE, "-j", "RETURN"]
    assert all(rule[-1] == "DROP" for rule in chain[1:])


def test_in_guard() -> None:
    assert network.in_guard("198.19.0.10")
    assert not network.in_guard("10.0.0.1")
    assert not network.in_guard("not an ip")
