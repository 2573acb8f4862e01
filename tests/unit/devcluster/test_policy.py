"""The PodSecurityPolicies: who may be privileged, what baseline refuses, and no mutation."""

from typing import Any

import pytest

from devcluster import policy


def _by_kind_and_name() -> dict[tuple[str, str], dict[str, Any]]:
    return {(m["kind"], m["metadata"]["name"]): m for m in policy.manifests()}


def _psp(name: str) -> dict[str, Any]:
    return dict(_by_kind_and_name()[("PodSecurityPolicy", name)]["spec"])


def _subjects(binding: dict[str, Any]) -> list[tuple[str, str]]:
    return [(s["kind"], s["name"]) for s in binding["subjects"]]


def test_the_manifests_are_the_two_policies_their_roles_and_bindings() -> None:
    assert sorted(_by_kind_and_name()) == [
        ("ClusterRole", "devcluster:psp:baseline"),
        ("ClusterRole", "devcluster:psp:privileged"),
        ("ClusterRoleBinding", "devcluster:psp:baseline"),
        ("ClusterRoleBinding", "devcluster:psp:privileged"),
        ("Namespace", "kube-system"),
        ("PodSecurityPolicy", "devcluster-baseline"),
        ("PodSecurityPolicy", "devcluster-privileged"),
        ("RoleBinding", "devcluster-privileged-pods"),
    ]
    kinds = [m["kind"] for m in policy.manifests()]
    # What an object names exists by the time it is applied.
    assert kinds[0] == "Namespace"
    assert kinds.index("ClusterRole") > kinds.index("PodSecurityPolicy")
    assert kinds.index("ClusterRoleBinding") > kinds.index("ClusterRole")
    assert kinds.index("RoleBinding") > kinds.index("ClusterRole")


@pytest.mark.parametrize(
    ("role", "psp"),
    [
        ("devcluster:psp:privileged", "devcluster-privileged"),
        ("devcluster:psp:baseline", "devcluster-baseline"),
    ],
)
def test_each_role_may_use_exactly_its_policy(role: str, psp: str) -> None:
    rules = _by_kind_and_name()[("ClusterRole", role)]["rules"]
    assert rules == [
        {
            "apiGroups": ["policy"],
            "resources": ["podsecuritypolicies"],
            "resourceNames": [psp],
            "verbs": ["use"],
        }
    ]


def test_everyone_may_be_baseline() -> None:
    binding = _by_kind_and_name()[("ClusterRoleBinding", "devcluster:psp:baseline")]
    assert binding["roleRef"]["name"] == "devcluster:psp:baseline"
    assert _subjects(binding) == [("Group", "system:authenticated")]


def test_privileged_goes_to_the_service_accounts_of_the_privileged_namespaces_only() -> None:
    binding = _by_kind_and_name()[("ClusterRoleBinding", "devcluster:psp:privileged")]
    assert binding["roleRef"] == {
        "apiGroup": "rbac.authorization.k8s.io",
        "kind": "ClusterRole",
        "name": "devcluster:psp:privileged",
    }
    assert _subjects(binding) == [
        ("Group", "system:serviceaccounts:default"),
        ("Group", "system:serviceaccounts:kube-public"),
        ("Group", "system:serviceaccounts:kube-node-lease"),
        ("Group", "system:serviceaccounts:shop"),
    ]
    # Not the controllers (they create pods in every namespace, as service accounts of
    # kube-system), not every service account.
    names = {name for _, name in _subjects(binding)}
    assert not names & {
        "system:authenticated",
        "system:serviceaccounts",
        "system:serviceaccounts:kube-system",
    }
    assert not any(kind != "Group" for kind, _ in _subjects(binding))


def test_kube_system_pods_may_be_privileged_in_kube_system_only() -> None:
    binding = _by_kind_and_name()[("RoleBinding", "devcluster-privileged-pods")]
    assert binding == policy.privileged_rolebinding("kube-system")
    assert binding["metadata"]["namespace"] == "kube-system"
    assert _subjects(binding) == [("Group", "system:serviceaccounts:kube-system")]


