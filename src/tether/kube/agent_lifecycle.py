"""The agent Job's life: creating it with its Secret, joining a running one, deleting both.

A session on a target shares that target's agent: the Job has a fixed name, so the API server
is the lock (of two sessions starting at once, one creates it and the other joins it).
"""

import asyncio
import contextlib
import functools
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from tether import __version__
from tether.kube.agent_ephemeral import delete_ephemeral_secret
from tether.kube.agent_manifest import (
    SESSION_LABEL,
    VERSION_LABEL,
    AgentHandle,
    agent_secret_manifest,
    job_secret_name,
    owner_reference,
    secret_value,
)
from tether.kube.agent_ready import agent_pod
from tether.kube.client import KubeClient
from tether.kube.errors import (
    AgentFailedError,
    AgentVersionError,
    AlreadyExistsError,
    NamespaceNotFoundError,
    NotFoundError,
    Operation,
)

JOIN_ATTEMPTS = 6
GONE_TIMEOUT = 30.0
DELETE_GRACE = 10.0
# A Secret without an owner Job older than this is a leftover of a session killed between
# creating it and its Job; a younger one is another session's start in progress.
ORPHAN_SECRET_AGE = 30.0
JOIN_RETRY = 0.2
_EPOCH = datetime.min.replace(tzinfo=UTC)


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


def only_if(uid: str | None) -> Any:
    """Delete options that delete an object only while it is still the one with `uid`
    (background propagation): a shared agent's Job and Secret names are reused by the next
    agent on that pod, and a late cleanup of the old one must not remove the new one. The
    API server answers 409 when the object of that name is another one now."""
    from kubernetes_asyncio import client

    preconditions = client.V1Preconditions(uid=uid) if uid else None
    return client.V1DeleteOptions(propagation_policy="Background", preconditions=preconditions)


async def _delete_secret(
    kc: KubeClient, namespace: str, name: str, job_uid: str | None = None
) -> None:
    """Delete the Secret `name`; with `job_uid`, only if it is that Job's (or nobody's)."""
    op = Operation("delete", "secrets", namespace, name)
    uid = None
    if job_uid is not None:
        try:
            secret = await kc.call(kc.core.read_namespaced_secret(name, namespace), op)
        except NotFoundError:
            return
        owners = {str(o.uid) for o in secret.metadata.owner_references or []}
        if owners and job_uid not in owners:
            return  # the Secret of the next agent of that name
        uid = str(secret.metadata.uid)
    with contextlib.suppress(NotFoundError, AlreadyExistsError):
        await kc.call(kc.core.delete_namespaced_secret(name, namespace, body=only_if(uid)), op)


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
        job, _, headers = await kc.call(
            kc.batch.create_namespaced_job_with_http_info(namespace, manifest), op
        )
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
            await _shielded(functools.partial(_delete_agent, kc, namespace, name, uid))
        raise
    return AgentHandle(
        namespace=namespace,
        job_name=name,
        session_id=str(meta["labels"][SESSION_LABEL]),
        uid=uid,
        warnings=tuple(admission_warnings(header_values(headers, "Warning"))),
    )


def header_values(headers: Any, name: str) -> list[str]:
    """Every value of response header `name` (aiohttp's multidict, or a plain mapping)."""
    getall = getattr(headers, "getall", None)
    if getall is not None:
        return [str(v) for v in getall(name, [])]
    value = headers.get(name) if hasattr(headers, "get") else None
    return [str(value)] if value else []


def admission_warnings(values: list[str]) -> list[str]:
    """The texts of `Warning:` response headers (RFC 7234: `299 - "text"`), one per
    warning, unquoted; anything else as it came."""
    texts = []
    for value in values:
        code, _, rest = value.partition(" ")
        agent, _, quoted = rest.partition(" ")
        if code.isdigit() and agent and quoted.startswith('"') and quoted.endswith('"'):
            texts.append(quoted[1:-1].replace('\\"', '"'))
        else:
            texts.append(value)
    return texts


async def _delete_job(kc: KubeClient, namespace: str, name: str, uid: str | None = None) -> None:
    op = Operation("delete", "jobs.batch", namespace, name)
    # 409: the precondition failed, so the Job of that name is another agent's now.
    with contextlib.suppress(NotFoundError, AlreadyExistsError):
        await kc.call(kc.batch.delete_namespaced_job(name, namespace, body=only_if(uid)), op)


async def _delete_agent(kc: KubeClient, namespace: str, name: str, uid: str | None = None) -> None:
    await _delete_job(kc, namespace, name, uid)
    # The garbage collector deletes the Job's Secret with it; this covers a Secret whose
    # owner reference was never set (its session was killed in between).
    await _delete_secret(kc, namespace, name, uid)


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
    Of an ephemeral agent, which cannot be removed from its pod, only its Secret goes.

    Safe on cancellation and signal paths: the delete completes even if the caller is
    cancelled meanwhile (the cancellation is re-raised after).
    """
    if handle.ephemeral:
        await _shielded(functools.partial(delete_ephemeral_secret, kc, handle))
        return
    await _shielded(lambda: _delete_agent(kc, handle.namespace, handle.job_name, handle.uid))


async def delete_session_jobs(kc: KubeClient, namespace: str, session_id: str) -> list[str]:
    """Delete every Job of `session_id` in `namespace`; return their names."""
    jobs = await kc.call(
        kc.batch.list_namespaced_job(namespace, label_selector=f"{SESSION_LABEL}={session_id}"),
        Operation("list", "jobs.batch", namespace),
    )
    found = [(str(j.metadata.name), str(j.metadata.uid)) for j in jobs.items]
    for name, uid in found:
        await _shielded(functools.partial(_delete_agent, kc, namespace, name, uid))
    return [name for name, _ in found]


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
            await _delete_job(kc, namespace, name, uid)
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
    """Whether the agent still runs: its Job's pod, or its ephemeral container (False once
    it exited, or the Job or pod is gone)."""
    try:
        pod = await agent_pod(kc, handle)
    except NotFoundError:
        return False
    if pod is None or pod.phase not in ("Pending", "Running"):
        return False
    state = pod.statuses.get(handle.container)
    return not handle.ephemeral or state is None or state.state in ("running", "waiting")
