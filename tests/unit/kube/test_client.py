"""Loading kubeconfigs (no cluster: connecting contacts no server)."""

from pathlib import Path

import pytest
import yaml

from tether.kube.client import connect
from tether.kube.errors import ClusterUnreachableError, KubeConfigError
from tether.kube.targets import list_targets


def _kubeconfig(tmp_path: Path, current: str | None = "a") -> Path:
    data = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "c", "cluster": {"server": "https://127.0.0.1:1"}}],
        "users": [{"name": "u", "user": {"token": "t0ken"}}],
        "contexts": [
            {"name": "a", "context": {"cluster": "c", "user": "u", "namespace": "team-a"}},
            {"name": "b", "context": {"cluster": "c", "user": "u"}},
        ],
    }
    if current:
        data["current-context"] = current
    path = tmp_path / "config"
    path.write_text(yaml.safe_dump(data))
    return path


async def test_current_context_and_its_namespace(tmp_path: Path) -> None:
    async with await connect(str(_kubeconfig(tmp_path)), None) as kc:
        assert kc.context == "a"
        assert kc.default_namespace == "team-a"
        assert kc.server == "https://127.0.0.1:1"


async def test_named_context_without_namespace_is_default(tmp_path: Path) -> None:
    async with await connect(str(_kubeconfig(tmp_path)), "b") as kc:
        assert kc.default_namespace == "default"


async def test_kubeconfig_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KUBECONFIG", str(_kubeconfig(tmp_path)))
    async with await connect(None, None) as kc:
        assert kc.context == "a"


async def test_unknown_context_lists_contexts(tmp_path: Path) -> None:
    path = _kubeconfig(tmp_path)
    with pytest.raises(KubeConfigError) as info:
        await connect(str(path), "zzz")
    assert str(info.value) == f'context "zzz" not found in kubeconfig {path} (contexts: a, b)'


async def test_no_current_context(tmp_path: Path) -> None:
    with pytest.raises(KubeConfigError, match="has no current-context"):
        await connect(str(_kubeconfig(tmp_path, current=None)), None)


async def test_missing_kubeconfig(tmp_path: Path) -> None:
    with pytest.raises(KubeConfigError, match=r"^no kubeconfig found at "):
        await connect(str(tmp_path / "absent"), None)


async def test_unreachable_server_is_one_line(tmp_path: Path) -> None:
    # Port 1 on loopback: nothing listens, the connection is refused at once.
    async with await connect(str(_kubeconfig(tmp_path)), None) as kc:
        with pytest.raises(ClusterUnreachableError) as info:
            await list_targets(kc, "default")
    message = str(info.value)
    assert message.startswith("cannot reach the API server https://127.0.0.1:1: ")
    assert "\n" not in message
