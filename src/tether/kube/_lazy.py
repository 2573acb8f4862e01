"""Load kubernetes_asyncio piece by piece.

Why this exists: `import kubernetes_asyncio` eagerly imports all of its ~860 modules (every API
group and model class): about 260 ms and 35 MB that every tether command, and the process
relaying a session's bytes, would pay for the dozen classes tether uses. Installing light
package modules whose `__getattr__` imports a submodule on first use keeps the library's own
code and behaviour (its generated APIs, deserializer, kubeconfig loader, WebSocket client)
while loading only what is touched. If anything imported kubernetes_asyncio first, nothing is
changed.
"""

import importlib
import importlib.util
import sys
import types
from collections.abc import Callable
from pathlib import Path
from typing import Any

_PKG = "kubernetes_asyncio"
_EXCEPTIONS = {"ApiException", "ApiValueError", "ApiTypeError", "ApiKeyError", "OpenApiException"}


def _index(directory: Path) -> dict[str, str]:
    # Generated names map to files by dropping underscores: CoreV1Api <-> core_v1_api.py.
    return {p.stem.replace("_", ""): p.stem for p in directory.glob("*.py") if p.stem != "__init__"}


def _package(name: str, path: Path, getattr_: Callable[[str], Any]) -> types.ModuleType:
    module = types.ModuleType(name)
    module.__path__ = [str(path)]
    module.__file__ = str(path / "__init__.py")
    module.__getattr__ = getattr_  # type: ignore[method-assign]
    sys.modules[name] = module
    return module


def install() -> None:
    """Install the lazy packages unless kubernetes_asyncio is already imported."""
    if _PKG in sys.modules:
        return
    spec = importlib.util.find_spec(_PKG)
    if spec is None or spec.origin is None:
        return
    base = Path(spec.origin).parent
    apis, models = _index(base / "client" / "api"), _index(base / "client" / "models")

    def from_index(package: str, index: dict[str, str], name: str) -> Any:
        stem = index.get(name.lower())
        if stem is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        return getattr(importlib.import_module(f"{package}.{stem}"), name)

    def top(name: str) -> Any:
        if name.startswith("__"):
            raise AttributeError(name)
        return importlib.import_module(f"{_PKG}.{name}")

    def client(name: str) -> Any:
        if name.startswith("__"):
            raise AttributeError(name)
        if name in ("api", "models", "rest", "exceptions", "api_client", "configuration"):
            return importlib.import_module(f"{_PKG}.client.{name}")
        if name == "ApiClient":
            return importlib.import_module(f"{_PKG}.client.api_client").ApiClient
        if name == "Configuration":
            return importlib.import_module(f"{_PKG}.client.configuration").Configuration
        if name in _EXCEPTIONS:
            return getattr(importlib.import_module(f"{_PKG}.client.exceptions"), name)
        if name.endswith("Api") and name.lower() in apis:
            return from_index(f"{_PKG}.client.api", apis, name)
        return from_index(f"{_PKG}.client.models", models, name)

    root = _package(_PKG, base, top)
    client_pkg = _package(f"{_PKG}.client", base / "client", client)
    api_pkg = _package(
        f"{_PKG}.client.api",
        base / "client" / "api",
        lambda n: from_index(f"{_PKG}.client.api", apis, n),
    )
    models_pkg = _package(
        f"{_PKG}.client.models",
        base / "client" / "models",
        lambda n: from_index(f"{_PKG}.client.models", models, n),
    )
    # As the import system would after importing the submodules.
    setattr(root, "client", client_pkg)  # noqa: B010
    setattr(client_pkg, "api", api_pkg)  # noqa: B010
    setattr(client_pkg, "models", models_pkg)  # noqa: B010


install()
