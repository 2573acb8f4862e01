"""tether.kube on the devcluster: targets, listing, port-forward, the agent Job lifecycle."""

import asyncio
import json
import secrets
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager

import pytest

from tests.e2e.kube import (
    BUSYBOX_IMAGE,
    KUBECONFIG,
    PYTHON_IMAGE,
    create_namespace,
    get,
    kubectl,
    ready_pod,
)
from tether.config import AgentConfig
from tether.kube import (
    KubeClient,
    agent_job_manifest,
    connect,
    delete_agent_job,
    delete_session_jobs,
    list_targets,
    new_secret,
    new_session_id,
    open_portforward,
    parse_target,
    resolve_target,
    start_agent_job,
    wait_agent_ready,
)
from tether.kube.errors import (
    AgentFailedError,
    AgentImageError,
    AgentTimeoutError,
    ContainerNotFoundError,
    NamespaceNotFoundError,
    NoReadyPodError,
    PortForwardError,
    TargetNotFoundError,
)

# A stand-in agent. As PID 1 python ignores SIGTERM unless told, which would make every
# delete wait out the grace period.
READY_SCRIPT = (
    "import signal, sys, time; signal.signal(signal.SIGTERM, lambda *_: sys.exit(0));"
    " print('starting'); print('tether-agent ready port=1 version=test', flush=True);"
    " time.sleep(600)"
)


@asynccontextmanager
async def cluster() -> AsyncIterator[KubeClient]:
    async with await connect(str(KUBECONFIG), None) as kc:
        yield kc


def _never_ready_deployment(name: str, replicas: int) -> dict[str, object]:
    container = {
        "name": "c",
        "image": BUSYBOX_IMAGE,
        "imagePullPolicy": "Never",
        "command": ["sleep", "3600"],
        "readinessProbe": {"exec": {"command": ["false"]}, "periodSeconds": 1},
    }
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": {"app": name}},
            "template": {
                "metadata": {"labels": {"app": name}},
                "spec": {"terminationGracePeriodSeconds": 0, "containers": [container]},
            },
        },
    }


def _sleeper(name: str) -> dict[str, object]:
    return {
        "name": name,
        "image": BUSYBOX_IMAGE,
        "imagePullPolicy": "Never",
        "command": ["sleep", "3600"],
    }


@pytest.fixture(scope="module")
def scratch() -> Iterator[str]:
    """A throwaway namespace: a 2-container pod, a StatefulSet, and Deployments with no ready
    pod (scaled to 0; never ready). Deleted at the end."""
    ns = f"tether-e2e-kube-{secrets.token_hex(3)}"
    objects = [
        {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": "two", "namespace": ns},
            "spec": {
                "terminationGracePeriodSeconds": 0,
                "containers": [_sleeper("istio-proxy"), _sleeper("app")],
            },
        },
        {
            "apiVersion": "apps/v1",
            "kind": "StatefulSet",
            "metadata": {"name": "db", "namespace": ns},
            "spec": {
                "serviceName": "db",
                "replicas": 1,
                "selector": {"matchLabels": {"app": "db"}},
                "template": {
                    "metadata": {"labels": {"app": "db"}},
                    "spec": {
                        "terminationGracePeriodSeconds": 0,
                        "containers": [_sleeper("db")],
                    },
                },
            },
        },
        {**_never_ready_deployment("zero", 0), "metadata": {"name": "zero", "namespace": ns}},
        {
            **_never_ready_deployment("never-ready", 1),
            "metadata": {"name": "never-ready", "namespace": ns},
        },
    ]
    try:
        create_namespace(ns)
        kubectl(
            "apply",
            "-f",
            "-",
            input=json.dumps({"apiVersion": "v1", "kind": "List", "items": objects}),
        )
        kubectl("-n", ns, "wait", "--for=condition=Ready", "pod/two", "--timeout=120s", timeout=150)
        kubectl("-n", ns, "rollout", "status", "statefulset/db", "--timeout=120s", timeout=150)
        yield ns
    finally:
        kubectl("delete", "namespace", ns, "--ignore-not-found", "--wait=false")


async def test_resolve_deployment_frontend() -> None:
    pod = ready_pod("shop", "frontend")
    async with cluster() as kc:
        target = await resolve_target(kc, parse_target("deployment/frontend"), "shop")
    assert target.namespace == "shop"
    assert target.name == "frontend"
    assert target.pod_name == pod["metadata"]["name"]
    assert target.pod_uid == pod["metadata"]["uid"]
    assert target.node_name == "devcluster"
    assert target.container_name == "frontend"
    assert target.container_id.startswith("containerd://")
    assert target.container_id == pod["status"]["containerStatuses"][0]["containerID"]
    assert target.pod_ip == pod["status"]["podIP"]


