"""This machine: what `tether exec` needs from the kernel and Python."""

import sys

from tether.doctor.report import Check, Status
from tether.intercept.seccomp import Features


def machine_checks(
    features: Features, python: tuple[int, int] = sys.version_info[:2]
) -> list[Check]:
    """Checks of the kernel's seccomp features and the Python version (pure: the probe is
    passed in)."""
    checks = [
        Check(
            "machine",
            "python",
            "ok" if python >= (3, 11) else "failing",
            f"Python {python[0]}.{python[1]}",
            "install Python 3.11 or newer",
        ),
        Check(
            "machine",
            "architecture",
            "ok" if features.machine == "x86_64" else "failing",
            features.machine,
            "tether exec intercepts x86_64 programs only (other commands work anywhere)",
        ),
        Check(
            "machine",
            "seccomp user notification",
            "ok" if features.user_notif else "failing",
            "offered" if features.user_notif else "the kernel lacks the user_notif action",
            "tether exec needs a kernel with SECCOMP_RET_USER_NOTIF",
        ),
    ]
    kernel: tuple[Status, str]
    if not features.addfd_send:
        kernel = ("failing", f"Linux {features.release}: tether exec needs 5.14 or newer")
    elif not features.wait_killable_recv:
        kernel = ("warning", f"Linux {features.release}: 5.19+ is recommended")
    else:
        kernel = ("ok", f"Linux {features.release}")
    checks.append(
        Check(
            "machine",
            "kernel",
            kernel[0],
            kernel[1],
            "upgrade the kernel (5.14 for tether exec, 5.19 for signals during calls)",
        )
    )
    return checks
