"""The agent Job: its manifest, starting it, waiting for the agent's ready line, removing it."""

import asyncio
import base64
import contextlib
import functools
import hashlib
import re
import secrets
from collections.abc import Callable, Coroutine, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from tether import __version__
from tether.config.models import AgentConfig
from tether.kube.client import KubeClient
from tether.kube.errors import (
    AgentFailedError,
    AgentImageError,
    AgentTimeoutError,
    AgentVersionError,
    AlreadyExistsError,
    KubeError,
    NamespaceNotFoundError,
    NotFoundError,
    Operation,
)
from tether.kube.objects import PodView, pod_view
from tether.kube.targets import AGENT_APP_LABEL, ResolvedTarget

DEFAULT_COMMAND = ("python3", "-m", "tether.agent")
CONTAINER = "agent"
SESSION_LABEL = "tether.dev/session"
TARGET_POD_LABEL = "tether.dev/target-pod"
# A hash of the target pod's UID and container: the shared agent's identity.
TARGET_LABEL = "tether.dev/target"
VERSION_LABEL = "tether.dev/version"
JOIN_ATTEMPTS = 6
GONE_TIMEOUT = 30.0
CAPABILITIES = ("SYS_ADMIN", "SYS_PTRACE", "NET_ADMIN")
READY_LINE = re.compile(r"^tether-agent ready port=(\d+) version=(\S+)$", re.MULTILINE)
IMAGE_ERRORS = frozenset(
    {
        "ErrImageNeverPull",
        "ErrImagePull",
        "ImagePullBackOff",
        "InvalidImageName",
        "ErrImageInspect",
        "RegistryUnavailable",
    }
)
LOG_POLL = 0.03
POD_POLL = 0.05
EVENT_POLL = 0.5
DELETE_GRACE = 10.0
_EPOCH = datetime.min.replace(tzinfo=UTC)
# The session secret: a Secret named like its Job, under this key, given to the agent as this
# variable. Never a plain value in the Job: anyone who may `get jobs` could read it there.
SECRET_KEY = "secret"
SECRET_ENV = "TETHER_SECRET"
# A Secret without an owner Job older than this is a leftover of a session killed between
# creating it and its Job; a younger one is another session's start in progress.
ORPHAN_SECRET_AGE = 30.0
JOIN_RETRY = 0.2

PhaseCallback = Callable[[str], None]


def new_session_id() -> str:
    """A short random hex id naming one session's cluster objects."""
    return secrets.token_hex(4)


def new_secret() -> str:
    """A random hex secret the agent requires from its clients."""
    return secrets.token_hex(32)


@dataclass(frozen=True)
class AgentHandle:
    """A created agent Job."""

    namespace: str
    job_name: str
    session_id: str
    uid: str


def job_name(session_id: str) -> str:
    """The agent Job's name for a session."""
    return f"tether-agent-{session_id}"


def target_key(target: ResolvedTarget) -> str:
    """A short stable key for the target's pod (pod UIDs are never reused).

    Per pod, not per container: the containers of a pod share one network namespace, and
    incoming traffic needs one owner of its redirect rules. A session on another container
    of the pod tells the agent which one (`session.target`).
    """
    return hashlib.sha256(target.pod_uid.encode()).hexdigest()[:16]


def shared_job_name(target: ResolvedTarget) -> str:
    """The name of the one agent Job every session on `target`'s pod shares.

    A fixed name makes the API server the lock: of two sessions starting at once, one
    creates the Job and the other gets AlreadyExists and joins it.
    """
    return f"tether-agent-{target_key(target)}"


def _label_value(text: str) -> str:
    # Label values are at most 63 characters and must end alphanumeric; pod names can be longer.
    return text[:63].rstrip("-._")


