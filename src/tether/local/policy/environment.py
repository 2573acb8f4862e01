"""The environment a process run by `tether exec` gets: local, with the target's on top.

Variables that describe the developer's machine rather than the service (PATH, HOME, the
terminal, language toolchains) stay local unless overridden, so the local binary still finds
its interpreter and libraries.
"""

import fnmatch
from collections.abc import Iterable, Mapping

KEEP_LOCAL = (
    "PATH", "HOME", "USER", "LOGNAME", "SHELL", "TERM", "TERMINFO", "COLORTERM", "LANG",
    "LANGUAGE", "LC_*", "TZ", "PWD", "OLDPWD", "SHLVL", "DISPLAY", "WAYLAND_DISPLAY", "XDG_*",
    "SSH_*", "TMPDIR", "PYTHONPATH", "PYTHONHOME", "PYTHONSTARTUP", "VIRTUAL_ENV", "CONDA_*",
    "JAVA_HOME", "NODE_PATH", "NODE_OPTIONS", "NVM_*", "GOPATH", "GOROOT", "GOCACHE",
    "GOMODCACHE", "CARGO_HOME", "RUSTUP_HOME", "KUBECONFIG", "EDITOR", "VISUAL", "PAGER",
    "LD_LIBRARY_PATH", "LD_PRELOAD", "HOSTNAME_LOCAL",
)  # fmt: skip

# io_uring submits file operations that bypass seccomp; libuv (Node) uses it when allowed.
FORCED = {"UV_USE_IO_URING": "0"}


def _matches(name: str, patterns: Iterable[str]) -> bool:
    return any(fnmatch.fnmatchcase(name, p) for p in patterns)


def compose_env(
    local: Mapping[str, str],
    remote: Mapping[str, str],
    override: Mapping[str, str],
    keep_local: Iterable[str] = KEEP_LOCAL,
) -> dict[str, str]:
    """Local variables, then the target's (except `keep_local` names), then overrides."""
    keep = tuple(keep_local)
    env = dict(local)
    env.update({k: v for k, v in remote.items() if not _matches(k, keep)})
    env.update(override)
    env.update(FORCED)
    return env


def env_changes(had: Mapping[str, str], now: Mapping[str, str]) -> list[str]:
    """The names whose values differ between two copies of a target's environment (added,
    removed or changed), sorted."""
    return sorted(name for name in had.keys() | now.keys() if had.get(name) != now.get(name))
