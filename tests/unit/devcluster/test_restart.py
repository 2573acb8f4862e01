"""`devcluster restart`: choosing the component, its readiness rule, its command line, the CLI."""

import os
import sys
from collections.abc import Callable
from typing import Any

import pytest
from click.testing import CliRunner

from devcluster import cli, cluster, components, layout, network
from devcluster import restart as plan
from devcluster.errors import DevclusterError
from devcluster.restart import Check

# --- choosing the component -------------------------------------------------------------


@pytest.mark.parametrize(
    ("word", "name", "daemon"),
    [
        ("apiserver", "apiserver", "kube-apiserver"),
        ("kube-apiserver", "apiserver", "kube-apiserver"),
        ("APIServer", "apiserver", "kube-apiserver"),
        (" kubelet ", "kubelet", "kubelet"),
        ("containerd", "containerd", "containerd"),
        ("etcd", "etcd", "etcd"),
        ("scheduler", "scheduler", "kube-scheduler"),
        ("kube-scheduler", "scheduler", "kube-scheduler"),
        ("controller-manager", "controller-manager", "kube-controller-manager"),
        ("kube-controller-manager", "controller-manager", "kube-controller-manager"),
        ("kube-proxy", "kube-proxy", "kube-proxy"),
    ],
)
def test_choose(word: str, name: str, daemon: str) -> None:
    target = plan.choose(word)
    assert (target.name, target.daemon) == (name, daemon)


@pytest.mark.parametrize("word", ["", "api", "proxy", "cluster-dns", "kubectl", "etcd2"])
def test_unknown_component_lists_every_choice_on_one_line(word: str) -> None:
    with pytest.raises(DevclusterError) as info:
        plan.choose(word)
    message = str(info.value)
    assert "\n" not in message
    assert repr(word) in message
    for target in plan.TARGETS:
        assert target.name in message


def test_every_target_is_a_daemon_up_starts() -> None:
    names = [t.name for t in plan.TARGETS]
    assert len(set(names)) == len(names)
    assert {"apiserver", "kubelet", "containerd"} <= set(names)
    for target in plan.TARGETS:
        assert target.daemon in cluster.ORDER
        assert target.checks, target.name
    assert set(cluster.ORDER) >= plan.TOUCH_IPTABLES
    assert set(cluster.ORDER) >= plan.KEEP_CONTAINERS


# --- the readiness rule -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "checks"),
    [
        ("apiserver", (Check.APISERVER_READYZ,)),
        (
            "kubelet",
            (
                Check.KUBELET_HEALTHZ,
                Check.NODE_LEASE_RENEWED,
                Check.NODE_READY_REPORTED,
                Check.PODS_READY,
            ),
        ),
        ("containerd", (Check.CONTAINERD_VERSION, Check.KUBELET_RUNTIME, Check.NODE_READY)),
        ("etcd", (Check.ETCD_HEALTH, Check.APISERVER_READYZ)),
        ("scheduler", (Check.SCHEDULER_HEALTHZ,)),
        ("controller-manager", (Check.CONTROLLER_MANAGER_HEALTHZ,)),
        ("kube-proxy", (Check.KUBE_PROXY_HEALTHZ,)),
    ],
)
def test_readiness_checks(name: str, checks: tuple[Check, ...]) -> None:
    assert plan.choose(name).checks == checks


KUBELET = plan.choose("kubelet").checks
CONTAINERD = plan.choose("containerd").checks