def agent_job_manifest(
    *,
    session_id: str,
    agent: AgentConfig,
    target: ResolvedTarget | None,
    namespace: str | None = None,
    command: Sequence[str] | None = None,
    shared: bool = False,
) -> dict[str, Any]:
    """The batch/v1 Job that runs the agent for one session.

    With `shared` (and a target) the Job is named after the target instead of the session,
    so that every session on that target uses the same agent (see `acquire_agent`).

    With a `target` the agent runs on the target's node with hostPID and the capabilities it
    needs to enter the target container (`--container-id`); without (targetless) it is a plain
    unprivileged pod. The Job goes to `agent.namespace`, else `namespace`, else the target's.
    `command` replaces the agent command (tests use it to run a stand-in).
    """
    ns = agent.namespace or namespace or (target.namespace if target else None)
    if not ns:
        raise ValueError("agent_job_manifest: no namespace for the agent Job")
    labels = {
        **agent.labels,
        AGENT_APP_LABEL[0]: AGENT_APP_LABEL[1],
        SESSION_LABEL: session_id,
    }
    if target is not None:
        labels[TARGET_POD_LABEL] = _label_value(target.pod_name)
    name = job_name(session_id)
    if shared and target is not None:
        labels[TARGET_LABEL] = target_key(target)
        labels[VERSION_LABEL] = _label_value(__version__)
        name = shared_job_name(target)
    args = ["--port", str(agent.port), "--idle-timeout", format(agent.idle_timeout, "g")]
    container: dict[str, Any] = {
        "name": CONTAINER,
        "image": agent.image,
        "command": list(command if command is not None else DEFAULT_COMMAND),
        "args": args,
        "env": [
            {
                "name": SECRET_ENV,
                "valueFrom": {"secretKeyRef": {"name": name, "key": SECRET_KEY}},
            }
        ],
        "resources": {"requests": {"cpu": "10m", "memory": "32Mi"}},
    }
    if agent.image_pull_policy is not None:
        container["imagePullPolicy"] = agent.image_pull_policy
    pod_spec: dict[str, Any] = {
        "restartPolicy": "Never",
        "terminationGracePeriodSeconds": 5,
        "automountServiceAccountToken": False,
        "tolerations": [{"operator": "Exists"}],
        "containers": [container],
    }
    if target is not None:
        args += ["--container-id", target.container_id]
        security: dict[str, Any] = {"capabilities": {"add": list(CAPABILITIES)}}
        if agent.privileged:
            security["privileged"] = True
        container["securityContext"] = security
        pod_spec["nodeName"] = target.node_name
        pod_spec["hostPID"] = True
    metadata: dict[str, Any] = {"name": name, "namespace": ns, "labels": labels}
    pod_metadata: dict[str, Any] = {"labels": dict(labels)}
    if agent.annotations:
        metadata["annotations"] = dict(agent.annotations)
        pod_metadata["annotations"] = dict(agent.annotations)
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": metadata,
        "spec": {
            "backoffLimit": 0,
            "activeDeadlineSeconds": agent.max_lifetime,
            "ttlSecondsAfterFinished": agent.ttl_seconds_after_finished,
            "template": {"metadata": pod_metadata, "spec": pod_spec},
        },
    }


def agent_secret_manifest(job: dict[str, Any], secret: str) -> dict[str, Any]:
    """The v1 Secret holding the session secret of the Job `job` (from agent_job_manifest):
    same name, namespace and labels; its owner reference is added once the Job exists."""
    meta = job["metadata"]
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {
            "name": meta["name"],
            "namespace": meta["namespace"],
            "labels": dict(meta["labels"]),
        },
        "type": "Opaque",
        "data": {SECRET_KEY: base64.b64encode(secret.encode()).decode()},
    }


def owner_reference(job_name: str, job_uid: str) -> dict[str, Any]:
    """An ownerReference to the agent Job: the garbage collector deletes the Secret with it."""
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "name": job_name,
        "uid": job_uid,
        "blockOwnerDeletion": False,
    }


def job_secret_name(job: Any) -> str | None:
    """The name of the Secret the Job's agent container takes its session secret from."""
    for container in job.spec.template.spec.containers or []:
        for var in container.env or []:
            ref = var.value_from.secret_key_ref if var.value_from is not None else None
            if var.name == SECRET_ENV and ref is not None and ref.name:
                return str(ref.name)
    return None


def secret_value(secret: Any) -> str | None:
    """The session secret in a Secret read from the API (None if it holds none)."""
    encoded = (secret.data or {}).get(SECRET_KEY)
    if not encoded:
        return None
    try:
        return base64.b64decode(encoded).decode()
    except (ValueError, UnicodeDecodeError):
        return None


