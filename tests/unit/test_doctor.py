"""`tether doctor`'s pure parts: each finding, the verdict and how they are shown."""

import json

import pytest

from tether.doctor.cluster import rbac_checks, target_checks, version_check
from tether.doctor.machine import machine_checks
from tether.doctor.report import Check, report
from tether.intercept.seccomp import probe_features
from tether.kube.permissions import SESSION, needed_in
from tether.kube.targets import ResolvedTarget, TargetKind


@pytest.mark.parametrize(
    ("version", "status"),
    [("v1.20.2", "ok"), ("v1.28.3", "ok"), ("v1.35.0", "ok"), ("v1.36.1", "warning"),
     ("v1.19.0", "warning"), ("v1.31.2-gke.1", "ok"), ("garbage", "warning")],
)  # fmt: skip
def test_version_check(version: str, status: str) -> None:
    check = version_check("https://api", version)
    assert check.status == status and version in check.detail


def test_every_denied_verb_is_named_with_its_fix() -> None:
    needs = needed_in("shop", "shop")
    patch = next(p for p in SESSION if p.name == "patch secrets")
    checks = rbac_checks({"shop": [patch]}, {ns: len(ps) for ns, ps in needs.items()})
    assert [c.status for c in checks] == ["failing"]
    assert "cannot patch secrets" in checks[0].detail
    assert "grant patch secrets in namespace shop" in checks[0].fix
    assert rbac_checks({}, {"shop": 19})[0].detail == "all 19 permissions granted"


def test_an_agent_namespace_splits_what_is_needed_where() -> None:
    needs = needed_in("staging", "tether-agents")
    staging = {p.name for p in needs["staging"]}
    agents = {p.name for p in needs["tether-agents"]}
    assert "get deployments.apps" in staging and "create jobs.batch" not in staging
    assert "create jobs.batch" in agents and "get deployments.apps" not in agents
    assert "get pods" in staging and "get pods" in agents


def _target(**extra: object) -> ResolvedTarget:
    base: dict[str, object] = dict(
        kind=TargetKind.POD, name="p", namespace="ns", pod_name="p", pod_uid="u",
        node_name="n", container_name="c", container_id="containerd://x", pod_ip=None,
    )  # fmt: skip
    return ResolvedTarget(**{**base, **extra})  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("extra", "statuses"),
    [
        ({}, ["ok"]),
        ({"mesh": "istio"}, ["ok", "warning"]),
        ({"host_network": True}, ["ok", "warning"]),
    ],
)
def test_target_checks(extra: dict[str, object], statuses: list[str]) -> None:
    assert [c.status for c in target_checks(_target(**extra))] == statuses


def test_machine_checks_on_this_machine_and_an_old_kernel() -> None:
    here = machine_checks(probe_features())
    assert {c.name for c in here} == {
        "python",
        "architecture",
        "seccomp user notification",
        "kernel",
    }
    old = machine_checks(probe_features(release="5.10.0", machine="x86_64"))
    assert next(c for c in old if c.name == "kernel").status == "failing"
    mid = machine_checks(probe_features(release="5.15.0", machine="x86_64"))
    assert next(c for c in mid if c.name == "kernel").status == "warning"


def test_the_verdict_and_both_renderings() -> None:
    found = report(
        [
            Check("machine", "python", "ok", "Python 3.11"),
            Check("agent", "image", "warning", "not on the node", "push it"),
            Check("rbac", "namespace x", "failing", "cannot create jobs.batch", "grant it"),
        ]
    )
    assert not found.session_would_start
    text = found.to_text()
    assert "FAIL rbac: namespace x: cannot create jobs.batch\n       fix: grant it\n" in text
    assert text.endswith("a session would fail (1 ok, 1 warning, 1 failing)\n")
    data = json.loads(found.to_json())
    assert data["session_would_start"] is False
    assert data["counts"] == {"ok": 1, "warning": 1, "failing": 1}
    assert data["checks"][1] == {
        "area": "agent", "name": "image", "status": "warning", "detail": "not on the node",
        "fix": "push it",
    }  # fmt: skip
    assert report([Check("a", "b", "warning", "c")]).session_would_start
