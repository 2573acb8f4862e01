"""The cluster: the API server, RBAC for every verb a session uses, the target, admission
of the agent pod (a server-side dry-run), the agent image on its node. Nothing is created."""

from collections.abc import Sequence
from typing import Any

from tether.config.models import AgentConfig
from tether.doctor.report import Check
from tether.kube.agent_lifecycle import admission_warnings, header_values
from tether.kube.agent_manifest import agent_job_manifest
from tether.kube.client import KubeClient
from tether.kube.errors import AdmissionRefusedError, ForbiddenError, KubeError, Operation
from tether.kube.permissions import Permission, needed_in
from tether.kube.targets import ResolvedTarget, parse_target, resolve_target

# The devcluster runs v1.20; the modern paths are tested on recorded 1.28-1.35 fixtures.
TESTED = ((1, 20), (1, 35))


def _minor(git_version: str) -> tuple[int, int] | None:
    parts = git_version.lstrip("v").split(".")
    try:
        return int(parts[0]), int("".join(ch for ch in parts[1] if ch.isdigit()))
    except (IndexError, ValueError):
        return None


def version_check(server: str, git_version: str) -> Check:
    """The API server's version against the range tether is tested on (pure)."""
    minor = _minor(git_version)
    inside = minor is not None and TESTED[0] <= minor <= TESTED[1]
    return Check(
        "cluster",
        "API server",
        "ok" if inside else "warning",
        f"{server} runs Kubernetes {git_version}",
        "tether is tested on 1.20 and recorded 1.28-1.35 behaviour; report what fails here",
    )


def rbac_checks(denied: dict[str, list[Permission]], checked: dict[str, int]) -> list[Check]:
    """One ok line per namespace whose permissions are all granted, one failing line per
    denied permission (pure)."""
    checks = []
    for ns, count in checked.items():
        missing = denied.get(ns, [])
        if not missing:
            checks.append(
                Check("rbac", f"namespace {ns}", "ok", f"all {count} permissions granted")
            )
        for p in missing:
            checks.append(
                Check(
                    "rbac",
                    f"namespace {ns}",
                    "failing",
                    f"cannot {p.name} (needed for {p.why})",
                    f"grant {p.name} in namespace {ns} (examples/rbac/tether-user.yaml"
                    " is the minimal Role)",
                )
            )
    return checks


def target_checks(target: ResolvedTarget) -> list[Check]:
    """What the resolved target means for a session (pure)."""
    checks = [Check("target", "pod", "ok", target.describe())]
    if target.mesh:
        checks.append(
            Check(
                "target",
                "service mesh",
                "warning",
                f"{target.mesh}: its own rules redirect the pod's traffic too",
                "if mirror or steal misses traffic, check the mesh's inbound redirection",
            )
        )
    if target.host_network:
        checks.append(
            Check(
                "target",
                "hostNetwork",
                "warning",
                "the pod uses the node's network: mirror and steal are refused",
                "target a pod on the pod network for incoming traffic",
            )
        )
    return checks


async def _allowed(kc: KubeClient, namespace: str, p: Permission) -> bool:
    from kubernetes_asyncio import client

    review = client.V1SelfSubjectAccessReview(
        spec=client.V1SelfSubjectAccessReviewSpec(
            resource_attributes=client.V1ResourceAttributes(
                namespace=namespace,
                verb=p.verb,
                group=p.group,
                resource=p.resource,
                subresource=p.subresource or None,
            )
        )
    )
    api = client.AuthorizationV1Api(api_client=kc.api)
    answer: Any = await kc.call(
        api.create_self_subject_access_review(review),
        Operation("create", "selfsubjectaccessreviews.authorization.k8s.io"),
    )
    return bool(answer.status.allowed)