async def test_resolve_pod_with_container() -> None:
    name = ready_pod("shop", "frontend")["metadata"]["name"]
    async with cluster() as kc:
        target = await resolve_target(kc, parse_target(f"pod/{name}/container/frontend"), "shop")
    assert target.pod_name == name
    assert target.container_name == "frontend"
    assert target.container_id.startswith("containerd://")


async def test_resolve_statefulset_and_sidecar_skipping(scratch: str) -> None:
    async with cluster() as kc:
        db = await resolve_target(kc, parse_target("sts/db"), scratch)
        two = await resolve_target(kc, parse_target("pod/two"), scratch)
        proxy = await resolve_target(kc, parse_target("pod/two/container/istio-proxy"), scratch)
    assert db.pod_name == "db-0"
    assert db.container_name == "db"
    assert two.container_name == "app", "the mesh sidecar is not the default container"
    assert proxy.container_name == "istio-proxy"
    assert proxy.container_id != two.container_id


async def test_resolve_errors_are_one_line(scratch: str) -> None:
    async with cluster() as kc:
        with pytest.raises(TargetNotFoundError) as not_found:
            await resolve_target(kc, parse_target("deployment/nope"), "shop")
        with pytest.raises(NamespaceNotFoundError) as no_ns:
            await resolve_target(kc, parse_target("deployment/frontend"), "no-such-ns-tether")
        with pytest.raises(NoReadyPodError) as zero:
            await resolve_target(kc, parse_target("deployment/zero"), scratch)
        with pytest.raises(NoReadyPodError) as never:
            await resolve_target(kc, parse_target("deploy/never-ready"), scratch)
        with pytest.raises(ContainerNotFoundError) as no_container:
            await resolve_target(kc, parse_target("pod/two/container/web"), scratch)
    assert str(not_found.value) == (
        'deployment "nope" not found in namespace "shop" (tether ls -n shop lists targets)'
    )
    assert str(no_ns.value) == (
        'namespace "no-such-ns-tether" not found (kubectl get namespaces lists them)'
    )
    assert str(zero.value).startswith(
        f'no ready pod for deployment "zero" in namespace "{scratch}" (no pods;'
    )
    assert str(never.value).startswith(
        f'no ready pod for deployment "never-ready" in namespace "{scratch}" (never-ready-'
    )
    assert str(no_container.value) == (
        'container "web" not found in pod "two" (containers: istio-proxy, app)'
    )
    for info in (not_found, no_ns, zero, never, no_container):
        assert "\n" not in str(info.value)


async def test_list_targets(scratch: str) -> None:
    backend = ready_pod("shop", "backend")["metadata"]["name"]
    frontend = ready_pod("shop", "frontend")["metadata"]["name"]
    async with cluster() as kc:
        shop = await list_targets(kc, "shop")
        mine = await list_targets(kc, scratch)
        with pytest.raises(NamespaceNotFoundError):
            await list_targets(kc, "no-such-ns-tether")
    assert shop == sorted(shop)
    assert {
        "deployment/backend",
        "deployment/frontend",
        f"pod/{backend}",
        f"pod/{frontend}",
    } <= set(shop)
    assert not any(t.startswith("statefulset/") for t in shop)
    assert {
        "deployment/never-ready",
        "deployment/zero",
        "pod/db-0",
        "pod/two",
        "pod/two/container/app",
        "pod/two/container/istio-proxy",
        "statefulset/db",
    } <= set(mine)
    assert mine == sorted(mine)
    assert "pod/db-0/container/db" not in mine


async def _http_get(kc: KubeClient, pod: str, path: str) -> tuple[bytes, bytes]:
    pf = await open_portforward(kc, "shop", pod, 8080)
    try:
        await pf.write(f"GET {path} HTTP/1.1\r\nHost: backend\r\nX-Via: tether\r\n\r\n".encode())
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = await asyncio.wait_for(pf.read(), 10)
            assert chunk, f"stream ended early: {data!r}"
            data += chunk
        head, body = data.split(b"\r\n\r\n", 1)
        length = next(
            int(line.split(b":", 1)[1])
            for line in head.split(b"\r\n")
            if line.lower().startswith(b"content-length:")
        )
        while len(body) < length:
            chunk = await asyncio.wait_for(pf.read(), 10)
            assert chunk, f"stream ended early: {body!r}"
            body += chunk
        return head, body
    finally:
        await pf.close()


