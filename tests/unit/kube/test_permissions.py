"""The README's minimal Role grants exactly what a session uses (kube/permissions.py)."""

from pathlib import Path

import yaml

from tether.kube.permissions import SESSION

ROLE = Path(__file__).resolve().parents[3] / "examples" / "rbac" / "tether-user.yaml"


def _granted() -> set[tuple[str, str, str]]:
    role = yaml.safe_load(ROLE.read_text())
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