@pytest.mark.parametrize(
    ("checks", "passing", "pending", "probed"),
    [
        (KUBELET, set(), Check.KUBELET_HEALTHZ, [Check.KUBELET_HEALTHZ]),
        # healthz alone answers before the new kubelet has talked to the API server
        (
            KUBELET,
            {Check.KUBELET_HEALTHZ},
            Check.NODE_LEASE_RENEWED,
            [Check.KUBELET_HEALTHZ, Check.NODE_LEASE_RENEWED],
        ),
        (
            KUBELET,
            {Check.KUBELET_HEALTHZ, Check.NODE_LEASE_RENEWED},
            Check.NODE_READY_REPORTED,
            list(KUBELET[:3]),
        ),
        # the node is back, its pods' readiness not yet
        (KUBELET, set(KUBELET[:3]), Check.PODS_READY, list(KUBELET)),
        (KUBELET, set(KUBELET), None, list(KUBELET)),
        # containerd answers, the kubelet has not reconnected yet
        (
            CONTAINERD,
            {Check.CONTAINERD_VERSION, Check.NODE_READY},
            Check.KUBELET_RUNTIME,
            [Check.CONTAINERD_VERSION, Check.KUBELET_RUNTIME],
        ),
        # a stale Ready never counts before containerd itself answers
        (CONTAINERD, {Check.NODE_READY}, Check.CONTAINERD_VERSION, [Check.CONTAINERD_VERSION]),
        (CONTAINERD, set(CONTAINERD), None, list(CONTAINERD)),
        ((), set(), None, []),
    ],
)
def test_first_pending(
    checks: tuple[Check, ...], passing: set[Check], pending: Check | None, probed: list[Check]
) -> None:
    calls: list[Check] = []

    def passes(check: Check) -> bool:
        calls.append(check)
        return check in passing

    assert plan.first_pending(checks, passes) == pending
    assert calls == probed


def _node(*conditions: dict[str, Any]) -> dict[str, Any]:
    return {"status": {"conditions": list(conditions)}}


def _ready(status: str = "True", beat: str | None = "2026-12-01T10:00:05Z") -> dict[str, Any]:
    c: dict[str, Any] = {"type": "Ready", "status": status}
    if beat is not None:
        c["lastHeartbeatTime"] = beat
    return c


T = plan.timestamp("2026-12-01T10:00:05Z")
PRESSURE = {"type": "MemoryPressure", "status": "True"}


@pytest.mark.parametrize(
    ("node", "since", "ready"),
    [
        (_node(_ready()), None, True),
        (_node(_ready()), T, True),
        # heartbeats have whole seconds: one in the second the kubelet started counts
        (_node(_ready()), T + 0.7, True),
        (_node(_ready()), T + 1.0, False),
        (_node(_ready(beat=None)), T, False),
        (_node(_ready(beat=None)), None, True),
        (_node(_ready("False")), None, False),
        (_node(_ready("Unknown")), None, False),
        (_node(PRESSURE), None, False),
        (_node(PRESSURE, _ready()), T, True),
        ({}, None, False),
        ({"status": {}}, None, False),
    ],
)
def test_node_ready(node: dict[str, Any], since: float | None, ready: bool) -> None:
    assert plan.node_ready(node, since) is ready


def _lease(holder: str | None = "devcluster", renewed: str | None = None) -> dict[str, Any]:
    spec: dict[str, Any] = {"leaseDurationSeconds": 40}
    if holder is not None:
        spec["holderIdentity"] = holder
    if renewed is not None:
        spec["renewTime"] = renewed
    return {"spec": spec}


@pytest.mark.parametrize(
    ("lease", "since", "renewed"),
    [
        (_lease(renewed="2026-12-01T10:00:05.500000Z"), T + 0.4, True),
        (_lease(renewed="2026-12-01T10:00:05.500000Z"), T + 0.5, True),
        # MicroTime: a renewal earlier in the same second was the old kubelet's
        (_lease(renewed="2026-12-01T10:00:05.500000Z"), T + 0.6, False),
        (_lease(renewed="2026-12-01T10:00:05Z"), T, True),
        (_lease("other-node", "2026-12-01T10:00:09.000000Z"), T, False),
        (_lease(None, "2026-12-01T10:00:09.000000Z"), T, False),
        (_lease(renewed=None), T, False),
        ({}, T, False),
    ],
)
def test_lease_renewed(lease: dict[str, Any], since: float, renewed: bool) -> None:
    assert plan.lease_renewed(lease, "devcluster", since) is renewed


def _pod(
    name: str = "web",
    ready: str | None = "True",
    changed: str = "2026-12-01T09:00:00Z",
    probes: tuple[dict[str, Any] | None, ...] = (),
    deleting: bool = False,
) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": name, "namespace": "shop", "uid": f"uid-{name}"}
    if deleting:
        meta["deletionTimestamp"] = "2026-12-01T10:00:06Z"
    containers = [{"name": f"c{i}", "readinessProbe": p} for i, p in enumerate(probes)]
    conditions = [{"type": "PodScheduled", "status": "True"}]
    if ready is not None:
        conditions.append({"type": "Ready", "status": ready, "lastTransitionTime": changed})
    return {"metadata": meta, "spec": {"containers": containers or [{"name": "c"}]},
            "status": {"conditions": conditions}}  # fmt: skip


