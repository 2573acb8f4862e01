"""Mapping API failures to one-line KubeErrors (no cluster)."""

import json

import aiohttp
import pytest
from kubernetes_asyncio.client.exceptions import ApiException

from tether.kube.errors import (
    AdmissionRefusedError,
    AlreadyExistsError,
    ApiError,
    ClusterUnreachableError,
    ForbiddenError,
    KubeError,
    NotFoundError,
    Operation,
    UnauthorizedError,
    api_message,
    error_for_exception,
)

SERVER = "https://198.18.16.1:6443"
CREATE_JOB = Operation("create", "jobs.batch", "x", "tether-agent-1")


def _api(status: int, message: str = "") -> ApiException:
    exc = ApiException(status=status, reason="r")
    exc.body = json.dumps({"kind": "Status", "message": message}).encode()
    return exc


RBAC_DENIAL = (
    'jobs.batch is forbidden: User "dev" cannot create resource "jobs" in API group "batch"'
    ' in the namespace "x"'
)


@pytest.mark.parametrize(
    "message",
    [
        'pods "a" is forbidden: violates PodSecurity "baseline:latest": host namespaces',
        "pods is forbidden: unable to validate against any pod security policy: []",
        # How v1.20.2 words it (the devcluster's FailedCreate events).
        'pods "a-" is forbidden: PodSecurityPolicy: unable to admit pod: [spec.securityContext'
        ".hostPID: Invalid value: true: Host PID is not allowed to be used]",
        'admission webhook "deny.kyverno.svc" denied the request: privileged pods',
        'pods "a" is forbidden: exceeded quota: compute, requested: pods=1, limited: pods=0',
    ],
)
def test_a_403_from_admission_says_what_refused_it(message: str) -> None:
    error = error_for_exception(_api(403, message), CREATE_JOB, SERVER)
    assert isinstance(error, AdmissionRefusedError) and isinstance(error, ForbiddenError)
    assert error.reason == message
    assert str(error).startswith(f'refused: cannot create jobs.batch in namespace "x": {message}')
    assert "agent.namespace" in str(error) and "Role" not in str(error)
    assert ("quota" in str(error)) == ("exceeded quota" in message)
    assert ("privileged pods" in str(error)) == ("exceeded quota" not in message)


def test_forbidden_names_verb_resource_namespace_and_rbac() -> None:
    error = error_for_exception(_api(403, RBAC_DENIAL), CREATE_JOB, SERVER)
    assert isinstance(error, ForbiddenError) and not isinstance(error, AdmissionRefusedError)
    assert str(error) == (
        'forbidden: cannot create jobs.batch in namespace "x" (ask for the minimal Role in the'
        " README's RBAC section, which lists every verb a session uses)"
    )


def test_not_found_and_conflict() -> None:
    op = Operation("get", "deployments.apps", "shop", "nope", not_found_hint="tether ls")
    error = error_for_exception(_api(404), op, SERVER)
    assert isinstance(error, NotFoundError)
    assert str(error) == 'deployments.apps "nope" not found in namespace "shop" (tether ls)'
    error = error_for_exception(_api(409), CREATE_JOB, SERVER)
    assert isinstance(error, AlreadyExistsError)
    assert "already exists" in str(error)


def test_unauthorized_and_other_statuses() -> None:
    assert isinstance(error_for_exception(_api(401), CREATE_JOB, SERVER), UnauthorizedError)
    error = error_for_exception(_api(422, "spec.x: Invalid\nvalue"), CREATE_JOB, SERVER)
    assert isinstance(error, ApiError)
    assert str(error) == (
        'cannot create jobs.batch in namespace "x": HTTP 422 (spec.x: Invalid value)'
    )


@pytest.mark.parametrize(
    "exc",
    [
        ConnectionRefusedError(111, "Connection refused"),
        TimeoutError(),
        aiohttp.ServerDisconnectedError(),
    ],
)
def test_connection_errors(exc: BaseException) -> None:
    error = error_for_exception(exc, CREATE_JOB, SERVER)
    assert isinstance(error, ClusterUnreachableError)
    assert str(error).startswith(f"cannot reach the API server {SERVER}: ")
    assert "\n" not in str(error)


def test_unrelated_exceptions_pass_through() -> None:
    assert error_for_exception(ValueError("x"), CREATE_JOB, SERVER) is None


def test_messages_are_one_line() -> None:
    assert str(KubeError("a\nb\n  c")) == "a b c"


def test_api_message_forms() -> None:
    assert api_message(b'{"message": "m"}') == "m"
    assert api_message("plain text\n") == "plain text"
    assert api_message({"message": None}) == ""
    assert api_message(None) == ""
