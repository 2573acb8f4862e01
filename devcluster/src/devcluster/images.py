"""Container images built without Docker and imported into containerd's `k8s.io` namespace.

An image is a docker-save archive (manifest.json + config + layer tars). The test
infrastructure's images (pause, busybox, python) are assembled out of this machine's Debian
files. The agent image is the one users build from Containerfile: a Debian bookworm root
bootstrapped from the Debian registry with the packages declared in agent-image/, the pinned
Python requirements declared there, and tether's sources. Layers are cached by a key naming
what went into them, so only the tether layer is rebuilt from the working tree each time.
"""

import contextlib
import hashlib
import io
import json
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
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


# The agent image's declaration, relative to the tether checkout; Containerfile reads the same.
AGENT_SPEC_DIR = "agent-image"
DEBIAN_SUITE = "bookworm"
DEBIAN_MIRROR = "http://deb.debian.org/debian"
# Where the agent's Python packages and tether go in the image: on Debian python3's sys.path,
# apart from Debian's own dist-packages.
AGENT_SITE = "usr/local/lib/python3.11/dist-packages"


def _declared_lines(path: Path) -> list[str]:
    """The non-comment, non-blank lines of a declaration file."""
    lines = (line.split("#", 1)[0].strip() for line in path.read_text().splitlines())
    return [line for line in lines if line]


@dataclass(frozen=True)
class AgentSpec:
    """What the agent image holds, as declared in agent-image/."""

    packages: list[str]
    requirements: Path
    requirements_text: str

    @classmethod
    def read(cls, spec_dir: Path) -> "AgentSpec":
        """Read debian-packages.txt and requirements.txt from `spec_dir`."""
        try:
            packages = _declared_lines(spec_dir / "debian-packages.txt")
            reqs = spec_dir / "requirements.txt"
            text = "\n".join(_declared_lines(reqs))
        except OSError as exc:
            raise DevclusterError(f"cannot read the agent image declaration: {exc}") from exc
        if not packages:
            raise DevclusterError(f"{spec_dir}/debian-packages.txt names no package")
        return cls(packages, reqs, text)


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


def agent_spec(project: Path) -> AgentSpec:
    """The agent image's declaration in the tether checkout at `project` (agent-image/)."""
    return AgentSpec.read(project / AGENT_SPEC_DIR)


def _debian_mirror() -> str:
    return os.environ.get("DEVCLUSTER_DEBIAN_MIRROR", DEBIAN_MIRROR)


def _populate_debian_root(root: Path, packages: list[str]) -> None:
    """A minimal Debian bookworm root with `packages`, from the Debian registry.

    debootstrap rather than copying this machine's files: the image then holds exactly the
    packages the declaration names, as a user's `docker build -f Containerfile` does."""
    run(
        [
            "debootstrap", "--variant=minbase", f"--include={','.join(packages)}",
            DEBIAN_SUITE, str(root), _debian_mirror(),
        ],
        timeout=1800,
    )  # fmt: skip
    # What a container runtime provides (it mounts /dev, /proc, /sys, resolv.conf, hosts,
    # hostname) or what only a running apt needs, so that the layer does not carry this
    # machine's settings or a package cache.
    for rel in ("dev", "proc", "sys", "run", "tmp", "var/cache/apt", "var/lib/apt/lists"):
        d = root / rel
        if d.is_dir():
            for entry in d.iterdir():
                if entry.is_dir() and not entry.is_symlink():
                    shutil.rmtree(entry)
                else:
                    entry.unlink()
    for rel in ("usr/share/doc", "usr/share/man", "usr/share/info", "usr/share/locale"):
        shutil.rmtree(root / rel, ignore_errors=True)
    for rel in ("etc/resolv.conf", "etc/hostname"):
        (root / rel).unlink(missing_ok=True)
    (root / "etc/hosts").write_text("127.0.0.1 localhost\n::1 localhost\n")


def _populate_agent_python(root: Path, requirements: Path) -> None:
    """The agent's pinned Python requirements, as the wheels for Debian's python3.11."""
    run(
        [
            sys.executable, "-m", "pip", "install", "--quiet", "--no-compile", "--no-deps",
            "--disable-pip-version-check", "--only-binary=:all:",
            "--platform", "manylinux_2_17_x86_64", "--python-version", "3.11",
            "--implementation", "cp", "--abi", "cp311",
            "--target", str(root / AGENT_SITE), "-r", str(requirements),
        ],
        timeout=900,
    )  # fmt: skip


def _populate_tether(root: Path, src: Path) -> None:
    shutil.copytree(
        src,
        root / AGENT_SITE / "tether",
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


def agent_layers(project: Path) -> list[Layer]:
    """The agent image's layers: the Debian root, the Python requirements (both cached by
    their declaration's content) and tether's sources from the working tree."""
    src = project / "src" / "tether"
    if not src.is_dir():
        raise DevclusterError(f"{project} is not a tether checkout (no src/tether)")
    spec = agent_spec(project)
    debian = cached_layer(
        f"agent-debian:{DEBIAN_SUITE}:{_debian_mirror()}:{spec.packages}",
        lambda root: _populate_debian_root(root, spec.packages),
    )
    python = cached_layer(
        f"agent-python:{spec.requirements_text}",
        lambda root: _populate_agent_python(root, spec.requirements),
    )
    layout.LAYERS.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="devcluster-tether-") as tmp:
        root = Path(tmp) / "root"
        root.mkdir()
        _populate_tether(root, src)
        digest_tar = layout.LAYERS / "tether-worktree.tar"
        digest = _tar_dir(root, digest_tar)
    return [debian, python, Layer(digest_tar, digest)]


AGENT_CONFIG: dict[str, object] = {
    "Env": [_PATH_ENV, "PYTHONDONTWRITEBYTECODE=1"],
    "WorkingDir": "/",
    "Cmd": ["python3", "-m", "tether.agent"],
    "Labels": {"org.opencontainers.image.title": "tether-agent"},
}


def build_agent_image(project: Path) -> bool:
    """Build tether's agent image from the working tree at `project`; True if re-imported."""
    with _image_lock():
        return _import(layout.AGENT_IMAGE, agent_layers(project), AGENT_CONFIG)


def write_agent_archive(project: Path, dest: Path) -> int:
    """Build the agent image and write it as a docker-save archive (no containerd needed);
    return the size of its layers in bytes."""
    with _image_lock():
        layers = agent_layers(project)
        _archive(layout.AGENT_IMAGE, layers, AGENT_CONFIG, dest)
    return sum(layer.path.stat().st_size for layer in layers)


def prepare_images(project: Path | None) -> dict[str, int]:
    """Build every image's layers (no containerd needed); return each image's size."""
    with _image_lock():
        sizes = {name: layer.path.stat().st_size for name, layer in base_layers().items()}
        if project is not None:
            sizes["agent"] = sum(layer.path.stat().st_size for layer in agent_layers(project))
    return sizes
