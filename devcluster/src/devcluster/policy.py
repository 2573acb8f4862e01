"""The cluster's PodSecurityPolicies and who may use them (pure: no I/O here).

The API server runs the PodSecurityPolicy admission plugin (policy/v1beta1, the v1.20 way to
refuse privileged pods; Pod Security Admission replaced it in 1.23+). `up` applies these
manifests at every start, idempotently, right after the API server answers and before any
workload pod is created: with the plugin on, a pod no policy admits is refused.

- `devcluster-privileged` allows everything (privileged, host namespaces and ports, any
  capability, volume, sysctl, user and seccomp profile).
- `devcluster-baseline` is like Pod Security "baseline": not privileged, no host namespaces,
  no host ports, no hostPath volume, no capability beyond the default set. PSP cannot say
  "seccomp unset, RuntimeDefault or Localhost", so any seccomp profile is allowed.
- Neither sets a default, so neither mutates a pod (PSP prefers non-mutating policies, and a
  pod admitted under one is the pod as it was sent).

Who gets which: PSP admits a pod if either the requesting user or the pod's service account
may `use` a policy (in the pod's namespace). Every authenticated user (group
system:authenticated) may use baseline, so every pod in every namespace may be baseline. The
controllers create the pods of Jobs, Deployments and the rest in every namespace (the
controller-manager runs with --use-service-account-credentials), so they must NOT get the
privileged policy cluster-wide: privileged is decided by the pod's namespace, through its
service account's group system:serviceaccounts:<namespace>.

- The ClusterRoleBinding `devcluster:psp:privileged` grants it to the service-account groups
  of default, kube-public, kube-node-lease and shop (the demo's namespace; a group name works
  before its namespace exists).
- kube-system is granted by a RoleBinding in kube-system instead: the controllers' own
  service accounts live there, so a cluster-wide grant to system:serviceaccounts:kube-system
  would let every controller create privileged pods in every namespace.
- Any other namespace gets baseline only, unless a RoleBinding in it grants the ClusterRole
  `devcluster:psp:privileged` to its own group system:serviceaccounts:<namespace>
  (privileged_rolebinding).

The cluster admin (system:masters) may use every policy, so a bare pod the admin creates (or
dry-runs) is admitted anywhere, and so is one that a service account of the cluster-wide
groups creates in another namespace; pods created by controllers are decided by namespace.
"""

from typing import Any

PRIVILEGED = "devcluster-privileged"
BASELINE = "devcluster-baseline"
PRIVILEGED_ROLE = "devcluster:psp:privileged"
BASELINE_ROLE = "devcluster:psp:baseline"
ROLEBINDING = "devcluster-privileged-pods"

# Namespaces whose pods may be privileged, granted cluster-wide by their groups (they may not
# exist yet) or, for kube-system (the controllers' namespace), by a RoleBinding in it.
PRIVILEGED_NAMESPACES = ("default", "kube-public", "kube-node-lease", "shop")
CONTROLLERS_NAMESPACE = "kube-system"

# Pod Security "baseline": the capabilities a container may add (the container runtime's
# default set).
BASELINE_CAPABILITIES = (
    "AUDIT_WRITE",
    "CHOWN",
    "DAC_OVERRIDE",
    "FOWNER",
    "FSETID",
    "KILL",
    "MKNOD",
    "NET_BIND_SERVICE",
    "SETFCAP",
    "SETGID",
    "SETPCAP",
    "SETUID",
    "SYS_CHROOT",
)

# Every volume type policy/v1beta1 knows in v1.20 except hostPath (baseline's one exclusion).
BASELINE_VOLUMES = (
    "awsElasticBlockStore",
    "azureDisk",
    "azureFile",
    "cephFS",
    "cinder",
    "configMap",
    "csi",
    "downwardAPI",
    "emptyDir",
    "ephemeral",
    "fc",
    "flexVolume",
    "flocker",
    "gcePersistentDisk",
    "gitRepo",
    "glusterfs",
    "iscsi",
    "nfs",
    "persistentVolumeClaim",
    "photonPersistentDisk",
    "portworxVolume",
    "projected",
    "quobyte",
    "rbd",
    "scaleIO",
    "secret",
    "storageos",
    "vsphereVolume",
)

