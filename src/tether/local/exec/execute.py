"""`tether exec`: run a local command with the target's env, files, network and DNS.

Order matters: the session and everything the supervisor needs (remote env, hostname, the
files tether serves, the loopback proxy) exist before the child is forked, because from its
exec on every trapped syscall waits for the supervisor.
"""

import asyncio
import contextlib
import functools
import os
import shutil
import signal
import stat
import sys
import tempfile
from pathlib import Path

from tether.config import TetherConfig
from tether.intercept.launcher import forward_signals, spawn, wait_status_to_exit_code
from tether.intercept.seccomp import Syscall, require_kernel
from tether.kube.targets import ResolvedTarget
from tether.local.exec.remote_fs import RemoteFiles
from tether.local.exec.supervisor import Supervisor
from tether.local.exec.syscalls import ALLOW_IF, TRAPPED, WRITE_TRAPPED
from tether.local.policy.environment import compose_env, env_changes
from tether.local.policy.names import NameCache
from tether.local.policy.rules import DnsRules, FileRules, NetRules, PathKind, program_dirs
from tether.local.policy.served import nameservers_in, nsswitch_for_process, resolv_conf_for_process
from tether.local.proxies.dns_proxy import DnsProxy
from tether.local.proxies.incoming import IncomingClient
from tether.local.proxies.outgoing import OutgoingProxy, UdpProxy
from tether.local.proxies.replicas import Replicas, replicas_for
from tether.local.session.progress import Progress
from tether.local.session.session import SessionError, open_session
from tether.protocol.messages import GetEnv, GetHostname
from tether.tunnel import RemoteOpError, Tunnel, TunnelClosedError


def _local_text(path: str) -> str:
    try:
        return Path(path).read_text()
    except OSError:
        return ""


async def _wait_exit(pid: int) -> int:
    """Wait for the child without a SIGCHLD watcher: a pidfd turns readable when it exits."""
    loop = asyncio.get_running_loop()
    pidfd = os.pidfd_open(pid)
    done: asyncio.Future[None] = loop.create_future()

    def exited() -> None:
        if not done.done():
            done.set_result(None)

    loop.add_reader(pidfd, exited)
    try:
        await done
    finally:
        loop.remove_reader(pidfd)
        os.close(pidfd)
    # The pidfd said it exited: this waitpid does not block.
    _, status = os.waitpid(pid, 0)  # noqa: ASYNC222
    code: int = wait_status_to_exit_code(status)
    return code


def _kill_tree(pid: int) -> None:
    """SIGKILL `pid` and every descendant (used only if the supervisor failed)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        children.setdefault(ppid, []).append(int(entry.name))
    todo = [pid]
    while todo:
        current = todo.pop()
        todo.extend(children.get(current, []))
        with contextlib.suppress(ProcessLookupError):
            os.kill(current, signal.SIGKILL)


class TargetLost:
    """Watches the tunnel while the program runs: when the target is lost, stops the program
    (the default: nothing should run on without its context) or says it runs on without it."""

    def __init__(self, pid: int, keep: bool, grace: float, progress: Progress) -> None:
        self.pid = pid
        self.keep = keep
        self.grace = grace
        self.progress = progress
        self.why: str | None = None
        """Why the target was lost, once it was (then the program was stopped unless kept)."""

    async def watch(self, tunnel: Tunnel) -> None:
        """Wait for the tunnel to end, then act (cancelled when the program ends first)."""
        why = str(await tunnel.wait_closed() or "tunnel closed")
        self.why = why
        if self.keep:
            # The user asked for it: the program goes on, but must know why its remote files,
            # connections and incoming traffic stopped working.
            self.progress.warn(f"lost the agent ({why}); the program runs on without the target")
            return
        self.progress.warn(f"lost the agent ({why}); stopping the program")
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.pid, signal.SIGTERM)
        await asyncio.sleep(self.grace)
        _kill_tree(self.pid)

    def error(self) -> SessionError | None:
        """The one-line error a stopped program's run ends with, if it was stopped."""
        if self.why is None or self.keep:
            return None
        return SessionError(
            f"lost the target ({self.why}); the program was stopped (--on-target-lost keep"
            " lets it run on)"
        )


def _path_kind(path: str) -> PathKind:
    try:
        mode = Path(path).stat().st_mode
    except (OSError, ValueError):
        return None
    return "dir" if stat.S_ISDIR(mode) else "file"


async def _compare_env(
    tunnel: Tunnel,
    config: TetherConfig,
    had: dict[str, str],
    progress: Progress,
    target: ResolvedTarget,
) -> None:
    """The session moved to another pod: say which of its variables differ from what the
    program got (a running program's environment cannot change)."""
    try:
        now = (await tunnel.call(GetEnv(config.env.include, config.env.exclude))).env
    except (RemoteOpError, TunnelClosedError, TimeoutError):
        return
    changed = env_changes(had, now)
    if changed:
        progress.warn(
            f"pod {target.pod_name}'s environment differs from what the program got:"
            f" {', '.join(changed)} (the program keeps its own)"
        )


