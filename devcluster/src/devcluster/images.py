"""Container images built without Docker and imported into containerd's `k8s.io` namespace.

An image is a docker-save archive (manifest.json + config + layer tars) made from root
directories assembled out of this machine's Debian files. Layers are cached by a key naming
what went into them, so only the tether layer is rebuilt from the working tree each time.
"""

import contextlib
import hashlib
import io
import json
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
import tomllib
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from devcluster import layout
from devcluster.errors import DevclusterError
from devcluster.procs import file_lock
from devcluster.shell import out, run

# Bump when what goes into a layer changes, to invalidate caches.
_RECIPE = "3"
_PY = "python3.11"
_DIST = "usr/lib/python3/dist-packages"
_IMPORT_ATTEMPTS = 3
_SKIP_STDLIB = {"test", "idlelib", "tkinter", "turtledemo", "ensurepip", "lib2to3", "pydoc_data"}
_PATH_ENV = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


@dataclass(frozen=True)
class Layer:
    """A cached layer tar and its diff ID (sha256 of the uncompressed tar)."""

    path: Path
    diff_id: str


def _dpkg_version(pkg: str) -> str:
    return out(["dpkg-query", "-W", "-f", "${Version}", pkg], check=False).strip() or "none"


def _tar_dir(root: Path, dest: Path) -> str:
    """Pack `root` as a layer with root ownership and fixed mtimes; return the sha256."""

    def normalize(info: tarfile.TarInfo) -> tarfile.TarInfo:
        info.uid = info.gid = 0
        info.uname = info.gname = "root"
        info.mtime = 0
        return info

    tmp = dest.with_suffix(".tmp")
    with tarfile.open(tmp, "w", format=tarfile.PAX_FORMAT) as tar:
        for entry in sorted(root.iterdir()):
            tar.add(entry, arcname=entry.name, filter=normalize)
    digest = hashlib.sha256()
    with open(tmp, "rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    tmp.rename(dest)
    return digest.hexdigest()


def cached_layer(key: str, populate: Callable[[Path], None]) -> Layer:
    """The layer for `key`, built by `populate(rootdir)` if it is not cached yet."""
    layout.LAYERS.mkdir(parents=True, exist_ok=True)
    name = hashlib.sha256(f"{_RECIPE}:{key}".encode()).hexdigest()[:24]
    tar_path = layout.LAYERS / f"{name}.tar"
    sum_path = layout.LAYERS / f"{name}.sha256"
    if tar_path.exists() and sum_path.exists():
        return Layer(tar_path, sum_path.read_text().strip())
    with tempfile.TemporaryDirectory(prefix="devcluster-layer-") as tmp:
        root = Path(tmp)
        populate(root)
        digest = _tar_dir(root, tar_path)
    sum_path.write_text(digest)
    return Layer(tar_path, digest)


def _copy_file(src: str, root: Path, dest: str | None = None) -> None:
    """Copy `src` (following symlinks) into `root`, at its real directory (usrmerge-aware)."""
    where = Path(dest or src)
    target = root / str(where.parent.resolve()).lstrip("/") / where.name
    if target.exists():
        return
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy2(src, target)


def _shared_libs(binaries: Iterable[str]) -> set[str]:
    libs: set[str] = set()
    for binary in binaries:
        proc = run(["ldd", binary], check=False)
        for line in proc.stdout.decode().splitlines():
            parts = line.split()
            if "=>" in parts and len(parts) >= 3 and parts[2].startswith("/"):
                libs.add(parts[2])
            elif parts and parts[0].startswith("/"):
                libs.add(parts[0])
    return libs


def _usrmerge_skeleton(root: Path) -> None:
    for d in ("usr/bin", "usr/sbin", "usr/lib", "usr/lib64", "etc", "tmp", "root", "var/tmp"):
        (root / d).mkdir(parents=True, exist_ok=True)
    for link, target in (("bin", "usr/bin"), ("sbin", "usr/sbin"), ("lib", "usr/lib")):
        (root / link).symlink_to(target)
    (root / "lib64").symlink_to("usr/lib64")
    (root / "tmp").chmod(0o1777)
    (root / "etc/passwd").write_text(
        "root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n"
    )
    (root / "etc/group").write_text("root:x:0:\nnogroup:x:65534:\n")
    (root / "etc/nsswitch.conf").write_text("hosts: files dns\npasswd: files\ngroup: files\n")
    for f in ("/etc/protocols", "/etc/services", "/etc/ethertypes"):
        if Path(f).exists():
            _copy_file(f, root)


def _add_busybox(root: Path) -> None:
    _copy_file("/usr/bin/busybox", root)
    applets = out(["/usr/bin/busybox", "--list-full"]).split()
    for applet in applets:
        # Place applets under /usr (usrmerge), never over a file already present.
        rel = applet if applet.startswith("usr/") else f"usr/{applet}"
        link = root / rel
        if not link.exists() and not link.is_symlink():
            link.parent.mkdir(parents=True, exist_ok=True)
            link.symlink_to("/usr/bin/busybox")


def _populate_busybox(root: Path) -> None:
    _usrmerge_skeleton(root)
    _add_busybox(root)


def _populate_python(root: Path) -> None:
    _usrmerge_skeleton(root)
    _add_busybox(root)
    stdlib = Path(f"/usr/lib/{_PY}")
    dest = root / "usr/lib" / _PY
    shutil.copytree(
        stdlib,
        dest,
        symlinks=True,
        ignore=lambda d, names: [n for n in names if Path(d) == stdlib and n in _SKIP_STDLIB],
    )
    (root / _DIST).mkdir(parents=True, exist_ok=True)
    _copy_file(f"/usr/bin/{_PY}", root)
    for name in ("python3", "python"):
        link = root / "usr/bin" / name
        if link.is_symlink() or link.exists():
            link.unlink()
        link.symlink_to(_PY)
    so_files = [str(p) for p in (stdlib / "lib-dynload").glob("*.so")]
    for lib in _shared_libs([f"/usr/bin/{_PY}", *so_files]):
        _copy_file(lib, root)


def _populate_pause(root: Path) -> None:
    src = Path(__file__).with_name("assets") / "pause.c"
    run(["gcc", "-static", "-Os", "-s", "-o", str(root / "pause"), str(src)])


def _populate_agent_tools(root: Path, deps: list[str]) -> None:
    """iptables (both backends), ss (iproute2) and tether's Python dependencies."""
    # ss -K resets the target's connections to a port when its traffic is stolen.
    binaries = ["/usr/sbin/xtables-nft-multi", "/usr/sbin/xtables-legacy-multi", "/usr/bin/ss"]
    for b in binaries:
        _copy_file(b, root)
    for name in (
        "iptables", "iptables-save", "iptables-restore",
        "ip6tables", "ip6tables-save", "ip6tables-restore",
    ):  # fmt: skip
        for suffix, multi in (("-nft", "xtables-nft-multi"), ("-legacy", "xtables-legacy-multi")):
            base, _, tail = name.partition("-")
            link_name = f"{base}{suffix}{'-' + tail if tail else ''}"
            (root / "usr/sbin" / link_name).symlink_to(multi)
        # Default to nft like Debian; the agent picks the backend its target already uses.
        base, _, tail = name.partition("-")
        (root / "usr/sbin" / name).symlink_to(f"{base}-nft{'-' + tail if tail else ''}")
    modules = sorted(Path("/usr/lib/x86_64-linux-gnu/xtables").glob("*.so"))
    for m in modules:
        _copy_file(str(m), root)
    for lib in _shared_libs([*binaries, *map(str, modules)]):
        _copy_file(lib, root)
    if deps:
        run(
            [
                sys.executable, "-m", "pip", "install", "--quiet", "--no-compile",
                "--disable-pip-version-check", "--target", str(root / _DIST), *deps,
            ]
        )  # fmt: skip


def _populate_tether(root: Path, src: Path) -> None:
    shutil.copytree(
        src,
        root / _DIST / "tether",
        ignore=shutil.ignore_patterns("__pycache__", "*.pyc"),
    )


def _archive(image: str, layers: list[Layer], config: dict[str, object], dest: Path) -> None:
    """Write a docker-save archive that `ctr images import` understands."""
    image_config = {
        "architecture": "amd64",
        "os": "linux",
        "config": config,
        "rootfs": {"type": "layers", "diff_ids": [f"sha256:{layer.diff_id}" for layer in layers]},
    }
    blob = json.dumps(image_config, sort_keys=True).encode()
    config_name = f"{hashlib.sha256(blob).hexdigest()}.json"
    manifest = [
        {
            "Config": config_name,
            "RepoTags": [image],
            "Layers": [f"{layer.diff_id}/layer.tar" for layer in layers],
        }
    ]
    with tarfile.open(dest, "w") as tar:
        for name, data in ((config_name, blob), ("manifest.json", json.dumps(manifest).encode())):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
        for layer in layers:
            tar.add(layer.path, arcname=f"{layer.diff_id}/layer.tar")


def _image_id(layers: list[Layer], config: dict[str, object]) -> str:
    key = json.dumps([[layer.diff_id for layer in layers], config], sort_keys=True)
    return hashlib.sha256(key.encode()).hexdigest()


@contextlib.contextmanager
def _image_lock() -> Iterator[None]:
    """One image build/import at a time on this machine: concurrent `ctr images import` of
    the same layers races in containerd's snapshotter ("parent snapshot does not exist")."""
    with file_lock(layout.CACHE / "images.lock"):
        yield


def _import(image: str, layers: list[Layer], config: dict[str, object]) -> bool:
    """Import the image unless containerd already holds this exact one. True if imported."""
    layout.IMAGES.mkdir(parents=True, exist_ok=True)
    stamp = layout.IMAGES / (image.replace("/", "_").replace(":", "_") + ".id")
    image_id = _image_id(layers, config)
    present = image in out(["ctr", "-n", "k8s.io", "images", "ls", "-q"], check=False).split()
    if present and stamp.exists() and stamp.read_text() == image_id:
        return False
    with tempfile.TemporaryDirectory(prefix="devcluster-image-") as tmp:
        archive = Path(tmp) / "image.tar"
        _archive(image, layers, config, archive)
        for attempt in range(_IMPORT_ATTEMPTS):
            try:
                subprocess.run(
                    ["ctr", "-n", "k8s.io", "images", "import", "--no-unpack=false", str(archive)],
                    check=True,
                    capture_output=True,
                )
                break
            except subprocess.CalledProcessError as exc:
                msg = exc.stderr.decode(errors="replace").strip().splitlines()[-1:]
                # containerd's snapshotter sometimes loses a parent snapshot it is still
                # garbage-collecting; the same import then succeeds when run again.
                if "parent snapshot" in str(msg) and attempt < _IMPORT_ATTEMPTS - 1:
                    time.sleep(1)
                    continue
                raise DevclusterError(f"importing {image} into containerd failed: {msg}") from exc
    stamp.write_text(image_id)
    return True


def project_dependencies(pyproject: Path) -> list[str]:
    """The runtime dependencies of the `tether` package, as pip requirement strings."""
    data = tomllib.loads(pyproject.read_text())
    deps = data.get("project", {}).get("dependencies", [])
    return [str(d) for d in deps]


def base_layers() -> dict[str, Layer]:
    """Cached layers for busybox, Python and pause, keyed by image role."""
    bb = _dpkg_version("busybox-static")
    py = _dpkg_version(f"{_PY}-minimal") + "/" + _dpkg_version(f"lib{_PY}-stdlib")
    return {
        "busybox": cached_layer(f"busybox:{bb}", _populate_busybox),
        "python": cached_layer(f"python:{py}:{bb}", _populate_python),
        "pause": cached_layer("pause:" + _dpkg_version("gcc-12"), _populate_pause),
    }


def build_base_images() -> list[str]:
    """Build and import pause, busybox and python images; return the names imported now."""
    with _image_lock():
        return _build_base_images()


def _build_base_images() -> list[str]:
    layers = base_layers()
    env = {"Env": [_PATH_ENV], "WorkingDir": "/"}
    imported = []
    specs: list[tuple[str, list[Layer], dict[str, object]]] = [
        (layout.PAUSE_IMAGE, [layers["pause"]], {"Entrypoint": ["/pause"], **env}),
        (layout.BUSYBOX_IMAGE, [layers["busybox"]], {"Cmd": ["sh"], **env}),
        (layout.PYTHON_IMAGE, [layers["python"]], {"Cmd": ["python3"], **env}),
    ]
    for image, image_layers, config in specs:
        if _import(image, image_layers, config):
            imported.append(image)
    return imported


def build_agent_image(project: Path) -> bool:
    """Build tether's agent image from the working tree at `project`; True if re-imported."""
    with _image_lock():
        return _build_agent_image(project)


def _build_agent_image(project: Path) -> bool:
    src = project / "src" / "tether"
    if not src.is_dir():
        raise DevclusterError(f"{project} is not a tether checkout (no src/tether)")
    deps = project_dependencies(project / "pyproject.toml")
    ipt = _dpkg_version("iptables")
    tools = cached_layer(
        f"agent-tools+ss:{ipt}:{_dpkg_version('iproute2')}:{sorted(deps)}",
        lambda root: _populate_agent_tools(root, deps),
    )
    layout.LAYERS.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="devcluster-tether-") as tmp:
        root = Path(tmp) / "root"
        root.mkdir()
        _populate_tether(root, src)
        digest_tar = layout.LAYERS / "tether-worktree.tar"
        digest = _tar_dir(root, digest_tar)
    tether_layer = Layer(digest_tar, digest)
    python = base_layers()["python"]
    config: dict[str, object] = {
        "Env": [_PATH_ENV, "PYTHONDONTWRITEBYTECODE=1"],
        "WorkingDir": "/",
        "Cmd": ["python3"],
        "Labels": {"org.opencontainers.image.title": "tether-agent"},
    }
    return _import(layout.AGENT_IMAGE, [python, tools, tether_layer], config)