def test_ready_pods() -> None:
    pods = [_pod("a"), _pod("b", ready="False"), _pod("c", ready=None), _pod("d", deleting=True)]
    assert plan.ready_pods(pods) == {"uid-a"}


@pytest.mark.parametrize(
    ("probes", "period"),
    [
        ((), None),
        ((None,), None),
        (({"periodSeconds": 2},), 2.0),
        (({"httpGet": {"path": "/"}},), 10.0),  # Kubernetes' default period
        (({"periodSeconds": 2}, None, {"periodSeconds": 5}), 5.0),
    ],
)
def test_probe_period(probes: tuple[dict[str, Any] | None, ...], period: float | None) -> None:
    assert plan.probe_period(_pod(probes=probes)) == period


PROBE = ({"periodSeconds": 2},)
AFTER = "2026-12-01T10:00:05Z"  # in the second the new kubelet started (T)
BEFORE = "2026-12-01T10:00:04Z"


@pytest.mark.parametrize(
    ("pod", "before", "admitted", "now", "waiting"),
    [
        # no probe: Ready and admitted by the new kubelet is enough
        (_pod(), True, True, T + 6, False),
        (_pod(), True, False, T + 6, True),
        (_pod(ready="False"), True, True, T + 6, True),
        # probed: still the old Ready, the new kubelet's initial not-Ready is yet to come
        (_pod(probes=PROBE, changed=BEFORE), True, True, T + 6, True),
        # ... it came and went
        (_pod(probes=PROBE, changed=AFTER), True, True, T + 8, False),
        (_pod(probes=PROBE, ready="False", changed=AFTER), True, True, T + 7, True),
        # ... it never came: after the probe period and PROBE_FLAP_WAIT it counts as back
        (_pod(probes=PROBE, changed=BEFORE), True, True, T + 2 + plan.PROBE_FLAP_WAIT, False),
        (_pod(probes=PROBE, changed=BEFORE), True, False, T + 60, True),
        # not Ready before the restart, or being deleted: not waited for
        (_pod(ready="False"), False, True, T + 6, False),
        (_pod(ready="False", deleting=True), True, True, T + 6, False),
    ],
)
def test_pods_not_back(
    pod: dict[str, Any], before: bool, admitted: bool, now: float, waiting: bool
) -> None:
    uid = pod["metadata"]["uid"]
    got = plan.pods_not_back(
        {uid} if before else set(), [pod], {uid} if admitted else set(), T, now
    )
    assert got == (["shop/web"] if waiting else [])


def test_pods_not_back_ignores_pods_gone_or_new() -> None:
    pods = [_pod("new"), _pod("old", ready="False")]
    assert plan.pods_not_back({"uid-gone", "uid-old"}, pods, {"uid-new"}, T, T + 6) == ["shop/old"]


@pytest.mark.parametrize(
    ("text", "epoch"),
    [
        ("1970-01-01T00:00:00Z", 0.0),
        ("1970-01-01T00:00:01.250000Z", 1.25),
        ("1970-01-01T01:00:00+01:00", 0.0),
    ],
)
def test_timestamp(text: str, epoch: float) -> None:
    assert plan.timestamp(text) == epoch


@pytest.mark.parametrize(
    ("rules", "hook", "first"),
    [
        ("-P FORWARD ACCEPT\n-A FORWARD -j TDC-GUARD-FWD\n-A FORWARD -j KUBE-FORWARD\n",
         "FORWARD", "TDC-GUARD-FWD"),
        # kube-proxy prepended its jump: the guard is no longer first
        ('-P FORWARD ACCEPT\n-A FORWARD -m comment --comment "k -j X" -j KUBE-FORWARD\n'
         "-A FORWARD -j TDC-GUARD-FWD\n", "FORWARD", "KUBE-FORWARD"),
        ("-P PREROUTING ACCEPT\n", "PREROUTING", None),
        ("-A PREROUTING -i lo\n", "PREROUTING", None),
        ("-A PREROUTING -j\n", "PREROUTING", None),
        ("-A OTHER -j X\n-A PREROUTING -j TDC-GUARD-IN\n", "PREROUTING", "TDC-GUARD-IN"),
    ],
)  # fmt: skip
def test_first_jump(rules: str, hook: str, first: str | None) -> None:
    assert network.first_jump(rules, hook) == first


