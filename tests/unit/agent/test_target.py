"""Unit tests for tether.agent.target: container PID lookup in fake and real /proc trees."""

from __future__ import annotations

import os
import secrets
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tether.agent.target import Target, TargetNotFound, find_container_pid, find_pod_pid

CID = "3f0a9c1d2e4b5a6978877665544332211ffeeddccbbaa99887766554433221100"
OTHER = "aa" * 32
POD = "poda36de71d-e32e-4328-9515-8c5b88f87ef3"


def add_proc(proc: Path, pid: int, cgroup: str, start: int | None = None) -> None:
    d = proc / str(pid)
    d.mkdir(parents=True)
    (d / "cgroup").write_text(cgroup)
    if start is not None:
        # Field 2 has spaces and parentheses on purpose: parsing must split after the last ")".
        fields = ["S", *["0"] * 18, str(start), "0"]
        (d / "stat").write_text(f"{pid} (a (weird) name) {' '.join(fields)}\n")


def v1(path: str) -> str:
    controllers = ["name=systemd", "pids", "memory", "cpu,cpuacct"]
    return "".join(f"{i}:{c}:{path}\n" for i, c in enumerate(controllers, 1)) + "0::/\n"


def v2(path: str) -> str:
    return f"0::{path}\n"


LAYOUTS = {
    "containerd cgroupfs v1": (f"containerd://{CID}", v1(f"/kubepods/besteffort/{POD}/{CID}")),
    "containerd cgroupfs v2": (f"containerd://{CID}", v2(f"/kubepods/burstable/{POD}/{CID}")),
    "containerd systemd v2": (
        f"containerd://{CID}",
        v2(
            "/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod1.slice/"
            f"cri-containerd-{CID}.scope"
        ),
    ),
    "containerd systemd v1": (
        CID,
        v1(f"/kubepods.slice/kubepods-pod1.slice/cri-containerd-{CID}.scope"),
    ),
    "cri-o systemd v2": (
        f"cri-o://{CID}",
        v2(f"/kubepods.slice/kubepods-pod1.slice/crio-{CID}.scope"),
    ),
    "cri-o cgroupfs v1": (f"cri-o://{CID}", v1(f"/kubepods/{POD}/crio-{CID}")),
    "docker systemd v2": (f"docker://{CID}", v2(f"/system.slice/docker-{CID}.scope")),
    "docker cgroupfs v1": (f"docker://{CID}", v1(f"/docker/{CID}")),
    "cgroup namespace v2": (f"containerd://{CID}", v2(f"/../../{POD}/{CID}")),
    # Shapes from modern nodes (cgroup v2, systemd driver), as /proc/PID/cgroup shows them.
    "cgroup namespace systemd v2": (
        f"containerd://{CID}",
        v2(f"/../../kubepods-besteffort-pod1.slice/cri-containerd-{CID}.scope"),
    ),
    "cri-o systemd v2, nested container cgroup": (
        f"cri-o://{CID}",
        v2(
            "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod1.slice/"
            f"crio-{CID}.scope/container"
        ),
    ),
    "cri-dockerd systemd v2": (
        f"docker://{CID}",
        v2(
            "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod1.slice/"
            f"docker-{CID}.scope"
        ),
    ),
    "cri-dockerd cgroupfs v1": (f"docker://{CID}", v1(f"/kubepods/burstable/{POD}/{CID}")),
}


@pytest.mark.parametrize("layout", LAYOUTS)
def test_finds_the_container_in_every_layout(tmp_path: Path, layout: str) -> None:
    container_id, cgroup = LAYOUTS[layout]
    add_proc(tmp_path, 1, v1("/"))
    add_proc(tmp_path, 57, cgroup.replace(CID, OTHER))
    add_proc(tmp_path, 120, cgroup)
    add_proc(tmp_path, 135, cgroup)
    (tmp_path / "self").mkdir()  # non-numeric entries are skipped
    assert find_container_pid(container_id, tmp_path) == 120