async def test_portforward_carries_http() -> None:
    pod = ready_pod("shop", "backend")["metadata"]["name"]
    async with cluster() as kc:
        head, body = await _http_get(kc, pod, "/via-tether")
    assert head.startswith(b"HTTP/1.1 200"), head
    answer = json.loads(body)
    assert answer["pod"] == pod
    assert answer["path"] == "/via-tether"
    assert answer["headers"]["X-Via"] == "tether"


async def test_portforward_errors() -> None:
    pod = ready_pod("shop", "backend")["metadata"]["name"]
    async with cluster() as kc:
        pf = await open_portforward(kc, "shop", pod, 9)
        try:
            # The refusal may reach us before the write (then the write fails) or after.
            with pytest.raises(PortForwardError) as closed_port:
                await pf.write(b"hello")
                await asyncio.wait_for(pf.read(), 10)
        finally:
            await pf.close()
        with pytest.raises(TargetNotFoundError):
            await open_portforward(kc, "shop", "no-such-pod", 8080)
    assert "port 9" in str(closed_port.value)
    assert "\n" not in str(closed_port.value)


def _session_objects(namespace: str, session: str, terminating: bool = True) -> tuple[int, int]:
    """How many Jobs and pods of `session` exist (pods being deleted too, if `terminating`)."""
    selector = f"tether.dev/session={session}"
    jobs = kubectl("-n", namespace, "get", "jobs", "-l", selector, "-o", "name").split()
    pods = json.loads(kubectl("-n", namespace, "get", "pods", "-l", selector, "-o", "json"))
    alive = [p for p in pods["items"] if terminating or not p["metadata"].get("deletionTimestamp")]
    return len(jobs), len(alive)


async def _wait_gone(
    namespace: str, session: str, within: float = 60, terminating: bool = True
) -> tuple[int, int]:
    deadline = time.monotonic() + within
    counts = _session_objects(namespace, session, terminating)
    while counts != (0, 0) and time.monotonic() < deadline:
        await asyncio.sleep(0.5)
        counts = _session_objects(namespace, session, terminating)
    return counts


async def test_agent_job_lifecycle() -> None:
    session = new_session_id()
    agent = AgentConfig(image=PYTHON_IMAGE, image_pull_policy="Never")
    phases: list[str] = []
    async with cluster() as kc:
        target = await resolve_target(kc, parse_target("deployment/frontend"), "shop")
        manifest = agent_job_manifest(
            session_id=session,
            agent=agent,
            target=target,
            command=["python3", "-c", READY_SCRIPT],
        )
        assert _session_objects("shop", session) == (0, 0)
        handle = await start_agent_job(kc, manifest, new_secret())
        try:
            pod_name, _ = await wait_agent_ready(kc, handle, 60, phases.append)
            assert _session_objects("shop", session) == (1, 1)
            pod = get("pod", pod_name, "shop")
            assert pod["spec"]["nodeName"] == target.node_name
            assert pod["spec"]["hostPID"] is True
            assert pod["metadata"]["labels"]["tether.dev/target-pod"] == target.pod_name
            assert "scheduled on node devcluster" in phases
            assert "container started" in phases
            assert phases[-1] == "agent ready"
            await delete_agent_job(kc, handle)
            await delete_agent_job(kc, handle)  # a second delete (404) is fine
            assert await _wait_gone("shop", session) == (0, 0)
        finally:
            await delete_session_jobs(kc, "shop", session)


def _stand_in(session: str, agent: AgentConfig, script: str) -> dict[str, object]:
    """A targetless agent Job in shop running `script` instead of the agent."""
    return agent_job_manifest(
        session_id=session,
        agent=agent,
        target=None,
        namespace="shop",
        command=["python3", "-c", script],
    )


async def test_delete_survives_cancellation() -> None:
    session = new_session_id()
    agent = AgentConfig(image=PYTHON_IMAGE, image_pull_policy="Never")
    async with cluster() as kc:
        manifest = _stand_in(session, agent, READY_SCRIPT)
        handle = await start_agent_job(kc, manifest, new_secret())
        try:
            deleting = asyncio.create_task(delete_agent_job(kc, handle))
            await asyncio.sleep(0)
            deleting.cancel()
            with pytest.raises(asyncio.CancelledError):
                await deleting
            assert _session_objects("shop", session)[0] == 0, "the Job was deleted anyway"
            assert await _wait_gone("shop", session) == (0, 0)
        finally:
            assert await delete_session_jobs(kc, "shop", session) == []