def test_a_namespace_is_granted_privileged_pods_by_a_rolebinding_to_its_own_group() -> None:
    binding = policy.privileged_rolebinding("tether-e2e-x")
    assert binding["kind"] == "RoleBinding"
    assert binding["metadata"] == {
        "name": "devcluster-privileged-pods",
        "namespace": "tether-e2e-x",
    }
    assert binding["roleRef"]["kind"] == "ClusterRole"
    assert binding["roleRef"]["name"] == "devcluster:psp:privileged"
    assert _subjects(binding) == [("Group", "system:serviceaccounts:tether-e2e-x")]


@pytest.mark.parametrize(
    ("field", "privileged", "baseline"),
    [
        ("privileged", True, False),
        ("hostPID", True, False),
        ("hostIPC", True, False),
        ("hostNetwork", True, False),
        ("hostPorts", [{"min": 0, "max": 65535}], None),
        ("allowPrivilegeEscalation", True, True),
        ("allowedHostPaths", None, None),
    ],
)
def test_what_each_policy_allows(field: str, privileged: object, baseline: object) -> None:
    assert _psp("devcluster-privileged").get(field) == privileged
    assert _psp("devcluster-baseline").get(field) == baseline


@pytest.mark.parametrize("name", ["devcluster-privileged", "devcluster-baseline"])
@pytest.mark.parametrize("strategy", ["runAsUser", "seLinux", "supplementalGroups", "fsGroup"])
def test_both_policies_run_as_anyone(name: str, strategy: str) -> None:
    assert _psp(name)[strategy] == {"rule": "RunAsAny"}


def test_privileged_allows_every_capability_volume_and_sysctl() -> None:
    spec = _psp("devcluster-privileged")
    assert spec["allowedCapabilities"] == ["*"]
    assert spec["volumes"] == ["*"]
    assert spec["allowedUnsafeSysctls"] == ["*"]


@pytest.mark.parametrize("capability", ["SYS_ADMIN", "SYS_PTRACE", "NET_ADMIN", "NET_RAW", "*"])
def test_baseline_refuses_the_agents_capabilities(capability: str) -> None:
    assert capability not in _psp("devcluster-baseline")["allowedCapabilities"]


def test_baseline_allows_only_the_default_capability_set() -> None:
    allowed = set(_psp("devcluster-baseline")["allowedCapabilities"])
    assert allowed == {
        "AUDIT_WRITE", "CHOWN", "DAC_OVERRIDE", "FOWNER", "FSETID", "KILL", "MKNOD",
        "NET_BIND_SERVICE", "SETFCAP", "SETGID", "SETPCAP", "SETUID", "SYS_CHROOT",
    }  # fmt: skip


def test_baseline_allows_every_volume_but_host_paths() -> None:
    volumes = _psp("devcluster-baseline")["volumes"]
    assert "hostPath" not in volumes and "*" not in volumes
    for kind in ("configMap", "secret", "emptyDir", "projected", "downwardAPI", "csi"):
        assert kind in volumes
    assert len(volumes) == len(set(volumes))


# A field or annotation that makes PSP change a pod it admits.
_DEFAULTS = (
    "defaultAddCapabilities",
    "requiredDropCapabilities",
    "defaultAllowPrivilegeEscalation",
    "readOnlyRootFilesystem",
    "runAsGroup",
)


@pytest.mark.parametrize("name", ["devcluster-privileged", "devcluster-baseline"])
def test_neither_policy_mutates_pods(name: str) -> None:
    psp = _by_kind_and_name()[("PodSecurityPolicy", name)]
    for field in _DEFAULTS:
        assert field not in psp["spec"]
    for strategy in ("runAsUser", "seLinux", "supplementalGroups", "fsGroup"):
        assert set(psp["spec"][strategy]) == {"rule"}
    annotations = psp["metadata"].get("annotations", {})
    assert not any(key.endswith("defaultProfileName") for key in annotations)
    # Not setting it would refuse any pod that names a seccomp profile.
    assert annotations["seccomp.security.alpha.kubernetes.io/allowedProfileNames"] == "*"
