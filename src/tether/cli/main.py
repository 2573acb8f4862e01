"""The `tether` (and `kubectl tether`) command. Thin: options and config in, one-line errors
out; the work lives in tether.local, tether.kube and the agent."""

import asyncio
import json
import shlex
import signal
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

import click

from tether import __version__
from tether.config import ConfigError, TetherConfig, config_schema, load_config, merge_cli
from tether.intercept.launcher import LaunchError
from tether.intercept.seccomp import UnsupportedKernelError
from tether.kube.errors import KubeError
from tether.local.forward import (
    ForwardSpecError,
    bind_listeners,
    parse_local_forward,
    serve_forwards,
)
from tether.local.progress import Progress
from tether.local.session import SessionError, open_session
from tether.tunnel import RemoteOpError, TunnelClosedError

F = TypeVar("F", bound=Callable[..., Any])
_USER_ERRORS = (
    ConfigError,
    KubeError,
    SessionError,
    ForwardSpecError,
    RemoteOpError,
    TunnelClosedError,
    UnsupportedKernelError,
    LaunchError,
    OSError,
)


def _fail(message: str) -> None:
    click.echo(f"tether: error: {message}", err=True)
    sys.exit(1)


def run_async(main: Awaitable[int], *, cancel_on_signals: bool = True) -> int:
    """Run `main`; SIGTERM and Ctrl-C cancel it so its cleanup (the agent Job) still runs.

    With `cancel_on_signals` False (`tether exec`), signals are left to `main`, which forwards
    them to the child and ends when the child does.
    """

    async def wrapper() -> int:
        task = asyncio.ensure_future(main)
        loop = asyncio.get_running_loop()
        if cancel_on_signals:
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.add_signal_handler(sig, task.cancel)
        try:
            return await task
        except asyncio.CancelledError:
            return 130

    try:
        return asyncio.run(wrapper())
    except _USER_ERRORS as exc:
        _fail(str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__)
    return 1


def target_options(fn: F) -> F:
    """Options every command that talks to a target shares."""
    decorators = [
        click.option(
            "-f",
            "--config",
            "config_path",
            type=click.Path(path_type=Path),
            help="Config file (default: tether.toml/.yaml/.json in the working dir).",
        ),
        click.option(
            "-t",
            "--target",
            help="pod/NAME, deployment/NAME, statefulset/NAME "
            "(each optionally /container/NAME), or targetless.",
        ),
        click.option("-n", "--namespace", help="Namespace of the target."),
        click.option("--context", help="kubeconfig context."),
        click.option("--kubeconfig", help="kubeconfig file."),
        click.option("--agent-image", help="Agent image (config: agent.image)."),
        click.option("--agent-namespace", help="Namespace for the agent Job."),
        click.option("-q", "--quiet", is_flag=True, help="No progress output."),
        click.option("-v", "--verbose", is_flag=True, help="More progress output."),
    ]
    for decorator in reversed(decorators):
        fn = decorator(fn)
    return fn


def build_config(opts: dict[str, Any]) -> tuple[TetherConfig, Progress]:
    """The file's config with command-line flags on top, and the progress printer."""
    config = load_config(opts.pop("config_path", None), Path.cwd())
    quiet, verbose = opts.pop("quiet", False), opts.pop("verbose", False)
    config = merge_cli(config, **opts)
    return config, Progress(0 if quiet else 2 if verbose else 1)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="tether")
def main() -> None:
    """Run a local process in the context of a remote Kubernetes pod."""


