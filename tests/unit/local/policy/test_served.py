"""tether.local.policy.served: the resolv.conf and nsswitch.conf tether serves, and the
nameservers a resolv.conf names (table-driven)."""

import pytest

from tether.local.policy.served import nameservers_in, nsswitch_for_process, resolv_conf_for_process


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("nameserver 198.19.0.10\nsearch shop.svc.cluster.local\n", ("198.19.0.10",)),
        (
            "nameserver 10.0.0.2\nnameserver 10.0.0.3\nnameserver 10.0.0.2\n",
            ("10.0.0.2", "10.0.0.3"),
        ),
        ("nameserver 2001:0db8::0001 # primary\n", ("2001:db8::1",)),
        ("nameserver ::ffff:10.0.0.9\n", ("10.0.0.9",)),
        ("# nameserver 10.0.0.1\n; nameserver 10.0.0.2\nnameserver\n", ()),
        ("  nameserver   127.0.0.53  \noptions edns0\n", ("127.0.0.53",)),
        ("", ()),
    ],
)
def test_nameservers_in(text: str, expected: tuple[str, ...]) -> None:
    assert nameservers_in(text) == expected


@pytest.mark.parametrize(
    ("pod", "expected"),
    [
        ("nameserver 10.0.0.10\n", "nameserver 10.0.0.10\noptions use-vc\n"),
        (
            "nameserver 10.0.0.10\noptions ndots:5\n",
            "nameserver 10.0.0.10\noptions ndots:5 use-vc\n",
        ),
        ("options use-vc ndots:2\n", "options use-vc ndots:2\n"),
        ("", "options use-vc\n"),
    ],
)
def test_resolv_conf_for_process_uses_tcp(pod: str, expected: str) -> None:
    assert resolv_conf_for_process(pod) == expected


def test_nsswitch_for_process_asks_dns() -> None:
    local = "passwd: files systemd\nhosts: files mdns4_minimal [NOTFOUND=return] resolve dns\n"
    assert nsswitch_for_process(local) == "passwd: files systemd\nhosts: files dns\n"
