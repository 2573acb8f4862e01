"""tether's Kubernetes side: connecting, targets, the agent Job, port-forwarding."""

# First: installs the lazy kubernetes_asyncio loader before anything below imports the library.
from tether.kube import _lazy  # noqa: F401
from tether.kube.agent_lifecycle import delete_agent_job, delete_session_jobs, start_agent_job
from tether.kube.agent_manifest import AgentHandle, agent_job_manifest, new_secret, new_session_id
from tether.kube.agent_ready import wait_agent_ready
from tether.kube.client import KubeClient, connect
from tether.kube.errors import KubeError
from tether.kube.portforward import PortForward, open_portforward
from tether.kube.targets import (
    ResolvedTarget,
    TargetKind,
    TargetSpec,
    ensure_namespace,
    list_targets,
    parse_target,
    resolve_target,
)

__all__ = [
    "AgentHandle",
    "KubeClient",
    "KubeError",
    "PortForward",
    "ResolvedTarget",
    "TargetKind",
    "TargetSpec",
    "agent_job_manifest",
    "connect",
    "delete_agent_job",
    "delete_session_jobs",
    "ensure_namespace",
    "list_targets",
    "new_secret",
    "new_session_id",
    "open_portforward",
    "parse_target",
    "resolve_target",
    "start_agent_job",
    "wait_agent_ready",
]
