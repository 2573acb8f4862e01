"""Waiting for the agent: its pod watched, its log followed, until the ready line.

The pod's updates come from a watch and the log is followed, rather than polled: a starting
session used to fetch the pod every 50 ms and the whole log every 30 ms. What an update means
(a phase to report, a failure to raise) is decided by `assess`, a pure function.
"""

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, NamedTuple

from tether.kube.agent_manifest import CONTAINER, AgentHandle
from tether.kube.client import KubeClient
from tether.kube.errors import (
    AgentFailedError,
    AgentImageError,
    AgentRefusedError,
    AgentTimeoutError,
    KubeError,
    Operation,
    error_for_exception,
    refusal_hint,
)
from tether.kube.objects import PodView, pod_view
from tether.protocol.launch import parse_ready

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
# While the Job has no pod yet, how often to look for the reason it cannot make one.
JOB_CHECK = 1.0
# A followed log that ends while the container still runs is followed again after this.
LOG_RETRY = 0.2
_EPOCH = datetime.min.replace(tzinfo=UTC)

PhaseCallback = Callable[[str], None]


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


class ReadyAgent(NamedTuple):
    """An agent that printed its ready line."""

    pod: str
    """The pod it runs in (its Job's, or the target's for an ephemeral agent)."""
    port: int
    """The port it listens on in that pod (an ephemeral agent picks a free one)."""


@dataclass(frozen=True)
class Assessment:
    """What one state of the agent pod means for a session waiting on it."""

    phases: list[str]
    """Progress to report, in order (each is reported once per wait)."""
    image_error: str | None = None
    """Why the node cannot get the image: the wait fails with AgentImageError."""
    exited: bool = False
    """The pod or its container ended before the ready line: the wait fails."""
    running: bool = False
    """The container runs: its log may now be followed for the ready line."""


def _scheduling(pod: PodView) -> list[str]:
    if pod.node_name:
        return [f"scheduled on node {pod.node_name}"]
    status, reason, message = pod.conditions.get("PodScheduled", ("", "", ""))
    return [f"not scheduled yet: {message or reason}"] if status == "False" else []


def assess(pod: PodView, container: str = CONTAINER) -> Assessment:
    """The meaning of the agent pod's state `pod` (pure: table-tested). `container` is the
    agent's: CONTAINER in a Job's pod, the ephemeral container's name in a target's."""
    # An ephemeral agent joins a pod that runs already: it has no scheduling to report.
    phases = _scheduling(pod) if container == CONTAINER else []
    state = pod.statuses.get(container)
    if state is not None and state.state == "waiting" and state.reason in IMAGE_ERRORS:
        return Assessment(
            phases,
            image_error=(
                f'agent image "{pod.images.get(container, "?")}" is not available on node'
                f' "{pod.node_name}" ({state.reason}: {state.message or "no message"}; set'
                " agent.image to an image the node can get, or agent.image_pull_policy)"
            ),
        )
    if pod.phase in ("Failed", "Succeeded") or (state is not None and state.state == "terminated"):
        return Assessment(phases, exited=True)
    if state is not None and state.state == "running":
        return Assessment([*phases, "container started"], running=True)
    if state is not None and state.reason and state.reason != "ContainerCreating":
        phases.append(f"waiting: {state.reason}")
    return Assessment(phases)


async def wait_agent_ready(
    kc: KubeClient,
    handle: AgentHandle,
    timeout: float,
    on_phase: PhaseCallback | None = None,
) -> ReadyAgent:
    """Wait until the agent prints its ready line; return its pod and port.

    Reports progress through `on_phase` ("scheduled on node X", "pulling image ...",
    "container started", ...). Raises AgentImageError when the node cannot get the image,
    AgentFailedError when the pod or Job fails (with the last log lines), AgentTimeoutError after
    `timeout` seconds.
    """
    phases = _Phases(on_phase)
    phases.report("waiting for the agent pod")
    try:
        async with asyncio.timeout(timeout):
            return await _wait_ready(kc, handle, phases, watch_seconds=int(timeout) + 5)
    except TimeoutError:
        what = f"pod {handle.pod}" if handle.pod is not None else f"job {handle.job_name}"
        raise AgentTimeoutError(
            f"agent did not become ready within {timeout:g}s (last: {phases.last}; raise"
            f" agent.startup_timeout, or kubectl -n {handle.namespace} describe {what})"
        ) from None