def test_earliest_started_wins_over_lowest_pid(tmp_path: Path) -> None:
    # PIDs wrapped: an exec'd shell got a lower PID than the container's init.
    cgroup = v2(f"/kubepods/{POD}/{CID}")
    add_proc(tmp_path, 9000, cgroup, start=1000)
    add_proc(tmp_path, 12, cgroup, start=5000)
    assert find_container_pid(CID, tmp_path) == 9000


def test_conmon_and_prefixes_of_the_id_do_not_match(tmp_path: Path) -> None:
    # CRI-O's monitor runs in a scope of its own named after the container: never the target
    # (it lives in the host's network namespace).
    add_proc(tmp_path, 10, v2(f"/kubepods.slice/crio-conmon-{CID}.scope"))
    add_proc(tmp_path, 9, v2(f"/kubepods.slice/kubepods-pod1.slice/crio-conmon-{CID}.scope"))
    add_proc(tmp_path, 11, v2(f"/kubepods/{POD}/{CID}extra"))
    add_proc(tmp_path, 12, v2(f"/kubepods/{POD}/{CID[:12]}"))
    with pytest.raises(TargetNotFound, match="no process of container") as err:
        find_container_pid(f"cri-o://{CID}", tmp_path)
    assert "\n" not in str(err.value)


def test_a_process_that_vanished_is_skipped(tmp_path: Path) -> None:
    (tmp_path / "5").mkdir()  # no cgroup file: exited while we scanned
    add_proc(tmp_path, 6, v2(f"/{CID}"))
    assert find_container_pid(CID, tmp_path) == 6


@pytest.mark.parametrize("bad", ["", "containerd://", "a/b", "containerd://../x"])
def test_malformed_ids_are_rejected(tmp_path: Path, bad: str) -> None:
    with pytest.raises(ValueError, match="not a container ID"):
        find_container_pid(bad, tmp_path)


def test_target_paths(tmp_path: Path) -> None:
    assert Target(42).root == Path("/proc/42/root")
    assert Target(42).netns_path == Path("/proc/42/ns/net")
    assert Target(None).root == Path("/")
    assert Target(None).netns_path is None
    assert Target.find(None) == Target(None)
    add_proc(tmp_path, 7, v2(f"/{CID}"))
    assert Target.find(f"containerd://{CID}", tmp_path) == Target(7)


def _cgroup_hierarchy() -> Path | None:
    for base in (Path("/sys/fs/cgroup/pids"), Path("/sys/fs/cgroup")):
        if (base / "cgroup.procs").exists():
            return base
    return None


@pytest.fixture
def scoped_child() -> Iterator[tuple[str, int]]:
    """A child process alone in a new cgroup named like a containerd systemd scope."""
    base = _cgroup_hierarchy()
    if os.geteuid() != 0 or base is None:
        pytest.skip("needs root and a writable cgroup hierarchy")
    cid = secrets.token_hex(32)
    group = base / f"cri-containerd-{cid}.scope"
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        group.mkdir()
        (group / "cgroup.procs").write_text(str(child.pid))
        yield cid, child.pid
    finally:
        child.kill()
        child.wait()
        for _ in range(50):  # the cgroup stays busy for a moment after its last process
            try:
                group.rmdir()
                break
            except FileNotFoundError:
                break
            except OSError:
                time.sleep(0.02)


@pytest.mark.root
def test_finds_a_real_process_by_its_cgroup(scoped_child: tuple[str, int]) -> None:
    cid, pid = scoped_child
    assert find_container_pid(f"containerd://{cid}") == pid
    with pytest.raises(TargetNotFound):
        find_container_pid(f"containerd://{secrets.token_hex(32)}")


