"""Shared pytest setup: tests under tests/e2e need the devcluster and are marked `cluster`."""

from pathlib import Path

import pytest

E2E = Path(__file__).parent / "e2e"


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark every e2e test `cluster` so `-m "not cluster"` runs the unit tests alone."""
    for item in items:
        if E2E in Path(str(item.fspath)).parents:
            item.add_marker(pytest.mark.cluster)