async def test_agent_image_absent() -> None:
    session = new_session_id()
    agent = AgentConfig(image="docker.io/tether/does-not-exist:0", image_pull_policy="Never")
    async with cluster() as kc:
        target = await resolve_target(kc, parse_target("deployment/backend"), "shop")
        manifest = agent_job_manifest(session_id=session, agent=agent, target=target)
        handle = await start_agent_job(kc, manifest, new_secret())
        started = time.monotonic()
        try:
            with pytest.raises(AgentImageError) as info:
                await wait_agent_ready(kc, handle, 60)
            assert time.monotonic() - started < 20, "image errors are reported fast"
        finally:
            await delete_agent_job(kc, handle)
        message = str(info.value)
        assert message.startswith(
            'agent image "docker.io/tether/does-not-exist:0" is not available on node'
            ' "devcluster" (ErrImageNeverPull'
        )
        assert "agent.image" in message
        assert "\n" not in message
        # The Job goes at once and its pod is marked for deletion; the kubelet of v1.20 takes
        # most of a minute to remove a pod stuck in an image error, so that is not awaited.
        assert await _wait_gone("shop", session, within=20, terminating=False) == (0, 0)


async def test_agent_failing_before_ready_shows_its_log() -> None:
    session = new_session_id()
    agent = AgentConfig(image=PYTHON_IMAGE, image_pull_policy="Never")
    script = "import sys; print('agent: cannot enter container'); sys.exit(3)"
    async with cluster() as kc:
        manifest = _stand_in(session, agent, script)
        handle = await start_agent_job(kc, manifest, new_secret())
        try:
            with pytest.raises(AgentFailedError) as info:
                await wait_agent_ready(kc, handle, 60)
        finally:
            await delete_agent_job(kc, handle)
    message = str(info.value)
    assert "exit code 3" in message
    assert message.endswith("last log lines: agent: cannot enter container")
    assert await _wait_gone("shop", session) == (0, 0)


async def test_agent_timeout_names_the_setting() -> None:
    session = new_session_id()
    agent = AgentConfig(image=PYTHON_IMAGE, image_pull_policy="Never")
    async with cluster() as kc:
        manifest = agent_job_manifest(
            session_id=session,
            agent=agent,
            target=None,
            namespace="shop",
            command=["python3", "-c", "import time; print('not ready yet'); time.sleep(600)"],
        )
        handle = await start_agent_job(kc, manifest, new_secret())
        try:
            with pytest.raises(AgentTimeoutError) as info:
                await wait_agent_ready(kc, handle, 4)
        finally:
            await delete_agent_job(kc, handle)
    message = str(info.value)
    assert message.startswith("agent did not become ready within 4s (last: ")
    assert "agent.startup_timeout" in message
    assert "\n" not in message


def _wait_quota_status(namespace: str, name: str, within: float = 30) -> None:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        jsonpath = "jsonpath={.status.hard.pods}"
        if kubectl("-n", namespace, "get", "resourcequota", name, "-o", jsonpath):
            return
        time.sleep(0.2)
    raise AssertionError(f"quota {name} never got a status")


async def test_agent_job_that_cannot_create_its_pod() -> None:
    ns = f"tether-e2e-quota-{secrets.token_hex(3)}"
    quota = {
        "apiVersion": "v1",
        "kind": "ResourceQuota",
        "metadata": {"name": "no-pods", "namespace": ns},
        "spec": {"hard": {"pods": "0"}},
    }
    # Privileged pods allowed, so that the quota, not the pod security policy, refuses it.
    create_namespace(ns)
    try:
        kubectl("apply", "-f", "-", input=json.dumps(quota))
        # Until the quota controller has filled in the status, admission says "status unknown"
        # instead of "exceeded quota".
        _wait_quota_status(ns, "no-pods")
        async with cluster() as kc:
            manifest = agent_job_manifest(
                session_id=new_session_id(),
                agent=AgentConfig(image=PYTHON_IMAGE, image_pull_policy="Never"),
                target=None,
                namespace=ns,
                command=["python3", "-c", READY_SCRIPT],
            )
            handle = await start_agent_job(kc, manifest, new_secret())
            try:
                with pytest.raises(AgentFailedError) as info:
                    await wait_agent_ready(kc, handle, 30)
            finally:
                await delete_agent_job(kc, handle)
        message = str(info.value)
        assert message.startswith(f'agent Job "{handle.job_name}" cannot create its pod: ')
        assert "exceeded quota" in message
    finally:
        kubectl("delete", "namespace", ns, "--ignore-not-found", "--wait=false")
