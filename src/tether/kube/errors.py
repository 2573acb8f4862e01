"""Errors of the Kubernetes layer: each str() is one line that says what to fix."""

import json
import ssl
from dataclasses import dataclass
from typing import Any

import aiohttp
from kubernetes_asyncio.client.exceptions import ApiException

from tether.errors import UserError

# How admission refusals of a pod read (Pod Security Admission, PodSecurityPolicy, webhooks).
_PRIVILEGE_MARKERS = (
    "violates PodSecurity",
    "pod security policy",
    "PodSecurityPolicy",
    "admission webhook",
)


def refusal_hint(message: str) -> str:
    """What to do about an admission refusal of the agent's pod, from the refusal's own
    text (pure)."""
    if any(marker.lower() in message.lower() for marker in _PRIVILEGE_MARKERS):
        return (
            "the namespace refuses privileged pods: set agent.namespace to a namespace where"
            " they are allowed; tether doctor checks a setup"
        )
    if "exceeded quota" in message:
        return "a ResourceQuota refuses it: free room in the namespace or set agent.namespace"
    return "an admission policy refuses it: see tether doctor, or set agent.namespace"


RBAC_HINT = (
    "ask for the minimal Role in the README's RBAC section, which lists every verb a session uses"
)


class KubeError(UserError):
    """Base of every Kubernetes-side error tether reports; str() is always one line."""

    def __init__(self, message: str) -> None:
        super().__init__(" ".join(message.split()))


class KubeConfigError(KubeError):
    """No usable kubeconfig, or an unknown context."""


class ClusterUnreachableError(KubeError):
    """The API server could not be reached (network, TLS, timeout)."""


class UnauthorizedError(KubeError):
    """The API server rejected the credentials (401)."""


class ForbiddenError(KubeError):
    """RBAC denied a request (403)."""


class AdmissionRefusedError(ForbiddenError):
    """Admission refused a request (403 from Pod Security, a PodSecurityPolicy, a webhook, a
    quota), as opposed to RBAC: `reason` is the server's own message, which says why."""

    def __init__(self, message: str, reason: str) -> None:
        super().__init__(message)
        self.reason = reason


class NotFoundError(KubeError):
    """An object does not exist (404)."""


class NamespaceNotFoundError(NotFoundError):
    """The namespace does not exist."""


class TargetNotFoundError(NotFoundError):
    """The pod, deployment or statefulset named by the target does not exist."""


class AlreadyExistsError(KubeError):
    """Creating an object that exists already (409); `resource` says of which kind."""

    def __init__(self, message: str, resource: str = "") -> None:
        super().__init__(message)
        self.resource = resource


class ApiError(KubeError):
    """Any other refusal or failure of the API server."""


class InvalidTargetError(KubeError):
    """A target string that does not parse."""


class NoReadyPodError(KubeError):
    """A workload target has no Running pod with every container ready."""


class TargetNotRunningError(KubeError):
    """A pod target that is not running (or whose container is not)."""


class ContainerNotFoundError(KubeError):
    """The container named by the target is not in the pod."""


class AgentError(KubeError):
    """The agent Job could not be started."""


class AgentImageError(AgentError):
    """The node cannot get the agent image."""


class AgentFailedError(AgentError):
    """The agent pod failed, or its Job did."""


class AgentRefusedError(AgentFailedError):
    """The agent Job cannot create its pod because admission refuses it (a FailedCreate
    event: Pod Security, a PodSecurityPolicy, a webhook, a quota)."""


class AgentVersionError(AgentError):
    """The shared agent of the target runs another tether version."""


class AgentTimeoutError(AgentError):
    """The agent did not become ready in time."""


class PortForwardError(KubeError):
    """The port-forward stream failed or the server reported an error on it."""


@dataclass(frozen=True)
class Operation:
    """What a request was doing, to word its errors: `verb resource "name" in namespace`."""

    verb: str
    resource: str
    namespace: str | None = None
    name: str | None = None
    not_found_hint: str | None = None

    def where(self) -> str:
        """` in namespace "x"` or nothing for cluster-scoped requests."""
        return f' in namespace "{self.namespace}"' if self.namespace else ""


def api_message(body: Any) -> str:
    """The `message` of a Kubernetes Status body (bytes, str or dict), or ""."""
    if isinstance(body, bytes | bytearray):
        body = body.decode("utf-8", "replace")
    if isinstance(body, str):
        text = body
        try:
            body = json.loads(text)
        except ValueError:
            return text.strip()
    if isinstance(body, dict):
        return str(body.get("message") or "")
    return ""


def error_for_status(status: int, body: Any, op: Operation, server: str = "") -> KubeError:
    """The KubeError for an HTTP error `status` (from an ApiException or a refused upgrade)."""
    message = api_message(body)
    detail = f" ({message})" if message else ""
    if status == 401:
        return UnauthorizedError(
            f"unauthorized: the API server {server} rejected the kubeconfig credentials"
            " (log in again or fix the user of your kubeconfig context)"
        )
    if status == 403:
        if message and "cannot " + op.verb not in message and " resource " not in message:
            # RBAC says `User "x" cannot create resource "pods"`; anything else refusing
            # with 403 is admission, whose message is the one thing that says what to fix.
            return AdmissionRefusedError(
                f"refused: cannot {op.verb} {op.resource}{op.where()}: {message}"
                f" ({refusal_hint(message)})",
                message,
            )
        return ForbiddenError(
            f"forbidden: cannot {op.verb} {op.resource}{op.where()} ({RBAC_HINT})"
        )
    if status == 404:
        named = f' "{op.name}"' if op.name else ""
        hint = f" ({op.not_found_hint})" if op.not_found_hint else ""
        return NotFoundError(f"{op.resource}{named} not found{op.where()}{hint}")
    if status == 409:
        named = f' "{op.name}"' if op.name else ""
        return AlreadyExistsError(
            f"{op.resource}{named} already exists{op.where()} (delete it or retry)", op.resource
        )
    return ApiError(f"cannot {op.verb} {op.resource}{op.where()}: HTTP {status}{detail}")


def error_for_exception(exc: BaseException, op: Operation, server: str) -> KubeError | None:
    """The KubeError for a failed API call, or None if `exc` is not a cluster error."""
    if isinstance(exc, KubeError):
        return exc
    if isinstance(exc, ApiException):
        return error_for_status(int(exc.status or 0), exc.body, op, server)
    if isinstance(exc, aiohttp.WSServerHandshakeError):
        return error_for_status(exc.status, exc.message, op, server)
    if isinstance(exc, ssl.SSLError | aiohttp.ClientSSLError):
        return ClusterUnreachableError(
            f"TLS to the API server {server} failed: {exc} (check the kubeconfig's"
            " certificate-authority and server address)"
        )
    if isinstance(exc, aiohttp.ClientError | OSError | TimeoutError):
        reason = str(exc) or type(exc).__name__
        return ClusterUnreachableError(
            f"cannot reach the API server {server}: {reason} (is the cluster up and the"
            " kubeconfig context right?)"
        )
    return None