@main.command()
@target_options
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["dotenv", "json", "sh"]),
    default="dotenv",
    show_default=True,
)
@click.option("--include", multiple=True, help="Glob of variables to take (repeatable).")
@click.option("--exclude", multiple=True, help="Glob of variables to leave out (repeatable).")
def env(fmt: str, include: tuple[str, ...], exclude: tuple[str, ...], **opts: Any) -> None:
    """Print the target container's environment."""
    try:
        config, progress = build_config(
            {**opts, "env_include": list(include) or None, "env_exclude": list(exclude) or None}
        )
    except ConfigError as exc:
        _fail(str(exc))
        return

    async def go() -> int:
        async with open_session(config, progress) as session:
            got = await session.tunnel.request(
                "env", {"include": config.env.include, "exclude": config.env.exclude}
            )
        variables: dict[str, str] = {**got["env"], **config.env.override}
        click.echo(format_env(variables, fmt), nl=False)
        return 0

    sys.exit(run_async(go()))


def format_env(variables: dict[str, str], fmt: str) -> str:
    """Render variables as dotenv, json or sh `export` lines."""
    if fmt == "json":
        return json.dumps(variables, indent=2, sort_keys=True) + "\n"
    lines = []
    for key in sorted(variables):
        value = variables[key]
        if fmt == "sh":
            lines.append(f"export {key}={shlex.quote(value)}")
        elif value and all(c.isalnum() or c in "-_./:@,+=%" for c in value):
            lines.append(f"{key}={value}")
        else:
            lines.append(f"{key}={json.dumps(value)}")
    return "".join(line + "\n" for line in lines)


@main.command("port-forward")
@target_options
@click.option(
    "-L",
    "local",
    multiple=True,
    required=True,
    metavar="[LOCAL_PORT:]HOST:PORT",
    help="Listen on LOCAL_PORT; connect to HOST:PORT from the target (repeatable).",
)
def port_forward(local: tuple[str, ...], **opts: Any) -> None:
    """Forward local ports to hosts reachable from the target's network."""
    try:
        config, progress = build_config(opts)
        forwards = [parse_local_forward(spec) for spec in local]
        socks = bind_listeners(forwards)
    except (ConfigError, ForwardSpecError, OSError) as exc:
        _fail(str(exc))
        return

    async def go() -> int:
        try:
            async with open_session(config, progress) as session:
                await serve_forwards(session.tunnel, forwards, socks, progress)
                why = session.tunnel._closed
                if why is not None:
                    raise SessionError(f"lost the tunnel to the agent: {why}")
        finally:
            for sock in socks:
                sock.close()
        return 0

    sys.exit(run_async(go()))


@main.command(
    "exec",
    context_settings={"ignore_unknown_options": True, "allow_interspersed_args": False},
)
@target_options
@click.argument("command", nargs=-1, required=True, type=click.UNPROCESSED)
def exec_(command: tuple[str, ...], **opts: Any) -> None:
    """Run COMMAND locally in the target's context: its env, files, network and DNS."""
    from tether.local.execute import run_exec

    try:
        config, progress = build_config(opts)
    except ConfigError as exc:
        _fail(str(exc))
        return
    sys.exit(run_async(run_exec(config, list(command), progress), cancel_on_signals=False))


@main.command()
@click.option("-n", "--namespace", help="Namespace (default: the context's).")
@click.option("--context", help="kubeconfig context.")
@click.option("--kubeconfig", help="kubeconfig file.")
@click.option("-o", "--output", type=click.Choice(["text", "json"]), default="text")
def ls(namespace: str | None, context: str | None, kubeconfig: str | None, output: str) -> None:
    """List targets: pods, deployments and statefulsets."""
    from tether.kube.client import connect
    from tether.kube.targets import list_targets

    async def go() -> int:
        async with await connect(kubeconfig, context) as kube:
            targets = await list_targets(kube, namespace or kube.default_namespace)
        if output == "json":
            click.echo(json.dumps(targets, indent=2))
        else:
            for t in targets:
                click.echo(t)
        return 0

    sys.exit(run_async(go()))


@main.command()
def schema() -> None:
    """Print the JSON Schema of tether.toml / tether.yaml / tether.json."""
    click.echo(json.dumps(config_schema(), indent=2))
