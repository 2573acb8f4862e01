#!/usr/bin/env bash
# `make fresh-check`: prove that the set-up installs everything it needs, on a clean Debian 12
# root bootstrapped from the Debian registry (debootstrap --variant=minbase: only what every
# Debian system has), so that nothing comes from what happens to be installed on this machine.
#
# Inside the root (chroot, /proc, /sys and /dev mounted) it runs the README's set-up path:
#   apt-get update && apt-get install -y make && make prepare && devcluster preflight
# which installs the Debian packages and the virtualenv, builds Kubernetes from Debian's source
# package and builds every image's layers. It cannot start the cluster there (this machine's
# cluster holds the ports). It takes several minutes (a Kubernetes build included).
#
#   scripts/fresh-check.sh               run it
#   scripts/fresh-check.sh --if-changed  run it only if the set-up's inputs changed since the
#                                        last pass on this machine (what .ci/run does)
#
# The mounts live in a private mount namespace (unshare), so they go when the check ends,
# however it ends; the root is removed afterwards unless FRESH_CHECK_KEEP=1.
set -euo pipefail
cd "$(dirname "$0")/.."
project=$PWD

if [ "$(id -u)" != 0 ]; then
    echo "fresh-check: run as root (debootstrap and chroot need it)" >&2
    exit 1
fi

# What the set-up is made of: a change to any of these re-runs the check in CI.
inputs=(
    scripts/bootstrap.sh scripts/fresh-check.sh Makefile pyproject.toml devcluster/pyproject.toml
    devcluster/src/devcluster/install.py devcluster/src/devcluster/build.py
    devcluster/src/devcluster/images.py devcluster/src/devcluster/cli.py
    agent-image/debian-packages.txt agent-image/requirements.txt
)
key=$(cat "${inputs[@]}" | sha256sum | cut -c1-16)
cache=${DEVCLUSTER_CACHE:-/var/cache/tether-devcluster}
stamp=$cache/fresh-check/$key.ok

if [ "${1:-}" = "--if-changed" ]; then
    if [ -f "$stamp" ]; then
        echo "fresh-check: set-up unchanged since its last pass ($key); skipped"
        exit 0
    fi
    echo "fresh-check: set-up inputs changed ($key): checking on a fresh Debian root"
fi

mirror=${DEVCLUSTER_DEBIAN_MIRROR:-http://deb.debian.org/debian}
work=${FRESH_CHECK_DIR:-/var/tmp/tether-fresh-check}
root=$work/root

mounted_under() {
    # Mount points at or below $1, deepest first (as this mount namespace sees them).
    awk -v r="$1" '$5 == r || index($5, r "/") == 1 { print $5 }' /proc/self/mountinfo | sort -r
}

remove_root() {
    local m
    for m in $(mounted_under "$root"); do umount -l "$m" || true; done
    if [ -n "$(mounted_under "$root")" ]; then
        echo "fresh-check: mounts remain under $root; not removing it" >&2
        return 1
    fi
    rm -rf --one-file-system "$root"
}

finish() {
    local status=$?
    if [ "${FRESH_CHECK_KEEP:-0}" != 1 ]; then remove_root || status=1; fi
    exit "$status"
}
trap finish EXIT

command -v debootstrap >/dev/null || {
    apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q debootstrap
}
mkdir -p "$work"
remove_root
t0=$(date +%s)
echo "fresh-check: bootstrapping Debian bookworm (minbase) into $root"
debootstrap --variant=minbase bookworm "$root" "$mirror" >"$work/debootstrap.log" 2>&1 || {
    tail -5 "$work/debootstrap.log" >&2
    echo "fresh-check: debootstrap failed (log: $work/debootstrap.log)" >&2
    exit 1
}

# This machine's network settings, not its software: DNS, and the CA bundle pip is told to
# trust (PIP_CERT) when package registries are reached through a TLS proxy.
cp /etc/resolv.conf "$root/etc/resolv.conf"
pass_env=()
if [ -n "${PIP_CERT:-}" ] && [ -f "$PIP_CERT" ]; then
    cp "$PIP_CERT" "$root/etc/fresh-check-pip-ca.crt"
    pass_env+=("PIP_CERT=/etc/fresh-check-pip-ca.crt")
fi
for var in PIP_INDEX_URL http_proxy https_proxy no_proxy; do
    if [ -n "${!var:-}" ]; then pass_env+=("$var=${!var}"); fi
done
# apt's configuration for reaching the registry (not packages): copied, as a fresh machine on
# this network would have it.
cp -a /etc/apt/apt.conf.d/. "$root/etc/apt/apt.conf.d/" 2>/dev/null || true
rm -f "$root"/etc/apt/apt.conf.d/{docker-*,*packagekit*,*appstream*}
cat >"$root/etc/apt/sources.list" <<EOF
deb $mirror bookworm main
deb $mirror bookworm-updates main
deb $mirror-security bookworm-security main
EOF

# The tree as a clean clone of it would be, uncommitted changes included, without the venv.
mkdir -p "$root/root/tether"
git ls-files -co --exclude-standard -z \
    | tar --null -T - --ignore-failed-read -cf - 2>/dev/null | tar -C "$root/root/tether" -xf -
[ -d ../shared ] && cp -a ../shared "$root/root/shared"

cat >"$root/root/fresh-check-inside.sh" <<'EOF'
set -euo pipefail
cd /root/tether
# The README's first command, up to where it would start the cluster.
apt-get update -q
DEBIAN_FRONTEND=noninteractive apt-get install -y -q make
make prepare
.venv/bin/devcluster preflight
EOF

echo "fresh-check: running the set-up inside (apt, virtualenv, Kubernetes build, images)"
unshare --mount --propagation private bash -c '
    set -euo pipefail
    root=$1; shift
    mount -t proc proc "$root/proc"
    mount -t sysfs sysfs "$root/sys"
    mount --rbind /dev "$root/dev"
    exec chroot "$root" /usr/bin/env -i HOME=/root LANG=C.UTF-8 \
        PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin "$@" \
        bash /root/fresh-check-inside.sh
' fresh-check "$root" "${pass_env[@]}"

mkdir -p "$(dirname "$stamp")"
touch "$stamp"
echo "fresh-check: passed in $(($(date +%s) - t0)) s ($key)"