async def run_exec(config: TetherConfig, argv: list[str], progress: Progress) -> int:
    """Run `argv` in the target's context; return its exit status (127 if not found)."""
    require_kernel()
    local_env = dict(os.environ)
    executable = shutil.which(argv[0], path=local_env.get("PATH")) or argv[0]
    cwd, home = str(Path.cwd()), str(Path.home())
    executable = str(Path(cwd, executable))
    dns_rules = DnsRules(config.network, fs_mode=config.fs.mode)
    async with open_session(config, progress) as session:
        tunnel = session.tunnel
        remote_env = (await tunnel.call(GetEnv(config.env.include, config.env.exclude))).env
        hostname = (await tunnel.call(GetHostname())).hostname
        try:
            pod_resolv = await RemoteFiles(tunnel).read_text("/etc/resolv.conf")
        except RemoteOpError:
            pod_resolv = ""
        served: dict[str, bytes] = {}
        if dns_rules.through_pod:
            resolv = resolv_conf_for_process(pod_resolv)
            served["/etc/resolv.conf"] = resolv.encode()
            served["/etc/nsswitch.conf"] = nsswitch_for_process(
                _local_text("/etc/nsswitch.conf")
            ).encode()
        else:
            resolv = _local_text("/etc/resolv.conf")
        env = compose_env(local_env, remote_env, config.env.override)
        files = FileRules(
            config.fs,
            cwd=cwd,
            home=home,
            executable=executable,
            temp_dirs=[tempfile.gettempdir()],
            program_dirs=program_dirs(argv, env, cwd=cwd, kind=_path_kind),
            remote_dns_files=dns_rules.through_pod,
        )
        proxy = OutgoingProxy(progress)
        await proxy.start()
        udp = UdpProxy(progress)
        await udp.start()
        # Every query the process sends to a nameserver goes through the DNS proxy, which
        # resolves each name on the side DnsRules picks and learns the names behind each
        # address for the outgoing name filters.
        names = NameCache()
        pod_nameservers = nameservers_in(pod_resolv)
        dns_proxy = DnsProxy(
            tunnel,
            dns_rules,
            progress,
            names=names,
            pod_nameserver=pod_nameservers[0] if pod_nameservers else None,
        )
        await dns_proxy.start()
        nameservers = frozenset(nameservers_in(resolv))
        loop = asyncio.get_running_loop()
        remote_writes = config.fs.mode == "write" or bool(config.fs.read_write)
        trapped = (*TRAPPED, *WRITE_TRAPPED) if remote_writes else TRAPPED
        launch = spawn(argv, env, trapped, allow_if=ALLOW_IF)
        supervisor = Supervisor(
            launch.listener,
            tunnel,
            files,
            NetRules(config.network),
            proxy,
            udp,
            progress,
            hostname=hostname,
            served=served,
            dns_proxy=dns_proxy,
            nameservers=nameservers,
            names=names,
            pod_ip=session.target.pod_ip if session.target else None,
        )
        supervisor.on_fatal = lambda: _kill_tree(launch.pid)
        incoming: IncomingClient | None = None
        replicas: Replicas | None = None
        if config.incoming.mode != "off":
            incoming = IncomingClient(tunnel, config.incoming, progress, session.who)
            session.on_moved.append(incoming.resubscribe)
            replicas = replicas_for(session, incoming)
            supervisor.on_listen = incoming.subscribe_soon
        session.on_moved.append(
            functools.partial(_compare_env, tunnel, config, remote_env, progress)
        )
        supervisor.attach(loop)
        uninstall = forward_signals(launch.pid, loop)
        progress.detail(f"started {argv[0]} (pid {launch.pid})")
        lost = TargetLost(
            launch.pid, config.on_target_lost == "keep", config.exec_stop_grace, progress
        )
        watch = asyncio.ensure_future(lost.watch(tunnel))
        try:
            code = await _wait_exit(launch.pid)
        except BaseException:
            _kill_tree(launch.pid)
            raise
        finally:
            watch.cancel()
            uninstall()
            supervisor.detach(loop)
            if incoming is not None:
                await incoming.close()
            if replicas is not None:
                await replicas.close()
            launch.listener.close()
            await supervisor.flush_writes()
            supervisor.cleanup()
            await proxy.close()
            await udp.close()
            await dns_proxy.close()
        error = launch.exec_error()
        if error is not None:
            print(error, file=sys.stderr, flush=True)
        if supervisor.fatal:
            progress.warn(f"the interceptor failed ({supervisor.failure}); the process was ended")
        if supervisor.internal_errors:
            # The first one was shown when it happened.
            progress.detail(f"{supervisor.internal_errors} internal errors in the interceptor")
        counts = ", ".join(f"{Syscall(nr).name} {n}" for nr, n in supervisor.by_nr.most_common())
        progress.detail(f"{supervisor.count} syscalls intercepted ({counts})")
        stopped = lost.error()
        if stopped is not None:
            raise stopped
        return code