_SECCOMP_ANY = {"seccomp.security.alpha.kubernetes.io/allowedProfileNames": "*"}
_RUN_AS_ANY = {
    "runAsUser": {"rule": "RunAsAny"},
    "seLinux": {"rule": "RunAsAny"},
    "supplementalGroups": {"rule": "RunAsAny"},
    "fsGroup": {"rule": "RunAsAny"},
}


def service_account_group(namespace: str) -> str:
    """The group of every service account of `namespace`."""
    return f"system:serviceaccounts:{namespace}"


def _psp(name: str, spec: dict[str, Any]) -> dict[str, Any]:
    return {
        "apiVersion": "policy/v1beta1",
        "kind": "PodSecurityPolicy",
        "metadata": {"name": name, "annotations": dict(_SECCOMP_ANY)},
        "spec": {**spec, **_RUN_AS_ANY, "allowPrivilegeEscalation": True},
    }


def privileged_psp() -> dict[str, Any]:
    """The policy that allows everything and changes nothing."""
    return _psp(
        PRIVILEGED,
        {
            "privileged": True,
            "hostPID": True,
            "hostIPC": True,
            "hostNetwork": True,
            "hostPorts": [{"min": 0, "max": 65535}],
            "allowedCapabilities": ["*"],
            "volumes": ["*"],
            "allowedUnsafeSysctls": ["*"],
        },
    )


def baseline_psp() -> dict[str, Any]:
    """Pod Security "baseline" as a non-mutating PodSecurityPolicy."""
    return _psp(
        BASELINE,
        {
            "privileged": False,
            "hostPID": False,
            "hostIPC": False,
            "hostNetwork": False,
            "allowedCapabilities": list(BASELINE_CAPABILITIES),
            "volumes": list(BASELINE_VOLUMES),
        },
    )


def _use_role(name: str, psp: str) -> dict[str, Any]:
    return {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "ClusterRole",
        "metadata": {"name": name},
        "rules": [
            {
                "apiGroups": ["policy"],
                "resources": ["podsecuritypolicies"],
                "resourceNames": [psp],
                "verbs": ["use"],
            }
        ],
    }


def _groups(names: list[str]) -> list[dict[str, str]]:
    return [{"apiGroup": "rbac.authorization.k8s.io", "kind": "Group", "name": n} for n in names]


def _cluster_binding(role: str, groups: list[str]) -> dict[str, Any]:
    return {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "ClusterRoleBinding",
        "metadata": {"name": role},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": role},
        "subjects": _groups(groups),
    }


def privileged_rolebinding(namespace: str) -> dict[str, Any]:
    """The RoleBinding that lets the pods of `namespace` be privileged (what an admin of a
    PodSecurityPolicy cluster creates to grant a namespace privileged pods)."""
    return {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "RoleBinding",
        "metadata": {"name": ROLEBINDING, "namespace": namespace},
        "roleRef": {
            "apiGroup": "rbac.authorization.k8s.io",
            "kind": "ClusterRole",
            "name": PRIVILEGED_ROLE,
        },
        "subjects": _groups([service_account_group(namespace)]),
    }


def manifests() -> list[dict[str, Any]]:
    """Both policies, their `use` ClusterRoles and the bindings, in apply order. kube-system
    comes first: on a new cluster the API server may answer before it has created it."""
    return [
        {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": CONTROLLERS_NAMESPACE}},
        privileged_psp(),
        baseline_psp(),
        _use_role(PRIVILEGED_ROLE, PRIVILEGED),
        _use_role(BASELINE_ROLE, BASELINE),
        _cluster_binding(BASELINE_ROLE, ["system:authenticated"]),
        _cluster_binding(
            PRIVILEGED_ROLE, [service_account_group(ns) for ns in PRIVILEGED_NAMESPACES]
        ),
        privileged_rolebinding(CONTROLLERS_NAMESPACE),
    ]
