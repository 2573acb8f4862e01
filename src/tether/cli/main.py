"""The `tether` (and `kubectl tether`) command. Thin: options and config in, one-line errors
out; the work lives in tether.local, tether.kube and the agent."""

import asyncio
import json
import logging
import shlex
import signal
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

import click

from tether import __version__
from tether.cli.logs import route_logs
from tether.config import (
    PRECEDENCE,
    ConfigError,
    ResolvedConfig,
    TetherConfig,
    config_schema,
    find_config,
    find_user_config,
    resolve_config,
    user_config_dir,
)
from tether.config.flags import cli_flags
from tether.config.ports import PortSpecError, parse_port_spec
from tether.errors import UserError
from tether.local.proxies.forward import (
    ForwardSpecError,
    bind_listeners,
    parse_local_forward,
    serve_forwards,
)
from tether.local.session.progress import Progress
from tether.local.session.session import SessionError, open_session
from tether.protocol.messages import GetEnv
from tether.tunnel.allocator import tune_allocator

F = TypeVar("F", bound=Callable[..., Any])
# What a user can act on: reported as one line. OSError covers the local machine's refusals
# (a port in use, a file that cannot be read).
_USER_ERRORS = (UserError, OSError)


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
        caught: list[int] = []

        def stop(sig: int) -> None:
            caught.append(sig)
            task.cancel()

        if cancel_on_signals:
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.add_signal_handler(sig, stop, sig)
        try:
            return await task
        except asyncio.CancelledError:
            # 128 + the signal, as shells and kubectl report it (143 for SIGTERM).
            return 128 + (caught[0] if caught else signal.SIGINT)

    try:
        return asyncio.run(wrapper())
    except _USER_ERRORS as exc:
        _fail(str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__)
    except Exception as exc:
        # A bug, but still one line (the traceback goes through the logs, shown with -v).
        logging.getLogger("tether.cli").debug("internal error", exc_info=exc)
        text = " ".join(str(exc).split())
        what = f"{type(exc).__name__}: {text}" if text else type(exc).__name__
        _fail(f"internal error: {what} (a bug in tether; -v shows where)")
    return 1


