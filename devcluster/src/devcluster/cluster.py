"""Bringing the devcluster up, down, and reporting on it.

`up` is idempotent: a healthy cluster is reused as is, except that a component whose command
line is not the one `up` would use now (started by an older devcluster) is restarted. Anything
less (a component gone, e.g. after every process was killed) is recovered by a clean restart:
our remaining processes are ended by PID, stale mounts, network namespaces and IPAM leases are
removed, then everything starts again on the same etcd data, certificates and imported images.
Either way the pod security policies (policy.py) are applied before any workload pod is made.
"""

import contextlib
import json
import logging
import os
import signal
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from devcluster import build, components, images, install, layout, network, pki, policy
from devcluster import restart as plan
from devcluster.errors import DevclusterError
from devcluster.procs import Daemon, file_lock, pids_of_exe
from devcluster.shell import run

log = logging.getLogger("devcluster")

ORDER = (
    "etcd",
    "containerd",
    "kube-apiserver",
    "kube-controller-manager",
    "kube-scheduler",
    "kubelet",
    "kube-proxy",
    "cluster-dns",
)
SHIM = "/usr/bin/containerd-shim-runc-v2"
_STALE_MOUNT_ROOTS = (
    str(layout.CONTAINERD_STATE) + "/",
    str(layout.KUBELET_ROOT / "pods") + "/",
    str(layout.CONTAINERD_ROOT / "io.containerd.grpc.v1.cri") + "/",
    "/run/netns/cni-",
    "/var/run/netns/cni-",
)


def daemons() -> list[Daemon]:
    """Every daemon in start order."""
    return [Daemon(name) for name in ORDER]


def _component(name: str) -> components.Component:
    return components.for_daemon(name, sys.executable)


def _wait(what: str, check: Callable[[], bool], timeout: float, daemon: Daemon | None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        if daemon is not None and daemon.pid() is None:
            raise DevclusterError(f"{daemon.name} exited: {daemon.log_tail()} ({daemon.logfile})")
        time.sleep(0.25)
    hint = f" (see {daemon.logfile})" if daemon else ""
    raise DevclusterError(f"{what} not ready after {timeout:.0f} s{hint}")


def _api_context() -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=str(layout.PKI / "ca.crt"))
    ctx.load_cert_chain(str(layout.PKI / "admin.crt"), str(layout.PKI / "admin.key"))
    return ctx


def api_get(path: str, timeout: float = 3.0) -> tuple[int, bytes]:
    """GET `path` from the API server as the admin; (status, body), status 0 if unreachable."""
    url = f"https://{layout.NODE_IP}:{layout.API_PORT}{path}"
    try:
        with urllib.request.urlopen(url, context=_api_context(), timeout=timeout) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()
    except (OSError, ssl.SSLError):
        return 0, b""


def _etcd_healthy() -> bool:
    try:
        url = f"http://127.0.0.1:{layout.ETCD_PORT}/health"
        with urllib.request.urlopen(url, timeout=2) as resp:
            return bool(json.loads(resp.read()).get("health") == "true")
    except (OSError, ValueError):
        return False


def _containerd_healthy() -> bool:
    argv = ["ctr", "--address", str(layout.CONTAINERD_SOCK), "--timeout", "2s", "version"]
    try:
        proc = subprocess.run(argv, capture_output=True, check=False, timeout=10)
    except subprocess.TimeoutExpired:
        return False
    return proc.returncode == 0


def _apiserver_healthy() -> bool:
    return api_get("/readyz")[0] == 200


def node_ready(since: float | None = None) -> bool:
    """Whether the node is registered and Ready, reported by a kubelet heartbeat at or after
    `since` (a Ready condition left in etcd by a killed kubelet says nothing)."""
    status, body = api_get(f"/api/v1/nodes/{layout.NODE_NAME}")
    return status == 200 and plan.node_ready(json.loads(body), since)