def test_same_netns_compares_namespaces_not_pids() -> None:
    import os
    import subprocess
    import time

    from tether.agent.target import same_netns

    me = Target(os.getpid())
    child = subprocess.Popen(["sleep", "30"])
    other = subprocess.Popen(["unshare", "--net", "sleep", "30"])
    try:
        assert same_netns(me, Target(child.pid))
        deadline = 50
        # unshare execs sleep once the namespace exists: wait for that before comparing.
        while Path(f"/proc/{other.pid}/comm").read_text().strip() != "sleep" and deadline:
            deadline -= 1
            time.sleep(0.02)
        assert not same_netns(me, Target(other.pid))
        assert not same_netns(me, Target(None))
        assert same_netns(Target(None), Target(None))
    finally:
        for proc in (child, other):
            proc.kill()
            proc.wait()


def _fake_ns(proc: Path, pid: int, netns: str) -> None:
    d = proc / str(pid) / "ns"
    d.mkdir(parents=True, exist_ok=True)
    (d / "net").symlink_to(netns)  # as /proc shows it: a link to "net:[inode]"


@pytest.mark.parametrize(
    ("target_ns", "refused"),
    [("net:[4026532001]", False), ("net:[4026531840]", True), (None, True)],
)
def test_a_target_in_the_nodes_network_namespace_is_refused(
    tmp_path: Path, target_ns: str | None, refused: bool
) -> None:
    from tether.agent.target import host_network_refusal

    _fake_ns(tmp_path, 1, "net:[4026531840]")
    if target_ns is not None:
        _fake_ns(tmp_path, 77, target_ns)
    reason = host_network_refusal(Target(77), tmp_path)
    assert (reason is not None) == refused
    if target_ns == "net:[4026531840]":
        assert reason is not None and "hostNetwork" in reason
    assert host_network_refusal(Target(None), tmp_path) is None


def test_this_machines_own_processes_are_in_the_host_netns() -> None:
    from tether.agent.target import host_network_refusal

    # The real /proc: this test runs in PID 1's network namespace, as a hostNetwork pod does.
    try:
        same = Path("/proc/1/ns/net").readlink() == Path("/proc/self/ns/net").readlink()
    except PermissionError:
        pytest.skip("PID 1's namespaces are not readable here (no CAP_SYS_PTRACE over it)")
    if not same:
        pytest.skip("this test process is not in PID 1's network namespace")
    assert host_network_refusal(Target(os.getpid())) is not None


def test_only_lines_of_the_kernels_format_name_the_container(tmp_path: Path) -> None:
    # Found by fuzz/cgroup.py: a cgroup name may hold a line break (anything but "/" and NUL
    # is allowed), and what follows it is no "ID:CONTROLLERS:PATH" line of the kernel's; only
    # "\n" ends a line, so a "\r" in a name is a part of the path.
    add_proc(tmp_path, 7, v2(f"/kubepods/{POD}/x\n/{CID}"), start=1)
    add_proc(tmp_path, 11, v2(f"/kubepods/a\rb/{CID}"), start=3)
    add_proc(tmp_path, 9, v2(f"/kubepods/{POD}/{CID}"), start=5)
    assert find_container_pid(CID, tmp_path) == 11


def test_names_that_are_not_utf8_do_not_break_the_scan(tmp_path: Path) -> None:
    # Found by fuzz/cgroup.py: another process's cgroup path or command name in bytes that are
    # not UTF-8 raised UnicodeDecodeError (a ValueError: "malformed ID") out of the scan, or
    # made the container's init look unstartable (the latest), so a later process won.
    add_proc(tmp_path, 5, v2(f"/kubepods/{POD}/{OTHER}"))
    (tmp_path / "5" / "cgroup").write_bytes(b"0::/kubepods/\xff\xfe/x\n")
    add_proc(tmp_path, 30, v2(f"/kubepods/{POD}/{CID}"), start=900)
    add_proc(tmp_path, 20, v2(f"/kubepods/{POD}/{CID}"), start=100)
    stat = (tmp_path / "20" / "stat").read_bytes()
    (tmp_path / "20" / "stat").write_bytes(stat.replace(b"weird", b"caf\xe9"))
    assert find_container_pid(CID, tmp_path) == 20