async def _wait_ready(
    kc: KubeClient, handle: AgentHandle, phases: _Phases, watch_seconds: int
) -> ReadyAgent:
    # Three sources feed one queue: the pod's updates, the Job's health while it has no pod,
    # and (once the container runs) its followed log. The first verdict wins.
    verdicts: asyncio.Queue[tuple[str, Any]] = asyncio.Queue()
    seen_pod = asyncio.Event()

    async def feed(kind: str, source: AsyncIterator[Any]) -> None:
        try:
            async for item in source:
                verdicts.put_nowait((kind, item))
        except Exception as exc:
            verdicts.put_nowait(("error", exc))

    tasks = [
        asyncio.create_task(feed("pod", _pod_updates(kc, handle, watch_seconds))),
        asyncio.create_task(feed("job", _job_problems(kc, handle, seen_pod))),
    ]
    follower: asyncio.Task[None] | None = None
    events_allowed = True
    try:
        while True:
            kind, item = await verdicts.get()
            if kind == "error":
                raise item
            if kind == "ready":
                phases.report("agent ready")
                ready: ReadyAgent = item
                return ready
            pod: PodView = item
            seen_pod.set()
            verdict = assess(pod, handle.container)
            for phase in verdict.phases:
                phases.report(phase)
            if verdict.image_error is not None:
                raise AgentImageError(verdict.image_error)
            if verdict.exited:
                raise await _pod_failed(kc, pod, handle.container)
            if verdict.running and follower is None:
                follower = asyncio.create_task(
                    feed("ready", _ready_line(kc, pod, handle.container))
                )
                tasks.append(follower)
            elif not verdict.running and events_allowed and pod.node_name:
                events_allowed = await _report_events(kc, pod, phases, handle.container)
    finally:
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task


def _newest(pods: list[PodView]) -> PodView:
    return max(pods, key=lambda p: (p.created or _EPOCH, p.name))


def _selector(handle: AgentHandle) -> dict[str, str]:
    if handle.pod is not None:
        return {"field_selector": f"metadata.name={handle.pod}"}
    # controller-uid, not job-name: a shared Job's name outlives one incarnation of it.
    return {"label_selector": f"controller-uid={handle.uid}"}


async def agent_pod(kc: KubeClient, handle: AgentHandle) -> PodView | None:
    """The agent's pod: the Job's newest (None if it has none, yet or any more), or the
    target pod an ephemeral agent is in (None once it is gone or replaced)."""
    pods = await kc.call(
        kc.core.list_namespaced_pod(handle.namespace, **_selector(handle)),
        Operation("list", "pods", handle.namespace),
    )
    if handle.pod is not None:
        pods.items = [p for p in pods.items if str(p.metadata.uid) == handle.uid]
    views = [pod_view(p) for p in pods.items]
    return _newest(views) if views else None


async def _pod_updates(
    kc: KubeClient, handle: AgentHandle, watch_seconds: int
) -> AsyncIterator[PodView]:
    """Every state of the Job's agent pod, from a watch (renewed if the server ends it)."""
    from kubernetes_asyncio import watch

    op = Operation("watch", "pods", handle.namespace)
    while True:
        try:
            async with watch.Watch().stream(
                kc.core.list_namespaced_pod,
                handle.namespace,
                **_selector(handle),
                timeout_seconds=watch_seconds,
            ) as events:
                async for event in events:
                    if event.get("type") in ("ADDED", "MODIFIED"):
                        yield pod_view(event["object"])
        except Exception as exc:
            error = error_for_exception(exc, op, kc.server)
            if error is None:
                raise
            raise error from exc


async def _job_problems(
    kc: KubeClient, handle: AgentHandle, seen_pod: asyncio.Event
) -> AsyncIterator[None]:
    """Raise as soon as the Job reports it cannot make its pod; ends once it has one (an
    ephemeral agent has no Job: its refusal was the answer to adding it)."""
    while handle.pod is None and not seen_pod.is_set():
        await _check_job(kc, handle)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(seen_pod.wait(), JOB_CHECK)
    return
    yield  # an async generator, for feed()