def stale_pods(since: float) -> list[str]:
    """Pods on the node whose status the restarted kubelet has not yet re-reported: a
    container not running since `since`, or not ready. Finished pods are ignored."""
    status, body = api_get(f"/api/v1/pods?fieldSelector=spec.nodeName%3D{layout.NODE_NAME}")
    if status != 200:
        return ["(pods unreadable)"]
    stale = []
    for pod in json.loads(body).get("items", []):
        meta, st = pod["metadata"], pod.get("status", {})
        if meta.get("deletionTimestamp") or st.get("phase") in ("Succeeded", "Failed"):
            continue
        statuses = st.get("containerStatuses") or []
        fresh = bool(statuses) and all(
            cs.get("ready")
            and "running" in cs.get("state", {})
            and plan.timestamp(cs["state"]["running"]["startedAt"]) >= since
            for cs in statuses
        )
        if not fresh:
            stale.append(f"{meta['namespace']}/{meta['name']}")
    return stale


def _default_sa_exists() -> bool:
    return api_get("/api/v1/namespaces/default/serviceaccounts/default")[0] == 200


def _dns_answers() -> bool:
    from dnslib import RCODE, DNSRecord

    try:
        reply = DNSRecord.parse(
            DNSRecord.question(f"kubernetes.default.svc.{layout.CLUSTER_DOMAIN}").send(
                str(layout.NODE_IP), layout.DNS_PORT, timeout=1.0
            )
        )
    except OSError:
        return False
    return bool(reply.header.rcode == RCODE.NOERROR and reply.rr)


HEALTH: dict[str, Callable[[], bool]] = {
    "etcd": _etcd_healthy,
    "containerd": _containerd_healthy,
    "kube-apiserver": _apiserver_healthy,
    "kubelet": node_ready,
    "cluster-dns": _dns_answers,
}


@dataclass(frozen=True)
class ComponentStatus:
    """One line of `devcluster status`."""

    name: str
    pid: int | None
    healthy: bool


def status() -> list[ComponentStatus]:
    """Each component's PID and health."""
    result = []
    for d in daemons():
        pid = d.pid()
        check = HEALTH.get(d.name)
        healthy = pid is not None and (check() if check else True)
        result.append(ComponentStatus(d.name, pid, healthy))
    return result


def _write_files(comp: components.Component) -> None:
    for path, text in comp.files.items():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)


def _start(name: str, timeout: float = 60.0) -> None:
    comp = _component(name)
    _write_files(comp)
    daemon = Daemon(name)
    pid = daemon.start(comp.argv)
    log.info("started %s (pid %d)", name, pid)
    check = HEALTH.get(name)
    if name == "kubelet":
        check = None  # Ready needs kube-proxy and DNS too; waited for at the end.
    if check is not None:
        _wait(name, check, timeout, daemon)


def _kubepods_pids() -> set[int]:
    pids: set[int] = set()
    for root in Path("/sys/fs/cgroup").glob("*/kubepods"):
        for procs in root.rglob("cgroup.procs"):
            with contextlib.suppress(OSError, ValueError):
                pids.update(int(x) for x in procs.read_text().split())
    return pids


def _shim_pids() -> list[int]:
    ours = []
    for pid in pids_of_exe(SHIM):
        with contextlib.suppress(OSError):
            if b"k8s.io" in Path(f"/proc/{pid}/cmdline").read_bytes():
                ours.append(pid)
    return ours


def _kill_workloads() -> None:
    """SIGKILL every container process (they all live in kubepods cgroups) and our shims."""
    for _ in range(50):
        pids = _kubepods_pids() | set(_shim_pids())
        if not pids:
            return
        for pid in pids:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)
        time.sleep(0.1)
    raise DevclusterError(f"container processes survive SIGKILL: {sorted(_kubepods_pids())}")


def stale_mounts() -> list[str]:
    """Mount points the cluster's containers, pods and netns left behind."""
    mounts = []
    with open("/proc/self/mountinfo") as f:
        for line in f:
            point = line.split()[4].replace("\\040", " ")
            if point.startswith(_STALE_MOUNT_ROOTS):
                mounts.append(point)
    return mounts


