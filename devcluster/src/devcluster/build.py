"""Kubernetes v1.20.2 server binaries, built from Debian bookworm's `kubernetes` source package.

Only bookworm's source package carries the full upstream tree with vendor/, so the build runs
in GOPATH mode with the vendored dependencies and never touches the network (GOPROXY=off).
The binaries are cached outside the repository, keyed by version.
"""

import logging
import os
import shutil
import tempfile
from pathlib import Path

from devcluster import layout
from devcluster.errors import DevclusterError
from devcluster.shell import run

log = logging.getLogger("devcluster")

BINARIES = (
    "kube-apiserver",
    "kube-controller-manager",
    "kube-scheduler",
    "kubelet",
    "kube-proxy",
    "kubectl",
)


def cached() -> bool:
    """Whether every binary for this version is already in the cache."""
    return all((layout.K8S_BIN / b).is_file() for b in BINARIES)


def _source_tree(workdir: Path) -> Path:
    run(["apt-get", "source", "--download-only", "kubernetes"], cwd=str(workdir), timeout=600)
    origs = sorted(workdir.glob("kubernetes_*.orig.tar.gz"))
    if not origs:
        raise DevclusterError("apt-get source kubernetes fetched no orig tarball (deb-src?)")
    run(["tar", "-xzf", str(origs[-1])], cwd=str(workdir))
    trees = [p for p in workdir.iterdir() if p.is_dir() and (p / "vendor").is_dir()]
    if not trees:
        raise DevclusterError("the kubernetes source package has no vendor/ tree (not bookworm's?)")
    version = (trees[0] / "CHANGELOG" / f"CHANGELOG-{layout.K8S_VERSION[1:5]}.md").exists()
    if not version:
        log.warning("source tree %s may not be %s", trees[0].name, layout.K8S_VERSION)
    return trees[0]


def ensure_binaries() -> None:
    """Build the binaries unless cached (about 4-6 minutes on 2 cores)."""
    if cached():
        return
    log.info("building Kubernetes %s from Debian's source package (4-6 min)...", layout.K8S_VERSION)
    workroot = layout.CACHE / "build"
    workroot.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=workroot) as tmp:
        tree = _source_tree(Path(tmp))
        env = {
            "PATH": os.environ.get("PATH", "/usr/sbin:/usr/bin:/sbin:/bin"),
            "HOME": os.environ.get("HOME", "/root"),
            "GO111MODULE": "off",
            "GOPROXY": "off",
            "GOFLAGS": "",
            "CGO_ENABLED": "0",
            "GOCACHE": str(workroot / "gocache"),
            "KUBE_GIT_VERSION": layout.K8S_VERSION,
            "KUBE_GIT_TREE_STATE": "clean",
        }
        run(
            ["make", f"WHAT={' '.join('cmd/' + b for b in BINARIES)}"],
            cwd=str(tree),
            env=env,
            timeout=3600,
        )
        built = tree / "_output" / "local" / "bin" / "linux" / "amd64"
        staging = layout.K8S_BIN.with_name("bin.tmp")
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir(parents=True)
        for b in BINARIES:
            shutil.copy2(built / b, staging / b)
        shutil.rmtree(layout.K8S_BIN, ignore_errors=True)
        staging.rename(layout.K8S_BIN)
    log.info("Kubernetes %s built into %s", layout.K8S_VERSION, layout.K8S_BIN)