def target_options(fn: F) -> F:
    """Options every command that talks to a target shares."""
    decorators = [
        click.option(
            "-f",
            "--config",
            "config_path",
            type=click.Path(path_type=Path),
            help="Project config file (default: tether.toml/.yaml/.json in the working dir; "
            "see `tether config`).",
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
        click.option(
            "--agent-mode",
            type=click.Choice(["auto", "job", "ephemeral"]),
            help="The agent as a Job, as an ephemeral container in the target pod, or auto "
            "(config: agent.mode).",
        ),
        click.option(
            "--reconnect-timeout",
            "agent_reconnect_timeout",
            type=float,
            metavar="SECONDS",
            help="How long to try to reconnect a dropped connection to the agent before the "
            "session ends (config: agent.reconnect_timeout; 0: never).",
        ),
        click.option("-q", "--quiet", is_flag=True, help="No progress output."),
        click.option("-v", "--verbose", is_flag=True, help="More progress output."),
    ]
    for decorator in reversed(decorators):
        fn = decorator(fn)
    return fn


def incoming_options(fn: F) -> F:
    """Options of commands that receive the target's incoming traffic."""
    decorators = [
        click.option(
            "--mirror",
            "incoming_flag",
            flag_value="mirror",
            help="Copy the target's incoming connections to the local app (config: incoming.mode).",
        ),
        click.option(
            "--steal",
            "incoming_flag",
            flag_value="steal",
            help="Take the target's incoming traffic to the local app instead (all of it, or "
            "the HTTP requests the --http-* filters match).",
        ),
        click.option(
            "--http-header-filter",
            "http_header",
            multiple=True,
            metavar="REGEX",
            help='Steal only requests with a header matching REGEX, as "Name: value" '
            "(repeatable; implies --steal).",
        ),
        click.option(
            "--http-path-filter", "http_path", metavar="REGEX", help="Steal only matching paths."
        ),
        click.option(
            "--http-method",
            "http_methods",
            multiple=True,
            metavar="METHOD",
            help="Steal only these methods (repeatable).",
        ),
        click.option(
            "--http-filter-any",
            is_flag=True,
            default=None,
            help="A request matching any one --http-* filter is stolen (default: all of them).",
        ),
        click.option(
            "--steal-probes",
            is_flag=True,
            default=None,
            help="Steal Kubernetes probe requests too (default: they reach the pod).",
        ),
        click.option(
            "--override",
            is_flag=True,
            default=None,
            help="Take a port another session steals.",
        ),
        click.option(
            "--no-reset-connections",
            is_flag=True,
            default=None,
            help="Leave the app's open keep-alive connections alone when a steal starts.",
        ),
    ]
    for decorator in reversed(decorators):
        fn = decorator(fn)
    return fn


def _resolve(opts: dict[str, Any]) -> ResolvedConfig:
    opts.pop("quiet", None)
    opts.pop("verbose", None)
    config_path = opts.pop("config_path", None)
    return resolve_config(config_path, Path.cwd(), cli_flags(opts))


def build_config(opts: dict[str, Any]) -> tuple[TetherConfig, Progress]:
    """The effective config (flags over the environment, the project file, the user file and
    the defaults: see resolve_config) and the progress printer."""
    quiet, verbose = opts.get("quiet", False), opts.get("verbose", False)
    config = _resolve(opts).config
    progress = Progress(0 if quiet else 2 if verbose else 1)
    route_logs(progress)
    return config, progress


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="tether")
def main() -> None:
    """Run a local process in the context of a remote Kubernetes pod."""
    tune_allocator()


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
            got = await session.tunnel.call(GetEnv(config.env.include, config.env.exclude))
        variables: dict[str, str] = {**got.env, **config.env.override}
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
@incoming_options
@click.option(
    "-L",
    "local",
    multiple=True,
    metavar="[LOCAL_PORT:]HOST:PORT",
    help="Listen on LOCAL_PORT; connect to HOST:PORT from the target (repeatable).",
)
@click.option(
    "-R",
    "remote",
    multiple=True,
    metavar="REMOTE_PORT[:LOCAL_PORT]",
    help="Mirror (default) or steal the target's incoming traffic on REMOTE_PORT to "
    "localhost:LOCAL_PORT (repeatable; see --mirror, --steal, --http-*).",
)
def port_forward(local: tuple[str, ...], remote: tuple[str, ...], **opts: Any) -> None:
    """Forward local ports into the target's network (-L), and the target's incoming
    traffic to local ports (-R)."""
    try:
        if not local and not remote:
            raise ForwardSpecError("give at least one -L or -R")
        config, progress = build_config(opts)
        # Incoming traffic is -R's alone: without it the agent needs no redirect (nor, when
        # it is an ephemeral one, NET_ADMIN); with it, mirror unless steal was asked.
        wanted = ("mirror" if config.incoming.mode == "off" else None) if remote else "off"
        if wanted is not None:
            config = config.model_copy(
                update={"incoming": config.incoming.model_copy(update={"mode": wanted})}
            )
        reverse = [parse_port_spec(spec) for spec in remote]
        if reverse and (config.target in (None, "targetless")):
            raise ForwardSpecError("-R needs a target (--target) whose traffic to receive")
        forwards = [parse_local_forward(spec) for spec in local]
        socks = bind_listeners(forwards)
    except (ConfigError, ForwardSpecError, PortSpecError, OSError) as exc:
        _fail(str(exc))
        return

    async def go() -> int:
        from tether.local.proxies.incoming import IncomingClient
        from tether.local.proxies.replicas import replicas_for

        try:
            async with open_session(config, progress) as session:
                incoming = IncomingClient(session.tunnel, config.incoming, progress, session.who)
                session.on_moved.append(incoming.resubscribe)
                replicas = replicas_for(session, incoming, start=False) if reverse else None
                try:
                    for spec in reverse:
                        await incoming.subscribe(spec.remote, spec.local)
                    if replicas is not None:
                        await replicas.sync()  # every Ready pod covered before we go on
                        replicas.start()
                    if forwards:
                        await serve_forwards(session.tunnel, forwards, socks, progress)
                    else:
                        progress.step("receiving; press Ctrl-C to stop")
                        await session.tunnel.wait_closed()
                finally:
                    await incoming.close()
                    if replicas is not None:
                        await replicas.close()
                why = session.tunnel.closed_because
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
@incoming_options
@click.option(
    "--port-map",
    multiple=True,
    metavar="REMOTE:LOCAL",
    help="Deliver the target's port REMOTE to local port LOCAL (repeatable).",
)
@click.option(
    "--incoming-port",
    multiple=True,
    type=int,
    metavar="PORT",
    help="Only mirror/steal these remote ports (default: every port the app listens on).",
)
@click.option(
    "--on-target-lost",
    type=click.Choice(["stop", "keep"]),
    default=None,
    help="When the target goes: stop the program and exit non-zero (default), or keep it "
    "running without the target (config: on_target_lost).",
)
@click.argument("command", nargs=-1, required=True, type=click.UNPROCESSED)
def exec_(command: tuple[str, ...], **opts: Any) -> None:
    """Run COMMAND locally in the target's context: its env, files, network, DNS, and with
    --mirror/--steal the traffic that reaches the target's ports it listens on."""
    from tether.local.exec.execute import run_exec

    try:
        config, progress = build_config(opts)
    except (ConfigError, PortSpecError) as exc:
        _fail(str(exc))
        return
    sys.exit(run_async(run_exec(config, list(command), progress), cancel_on_signals=False))