def leftover_netns() -> list[str]:
    """Pod network namespaces (CNI's `cni-*`) still present."""
    found = []
    for d in {Path("/run/netns"), layout.NETNS_DIR}:
        if d.is_dir():
            found += [str(p) for p in d.glob("cni-*")]
    return sorted(set(found))


def _unmount_hidden() -> None:
    """Remove pod netns mounts hidden under a bind mount that someone stacked on /run/netns
    after they were made (see network.share_netns_dir): lift the stack, then unmount them."""
    netns_dir = Path("/run/netns")
    for _ in range(8):
        if not network.is_mountpoint(netns_dir):
            break
        run(["umount", "-l", str(netns_dir)], check=False)
    for point in sorted(set(stale_mounts()), key=len, reverse=True):
        run(["umount", "-l", point], check=False)
        with contextlib.suppress(OSError):
            Path(point).unlink()


def _cleanup_runtime() -> None:
    _kill_workloads()
    # Deepest first, lazily: a busy mount must not stop recovery.
    for point in sorted(set(stale_mounts()), key=len, reverse=True):
        run(["umount", "-l", point], check=False)
    for ns in leftover_netns():
        run(["ip", "netns", "delete", Path(ns).name], check=False)
        with contextlib.suppress(OSError):
            Path(ns).unlink()
    if stale_mounts():
        _unmount_hidden()
    # Release the dead pods' addresses but keep host-local's last_reserved_ip, so new pods get
    # fresh addresses: Endpoints still naming an old pod IP must not reach a different pod.
    leases = layout.CNI_STATE / "networks" / layout.CNI_NETWORK
    if leases.is_dir():
        for lease in leases.iterdir():
            if network.in_guard(lease.name):
                lease.unlink(missing_ok=True)
    for result in (layout.CNI_STATE / "results").glob(f"{layout.CNI_NETWORK}-*"):
        result.unlink(missing_ok=True)


def _remove_kubepods_cgroups() -> None:
    for root in Path("/sys/fs/cgroup").glob("*/kubepods"):
        for d in sorted((p for p in root.rglob("*") if p.is_dir()), key=lambda p: -len(p.parts)):
            with contextlib.suppress(OSError):
                d.rmdir()
        with contextlib.suppress(OSError):
            root.rmdir()


def stop_all() -> None:
    """End every daemon (reverse order) and every container, and clear runtime leftovers."""
    for d in reversed(daemons()):
        if d.pid() is not None:
            log.info("stopping %s", d.name)
        d.stop()
    _cleanup_runtime()


def _healthy_for_reuse() -> bool:
    st = status()
    return all(s.healthy for s in st)


def stale_daemons(
    running: Mapping[str, list[str] | None], wanted: Mapping[str, list[str]]
) -> list[str]:
    """The daemons (in start order) whose running command line, when known, is not the one
    `up` would start them with now: a cluster started by an older devcluster must not be
    reused with stale flags. Only restartable daemons count (cluster-dns's command line
    names whichever interpreter ran `up`)."""
    restartable = {t.daemon for t in plan.TARGETS}
    return [
        name
        for name in ORDER
        if name in restartable
        and name in wanted
        and running.get(name) is not None
        and running.get(name) != wanted[name]
    ]


def _restart_stale() -> None:
    running = {}
    for d in daemons():
        pid = d.pid()
        running[d.name] = _cmdline(pid) if pid is not None else None
    wanted = {name: _component(name).argv for name in ORDER}
    for name in stale_daemons(running, wanted):
        _restart(plan.choose(name), timeout=120.0, grace=10.0)


def _kubectl(*args: str, input: bytes | None = None) -> str:
    env = {**os.environ, "KUBECONFIG": str(layout.ADMIN_KUBECONFIG)}
    proc = run([str(layout.K8S_BIN / "kubectl"), *args], env=env, input=input, timeout=120)
    return proc.stdout.decode()