UID = "a36de71d-e32e-4328-9515-8c5b88f87ef3"
SLICE = "kubepods-besteffort-poda36de71d_e32e_4328_9515_8c5b88f87ef3.slice"


@pytest.mark.parametrize(
    "layout",
    [
        v1(f"/kubepods/besteffort/pod{UID}/{{cid}}"),  # cgroupfs, v1 (the devcluster)
        v2(f"/kubepods/burstable/pod{UID}/{{cid}}"),  # cgroupfs, v2
        v2(f"/kubepods.slice/kubepods-besteffort.slice/{SLICE}/cri-containerd-{{cid}}.scope"),
        v2(f"/../../{SLICE}/cri-containerd-{{cid}}.scope"),  # inside a cgroup namespace
    ],
)
def test_a_pods_sandbox_is_its_first_process(tmp_path: Path, layout: str) -> None:
    add_proc(tmp_path, 300, layout.format(cid=CID), start=900)  # the app, started later
    add_proc(tmp_path, 250, layout.format(cid=OTHER), start=500)  # the pause container
    add_proc(tmp_path, 100, v1("/kubepods/besteffort/podother/" + OTHER), start=1)
    assert find_pod_pid(UID, tmp_path) == 250
    assert Target.find(None, tmp_path, pod_uid=UID).pid == 250


def test_a_pod_without_a_process_here_and_a_malformed_uid(tmp_path: Path) -> None:
    add_proc(tmp_path, 100, v1(f"/kubepods/besteffort/{POD}x/{CID}"), start=1)
    with pytest.raises(TargetNotFound, match=f"no process of pod {UID}"):
        find_pod_pid(UID, tmp_path)
    with pytest.raises(ValueError, match="not a pod UID"):
        find_pod_pid("../../etc", tmp_path)


@pytest.mark.parametrize(
    ("cap_eff", "refused"),
    [
        ("000001ffffffffff", False),  # root in a Job agent: everything
        ("00000000a80425fb", True),  # the runtime's default set: no NET_ADMIN
        ("0000000000001000", False),  # NET_ADMIN alone
        ("0000000000000000", True),
        ("zz", True),  # unreadable
    ],
)
def test_incoming_needs_net_admin(cap_eff: str, refused: bool) -> None:
    from tether.agent.target import capability_refusal

    status = f"Name:\tpython3\nCapInh:\t0000000000000000\nCapEff:\t{cap_eff}\n"
    reason = capability_refusal(status)
    assert (reason is not None) is refused
    if reason is not None:
        assert "NET_ADMIN" in reason or "capabilities" in reason
    assert capability_refusal("Name:\tx\n") is not None


def test_an_ephemeral_agent_targets_pid_1_of_the_shared_namespace(tmp_path: Path) -> None:
    from tether.agent.target import TargetNotFound

    (tmp_path / "1").mkdir()
    found = Target.find(None, tmp_path, in_pod=True, own_pid=42)
    assert found == Target(1, in_pod=True) and found.root == Path("/proc/1/root")
    with pytest.raises(TargetNotFound, match="targetContainerName"):
        Target.find(None, tmp_path, in_pod=True, own_pid=1)  # a namespace of its own
    (tmp_path / "1").rmdir()
    with pytest.raises(TargetNotFound, match="process namespace"):
        Target.find(None, tmp_path, in_pod=True, own_pid=42)


def test_in_the_pod_pid_1_is_the_target_not_the_node(tmp_path: Path) -> None:
    from tether.agent.target import host_network_refusal

    # Without the in-pod flag, sharing PID 1's namespace means the node's network.
    assert host_network_refusal(Target(1, in_pod=True), tmp_path) is None
