"""Fuzz how the agent finds a container's main process (tether.agent.target): the container
ID as Kubernetes reports it, and a fake /proc whose processes' `cgroup` and `stat` files
are built from the fuzz input (any bytes: cgroup and process names are not text).

Invariants:
- `_bare_id` refuses the ID (ValueError) or returns an ID that ends the input, matches the
  container ID syntax and holds no `/` or `:`;
- `find_container_pid` raises ValueError only for an ID `_bare_id` refuses; otherwise it
  returns a PID or raises TargetNotFound, and nothing else escapes;
- the PID returned is one whose cgroup file has a line `ID:CONTROLLERS:PATH` (the kernel's
  format, one per line) with a PATH component that names the container, and it is the one
  started first (lowest PID on a tie); TargetNotFound only when there is no such process.
"""

from __future__ import annotations

import shutil
import sys
from typing import Any

import atheris

from fuzz.common import check, flag, provider, run, scratch_dir, text

with atheris.instrument_imports(include=["tether"]):
    from tether.agent.target import (
        _CGROUP_PREFIXES,
        _ID_RE,
        TargetNotFound,
        _bare_id,
        find_container_pid,
    )

SCHEMES = ("containerd://", "cri-o://", "docker://", "")
WORK = scratch_dir("cgroup")
UNREADABLE = sys.maxsize


def container_id(fdp: Any) -> str:
    if flag(fdp):
        return text(fdp, 80)
    scheme = SCHEMES[fdp.ConsumeIntInRange(0, len(SCHEMES) - 1)]
    return scheme + bytes(fdp.ConsumeBytes(fdp.ConsumeIntInRange(1, 32))).hex()


def cgroup_file(fdp: Any, bare: str) -> bytes:
    """Lines of /proc/PID/cgroup: some naming the container as runtimes do, some not."""
    if fdp.ConsumeIntInRange(0, 7) == 0:
        return bytes(fdp.ConsumeBytes(fdp.ConsumeIntInRange(0, 300)))
    lines = []
    for number in range(fdp.ConsumeIntInRange(1, 4)):
        parts = []
        for _ in range(fdp.ConsumeIntInRange(0, 4)):
            choice = fdp.ConsumeIntInRange(0, 3)
            if choice == 0:
                prefix = _CGROUP_PREFIXES[fdp.ConsumeIntInRange(0, len(_CGROUP_PREFIXES) - 1)]
                suffix = ".scope" if flag(fdp) else ""
                parts.append((prefix + bare + suffix).encode("utf-8", "surrogatepass"))
            else:
                parts.append(bytes(fdp.ConsumeBytes(fdp.ConsumeIntInRange(0, 24))))
        controllers = b"" if flag(fdp) else b"cpu,cpuacct"
        lines.append(b"%d:%s:/" % (number, controllers) + b"/".join(parts))
    return b"\n".join(lines) + b"\n"


def stat_file(fdp: Any, pid: int) -> tuple[bytes, int]:
    """/proc/PID/stat with a command name from the input (any bytes but NUL, like the
    kernel's) and its start time (field 22)."""
    comm = bytes(fdp.ConsumeBytes(fdp.ConsumeIntInRange(0, 16))).replace(b"\0", b"")
    start = fdp.ConsumeIntInRange(0, 1 << 40)
    fields = [b"S", *(b"%d" % n for n in range(1, 19)), b"%d" % start, b"0", b"0"]
    return b"%d (%s) " % (pid, comm) + b" ".join(fields) + b"\n", start


def names_container(cgroup: bytes, names: frozenset[bytes]) -> bool:
    """The reference: cgroup(7)'s "hierarchy-ID:controller-list:cgroup-path" lines."""
    for line in cgroup.split(b"\n"):
        fields = line.split(b":", 2)
        if len(fields) == 3 and not names.isdisjoint(fields[2].split(b"/")):
            return True
    return False


def test_one_input(data: bytes) -> None:
    """One fuzz input: a container ID, then the processes of the fake /proc."""
    fdp = provider(data)
    given = container_id(fdp)
    try:
        bare: str | None = _bare_id(given)
    except ValueError:
        bare = None
    if bare is not None:
        check(given.endswith(bare), f"{bare!r} is not the end of {given!r}")
        check(_ID_RE.fullmatch(bare) is not None, f"{bare!r} is not a container ID")
        check("/" not in bare and ":" not in bare, f"{bare!r} holds a separator")
    proc = WORK / "proc"
    shutil.rmtree(proc, ignore_errors=True)
    proc.mkdir()
    (proc / "self").mkdir()  # not a process: skipped
    expected: list[tuple[int, int]] = []
    names = frozenset(
        (prefix + (bare or "") + scope).encode("utf-8", "surrogatepass")
        for prefix in _CGROUP_PREFIXES
        for scope in ("", ".scope")
    )
    for _ in range(fdp.ConsumeIntInRange(0, 5)):
        pid = fdp.ConsumeIntInRange(1, 4 << 20)
        pid_dir = proc / str(pid)
        if pid_dir.exists():
            continue
        pid_dir.mkdir()
        cgroup = cgroup_file(fdp, bare or "x")
        (pid_dir / "cgroup").write_bytes(cgroup)
        start = UNREADABLE
        if fdp.ConsumeIntInRange(0, 7):
            stat, start = stat_file(fdp, pid)
            (pid_dir / "stat").write_bytes(stat)
        if bare is not None and names_container(cgroup, names):
            expected.append((start, pid))
    try:
        found: int | None = find_container_pid(given, proc)
    except ValueError:
        check(bare is None, f"ValueError for {given!r}, whose ID is fine")
        return
    except TargetNotFound:
        found = None
    check(bare is not None, f"{given!r} was taken for a container ID")
    want = min(expected)[1] if expected else None
    check(found == want, f"found PID {found}, expected {want} (of {sorted(expected)})")


def main() -> None:
    """Run the harness under libFuzzer with the command line's flags."""
    run(test_one_input, sys.argv)


if __name__ == "__main__":
    main()