def _dns_addon() -> bytes:
    # A selector-less Service whose Endpoints name the node's DNS server: the cluster DNS runs
    # on the node (Debian has no CoreDNS), reached through kube-proxy like any Service.
    ports = [
        {"name": "dns", "port": 53, "protocol": "UDP", "targetPort": layout.DNS_PORT},
        {"name": "dns-tcp", "port": 53, "protocol": "TCP", "targetPort": layout.DNS_PORT},
    ]
    svc = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {
            "name": "kube-dns",
            "namespace": "kube-system",
            "labels": {"k8s-app": "kube-dns"},
        },
        "spec": {"clusterIP": str(layout.DNS_SERVICE_IP), "ports": ports},
    }
    eps = {
        "apiVersion": "v1",
        "kind": "Endpoints",
        "metadata": {"name": "kube-dns", "namespace": "kube-system"},
        "subsets": [
            {
                "addresses": [{"ip": str(layout.NODE_IP)}],
                "ports": [
                    {"name": p["name"], "port": layout.DNS_PORT, "protocol": p["protocol"]}
                    for p in ports
                ],
            }
        ],
    }
    return json.dumps({"apiVersion": "v1", "kind": "List", "items": [svc, eps]}).encode()


def _apply_policies() -> None:
    # Before any workload pod: with PodSecurityPolicy admission on, a pod no policy admits is
    # refused (see policy.py).
    manifest = {"apiVersion": "v1", "kind": "List", "items": policy.manifests()}
    _kubectl("apply", "-f", "-", input=json.dumps(manifest).encode())


def _wait_workloads(since: float, timeout: float = 120) -> None:
    """After a restart, wait until every pod on the node runs again and is ready, so callers
    do not act on the pods' pre-restart status (their old IPs in Endpoints, say)."""
    deadline = time.monotonic() + timeout
    stale = stale_pods(since)
    while stale and time.monotonic() < deadline:
        time.sleep(0.5)
        stale = stale_pods(since)
    if stale:
        log.warning("pods not back after %.0f s: %s", timeout, ", ".join(stale[:5]))


@contextlib.contextmanager
def _exclusive() -> Iterator[None]:
    """One `up`/`down` at a time on this machine: two recoveries racing would end each
    other's processes."""
    with file_lock(layout.STATE / "devcluster.lock"):
        yield


def up(project: Path | None) -> float:
    """Bring the cluster up (or reuse it); return the seconds it took."""
    with _exclusive():
        return _up(project)


def prepare() -> None:
    """Install what the cluster needs and build Kubernetes (first run): everything `up` does
    before it starts a process. Stops in one line, before the build, if a program is missing."""
    install.ensure_packages(need_source=not build.cached())
    install.preflight()
    build.ensure_binaries()


def _up(project: Path | None) -> float:
    t0 = time.monotonic()
    prepare()
    pki.ensure_pki()
    if _healthy_for_reuse():
        log.info("cluster already running and healthy: reusing it")
        _apply_policies()
        _restart_stale()
    else:
        stop_all()
        # Seconds are the granularity of Kubernetes timestamps.
        restarted = float(int(time.time()))
        network.setup()
        layout.CNI_CONF_DIR.mkdir(parents=True, exist_ok=True)
        (layout.CNI_CONF_DIR / "10-tdc-pods.conflist").write_text(
            json.dumps(components.cni_config(), indent=2)
        )
        for name in ("etcd", "containerd"):
            _start(name)
        images.build_base_images()
        _start("kube-apiserver", timeout=90)
        _apply_policies()
        _kubectl("apply", "-f", "-", input=_dns_addon())
        for name in ORDER[3:]:
            _start(name)
        _wait("node", lambda: node_ready(since=restarted), 120, Daemon("kubelet"))
        _wait("default service account", _default_sa_exists, 60, None)
        _wait_workloads(restarted)
    # Guards again: kube-proxy inserts its own FORWARD rules on start; ours must stay first.
    network.install_guards()
    if project is not None:
        images.build_agent_image(project)
    return time.monotonic() - t0


def down(purge: bool = False) -> None:
    """Stop everything and remove netns, mounts, bridges, routes and chains."""
    with _exclusive():
        _down(purge)


