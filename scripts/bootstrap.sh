#!/usr/bin/env bash
# Create the project's virtualenv (.venv) with tether and devcluster installed, on a fresh
# Debian 12 machine as root. Idempotent: a second run only re-links the commands.
set -euo pipefail
cd "$(dirname "$0")/.."

if [ "$(id -u)" != 0 ]; then
    echo "bootstrap: run as root (or with sudo): devcluster configures the kernel and runs a cluster" >&2
    exit 1
fi

need_apt=()
command -v python3 >/dev/null || need_apt+=(python3)
python3 -c 'import ensurepip, venv' 2>/dev/null || need_apt+=(python3-venv)
command -v make >/dev/null || need_apt+=(make)
command -v git >/dev/null || need_apt+=(git)
# Programs the e2e tests run under `tether exec`.
command -v curl >/dev/null || need_apt+=(curl)
command -v node >/dev/null || need_apt+=(nodejs)
command -v strace >/dev/null || need_apt+=(strace)
if [ ${#need_apt[@]} -gt 0 ]; then
    apt-get update -q
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${need_apt[@]}"
fi

stamp=.venv/.installed
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ] || [ devcluster/pyproject.toml -nt "$stamp" ]; then
    [ -x .venv/bin/python ] || python3 -m venv .venv
    .venv/bin/python -m pip install -q --disable-pip-version-check --upgrade pip
    .venv/bin/python -m pip install -q --disable-pip-version-check -e '.[dev]' -e ./devcluster
    touch "$stamp"
fi

# `devcluster`, `tether` and `kubectl tether` work from any shell after setup.
for cmd in devcluster tether kubectl-tether; do
    ln -sf "$PWD/.venv/bin/$cmd" "/usr/local/bin/$cmd"
done