# --- the command line: exactly what `up` starts ---------------------------------------------

FACTORIES: list[tuple[str, Callable[[], components.Component]]] = [
    ("etcd", components.etcd),
    ("containerd", components.containerd),
    ("kube-apiserver", components.apiserver),
    ("kube-controller-manager", components.controller_manager),
    ("kube-scheduler", components.scheduler),
    ("kubelet", components.kubelet),
    ("kube-proxy", components.kube_proxy),
    ("cluster-dns", lambda: components.dns(sys.executable)),
]


@pytest.mark.parametrize(("daemon", "factory"), FACTORIES)
def test_for_daemon_is_the_component_up_starts(
    daemon: str, factory: Callable[[], components.Component]
) -> None:
    comp = components.for_daemon(daemon, sys.executable)
    assert comp == factory()
    assert comp.name == daemon
    # `up` and `restart` both start what cluster._component returns.
    assert cluster._component(daemon) == comp


def test_every_daemon_has_a_component() -> None:
    assert [d for d, _ in FACTORIES] == list(cluster.ORDER)
    with pytest.raises(ValueError, match="no component named"):
        components.for_daemon("kubectl", sys.executable)


def test_probed_ports_are_the_configured_ones() -> None:
    kubelet = components.kubelet_config()
    assert (kubelet["healthzBindAddress"], kubelet["healthzPort"]) == (
        "127.0.0.1",
        layout.KUBELET_HEALTHZ_PORT,
    )
    proxy = components.kube_proxy_config()
    assert proxy["healthzBindAddress"] == f"127.0.0.1:{layout.KUBE_PROXY_HEALTHZ_PORT}"


# --- the CLI ----------------------------------------------------------------------------


def _invoke(*args: str) -> tuple[int, list[str]]:
    result = CliRunner().invoke(cli.main, ["restart", *args])
    assert result.exception is None or isinstance(result.exception, SystemExit)
    return result.exit_code, result.stderr.splitlines()


def test_cli_prints_one_line(monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[tuple[str, float, float]] = []

    def fake(word: str, timeout: float, grace: float) -> cluster.Restarted:
        seen.append((word, timeout, grace))
        return cluster.Restarted("apiserver", 10, 20, down=0.84, ready=3.16)

    monkeypatch.setattr(cluster, "restart", fake)
    monkeypatch.setattr(os, "geteuid", lambda: 0)
    code, lines = _invoke("kube-apiserver", "--timeout", "30", "--grace", "2")
    assert (code, lines) == (0, ["devcluster: restarted apiserver (down 0.8 s, ready after 3.2 s)"])
    assert seen == [("kube-apiserver", 30.0, 2.0)]


@pytest.mark.parametrize(
    ("args", "root", "raises", "needle"),
    [
        (["nope"], True, None, "choose one of apiserver, kubelet, containerd"),
        # an unknown name is reported before the missing root
        (["nope"], False, None, "unknown component 'nope'"),
        (["kubelet"], False, None, "needs root"),
        (["kubelet"], True, DevclusterError("kubelet not ready after 5 s"), "not ready after"),
    ],
)
def test_cli_fails_in_one_line(
    monkeypatch: pytest.MonkeyPatch,
    args: list[str],
    root: bool,
    raises: Exception | None,
    needle: str,
) -> None:
    def fake(word: str, timeout: float, grace: float) -> cluster.Restarted:
        if raises is not None:
            raise raises
        raise AssertionError("restart must not run")

    monkeypatch.setattr(cluster, "restart", fake)
    monkeypatch.setattr(os, "geteuid", lambda: 0 if root else 1000)
    code, lines = _invoke(*args)
    assert code == 1
    assert len(lines) == 1, lines
    assert lines[0].startswith("devcluster: error: ")
    assert needle in lines[0]


def test_summary() -> None:
    assert plan.summary("containerd", 0.06, 1.04) == (
        "devcluster: restarted containerd (down 0.1 s, ready after 1.0 s)"
    )