def _down(purge: bool) -> None:
    stop_all()
    network.teardown()
    _remove_kubepods_cgroups()
    if purge:
        import shutil

        shutil.rmtree(layout.STATE, ignore_errors=True)


def leftovers() -> dict[str, list[str]]:
    """What `down` should have removed, if anything is still there."""
    procs = [d.name for d in daemons() if d.pid() is not None]
    procs += [f"shim {p}" for p in _shim_pids()]
    procs += [f"container pid {p}" for p in sorted(_kubepods_pids())]
    return {
        "processes": procs,
        "netns": leftover_netns(),
        "mounts": stale_mounts(),
        "links": network.leftover_links(),
        "chains": network.leftover_chains(),
        "routes": [str(layout.GUARD_NET)] if network.route_present() else [],
    }


def _http_ok(url: str, context: ssl.SSLContext | None = None) -> bool:
    try:
        with urllib.request.urlopen(url, context=context, timeout=2.0) as resp:
            return bool(resp.status == 200)
    except (OSError, ssl.SSLError):
        return False


def _loopback_tls() -> ssl.SSLContext:
    # The scheduler and controller-manager serve healthz with a self-signed certificate they
    # make at start-up; the probe sends nothing secret to a loopback port, so skip verification.
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    return ctx


def _node_lease_renewed(since: float) -> bool:
    lease = f"/apis/coordination.k8s.io/v1/namespaces/kube-node-lease/leases/{layout.NODE_NAME}"
    status, body = api_get(lease)
    return status == 200 and plan.lease_renewed(json.loads(body), layout.NODE_NAME, since)


def _kubelet_reaches_runtime() -> bool:
    # The summary's CPU and memory come from CRI calls made for this request (no cache), so a
    # 200 means the kubelet's connection to containerd works again.
    path = f"/api/v1/nodes/{layout.NODE_NAME}/proxy/stats/summary?only_cpu_and_memory=true"
    return api_get(path)[0] == 200


def _node_pods() -> list[dict[str, Any]] | None:
    """The pods bound to the node, as the API server has them; None if it does not answer."""
    status, body = api_get(f"/api/v1/pods?fieldSelector=spec.nodeName%3D{layout.NODE_NAME}")
    return list(json.loads(body).get("items") or []) if status == 200 else None


def _pods_back(before: set[str], since: float, shown: list[str]) -> bool:
    pods = _node_pods()
    # The kubelet's own /pods: the pods its sync loop has admitted.
    status, body = api_get(f"/api/v1/nodes/{layout.NODE_NAME}/proxy/pods")
    if pods is None or status != 200:
        return False
    admitted = {p["metadata"]["uid"] for p in json.loads(body).get("items") or []}
    waiting = plan.pods_not_back(before, pods, admitted, since, time.time())
    if waiting and waiting != shown:
        log.debug("pods not back yet: %s", ", ".join(waiting))
    shown[:] = waiting
    return not waiting


def _probes(since: float, ready_before: set[str]) -> dict[plan.Check, Callable[[], bool]]:
    """Every readiness probe; `since` is when the new process was started (epoch s), and
    `ready_before` the UIDs of the pods that were Ready before the restart."""
    local = "127.0.0.1"
    shown: list[str] = []
    return {
        plan.Check.ETCD_HEALTH: _etcd_healthy,
        plan.Check.APISERVER_READYZ: _apiserver_healthy,
        plan.Check.CONTAINERD_VERSION: _containerd_healthy,
        plan.Check.KUBELET_HEALTHZ: lambda: _http_ok(
            f"http://{local}:{layout.KUBELET_HEALTHZ_PORT}/healthz"
        ),
        plan.Check.NODE_LEASE_RENEWED: lambda: _node_lease_renewed(since),
        plan.Check.NODE_READY_REPORTED: lambda: node_ready(since),
        plan.Check.PODS_READY: lambda: _pods_back(ready_before, since, shown),
        plan.Check.KUBELET_RUNTIME: _kubelet_reaches_runtime,
        plan.Check.NODE_READY: node_ready,
        plan.Check.SCHEDULER_HEALTHZ: lambda: _http_ok(
            f"https://{local}:{layout.SCHEDULER_PORT}/healthz", _loopback_tls()
        ),
        plan.Check.CONTROLLER_MANAGER_HEALTHZ: lambda: _http_ok(
            f"https://{local}:{layout.CONTROLLER_MANAGER_PORT}/healthz", _loopback_tls()
        ),
        plan.Check.KUBE_PROXY_HEALTHZ: lambda: _http_ok(
            f"http://{local}:{layout.KUBE_PROXY_HEALTHZ_PORT}/healthz"
        ),
    }


