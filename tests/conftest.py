"""Shared pytest setup: tests under tests/e2e need the devcluster and are marked `cluster`."""

from pathlib import Path

import pytest

E2E = Path(__file__).parent / "e2e"


# The e2e modules that must run last, in this order: the lifecycle tests restart the cluster,
# and the leak check judges everything that ran before it. Every other module runs before
# them, in collection order.
E2E_LAST = ("test_lifecycle.py", "test_no_leaks.py")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark every e2e test `cluster` (so `-m "not cluster"` runs the unit tests alone), and
    put the E2E_LAST modules at the end, whatever the file names' order."""
    for item in items:
        if E2E in Path(str(item.fspath)).parents:
            item.add_marker(pytest.mark.cluster)

    def rank(item: pytest.Item) -> int:
        path = Path(str(item.fspath))
        if E2E in path.parents and path.name in E2E_LAST:
            return 1 + E2E_LAST.index(path.name)
        return 0

    items.sort(key=rank)  # stable: the rest keep their order