async def _create_secret(kc: KubeClient, manifest: dict[str, Any]) -> None:
    meta = manifest["metadata"]
    namespace, name = str(meta["namespace"]), str(meta["name"])
    op = Operation("create", "secrets", namespace, name)
    try:
        await kc.call(kc.core.create_namespaced_secret(namespace, manifest), op)
    except NotFoundError:
        raise NamespaceNotFoundError(
            f'namespace "{namespace}" for the agent Job not found'
            " (set agent.namespace or --namespace to an existing one)"
        ) from None


async def _delete_secret(kc: KubeClient, namespace: str, name: str) -> None:
    with contextlib.suppress(NotFoundError):
        await kc.call(
            kc.core.delete_namespaced_secret(name, namespace),
            Operation("delete", "secrets", namespace, name),
        )


async def start_agent_job(kc: KubeClient, manifest: dict[str, Any], secret: str) -> AgentHandle:
    """Create the Job from `agent_job_manifest` and the Secret its agent reads `secret` from.

    The Secret comes first, so the agent pod never waits for it; it is then owned by the Job
    (deleted with it). If the Job cannot be created, the Secret is deleted again.
    Raises ForbiddenError (RBAC), NamespaceNotFoundError, AlreadyExistsError (of the Secret
    or the Job: another session is starting or running this agent).
    """
    meta = manifest["metadata"]
    namespace, name = str(meta["namespace"]), str(meta["name"])
    await _create_secret(kc, agent_secret_manifest(manifest, secret))
    op = Operation("create", "jobs.batch", namespace, name)
    uid: str | None = None
    try:
        job = await kc.call(kc.batch.create_namespaced_job(namespace, manifest), op)
        uid = str(job.metadata.uid)
        await kc.call(
            kc.core.patch_namespaced_secret(
                name, namespace, {"metadata": {"ownerReferences": [owner_reference(name, uid)]}}
            ),
            Operation("patch", "secrets", namespace, name),
        )
    except BaseException:
        # Nothing of a start that failed half-way stays: neither the Secret nor, if it was
        # made (an AlreadyExists is someone else's), the Job.
        if uid is None:
            await _shielded(functools.partial(_delete_secret, kc, namespace, name))
        else:
            await _shielded(functools.partial(_delete_agent, kc, namespace, name))
        raise
    return AgentHandle(
        namespace=namespace,
        job_name=name,
        session_id=str(meta["labels"][SESSION_LABEL]),
        uid=uid,
    )


class _Phases:
    """Reports each phase once, in order; remembers the last for the timeout message."""

    def __init__(self, on_phase: PhaseCallback | None) -> None:
        self.on_phase = on_phase
        self.seen: set[str] = set()
        self.last = ""

    def report(self, phase: str) -> None:
        if phase in self.seen:
            return
        self.seen.add(phase)
        self.last = phase
        if self.on_phase is not None:
            self.on_phase(phase)


async def wait_agent_ready(
    kc: KubeClient,
    handle: AgentHandle,
    timeout: float,
    on_phase: PhaseCallback | None = None,
) -> str:
    """Wait until the agent prints its ready line; return the agent pod's name.

    Reports progress through `on_phase` ("scheduled on node X", "pulling image ...",
    "container started", ...). Raises AgentImageError when the node cannot get the image,
    AgentFailedError when the pod or Job fails (with the last log lines), AgentTimeoutError after
    `timeout` seconds.
    """
    phases = _Phases(on_phase)
    phases.report("waiting for the agent pod")
    try:
        async with asyncio.timeout(timeout):
            return await _wait_ready(kc, handle, phases)
    except TimeoutError:
        raise AgentTimeoutError(
            f"agent did not become ready within {timeout:g}s (last: {phases.last}; raise"
            f" agent.startup_timeout, or kubectl -n {handle.namespace} describe job"
            f" {handle.job_name})"
        ) from None


