"""The cluster: the API server, RBAC for every verb a session uses, the target, admission
of the agent pod (a server-side dry-run), the agent image on its node. Nothing is created."""

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from tether.config.models import AgentConfig
from tether.doctor.report import Check, Status
from tether.kube.agent_ephemeral import (
    INCOMING_CAPABILITIES,
    EphemeralSupport,
    add_ephemeral_container,
    container_name,
    ephemeral_container,
    refusal_reason,
    server_minor,
    support_for,
)
from tether.kube.agent_lifecycle import admission_warnings, header_values
from tether.kube.agent_manifest import agent_job_manifest, new_secret, new_session_id
from tether.kube.client import KubeClient, server_version
from tether.kube.errors import AdmissionRefusedError, ForbiddenError, KubeError, Operation
from tether.kube.permissions import Permission, ephemeral_extra, needed_in
from tether.kube.targets import ResolvedTarget, parse_target, resolve_target
from tether.local.policy.agent_mode import ephemeral_refusal

# The devcluster runs v1.20; the modern paths are tested on recorded 1.28-1.35 fixtures.
TESTED = ((1, 20), (1, 35))


def version_check(server: str, git_version: str) -> Check:
    """The API server's version against the range tether is tested on (pure)."""
    minor = server_minor(git_version)
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
    kc: KubeClient,
    namespace: str,
    target: str | None,
    agent: AgentConfig,
    incoming: bool = False,
) -> list[Check]:
    """Every cluster-side check, in order; a check that cannot run is a failing line.
    `incoming`: the session would mirror or steal (an ephemeral agent needs NET_ADMIN)."""
    checks: list[Check] = []
    try:
        version = await server_version(kc)
    except KubeError as exc:
        return [Check("cluster", "API server", "failing", str(exc), "fix the kubeconfig")]
    checks.append(version_check(kc.server, version))
    checks.append(Check("cluster", "context", "ok", f"{kc.context}, namespace {namespace}"))

    agent_ns = agent.namespace or namespace
    needs = needed_in(namespace, agent_ns, agent.mode)
    denied: dict[str, list[Permission]] = {}
    for ns, permissions in needs.items():
        for p in permissions:
            if not await _allowed(kc, ns, p):
                denied.setdefault(ns, []).append(p)
    checks += rbac_checks(denied, {ns: len(ps) for ns, ps in needs.items()})
    if agent.mode == "auto":
        # What falling back to an ephemeral agent would need on top: a warning if missing.
        extra = [
            p for p in ephemeral_extra(namespace, agent_ns) if not await _allowed(kc, namespace, p)
        ]
        checks += ephemeral_rbac_checks(namespace, extra)

    if target is None or target == "targetless":
        return checks
    try:
        resolved = await resolve_target(kc, parse_target(target), namespace)
    except KubeError as exc:
        checks.append(Check("target", target, "failing", str(exc), "name a running target"))
        return checks
    checks += target_checks(resolved)
    job = await _admission(kc, resolved, agent, namespace) if agent.mode != "ephemeral" else None
    ephemeral = None
    if agent.mode != "job":
        ephemeral = await _ephemeral_admission(kc, resolved, agent, incoming)
    checks += mode_checks(agent.mode, job, ephemeral)
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


def ephemeral_rbac_checks(namespace: str, missing: Sequence[Permission]) -> list[Check]:
    """What agent.mode = auto would need to fall back on an ephemeral agent (pure): one
    warning per missing permission, none when all are granted."""
    return [
        Check(
            "rbac",
            f"namespace {namespace} (ephemeral agent)",
            "warning",
            f"cannot {p.name} (needed for {p.why})",
            "grant it (examples/rbac/tether-ephemeral.yaml) to let auto fall back on an"
            " ephemeral agent where the Job's pod is refused",
        )
        for p in missing
    ]


@dataclass(frozen=True)
class EphemeralFinding:
    """What a dry-run of adding the ephemeral agent to the target's pod said."""

    outcome: str
    """"admitted", "refused" or "unchecked" (as for admission_check)."""
    detail: str
    """The refusal's or the failure's message; for "admitted", what the agent can do."""
    incoming: bool
    """It could mirror and steal (NET_ADMIN admitted)."""
    usable: bool
    """It could serve the session (admitted, and able to do what the session asks)."""


def ephemeral_features(support: EphemeralSupport, net_admin: bool, why_not: str) -> str:
    """What an ephemeral agent can do here, in one phrase (pure)."""
    base = "env, files (where the kernel lets the agent read the target process), outgoing, DNS"
    if net_admin:
        return f"{base}, mirror, steal"
    if not support.capabilities:
        return f"{base}; no mirror or steal (no capabilities for ephemeral containers before 1.21)"
    return f"{base}; no mirror or steal ({why_not or 'NET_ADMIN not asked for'})"


