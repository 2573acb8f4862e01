"""build_filter checked by interpreting it, plus kernel feature probing."""

from __future__ import annotations

import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tether.intercept.seccomp import (
    AUDIT_ARCH_X86_64,
    SECCOMP_RET_ALLOW,
    SECCOMP_RET_ERRNO,
    SECCOMP_RET_USER_NOTIF,
    X32_SYSCALL_BIT,
    FilterProgram,
    Notification,
    Syscall,
    UnsupportedKernelError,
    build_filter,
    probe_features,
    require_kernel,
)

AUDIT_ARCH_I386 = 0x40000003
ENOSYS = 38
SECCOMP_DATA = struct.Struct("=iIQ6Q")  # nr, arch, instruction_pointer, args[6]

# Classic BPF opcode classes and fields (linux/bpf_common.h).
BPF_LD, BPF_ALU, BPF_JMP, BPF_RET = 0x00, 0x04, 0x05, 0x06
BPF_W, BPF_ABS = 0x00, 0x20
BPF_K, BPF_X = 0x00, 0x08
BPF_JA, BPF_JEQ, BPF_JGT, BPF_JGE, BPF_JSET = 0x00, 0x10, 0x20, 0x30, 0x40
BPF_AND = 0x50


def run_bpf(program: bytes, data: bytes) -> int:
    """A tiny classic-BPF interpreter: enough of the seccomp dialect for our filters.

    It rejects what the kernel's checker would (out-of-range jumps, falling off the end,
    misaligned or out-of-bounds loads), so a pass here means a well-formed program.
    """
    insns = [struct.unpack_from("=HBBI", program, off) for off in range(0, len(program), 8)]
    assert insns and len(program) % 8 == 0
    acc, pc = 0, 0
    while True:
        assert 0 <= pc < len(insns), f"pc {pc} out of the program"
        code, jt, jf, k = insns[pc]
        cls = code & 0x07
        if cls == BPF_LD:
            assert code == BPF_LD | BPF_W | BPF_ABS, f"unsupported load {code:#x}"
            assert k % 4 == 0 and k + 4 <= len(data), f"bad load offset {k}"
            (acc,) = struct.unpack_from("=I", data, k)
        elif cls == BPF_ALU:
            assert code == BPF_ALU | BPF_AND | BPF_K
            acc &= k
        elif cls == BPF_JMP:
            op = code & 0xF0
            assert code & BPF_X == 0, "only K-operand jumps"
            if op == BPF_JA:
                pc += k
            else:
                taken = {
                    BPF_JEQ: acc == k,
                    BPF_JGT: acc > k,
                    BPF_JGE: acc >= k,
                    BPF_JSET: bool(acc & k),
                }[op]
                pc += jt if taken else jf
        elif cls == BPF_RET:
            assert code == BPF_RET | BPF_K
            return int(k)
        else:
            raise AssertionError(f"unsupported opcode {code:#x}")
        pc += 1


def seccomp_data(nr: int, arch: int = AUDIT_ARCH_X86_64) -> bytes:
    """A struct seccomp_data for syscall `nr` (given as its unsigned 32-bit value)."""
    signed = nr - (1 << 32) if nr >= 1 << 31 else nr
    return SECCOMP_DATA.pack(signed, arch, 0x401000, 1, 2, 3, 4, 5, 6)


TRAPPED = [Syscall.openat, Syscall.connect, Syscall.getpeername, Syscall.statx, Syscall.open]


def test_listed_syscalls_notify() -> None:
    program = build_filter(TRAPPED)
    for nr in TRAPPED:
        assert run_bpf(program, seccomp_data(nr)) == SECCOMP_RET_USER_NOTIF


def test_unlisted_syscalls_are_allowed() -> None:
    program = build_filter(TRAPPED)
    for nr in (Syscall.read, Syscall.write, Syscall.close, 59, 231, 334, 1000):
        assert run_bpf(program, seccomp_data(nr)) == SECCOMP_RET_ALLOW


def test_x32_syscalls_fail_with_enosys() -> None:
    program = build_filter(TRAPPED)
    for nr in (X32_SYSCALL_BIT | Syscall.openat, X32_SYSCALL_BIT | 0, X32_SYSCALL_BIT | 512):
        assert run_bpf(program, seccomp_data(nr)) == SECCOMP_RET_ERRNO | ENOSYS
    assert run_bpf(program, seccomp_data(0xFFFFFFFF)) == SECCOMP_RET_ERRNO | ENOSYS  # nr -1


def test_other_architectures_are_allowed() -> None:
    program = build_filter(TRAPPED)
    for nr in [*TRAPPED, 5, X32_SYSCALL_BIT | 2]:
        assert run_bpf(program, seccomp_data(nr, AUDIT_ARCH_I386)) == SECCOMP_RET_ALLOW


def test_empty_and_duplicate_lists() -> None:
    assert run_bpf(build_filter([]), seccomp_data(Syscall.openat)) == SECCOMP_RET_ALLOW
    doubled = build_filter([Syscall.connect, Syscall.connect, 42])
    assert doubled == build_filter([Syscall.connect])
    assert run_bpf(doubled, seccomp_data(42)) == SECCOMP_RET_USER_NOTIF