@main.command()
@click.option("-n", "--namespace", help="Namespace (default: the config's, else the context's).")
@click.option("--context", help="kubeconfig context.")
@click.option("--kubeconfig", help="kubeconfig file.")
@click.option("-o", "--output", type=click.Choice(["text", "json"]), default="text")
def ls(namespace: str | None, context: str | None, kubeconfig: str | None, output: str) -> None:
    """List targets: pods, deployments and statefulsets."""
    from tether.kube.client import connect
    from tether.kube.targets import list_targets

    try:
        # The cluster settings come from the same layers as every other command's.
        config, _ = build_config(
            {"namespace": namespace, "context": context, "kubeconfig": kubeconfig}
        )
    except ConfigError as exc:
        _fail(str(exc))
        return

    async def go() -> int:
        async with await connect(config.kubeconfig, config.context) as kube:
            targets = await list_targets(kube, config.namespace or kube.default_namespace)
        if output == "json":
            click.echo(json.dumps(targets, indent=2))
        else:
            for t in targets:
                click.echo(t)
        return 0

    sys.exit(run_async(go()))


@main.command()
@target_options
@click.option("-o", "--output", type=click.Choice(["text", "json"]), default="text")
def doctor(output: str, **opts: Any) -> None:
    """Check what a session needs (this machine, the API server, RBAC, the target, the agent
    image) without creating anything; exit 0 only when a session would start."""
    from tether.doctor.cluster import cluster_checks
    from tether.doctor.machine import machine_checks
    from tether.doctor.report import Check, report
    from tether.intercept.seccomp import probe_features
    from tether.kube.client import connect

    try:
        config, _ = build_config(opts)
    except (ConfigError, PortSpecError) as exc:
        _fail(str(exc))
        return

    async def go() -> int:
        checks = machine_checks(probe_features())
        try:
            kube = await connect(config.kubeconfig, config.context)
        except UserError as exc:
            checks.append(Check("cluster", "kubeconfig", "failing", str(exc), "fix the kubeconfig"))
        else:
            async with kube:
                namespace = config.namespace or kube.default_namespace
                incoming = config.incoming.mode != "off"
                checks += await cluster_checks(
                    kube, namespace, config.target, config.agent, incoming
                )
        found = report(checks)
        click.echo(found.to_json() if output == "json" else found.to_text(), nl=False)
        return 0 if found.session_would_start else 1

    sys.exit(run_async(go()))


@main.command()
def schema() -> None:
    """Print the JSON Schema of tether.toml / tether.yaml / tether.json (and of the user file),
    with each setting's TETHER_* variable as `x-env` and the precedence in its description."""
    click.echo(json.dumps(config_schema(), indent=2))


@main.command("config")
@target_options
@click.option("-o", "--output", type=click.Choice(["text", "json"]), default="text")
def show_config(output: str, **opts: Any) -> None:
    """Print the effective configuration and where each value came from.

    Flags given here are applied as on any other command.
    """
    try:
        explicit = opts.get("config_path")
        resolved = _resolve(opts)
    except (ConfigError, PortSpecError) as exc:
        _fail(str(exc))
        return
    if output == "json":
        data = {"config": resolved.config.model_dump(mode="json"), "sources": resolved.sources}
        click.echo(json.dumps(data, indent=2))
        return
    user = find_user_config()
    project = explicit if explicit is not None else find_config(Path.cwd())
    click.echo(f"# precedence, highest first: {' > '.join(PRECEDENCE)}")
    click.echo(f"# user file: {user or 'none in ' + str(user_config_dir())}")
    click.echo(f"# project file: {project or 'none'}")
    click.echo(format_sources(resolved), nl=False)


def format_sources(resolved: ResolvedConfig) -> str:
    """One line per setting: `key = value  # source`, keys aligned, values as JSON."""
    values = _flat_values(resolved.config.model_dump(mode="json"))
    width = max((len(key) for key in resolved.sources), default=0)
    lines = []
    for key, source in resolved.sources.items():
        value = json.dumps(values.get(key), ensure_ascii=False)
        lines.append(f"{key:<{width}} = {value}  # {source}")
    return "".join(line + "\n" for line in lines)


def _flat_values(data: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in data.items():
        dotted = prefix + key
        flat[dotted] = value
        if isinstance(value, dict):
            flat.update(_flat_values(value, dotted + "."))
    return flat
