"""`up` on a healthy cluster restarts the components that run with stale command lines."""

import pytest

from devcluster import cluster

WANTED = {
    "etcd": ["/usr/bin/etcd", "--name=devcluster"],
    "kube-apiserver": ["kube-apiserver", "--enable-admission-plugins=NodeRestriction,PSP"],
    "kubelet": ["kubelet", "--v=1"],
    "cluster-dns": ["/venv/bin/python", "-m", "devcluster.dns"],
}


@pytest.mark.parametrize(
    ("running", "stale"),
    [
        ({}, []),
        (dict(WANTED), []),
        (
            {**WANTED, "kube-apiserver": ["kube-apiserver", "--enable-admission-plugins=NR"]},
            ["kube-apiserver"],
        ),
        # Start order, whatever the mapping's order.
        (
            {"kubelet": ["kubelet"], "kube-apiserver": ["kube-apiserver"], "etcd": ["etcd"]},
            ["etcd", "kube-apiserver", "kubelet"],
        ),
        # A command line that cannot be read (the process just exited) is not stale.
        ({**WANTED, "kube-apiserver": None}, []),
        # cluster-dns names whichever interpreter ran `up`; it is not restartable anyway.
        ({**WANTED, "cluster-dns": ["/usr/bin/python3", "-m", "devcluster.dns"]}, []),
        # A flag added, or the same flags in another order: both differ.
        ({**WANTED, "etcd": [*WANTED["etcd"], "--debug"]}, ["etcd"]),
        ({**WANTED, "etcd": list(reversed(WANTED["etcd"]))}, ["etcd"]),
    ],
)
def test_stale_daemons(running: dict[str, list[str] | None], stale: list[str]) -> None:
    assert cluster.stale_daemons(running, WANTED) == stale


def test_a_daemon_up_does_not_know_is_ignored() -> None:
    assert cluster.stale_daemons({"something-else": ["x"]}, WANTED) == []
