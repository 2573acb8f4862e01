"""The conntrack leak judge."""

from devcluster import safety

OK = [
    "tcp 6 86399 ESTABLISHED src=198.18.0.5 dst=198.19.0.1 sport=1 dport=443 "
    "src=198.18.16.1 dst=198.18.0.5 sport=6443 dport=1 [ASSURED] mark=0 use=1",
    "udp 17 29 src=127.0.0.1 dst=127.0.0.53 sport=5 dport=53 src=127.0.0.53 dst=127.0.0.1",
    "tcp 6 10 TIME_WAIT src=10.0.2.15 dst=151.101.0.223 sport=4 dport=443 "
    "src=151.101.0.223 dst=10.0.2.15",
]
LEAKS = [
    "tcp 6 10 SYN_SENT src=198.18.0.7 dst=8.8.8.8 sport=2 dport=53 src=8.8.8.8 dst=198.18.0.7",
    "tcp 6 10 SYN_SENT src=10.0.2.15 dst=169.254.169.254 sport=3 dport=80 "
    "src=169.254.169.254 dst=10.0.2.15",
    "udp 17 20 src=10.1.1.1 dst=198.18.16.1 sport=9 dport=53 src=198.18.16.1 dst=10.1.1.1",
]


def test_on_machine_flows_are_not_leaks() -> None:
    assert safety.leaks("\n".join(OK)) == []


def test_flows_leaving_the_range_and_metadata_probes_are_leaks() -> None:
    assert safety.leaks("\n".join(OK + LEAKS)) == LEAKS