async def _wait_ready(kc: KubeClient, handle: AgentHandle, phases: _Phases) -> str:
    loop = asyncio.get_running_loop()
    next_job_check = loop.time() + 1.0
    next_event_check = loop.time()
    events_allowed = True
    while True:
        now = loop.time()
        pod = await _agent_pod(kc, handle)
        if pod is None:
            if now >= next_job_check:
                await _check_job(kc, handle)
                next_job_check = now + 1.0
            await asyncio.sleep(POD_POLL)
            continue
        if pod.node_name:
            phases.report(f"scheduled on node {pod.node_name}")
        else:
            status, reason, message = pod.conditions.get("PodScheduled", ("", "", ""))
            if status == "False":
                phases.report(f"not scheduled yet: {message or reason}")
        state = pod.statuses.get(CONTAINER)
        if state is not None and state.state == "waiting" and state.reason in IMAGE_ERRORS:
            raise AgentImageError(
                f'agent image "{pod.images.get(CONTAINER, "?")}" is not available on node'
                f' "{pod.node_name}" ({state.reason}: {state.message or "no message"}; set'
                " agent.image to an image the node can get, or agent.image_pull_policy)"
            )
        if pod.phase in ("Failed", "Succeeded") or (
            state is not None and state.state == "terminated"
        ):
            raise await _pod_failed(kc, pod)
        if state is not None and state.state == "running":
            phases.report("container started")
            log = await _read_log(kc, pod)
            if log is not None and READY_LINE.search(log):
                phases.report("agent ready")
                return pod.name
            await asyncio.sleep(LOG_POLL)
            continue
        if state is not None and state.reason and state.reason != "ContainerCreating":
            phases.report(f"waiting: {state.reason}")
        if events_allowed and pod.node_name and now >= next_event_check:
            events_allowed = await _report_events(kc, pod, phases)
            next_event_check = now + EVENT_POLL
        await asyncio.sleep(POD_POLL)


def _newest(pods: list[PodView]) -> PodView:
    return max(pods, key=lambda p: (p.created or _EPOCH, p.name))


async def _agent_pod(kc: KubeClient, handle: AgentHandle) -> PodView | None:
    pods = await kc.call(
        # controller-uid, not job-name: a shared Job's name outlives one incarnation of it.
        kc.core.list_namespaced_pod(
            handle.namespace, label_selector=f"controller-uid={handle.uid}"
        ),
        Operation("list", "pods", handle.namespace),
    )
    views = [pod_view(p) for p in pods.items]
    return _newest(views) if views else None


async def _report_events(kc: KubeClient, pod: PodView, phases: _Phases) -> bool:
    """Report image pulling from the pod's events; False if we may not read events."""
    try:
        events = await kc.call(
            kc.core.list_namespaced_event(
                pod.namespace,
                field_selector=f"involvedObject.name={pod.name},involvedObject.kind=Pod",
            ),
            Operation("list", "events", pod.namespace),
        )
    except KubeError:
        return False
    reasons = {str(e.reason): str(e.message or "") for e in events.items}
    if "Pulling" in reasons:
        phases.report(f"pulling image {pod.images.get(CONTAINER, '')}".strip())
    if "Pulled" in reasons:
        already = "already" in reasons["Pulled"]
        phases.report("image already on the node" if already else "image pulled")
    if "Created" in reasons:
        phases.report("container created")
    return True


async def _check_job(kc: KubeClient, handle: AgentHandle) -> None:
    """Fail fast when the Job cannot make its pod (quota, admission, policy)."""
    job = await kc.call(
        kc.batch.read_namespaced_job(handle.job_name, handle.namespace),
        Operation("get", "jobs.batch", handle.namespace, handle.job_name),
    )
    for cond in (job.status.conditions if job.status else None) or []:
        if cond.type == "Failed" and cond.status == "True":
            raise AgentFailedError(
                f'agent Job "{handle.job_name}" failed: {cond.reason}: {cond.message}'
            )
    try:
        events = await kc.call(
            kc.core.list_namespaced_event(
                handle.namespace,
                field_selector=f"involvedObject.name={handle.job_name},involvedObject.kind=Job",
            ),
            Operation("list", "events", handle.namespace),
        )
    except KubeError:
        return  # events are a diagnosis aid; without RBAC on them the timeout still reports
    for event in events.items:
        if event.reason == "FailedCreate":
            raise AgentFailedError(
                f'agent Job "{handle.job_name}" cannot create its pod: {event.message}'
            )


