"""Port specifications as `-R` and `--port-map` take them: REMOTE or REMOTE:LOCAL."""

from dataclasses import dataclass

from tether.errors import UserError


class PortSpecError(UserError, ValueError):
    """A malformed REMOTE[:LOCAL] port specification."""


@dataclass(frozen=True)
class PortSpec:
    """A remote port of the target and the local port its traffic is delivered to."""

    remote: int
    local: int


def parse_port_spec(text: str) -> PortSpec:
    """Parse "REMOTE" or "REMOTE:LOCAL" (as `-R` and `--port-map` take them)."""
    parts = text.strip().split(":")
    try:
        numbers = [int(p) for p in parts]
    except ValueError:
        numbers = []
    if len(numbers) not in (1, 2) or not all(0 < n < 65536 for n in numbers):
        raise PortSpecError(f"bad port {text!r}: expected REMOTE_PORT[:LOCAL_PORT], 1-65535")
    return PortSpec(numbers[0], numbers[-1])
