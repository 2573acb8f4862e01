"""The README's minimal Role grants exactly what a session uses (kube/permissions.py)."""

from pathlib import Path

import yaml

from tether.kube.permissions import SESSION

ROLE = Path(__file__).resolve().parents[3] / "examples" / "rbac" / "tether-user.yaml"


def _granted(path: Path = ROLE) -> set[tuple[str, str, str]]:
    role = yaml.safe_load(path.read_text())
    return {
        (group, resource, verb)
        for rule in role["rules"]
        for group in rule["apiGroups"]
        for resource in rule["resources"]
        for verb in rule["verbs"]
    }


def test_the_role_grants_exactly_the_session_permissions() -> None:
    used = {
        (p.group, f"{p.resource}/{p.subresource}" if p.subresource else p.resource, p.verb)
        for p in SESSION
    }
    assert _granted() == used


def test_permission_names_read_as_rbac_does() -> None:
    names = {p.name for p in SESSION}
    assert {"create pods/portforward", "get jobs.batch", "list deployments.apps"} <= names


EPHEMERAL_ROLE = ROLE.with_name("tether-ephemeral.yaml")


def test_the_ephemeral_role_adds_exactly_what_ephemeral_mode_needs() -> None:
    from tether.kube.permissions import EPHEMERAL, ephemeral_extra

    def key(p: object) -> tuple[str, str, str]:
        from tether.kube.permissions import Permission

        assert isinstance(p, Permission)
        what = f"{p.resource}/{p.subresource}" if p.subresource else p.resource
        return (p.group, what, p.verb)

    added = _granted(EPHEMERAL_ROLE)
    assert added == {key(p) for p in ephemeral_extra("ns", "ns")}
    assert {key(p) for p in EPHEMERAL} <= _granted() | added
    # With the agent in another namespace, its secrets and tunnel are in the target's now.
    assert "create secrets" in {p.name for p in ephemeral_extra("staging", "tether-agents")}