async def _read_log(kc: KubeClient, pod: PodView, tail: int | None = None) -> str | None:
    try:
        log = await kc.call(
            kc.core.read_namespaced_pod_log(
                pod.name, pod.namespace, container=CONTAINER, tail_lines=tail
            ),
            Operation("get", "pods/log", pod.namespace, pod.name),
        )
    except KubeError:
        # The container may be between states; the next poll tries again.
        return None
    return str(log)


async def _pod_failed(kc: KubeClient, pod: PodView) -> AgentFailedError:
    status = pod.statuses.get(CONTAINER)
    why = pod.reason or pod.phase
    if status is not None and status.state == "terminated":
        why = f"{status.reason or 'terminated'}, exit code {status.exit_code}"
    log = await _read_log(kc, pod, tail=10)
    lines = [line.strip() for line in (log or "").splitlines() if line.strip()]
    tail = " | ".join(lines) if lines else "no log output"
    return AgentFailedError(
        f'agent pod "{pod.name}" exited before ready ({why}); last log lines: {tail}'
    )


async def _delete_job(kc: KubeClient, namespace: str, name: str) -> None:
    op = Operation("delete", "jobs.batch", namespace, name)
    with contextlib.suppress(NotFoundError):
        await kc.call(
            kc.batch.delete_namespaced_job(name, namespace, propagation_policy="Background"),
            op,
        )


async def _delete_agent(kc: KubeClient, namespace: str, name: str) -> None:
    await _delete_job(kc, namespace, name)
    # The garbage collector deletes the Job's Secret with it; this covers a Secret whose
    # owner reference was never set (its session was killed in between).
    await _delete_secret(kc, namespace, name)


async def _shielded(delete: Callable[[], Coroutine[Any, Any, None]]) -> None:
    """Run `delete()` to completion even if the caller is cancelled meanwhile."""
    inner = asyncio.ensure_future(delete())
    try:
        await asyncio.shield(inner)
    except asyncio.CancelledError:
        # A cancelled session must not leave its agent behind: finish the delete, then let
        # the cancellation through. asyncio.run() cancels every task at once, inner included,
        # so if it was, delete again from here.
        with contextlib.suppress(Exception, asyncio.CancelledError):
            await asyncio.wait_for(asyncio.shield(inner), DELETE_GRACE)
        if inner.cancelled():
            with contextlib.suppress(Exception, asyncio.CancelledError):
                await asyncio.wait_for(delete(), DELETE_GRACE)
        raise


async def delete_agent_job(kc: KubeClient, handle: AgentHandle) -> None:
    """Delete the agent Job and (background propagation) its pod; a missing Job is fine.

    Safe on cancellation and signal paths: the delete completes even if the caller is
    cancelled meanwhile (the cancellation is re-raised after).
    """
    await _shielded(lambda: _delete_agent(kc, handle.namespace, handle.job_name))


async def delete_session_jobs(kc: KubeClient, namespace: str, session_id: str) -> list[str]:
    """Delete every Job of `session_id` in `namespace`; return their names."""
    jobs = await kc.call(
        kc.batch.list_namespaced_job(namespace, label_selector=f"{SESSION_LABEL}={session_id}"),
        Operation("list", "jobs.batch", namespace),
    )
    names = [str(j.metadata.name) for j in jobs.items]
    for name in names:
        await _shielded(functools.partial(_delete_agent, kc, namespace, name))
    return names


@dataclass(frozen=True)
class AcquiredAgent:
    """An agent Job this session created or joined, and the secret its agent requires."""

    handle: AgentHandle
    secret: str
    created: bool


def _job_finished(job: Any) -> bool:
    if job.metadata.deletion_timestamp is not None:
        return True
    conditions = (job.status.conditions if job.status else None) or []
    return any(c.type in ("Complete", "Failed") and c.status == "True" for c in conditions)


async def _wait_gone(kc: KubeClient, namespace: str, name: str, uid: str) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + GONE_TIMEOUT
    op = Operation("get", "jobs.batch", namespace, name)
    while loop.time() < deadline:
        try:
            job = await kc.call(kc.batch.read_namespaced_job(name, namespace), op)
        except NotFoundError:
            return
        if str(job.metadata.uid) != uid:
            return
        await asyncio.sleep(0.2)
    raise AgentFailedError(
        f'the finished agent Job "{name}" was not removed within {GONE_TIMEOUT:g}s'
        f" (kubectl -n {namespace} delete job {name})"
    )


