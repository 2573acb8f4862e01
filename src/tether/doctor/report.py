"""The doctor's findings and how they are shown: pure, table-tested."""

import json
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from typing import Literal

Status = Literal["ok", "warning", "failing"]


@dataclass(frozen=True)
class Check:
    """One finding: `fix` says, in one line, what to do about a warning or a failure."""

    area: str
    name: str
    status: Status
    detail: str
    fix: str = ""


@dataclass(frozen=True)
class Report:
    """Every check, in the order they ran."""

    checks: tuple[Check, ...]

    @property
    def session_would_start(self) -> bool:
        """True when nothing is failing (warnings do not stop a session)."""
        return all(c.status != "failing" for c in self.checks)

    def counts(self) -> dict[str, int]:
        """How many checks have each status."""
        counts = {"ok": 0, "warning": 0, "failing": 0}
        for check in self.checks:
            counts[check.status] += 1
        return counts

    def to_json(self) -> str:
        """The report for scripts and CI."""
        return json.dumps(
            {
                "session_would_start": self.session_would_start,
                "counts": self.counts(),
                "checks": [asdict(c) for c in self.checks],
            },
            indent=2,
        )

    def to_text(self) -> str:
        """One line per check (its fix indented below it), then the verdict."""
        marks = {"ok": "ok  ", "warning": "warn", "failing": "FAIL"}
        lines = []
        for c in self.checks:
            lines.append(f"{marks[c.status]} {c.area}: {c.name}: {c.detail}")
            if c.fix and c.status != "ok":
                lines.append(f"       fix: {c.fix}")
        n = self.counts()
        verdict = "a session would start" if self.session_would_start else "a session would fail"
        lines.append(f"{verdict} ({n['ok']} ok, {n['warning']} warning, {n['failing']} failing)")
        return "\n".join(lines) + "\n"


def report(checks: Iterable[Check]) -> Report:
    """A report of `checks`."""
    return Report(tuple(checks))
