"""`tether doctor`'s pure parts: each finding, the verdict and how they are shown."""

import json
from typing import Any

import pytest

from tether.doctor.cluster import (
    admission_check,
    rbac_checks,
    target_checks,
    version_check,
)
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


def test_admission_outcomes_and_their_fixes() -> None:
    ok = admission_check("admitted", "")
    assert (ok.status, ok.detail) == ("ok", "a dry-run of the agent pod is admitted")
    warned = admission_check("admitted", "", ['would violate PodSecurity "restricted:latest"'])
    assert warned.status == "warning" and "would violate" in warned.detail
    refused = admission_check("refused", 'violates PodSecurity "baseline:latest"')
    assert refused.status == "failing" and "agent.namespace" in refused.fix
    unchecked = admission_check("unchecked", "forbidden")
    assert unchecked.status == "warning" and "create pods" in unchecked.fix


class _Core:
    """The one API call the admission check makes, answered with a recorded status."""

    def __init__(self, status: int, body: str) -> None:
        self.status, self.body = status, body
        self.dry_run: str | None = None

    async def _answer(self) -> object:
        from kubernetes_asyncio.client.exceptions import ApiException

        exc = ApiException(status=self.status, reason="Forbidden")
        exc.body = self.body.encode()
        raise exc

    def create_namespaced_pod_with_http_info(self, ns: str, body: object, dry_run: str) -> object:
        self.dry_run = dry_run
        return self._answer()


class _Kube:
    server = "https://api"

    def __init__(self, core: _Core) -> None:
        self.core = core

    async def call(self, request: Any, op: Any) -> Any:
        from tether.kube.errors import error_for_exception

        try:
            return await request
        except Exception as exc:
            raise error_for_exception(exc, op, self.server) or exc from exc


async def test_a_pod_security_refusal_recorded_on_1_30_fails_the_check_with_its_message() -> None:
    from pathlib import Path

    from tether.config.models import AgentConfig
    from tether.doctor.cluster import _admission

    body = (
        Path(__file__).parent / "kube" / "fixtures" / "dryrun-psa-refused-1.30.json"
    ).read_text()
    core = _Core(403, body)
    check = await _admission(_Kube(core), _target(), AgentConfig(), "ns")  # type: ignore[arg-type]
    assert core.dry_run == "All"  # never a real create
    assert check.status == "failing"
    assert 'violates PodSecurity "baseline:latest": host namespaces' in check.detail


def _eph(outcome: str = "admitted", usable: bool = True, detail: str = "env, DNS") -> Any:
    from tether.doctor.cluster import EphemeralFinding

    return EphemeralFinding(outcome, detail, False, usable)


JOB_OK = admission_check("admitted", "")
JOB_REFUSED = admission_check("refused", "unable to validate against any pod security policy")


@pytest.mark.parametrize(
    ("mode", "job", "eph", "statuses", "verdict"),
    [
        ("job", JOB_OK, None, ["ok", "ok"], "agent.mode = job"),
        ("job", JOB_REFUSED, None, ["failing"], None),
        ("ephemeral", None, _eph(), ["ok", "ok"], "agent.mode = ephemeral: env, DNS"),
        ("ephemeral", None, _eph("refused", False), ["failing"], None),
        ("ephemeral", None, _eph("unchecked", False), ["failing"], None),
        # auto: a broken fallback does not fail a session the Job serves...
        ("auto", JOB_OK, _eph("unchecked", False), ["ok", "warning", "ok"], "uses the Job"),
        ("auto", JOB_OK, _eph(), ["ok", "ok", "ok"], "uses the Job"),
        # ...a refused Job does not fail one an ephemeral agent serves...
        ("auto", JOB_REFUSED, _eph(), ["warning", "ok", "ok"], "uses an ephemeral container"),
        # ...and only both refused fail.
        ("auto", JOB_REFUSED, _eph("refused", False), ["failing", "failing", "failing"], "neither"),
        ("auto", JOB_REFUSED, _eph(usable=False), ["failing", "failing", "failing"], "neither"),
    ],
)
def test_which_agent_a_session_would_use(
    mode: str, job: Check | None, eph: Any, statuses: list[str], verdict: str | None
) -> None:
    from tether.doctor.cluster import mode_checks

    checks = mode_checks(mode, job, eph)
    assert [c.status for c in checks] == statuses
    if verdict is not None:
        assert checks[-1].name == "mode" and verdict in checks[-1].detail
    if job is JOB_REFUSED and statuses[0] == "warning":
        assert "pod security policy" in checks[0].detail  # the refusal is still shown


def test_what_an_ephemeral_agent_can_do_per_cluster() -> None:
    from tether.doctor.cluster import ephemeral_features
    from tether.kube.agent_ephemeral import support_for

    assert "no mirror or steal (no capabilities" in ephemeral_features(
        support_for("v1.20.2"), False, ""
    )
    assert ephemeral_features(support_for("v1.30.0"), True, "").endswith("mirror, steal")
    refused = ephemeral_features(support_for("v1.30.0"), False, "violates PodSecurity")
    assert "violates PodSecurity" in refused


def test_the_fallbacks_missing_permissions_are_warnings() -> None:
    from tether.doctor.cluster import ephemeral_rbac_checks
    from tether.kube.permissions import ephemeral_extra

    (patch,) = ephemeral_extra("shop", "shop")
    (check,) = ephemeral_rbac_checks("shop", [patch])
    assert check.status == "warning" and "patch pods/ephemeralcontainers" in check.detail
    assert "tether-ephemeral.yaml" in check.fix
    assert ephemeral_rbac_checks("shop", []) == []
