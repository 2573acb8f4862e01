"""Crash recovery and `down`: runs last among the e2e tests (it restarts the cluster)."""

import contextlib
import json
import os
import signal
import time

from devcluster import cluster, layout
from devcluster.procs import Daemon, pids_of_exe
from tests.e2e.kube import (
    BUSYBOX_IMAGE,
    deploy_shop,
    devcluster,
    one_container,
    ready_pod,
    run_pod,
)

K8S_BINARIES = [str(layout.K8S_BIN / b) for b in ("kube-apiserver", "kubelet", "kube-proxy")]


def _kill_everything() -> None:
    """SIGKILL every daemon and container process, as when CI kills a session's processes."""
    for d in cluster.daemons():
        pid = d.pid()
        if pid is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
    for pid in cluster._kubepods_pids() | set(cluster._shim_pids()):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + 10
    while any(d.pid() is not None for d in cluster.daemons()) and time.monotonic() < deadline:
        time.sleep(0.1)


def _frontend_answers(within: float = 120) -> dict[str, object]:
    """The frontend's answer, retried: after a restart the pods come back within seconds, but
    their old Ready status lingers until the kubelet reports again."""
    deadline = time.monotonic() + within
    while True:
        phase, logs = run_pod(
            "t-after",
            "shop",
            one_container(BUSYBOX_IMAGE, ["wget", "-qO-", "http://frontend/"]),
        )
        if phase == "Succeeded" or time.monotonic() > deadline:
            break
        time.sleep(2)
    assert phase == "Succeeded", logs
    return dict(json.loads(logs))


def test_up_recovers_after_every_process_was_killed() -> None:
    old_frontend = ready_pod("shop", "frontend")["metadata"]["uid"]
    _kill_everything()
    assert all(d.pid() is None for d in cluster.daemons())
    assert cluster.leftover_netns(), "the kill should leave pod network namespaces behind"

    devcluster("up")
    status = devcluster("status").stdout
    assert status.count("healthy") == len(cluster.ORDER), status
    deploy_shop()
    answer = _frontend_answers()
    assert answer["mode"] == "staging"
    # Same Deployment objects (etcd kept), pods restarted by the kubelet.
    assert ready_pod("shop", "frontend")["metadata"]["uid"] == old_frontend


def test_down_leaves_nothing_then_up_again() -> None:
    devcluster("down")
    left = cluster.leftovers()
    assert all(not v for v in left.values()), left
    for binary in [*K8S_BINARIES, "/usr/bin/etcd", "/usr/bin/containerd", cluster.SHIM]:
        assert pids_of_exe(binary) == [], binary
    assert not Daemon("cluster-dns").pidfile.exists()

    t0 = time.monotonic()
    devcluster("up")
    print(f"devcluster up after down: {time.monotonic() - t0:.1f} s")
    deploy_shop()
    assert _frontend_answers()["service"] == "frontend"
