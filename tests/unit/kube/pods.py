"""Pods as a modern API server returns them, from the recorded JSON in fixtures/."""

import json
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from kubernetes_asyncio import client

from tether.kube.objects import PodView, pod_view

FIXTURES = Path(__file__).with_name("fixtures")


def fixture_pod(name: str, edit: Callable[[dict[str, Any]], None] | None = None) -> PodView:
    """A pod as a modern API server returns it (shape of a 1.30 pod; v1.20 drops the
    initContainers' restartPolicy), deserialized by the client library as tether's are."""
    data = json.loads((FIXTURES / name).read_text())
    if edit is not None:
        edit(data)
    response = SimpleNamespace(data=json.dumps(data))
    # Without __init__: deserializing needs no HTTP session (which needs an event loop).
    api = client.ApiClient.__new__(client.ApiClient)
    api.configuration = client.Configuration()
    return pod_view(api.deserialize(response, "V1Pod"))  # type: ignore[arg-type]
