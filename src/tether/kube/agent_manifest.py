"""The agent Job and its Secret as manifests: pure functions of the session and the config.

Nothing here talks to the API server (agent_lifecycle does), so every field is table-tested.
"""

import base64
import hashlib
import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from tether import __version__
from tether.config.models import AgentConfig
from tether.kube.targets import AGENT_APP_LABEL, ResolvedTarget
from tether.protocol.launch import COMMAND, SECRET_ENV, AgentArgs

CONTAINER = "agent"
SESSION_LABEL = "tether.dev/session"
TARGET_POD_LABEL = "tether.dev/target-pod"
# A hash of the target pod's UID: the shared agent's identity.
TARGET_LABEL = "tether.dev/target"
VERSION_LABEL = "tether.dev/version"
CAPABILITIES = ("SYS_ADMIN", "SYS_PTRACE", "NET_ADMIN")
# The session secret: a Secret named like its Job, under this key, given to the agent as
# SECRET_ENV. Never a plain value in the Job: anyone who may `get jobs` could read it there.
SECRET_KEY = "secret"


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
    warnings: tuple[str, ...] = ()
    """What the API server warned about when the Job was created (Pod Security's `warn`
    level, deprecations): a refused agent pod often shows here first."""
    pod: str | None = None
    """For an ephemeral agent: the target's pod it runs in (`job_name` is then the
    container's name, `uid` the pod's); None for a Job."""

    @property
    def ephemeral(self) -> bool:
        """Whether the agent is an ephemeral container rather than a Job."""
        return self.pod is not None

    @property
    def container(self) -> str:
        """The agent's container in its pod."""
        return self.job_name if self.ephemeral else CONTAINER

    def describe(self) -> str:
        """How progress and errors name the agent."""
        if self.ephemeral:
            return f"ephemeral container {self.job_name} in pod {self.namespace}/{self.pod}"
        return f"job {self.namespace}/{self.job_name}"


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
    launch = AgentArgs(
        port=agent.port,
        idle_timeout=agent.idle_timeout,
        container_id=target.container_id if target is not None and target.container_id else None,
        # A pod whose container does not run yet: the agent waits for its sandbox.
        pod_uid=target.pod_uid if target is not None and not target.container_id else None,
    )
    container: dict[str, Any] = {
        "name": CONTAINER,
        "image": agent.image,
        "command": list(command if command is not None else COMMAND),
        "args": launch.to_argv(),
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
