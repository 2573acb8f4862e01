"""`devcluster up | down | status | restart | images | env | preflight | prepare`."""

import json
import logging
import os
import sys
from collections.abc import Callable
from pathlib import Path

import click

from devcluster import cluster, images, install, layout
from devcluster import restart as restart_plan
from devcluster.errors import DevclusterError


def find_project(start: Path) -> Path | None:
    """The tether checkout containing `start` (or this package's own checkout), if any."""
    candidates = [start, *start.parents, *Path(__file__).resolve().parents]
    for d in candidates:
        if (d / "pyproject.toml").is_file() and (d / "src" / "tether").is_dir():
            return d
    return None


def _require_root() -> None:
    if os.geteuid() != 0:
        raise DevclusterError("devcluster needs root (run it with sudo)")


@click.group()
@click.option("-v", "--verbose", is_flag=True, help="Log every command run.")
def main(verbose: bool) -> None:
    """A real single-node Kubernetes v1.20.2 for tether's tests and demo."""
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="devcluster: %(message)s",
        stream=sys.stderr,
    )


@main.command()
@click.option(
    "--project",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="tether checkout to build the agent image from (default: found from cwd).",
)
def up(project: Path | None) -> None:
    """Build (first run), start or reuse the cluster; wait until the node is Ready."""
    _guard(lambda: _up(project))


def _up(project: Path | None) -> None:
    _require_root()
    took = cluster.up(project or find_project(Path.cwd()))
    click.echo(f"devcluster ready in {took:.1f} s; kubeconfig: {layout.ADMIN_KUBECONFIG}", err=True)


@main.command()
@click.option("--purge", is_flag=True, help="Also delete etcd data, certificates and configs.")
def down(purge: bool) -> None:
    """Stop every process and remove netns, mounts, bridges, routes and iptables chains."""

    def go() -> None:
        _require_root()
        cluster.down(purge=purge)
        left = {k: v for k, v in cluster.leftovers().items() if v}
        if left:
            raise DevclusterError(f"down left things behind: {left}")
        click.echo("devcluster down", err=True)

    _guard(go)


@main.command()
@click.option("-o", "--output", type=click.Choice(["text", "json"]), default="text")
def status(output: str) -> None:
    """Each component's PID and health; exit 1 unless all are healthy."""
    st = cluster.status()
    if output == "json":
        click.echo(json.dumps([s.__dict__ for s in st], indent=2))
    else:
        for s in st:
            state = "healthy" if s.healthy else ("running, unhealthy" if s.pid else "stopped")
            click.echo(f"{s.name:<24} {state:<20} {'pid ' + str(s.pid) if s.pid else ''}")
    sys.exit(0 if all(s.healthy for s in st) else 1)


@main.command()
@click.argument("component")
@click.option(
    "--timeout",
    type=float,
    default=120.0,
    show_default=True,
    help="Seconds to wait for the component to be ready again.",
)
@click.option(
    "--grace",
    type=float,
    default=10.0,
    show_default=True,
    help="Seconds between SIGTERM and SIGKILL (0: kill at once).",
)
def restart(component: str, timeout: float, grace: float) -> None:
    """Stop one component (SIGTERM, then SIGKILL), cutting every connection through it, start
    it again as `up` does and wait until it is ready: apiserver, kubelet, containerd, etcd,
    scheduler, controller-manager or kube-proxy. Running containers survive."""

    def go() -> None:
        restart_plan.choose(component)  # an unknown name fails before the root check
        _require_root()
        done = cluster.restart(component, timeout=timeout, grace=grace)
        click.echo(restart_plan.summary(done.name, done.down, done.ready), err=True)

    _guard(go)


@main.command("images")
@click.option("--project", type=click.Path(file_okay=False, path_type=Path), default=None)
def images_cmd(project: Path | None) -> None:
    """Rebuild the tether agent image from the working tree and import it."""

    def go() -> None:
        _require_root()
        proj = project or find_project(Path.cwd())
        if proj is None:
            raise DevclusterError("no tether checkout found: pass --project PATH")
        images.build_base_images()
        changed = images.build_agent_image(proj)
        click.echo(f"{layout.AGENT_IMAGE} {'imported' if changed else 'up to date'}", err=True)

    _guard(go)


@main.command()
def env() -> None:
    """Print shell exports for using the cluster: eval "$(devcluster env)"."""
    click.echo(f"export KUBECONFIG={layout.ADMIN_KUBECONFIG}")
    click.echo(f"export PATH={layout.K8S_BIN}:$PATH")
    # The agent image is imported, never pulled: tether must be told its local name.
    click.echo(f"export TETHER_AGENT_IMAGE={layout.AGENT_IMAGE}")


@main.command()
def preflight() -> None:
    """Check that every program the set-up, the Kubernetes build and the image builders call
    is installed; exit 1 naming each missing one and its Debian package."""

    def go() -> None:
        install.preflight()
        click.echo(f"devcluster: preflight ok ({len(install.PROGRAMS)} programs)", err=True)

    _guard(go)


@main.command()
@click.option("--project", type=click.Path(file_okay=False, path_type=Path), default=None)
def prepare(project: Path | None) -> None:
    """Install, check and build everything `up` needs (packages, Kubernetes, image layers)
    without starting anything: what `make fresh-check` runs in a fresh Debian root."""

    def go() -> None:
        _require_root()
        cluster.prepare()
        sizes = images.prepare_images(project or find_project(Path.cwd()))
        shown = ", ".join(f"{name} {size / 2**20:.1f} MiB" for name, size in sizes.items())
        click.echo(f"devcluster: prepared; image layers: {shown}", err=True)

    _guard(go)


def _guard(fn: Callable[[], None]) -> None:
    """Run `fn`, turning DevclusterError into a one-line message and exit status 1."""
    try:
        fn()
    except DevclusterError as exc:
        click.echo(f"devcluster: error: {exc}", err=True)
        sys.exit(1)
    except KeyboardInterrupt:
        click.echo("devcluster: interrupted", err=True)
        sys.exit(130)