async def _read_job(kc: KubeClient, namespace: str, name: str) -> Any | None:
    try:
        return await kc.call(
            kc.batch.read_namespaced_job(name, namespace),
            Operation("get", "jobs.batch", namespace, name),
        )
    except NotFoundError:
        return None


async def _joined_secret(kc: KubeClient, job: Any) -> str:
    """The session secret of a running agent Job, from the Secret its agent reads."""
    namespace, name = str(job.metadata.namespace), str(job.metadata.name)
    secret_name = job_secret_name(job)
    if secret_name is None:
        raise AgentFailedError(f'the agent Job "{name}" takes no session secret from a Secret')
    try:
        secret = await kc.call(
            kc.core.read_namespaced_secret(secret_name, namespace),
            Operation("get", "secrets", namespace, secret_name),
        )
    except NotFoundError:
        raise AgentFailedError(
            f'the Secret "{secret_name}" of the agent Job "{name}" is gone'
            f" (kubectl -n {namespace} delete job {name}, then try again)"
        ) from None
    value = secret_value(secret)
    if value is None:
        raise AgentFailedError(f'the Secret "{secret_name}" holds no session secret')
    return value


async def _clear_stale_secret(kc: KubeClient, namespace: str, name: str) -> None:
    """A Secret of this name exists but its Job does not: remove it if it is a leftover
    (owned by a Job that is gone, or ownerless and old); leave a young ownerless one, which
    is another session's start in progress, and wait a moment for its Job instead."""
    try:
        secret = await kc.call(
            kc.core.read_namespaced_secret(name, namespace),
            Operation("get", "secrets", namespace, name),
        )
    except NotFoundError:
        return
    meta = secret.metadata
    created = meta.creation_timestamp or _EPOCH
    age = (datetime.now(UTC) - created).total_seconds()
    if meta.owner_references or age > ORPHAN_SECRET_AGE:
        await _delete_secret(kc, namespace, name)
    else:
        await asyncio.sleep(JOIN_RETRY)


async def acquire_agent(kc: KubeClient, manifest: dict[str, Any], secret: str) -> AcquiredAgent:
    """Create the shared agent Job of `manifest` (and its Secret holding `secret`), or join
    the one already running, with the secret read from its Secret.

    A Job that finished (its agent exited after its last session) or is being deleted is
    removed and created anew. A running Job of another tether version raises
    AgentVersionError: the agent protocol is only promised to match within one version.
    """
    meta = manifest["metadata"]
    namespace, name = str(meta["namespace"]), str(meta["name"])
    for _ in range(JOIN_ATTEMPTS):
        job = await _read_job(kc, namespace, name)
        if job is None:
            try:
                return AcquiredAgent(await start_agent_job(kc, manifest, secret), secret, True)
            except AlreadyExistsError as exc:
                if exc.resource == "secrets" and await _read_job(kc, namespace, name) is None:
                    await _clear_stale_secret(kc, namespace, name)
                continue  # someone else's agent: join it on the next round
        uid = str(job.metadata.uid)
        if _job_finished(job):
            await _delete_job(kc, namespace, name)
            await _wait_gone(kc, namespace, name, uid)
            continue
        labels = job.metadata.labels or {}
        version = labels.get(VERSION_LABEL)
        if version != meta["labels"].get(VERSION_LABEL):
            raise AgentVersionError(
                f'the agent Job "{name}" for this target runs tether {version or "unknown"},'
                f" this is tether {__version__} (use the same version, or wait until its"
                " sessions end)"
            )
        existing = await _joined_secret(kc, job)
        handle = AgentHandle(namespace, name, str(labels.get(SESSION_LABEL, "")), uid)
        return AcquiredAgent(handle, existing, False)
    raise AgentFailedError(
        f'could not start or join the agent Job "{name}" (it kept being replaced; try again)'
    )


async def agent_running(kc: KubeClient, handle: AgentHandle) -> bool:
    """Whether the Job's agent pod still runs (False once it exited, or the Job is gone)."""
    try:
        pod = await _agent_pod(kc, handle)
    except NotFoundError:
        return False
    return pod is not None and pod.phase in ("Pending", "Running")