async def _ready_line(kc: KubeClient, pod: PodView, container: str) -> AsyncIterator[ReadyAgent]:
    """Follow the agent container's log; yield its pod and port at the ready line."""
    op = Operation("get", "pods/log", pod.namespace, pod.name)
    while True:
        response = await kc.call(
            kc.core.read_namespaced_pod_log(
                pod.name, pod.namespace, container=container, follow=True, _preload_content=False
            ),
            op,
        )
        try:
            while line := await response.content.readline():
                ready = parse_ready(line.decode("utf-8", "replace").rstrip("\r\n"))
                if ready is not None:
                    yield ReadyAgent(pod.name, ready[0])
                    return
        finally:
            response.release()
        # The log ended without the line: the container exited (the pod watch reports it)
        # or the stream was cut; follow it again.
        await asyncio.sleep(LOG_RETRY)


async def _events_of(kc: KubeClient, namespace: str, kind: str, name: str) -> Any:
    """The events about one object (KubeError, e.g. without RBAC on events)."""
    return await kc.call(
        kc.core.list_namespaced_event(
            namespace, field_selector=f"involvedObject.name={name},involvedObject.kind={kind}"
        ),
        Operation("list", "events", namespace),
    )


def _about(field_path: str | None, container: str) -> bool:
    """Whether a pod's event is about the agent: its container's, or the pod's own in a Job's
    pod (an ephemeral agent's pod is the target's, whose own events are not the agent's)."""
    if not field_path:
        return container == CONTAINER
    return field_path.endswith("{" + container + "}")


async def _report_events(
    kc: KubeClient, pod: PodView, phases: _Phases, container: str = CONTAINER
) -> bool:
    """Report image pulling from the pod's events; False if we may not read events."""
    try:
        events = await _events_of(kc, pod.namespace, "Pod", pod.name)
    except KubeError:
        return False
    reasons = {
        str(e.reason): str(e.message or "")
        for e in events.items
        if _about(e.involved_object.field_path, container)
    }
    if "Pulling" in reasons:
        phases.report(f"pulling image {pod.images.get(container, '')}".strip())
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
        events = await _events_of(kc, handle.namespace, "Job", handle.job_name)
    except KubeError:
        return  # events are a diagnosis aid; without RBAC on them the timeout still reports
    for event in events.items:
        if event.reason == "FailedCreate":
            hint = failed_create_hint(str(event.message or ""))
            error = AgentRefusedError if hint else AgentFailedError
            raise error(
                f'agent Job "{handle.job_name}" cannot create its pod: {event.message}{hint}'
            )


def failed_create_hint(message: str) -> str:
    """What to do about a FailedCreate, as a suffix of the error line (pure): nothing when
    it is not admission's (the event's text says it all then)."""
    if "forbidden" not in message and "exceeded quota" not in message:
        return ""
    return f" ({refusal_hint(message)})"


async def _read_log(
    kc: KubeClient, pod: PodView, container: str, tail: int | None = None
) -> str | None:
    try:
        log = await kc.call(
            kc.core.read_namespaced_pod_log(
                pod.name, pod.namespace, container=container, tail_lines=tail
            ),
            Operation("get", "pods/log", pod.namespace, pod.name),
        )
    except KubeError:
        return None
    return str(log)


async def _pod_failed(kc: KubeClient, pod: PodView, container: str) -> AgentFailedError:
    status = pod.statuses.get(container)
    why = pod.reason or pod.phase
    if status is not None and status.state == "terminated":
        why = f"{status.reason or 'terminated'}, exit code {status.exit_code}"
    log = await _read_log(kc, pod, container, tail=10)
    lines = [line.strip() for line in (log or "").splitlines() if line.strip()]
    tail = " | ".join(lines) if lines else "no log output"
    return AgentFailedError(
        f'agent pod "{pod.name}" exited before ready ({why}); last log lines: {tail}'
    )
