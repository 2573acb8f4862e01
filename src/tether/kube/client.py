"""The connection to a cluster: kubeconfig loading and the REST and WebSocket API clients."""

import asyncio
import os
from collections.abc import Awaitable
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any, Self, TypeVar

import yaml
from kubernetes_asyncio import client
from kubernetes_asyncio.config.config_exception import ConfigException
from kubernetes_asyncio.config.kube_config import KubeConfigLoader, KubeConfigMerger
from kubernetes_asyncio.stream import WsApiClient

from tether import __version__
from tether.kube.errors import KubeConfigError, Operation, error_for_exception

_T = TypeVar("_T")


@dataclass
class KubeClient:
    """A connected cluster: the API clients and what the kubeconfig context says."""

    api: Any
    """kubernetes_asyncio ApiClient (REST)."""
    ws: Any
    """kubernetes_asyncio WsApiClient (exec, port-forward)."""
    context: str
    """Name of the kubeconfig context in use."""
    default_namespace: str
    """The context's namespace, "default" if it names none."""
    server: str
    """The API server URL."""
    core: Any = field(init=False, repr=False)
    apps: Any = field(init=False, repr=False)
    batch: Any = field(init=False, repr=False)
    ws_core: Any = field(init=False, repr=False)
    git_version: str | None = field(default=None, init=False)
    """The API server's version, once `server_version` read it."""

    def __post_init__(self) -> None:
        self.core = client.CoreV1Api(api_client=self.api)
        self.apps = client.AppsV1Api(api_client=self.api)
        self.batch = client.BatchV1Api(api_client=self.api)
        self.ws_core = client.CoreV1Api(api_client=self.ws)

    async def call(self, request: Awaitable[_T], op: Operation) -> _T:
        """Await an API request; turn its failure into the KubeError that says what to fix."""
        try:
            return await request
        except Exception as exc:
            error = error_for_exception(exc, op, self.server)
            if error is None:
                raise
            raise error from exc

    async def close(self) -> None:
        """Close both API clients (their HTTP sessions)."""
        try:
            await self.ws.close()
        finally:
            await self.api.close()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()


def kubeconfig_paths(kubeconfig: str | None) -> str:
    """The kubeconfig path list in use: the argument, else $KUBECONFIG, else ~/.kube/config."""
    if kubeconfig:
        return kubeconfig
    return os.environ.get("KUBECONFIG") or str(Path.home() / ".kube" / "config")


@dataclass(frozen=True)
class _Kubeconfig:
    merger: Any
    contexts: dict[str, dict[str, Any]]
    users: dict[str, dict[str, Any]]
    current: str | None


def _read_kubeconfig(paths: str) -> _Kubeconfig:
    existing = [p for p in paths.split(os.pathsep) if p and Path(p).expanduser().is_file()]
    if not existing:
        raise KubeConfigError(
            f"no kubeconfig found at {paths} (set KUBECONFIG, pass --kubeconfig,"
            " or create ~/.kube/config)"
        )
    try:
        merger = KubeConfigMerger(paths)
    except (OSError, yaml.YAMLError, AttributeError, TypeError, KeyError) as exc:
        raise KubeConfigError(f"kubeconfig {paths} is not valid: {exc}") from None
    contexts: dict[str, dict[str, Any]] = {}
    users: dict[str, dict[str, Any]] = {}
    # First definition of a name wins, as in the library's merge (and kubectl's).
    for raw in merger.config_files.values():
        if not isinstance(raw, dict):
            continue
        for item in raw.get("contexts") or []:
            if isinstance(item, dict) and "name" in item:
                contexts.setdefault(str(item["name"]), dict(item.get("context") or {}))
        for item in raw.get("users") or []:
            if isinstance(item, dict) and "name" in item:
                users.setdefault(str(item["name"]), dict(item.get("user") or {}))
    current = merger.config.value.get("current-context") if merger.config else None
    return _Kubeconfig(merger, contexts, users, str(current) if current else None)


async def server_version(kc: KubeClient) -> str:
    """The API server's gitVersion ("v1.30.2"), read once per client."""
    if kc.git_version is None:
        code: Any = await kc.call(
            client.VersionApi(api_client=kc.api).get_code(), Operation("get", "version")
        )
        kc.git_version = str(code.git_version)
    return kc.git_version


async def connect(kubeconfig: str | None = None, context: str | None = None) -> KubeClient:
    """Load the kubeconfig (KUBECONFIG / ~/.kube/config unless given; tokens, client
    certificates and exec plugins as kubernetes_asyncio supports) and open API clients for
    `context` (default: the current context). Raises KubeConfigError.
    """
    paths = kubeconfig_paths(kubeconfig)
    kc = await asyncio.to_thread(_read_kubeconfig, paths)
    name = context or kc.current
    if name is None:
        raise KubeConfigError(
            f"kubeconfig {paths} has no current-context (pass --context; contexts: "
            f"{', '.join(sorted(kc.contexts)) or 'none'})"
        )
    if name not in kc.contexts:
        raise KubeConfigError(
            f'context "{name}" not found in kubeconfig {paths} (contexts: '
            f"{', '.join(sorted(kc.contexts)) or 'none'})"
        )
    configuration = client.Configuration()
    try:
        loader = KubeConfigLoader(
            config_dict=kc.merger.config, config_base_path=None, active_context=name
        )
        await loader.load_and_set(configuration)
    except (ConfigException, OSError, KeyError, TypeError, ValueError) as exc:
        raise KubeConfigError(f'kubeconfig {paths}, context "{name}": {exc}') from None
    user = kc.users.get(str(kc.contexts[name].get("user", "")), {})
    if "exec" in user and hasattr(loader, "exec_plugin_expiry"):
        configuration.refresh_api_key_hook = _exec_token_refresher(loader)
    api = client.ApiClient(configuration=configuration)
    # Port-forward streams idle for long; a heartbeat would kill them. aiohttp's default
    # max_msg_size (4 MiB) is well above the API server's 32 KiB data frames.
    ws = WsApiClient(configuration=configuration, heartbeat=None)
    for c in (api, ws):
        c.user_agent = f"tether/{__version__}"
    namespace = kc.contexts[name].get("namespace") or "default"
    return KubeClient(
        api=api,
        ws=ws,
        context=name,
        default_namespace=str(namespace),
        server=str(configuration.host),
    )


def _exec_token_refresher(loader: Any) -> Any:
    # Exec-plugin tokens expire (EKS: 15 min); the loader re-runs the plugin only when its
    # token is near expiry, so asking it before each request is cheap.
    lock = asyncio.Lock()

    async def refresh(configuration: Any) -> None:
        async with lock:
            await loader.load_from_exec_plugin()
        configuration.api_key["BearerToken"] = loader.token

    return refresh
