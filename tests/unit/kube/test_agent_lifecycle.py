"""Deleting an agent deletes that agent: a shared agent's Job and Secret names are reused by
the next agent on the pod, so a late cleanup of the old one must leave the new one alone."""

from types import SimpleNamespace
from typing import Any

from kubernetes_asyncio.client.exceptions import ApiException

from tether.kube.agent_lifecycle import delete_agent_job, only_if
from tether.kube.agent_manifest import AgentHandle
from tether.kube.errors import error_for_exception


class _Api:
    """Jobs and Secrets by name, each with a uid; deletes honour uid preconditions."""

    def __init__(self, objects: dict[str, Any]) -> None:
        self.objects = objects

    async def _delete(self, kind: str, name: str, body: Any) -> None:
        found = self.objects.get(f"{kind}/{name}")
        if found is None:
            raise ApiException(status=404, reason="NotFound")
        wanted = body.preconditions.uid if body.preconditions is not None else None
        if wanted is not None and wanted != found.metadata.uid:
            raise ApiException(status=409, reason="Conflict")
        del self.objects[f"{kind}/{name}"]

    def delete_namespaced_job(self, name: str, ns: str, body: Any) -> Any:
        return self._delete("job", name, body)

    def delete_namespaced_secret(self, name: str, ns: str, body: Any) -> Any:
        return self._delete("secret", name, body)

    async def _read(self, name: str) -> Any:
        found = self.objects.get(f"secret/{name}")
        if found is None:
            raise ApiException(status=404, reason="NotFound")
        return found

    def read_namespaced_secret(self, name: str, ns: str) -> Any:
        return self._read(name)


class _Kube:
    server = "https://k"

    def __init__(self, api: _Api) -> None:
        self.batch = self.core = api

    async def call(self, request: Any, op: Any) -> Any:
        try:
            return await request
        except ApiException as exc:
            raise error_for_exception(exc, op, self.server) or exc from exc


def _obj(uid: str, owner: str | None = None) -> Any:
    owners = [SimpleNamespace(uid=owner)] if owner else []
    return SimpleNamespace(metadata=SimpleNamespace(uid=uid, owner_references=owners))


def test_deletes_are_conditional_on_the_uid() -> None:
    assert only_if("u1").preconditions.uid == "u1"
    assert only_if(None).preconditions is None
    assert only_if("u1").propagation_policy == "Background"


async def test_a_late_cleanup_leaves_the_next_agent_of_that_name_alone() -> None:
    name = "tether-agent-abc"
    api = _Api({f"job/{name}": _obj("new"), f"secret/{name}": _obj("s2", owner="new")})
    await delete_agent_job(_Kube(api), AgentHandle("shop", name, "s", "old"))  # type: ignore[arg-type]
    assert set(api.objects) == {f"job/{name}", f"secret/{name}"}
    await delete_agent_job(_Kube(api), AgentHandle("shop", name, "s", "new"))  # type: ignore[arg-type]
    assert api.objects == {}


async def test_an_ownerless_secret_goes_with_its_job() -> None:
    # Its session was killed between creating the Secret and setting its owner.
    name = "tether-agent-abc"
    api = _Api({f"job/{name}": _obj("u1"), f"secret/{name}": _obj("s1")})
    await delete_agent_job(_Kube(api), AgentHandle("shop", name, "s", "u1"))  # type: ignore[arg-type]
    assert api.objects == {}