@dataclass(frozen=True)
class Restarted:
    """What `restart` did: `down` is SIGTERM until the new process was started, `ready` that
    start until every readiness check passed (seconds)."""

    name: str
    old_pid: int
    pid: int
    down: float
    ready: float


def restart(word: str, timeout: float = 120.0, grace: float = 10.0) -> Restarted:
    """Restart one running component as a real cluster would see it die and come back: SIGTERM
    (SIGKILL after `grace` s), start it again exactly as `up` does (command line, environment,
    log, PID file), and wait up to `timeout` s until its readiness checks pass."""
    target = plan.choose(word)
    if timeout <= 0 or grace < 0:
        raise DevclusterError("--timeout must be positive and --grace not negative")
    # Under the up/down lock: an `up` meanwhile would find the cluster unhealthy and restart all.
    with _exclusive():
        return _restart(target, timeout, grace)


def _cmdline(pid: int) -> list[str] | None:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return None
    return [a.decode(errors="replace") for a in raw.split(b"\0")[:-1]]


def _restart(target: plan.Target, timeout: float, grace: float) -> Restarted:
    daemon = Daemon(target.daemon)
    old = daemon.pid()
    if old is None:
        raise DevclusterError(f"{target.daemon} is not running: start the cluster with `up`")
    comp = _component(target.daemon)
    running = _cmdline(old)
    if running is not None and running != comp.argv:
        # An older devcluster started it: the restart uses what `up` would use now.
        log.warning("%s ran with another command line; restarting it with up's", target.daemon)
    shims = set(_shim_pids()) if target.daemon in plan.KEEP_CONTAINERS else set()
    ready_before = (
        plan.ready_pods(_node_pods() or []) if plan.Check.PODS_READY in target.checks else set()
    )

    t0 = time.monotonic()
    daemon.stop(timeout=grace)
    log.debug("stopped %s (pid %d) in %.1f s", target.daemon, old, time.monotonic() - t0)
    since = time.time()
    try:
        _write_files(comp)
        pid = daemon.start(comp.argv)
    except OSError as exc:
        raise DevclusterError(f"{target.daemon} stopped but cannot start again: {exc}") from exc
    t1 = time.monotonic()
    log.debug("started %s (pid %d)", target.daemon, pid)

    probes = _probes(since, ready_before)
    deadline = t1 + timeout
    waiting_for = None
    while (pending := plan.first_pending(target.checks, lambda c: probes[c]())) is not None:
        if pending != waiting_for:
            log.debug("%.1f s: waiting for %s", time.monotonic() - t1, pending.value)
            waiting_for = pending
        if daemon.pid() is None:
            raise DevclusterError(f"{target.daemon} exited: {daemon.log_tail()} ({daemon.logfile})")
        if time.monotonic() >= deadline:
            raise DevclusterError(
                f"{target.name} restarted but not ready after {timeout:g} s: waiting for "
                f"{pending.value} (see {daemon.logfile})"
            )
        time.sleep(0.2)
    t2 = time.monotonic()

    if target.daemon in plan.TOUCH_IPTABLES and not network.guards_first():
        network.install_guards()
    lost = sorted(shims - set(_shim_pids()))
    if lost:
        # Shims hold the containers; one gone means its pod's containers died with the restart.
        raise DevclusterError(
            f"{target.name} restart ended {len(lost)} of {len(shims)} container shims "
            f"(pids {', '.join(map(str, lost))}): containers did not survive it"
        )
    return Restarted(target.name, old, pid, down=t1 - t0, ready=t2 - t1)