def test_longest_filter_jumps_stay_in_range() -> None:
    nrs = list(range(0, 510, 2))  # 255 syscalls: the longest jump offset a u8 allows
    program = build_filter(nrs)
    FilterProgram(program)
    for nr in range(0, 520):
        expected = SECCOMP_RET_USER_NOTIF if nr in nrs else SECCOMP_RET_ALLOW
        assert run_bpf(program, seccomp_data(nr)) == expected
    with pytest.raises(ValueError, match="too many"):
        build_filter(range(256))


def test_allow_if_lets_flagged_calls_through_in_the_kernel() -> None:
    at_empty_path = 0x1000
    rules: dict[int, tuple[int, int]] = {
        Syscall.statx: (2, at_empty_path),
        Syscall.openat: (1, 0x40),
    }
    program = build_filter(TRAPPED, rules)

    def data(nr: int, args: tuple[int, ...]) -> bytes:
        return SECCOMP_DATA.pack(nr, AUDIT_ARCH_X86_64, 0x401000, *args)

    assert run_bpf(program, data(Syscall.statx, (3, 0, at_empty_path, 0, 0, 0))) == (
        SECCOMP_RET_ALLOW
    )
    assert run_bpf(program, data(Syscall.statx, (3, 0, 0x100, 0, 0, 0))) == (SECCOMP_RET_USER_NOTIF)
    assert run_bpf(program, data(Syscall.openat, (0, 0x40, 0, 0, 0, 0))) == SECCOMP_RET_ALLOW
    assert run_bpf(program, data(Syscall.openat, (0, 0x1, 0, 0, 0, 0))) == SECCOMP_RET_USER_NOTIF
    for nr in (Syscall.connect, Syscall.open, Syscall.getpeername):
        assert run_bpf(program, data(nr, (1, 2, 3, 4, 5, 6))) == SECCOMP_RET_USER_NOTIF
    assert run_bpf(program, data(Syscall.read, (1, 2, 3, 4, 5, 6))) == SECCOMP_RET_ALLOW
    with pytest.raises(ValueError):
        build_filter(TRAPPED, {Syscall.read: (0, 1)})


@pytest.mark.parametrize("nr", [-1, X32_SYSCALL_BIT, 1 << 32])
def test_invalid_numbers_are_refused(nr: int) -> None:
    with pytest.raises(ValueError, match="not an x86_64 syscall"):
        build_filter([nr])


@given(
    trapped=st.sets(st.integers(0, 600), max_size=60),
    nr=st.integers(0, 0xFFFFFFFF),
    arch=st.sampled_from([AUDIT_ARCH_X86_64, AUDIT_ARCH_I386, 0]),
)
def test_filter_matches_its_specification(trapped: set[int], nr: int, arch: int) -> None:
    if arch != AUDIT_ARCH_X86_64:
        expected = SECCOMP_RET_ALLOW
    elif nr & X32_SYSCALL_BIT:
        expected = SECCOMP_RET_ERRNO | ENOSYS
    elif nr in trapped:
        expected = SECCOMP_RET_USER_NOTIF
    else:
        expected = SECCOMP_RET_ALLOW
    assert run_bpf(build_filter(trapped), seccomp_data(nr, arch)) == expected


def test_filter_program_validates_its_input() -> None:
    with pytest.raises(ValueError):
        FilterProgram(b"")
    with pytest.raises(ValueError):
        FilterProgram(b"\0" * 12)


def test_features_follow_the_kernel_version() -> None:
    old = probe_features("5.10.0-21-amd64", "x86_64")
    assert old.kernel == (5, 10, 0)
    assert not (old.addfd_send or old.wait_killable_recv or old.sync_wake_up)
    debian = probe_features("6.1.0-18-amd64", "x86_64")
    assert debian.addfd_send and debian.wait_killable_recv and not debian.sync_wake_up
    ubuntu = probe_features("5.15.0-91-generic", "x86_64")
    assert ubuntu.addfd_send and not ubuntu.wait_killable_recv
    assert probe_features("6.18.44-fc-v657", "x86_64").sync_wake_up
    assert probe_features("6.6", "x86_64").kernel == (6, 6, 0)
    assert debian.filter_flags == (1 << 3) | (1 << 5)
    assert ubuntu.filter_flags == 1 << 3


def test_require_kernel_names_what_is_missing() -> None:
    with pytest.raises(UnsupportedKernelError, match=r"5\.14.*5\.10\.0-21-amd64") as info:
        require_kernel(probe_features("5.10.0-21-amd64", "x86_64"))
    assert "\n" not in str(info.value)
    with pytest.raises(UnsupportedKernelError, match=r"x86_64 only.*aarch64"):
        require_kernel(probe_features("6.8.0", "aarch64"))
    with pytest.raises(UnsupportedKernelError, match="unknown"):
        require_kernel(probe_features("unknown", "x86_64"))
    require_kernel(probe_features("5.14.0", "x86_64"))
    require_kernel()  # this machine: 6.18


def test_notification_repr_names_the_syscall() -> None:
    notif = Notification(0x10, 1234, 0, Syscall.openat, AUDIT_ARCH_X86_64, 0, (1, 2, 3, 4, 5, 6))
    assert notif.tid == 1234
    assert "tid=1234 openat(0x1, 0x2" in repr(notif)