async def cluster_checks(
    kc: KubeClient, namespace: str, target: str | None, agent: AgentConfig
) -> list[Check]:
    """Every cluster-side check, in order; a check that cannot run is a failing line."""
    from kubernetes_asyncio import client

    checks: list[Check] = []
    try:
        code: Any = await kc.call(
            client.VersionApi(api_client=kc.api).get_code(), Operation("get", "version")
        )
    except KubeError as exc:
        return [Check("cluster", "API server", "failing", str(exc), "fix the kubeconfig")]
    checks.append(version_check(kc.server, str(code.git_version)))
    checks.append(Check("cluster", "context", "ok", f"{kc.context}, namespace {namespace}"))

    agent_ns = agent.namespace or namespace
    needs = needed_in(namespace, agent_ns)
    denied: dict[str, list[Permission]] = {}
    for ns, permissions in needs.items():
        for p in permissions:
            if not await _allowed(kc, ns, p):
                denied.setdefault(ns, []).append(p)
    checks += rbac_checks(denied, {ns: len(ps) for ns, ps in needs.items()})

    if target is None or target == "targetless":
        return checks
    try:
        resolved = await resolve_target(kc, parse_target(target), namespace)
    except KubeError as exc:
        checks.append(Check("target", target, "failing", str(exc), "name a running target"))
        return checks
    checks += target_checks(resolved)
    checks.append(await _admission(kc, resolved, agent, namespace))
    checks.append(await _image_check(kc, resolved.node_name, agent.image))
    return checks


REFUSAL_FIX = (
    "ask for agent.namespace (a namespace whose policy allows the agent's privileged pod)"
    " or a policy exception for the agent"
)


def admission_check(outcome: str, detail: str, warnings: Sequence[str] = ()) -> Check:
    """What the dry-run of the agent pod says (pure). `outcome`: "admitted" (with the API
    server's warnings, if any), "refused" (by Pod Security, a PodSecurityPolicy, a webhook:
    `detail` is its message), or "unchecked" (the dry-run itself was not allowed: `detail`
    says why)."""
    if outcome == "refused":
        return Check(
            "agent", "admission", "failing", f"the agent pod is refused: {detail}", REFUSAL_FIX
        )
    if outcome == "unchecked":
        return Check(
            "agent",
            "admission",
            "warning",
            f"could not dry-run the agent pod ({detail})",
            "grant create pods (a dry-run creates nothing) to have admission checked now",
        )
    if warnings:
        return Check(
            "agent",
            "admission",
            "warning",
            "the agent pod is admitted with warnings: " + "; ".join(warnings),
            "the namespace's policy may refuse it once enforced: " + REFUSAL_FIX,
        )
    return Check("agent", "admission", "ok", "a dry-run of the agent pod is admitted")


async def _admission(
    kc: KubeClient, resolved: ResolvedTarget, agent: AgentConfig, namespace: str
) -> Check:
    manifest = agent_job_manifest(
        session_id="doctor", agent=agent, target=resolved, namespace=namespace, shared=True
    )
    template = manifest["spec"]["template"]
    agent_ns = str(manifest["metadata"]["namespace"])
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {**template.get("metadata", {}), "generateName": "tether-doctor-"},
        "spec": template["spec"],
    }
    op = Operation("create", "pods", agent_ns)
    try:
        _, _, headers = await kc.call(
            kc.core.create_namespaced_pod_with_http_info(agent_ns, pod, dry_run="All"), op
        )
    except AdmissionRefusedError as exc:
        return admission_check("refused", exc.reason)
    except ForbiddenError as exc:
        return admission_check("unchecked", str(exc))
    except KubeError as exc:
        return admission_check("unchecked", str(exc))
    return admission_check("admitted", "", admission_warnings(header_values(headers, "Warning")))


async def _image_check(kc: KubeClient, node: str, image: str) -> Check:
    try:
        found: Any = await kc.call(kc.core.read_node(node), Operation("get", "nodes", name=node))
    except ForbiddenError:
        return Check(
            "agent",
            "image",
            "warning",
            f"cannot read node {node} to see whether it holds {image}",
            "grant get nodes to check, or make sure the node can pull agent.image",
        )
    except KubeError as exc:
        return Check("agent", "image", "warning", str(exc), "make sure the node can pull it")
    names = {n for i in (found.status.images or []) for n in (i.names or [])}
    if image in names:
        return Check("agent", "image", "ok", f"{image} is on node {node}")
    return Check(
        "agent",
        "image",
        "warning",
        f"{image} is not on node {node}: it will be pulled at the first session",
        "push the image where the node can pull it (agent.image, TETHER_AGENT_IMAGE)",
    )