JOB_FEATURES = "env, files, outgoing, DNS, mirror, steal"


def _mode(status: Status, detail: str, fix: str = "") -> Check:
    return Check("agent", "mode", status, detail, fix)


def mode_checks(mode: str, job: Check | None, ephemeral: EphemeralFinding | None) -> list[Check]:
    """The admission line of each agent mode considered, then which agent a session would
    use and what works with it (pure). With auto, a refused Job is failing only if no
    ephemeral agent can stand in for it."""
    eph = _ephemeral_check(ephemeral) if ephemeral is not None else None
    if mode == "ephemeral" and eph is not None:
        used = f"agent.mode = ephemeral: {ephemeral.detail}" if ephemeral else ""
        return [eph, _mode(eph.status, used)] if eph.status == "ok" else [eph]
    if job is None:
        raise ValueError(f"mode_checks: agent.mode {mode} needs the Job's admission check")
    if mode == "job" or eph is None or ephemeral is None:
        if job.status == "failing":
            return [job]
        return [job, _mode("ok", f"agent.mode = job: {JOB_FEATURES}")]
    if job.status != "failing":
        # The fallback is not needed: what is wrong with it is no reason to fail.
        shown = eph if eph.status != "failing" else _demote(eph, "", "warning")
        return [
            job,
            shown,
            _mode("ok", f"agent.mode = auto: a session uses the Job: {JOB_FEATURES}"),
        ]
    if ephemeral.usable:
        return [
            _demote(job, "auto falls back on an ephemeral agent"),
            eph,
            _mode(
                "ok",
                "agent.mode = auto: the Job's pod is refused, so a session uses an ephemeral"
                f" container in the target's pod: {ephemeral.detail}",
            ),
        ]
    return [
        job,
        eph,
        _mode(
            "failing",
            "agent.mode = auto: neither the Job nor an ephemeral agent can serve this session",
            REFUSAL_FIX,
        ),
    ]


def _demote(check: Check, why: str, status: Status = "warning") -> Check:
    detail = f"{check.detail} ({why})" if why else check.detail
    return Check(check.area, check.name, status, detail, check.fix)


def _ephemeral_check(found: EphemeralFinding) -> Check:
    name = "ephemeral agent"
    if found.outcome == "refused":
        return Check(
            "agent",
            name,
            "failing",
            f"the ephemeral agent is refused: {found.detail}",
            "ask for a policy that admits it, or use agent.mode = job with agent.namespace",
        )
    if found.outcome == "unchecked":
        return Check(
            "agent",
            name,
            "failing",
            f"could not dry-run adding an ephemeral agent ({found.detail})",
            "grant patch pods/ephemeralcontainers (examples/rbac/tether-ephemeral.yaml)",
        )
    if not found.usable:
        return Check(
            "agent",
            name,
            "failing",
            f"admitted, but it cannot serve this session: {found.detail}",
            "use agent.mode = job, with agent.namespace where privileged pods are allowed",
        )
    return Check("agent", name, "ok", f"admitted (dry-run): {found.detail}")


async def _ephemeral_admission(
    kc: KubeClient, resolved: ResolvedTarget, agent: AgentConfig, incoming: bool
) -> EphemeralFinding:
    """Dry-run adding the ephemeral agent: first with NET_ADMIN (where the cluster allows
    capabilities), then, if that is refused, without."""
    version = await server_version(kc)
    support = support_for(version)
    refusal = ephemeral_refusal(
        incoming, resolved.host_network, support, f"this cluster runs {version}"
    )
    tries = [INCOMING_CAPABILITIES, ()] if support.capabilities else [()]
    refused = ""
    for caps in tries:
        container = ephemeral_container(
            name=container_name(new_session_id()),
            agent=agent,
            target=resolved,
            secret=new_secret(),
            capabilities=caps,
        )
        try:
            await add_ephemeral_container(kc, resolved, container, support.shape, dry_run=True)
        except AdmissionRefusedError as exc:
            refused = refusal_reason(exc)
            continue
        except KubeError as exc:
            return EphemeralFinding("unchecked", str(exc), False, False)
        net_admin = bool(caps)
        if incoming and not net_admin and refusal is None:
            refusal = (
                f"the namespace's policy refuses NET_ADMIN, which mirror and steal need: {refused}"
            )
        features = ephemeral_features(support, net_admin, refused)
        detail = features if refusal is None else refusal
        return EphemeralFinding("admitted", detail, net_admin, refusal is None)
    return EphemeralFinding("refused", refused, False, False)
