"""What a moved session says about its new pod's environment."""

import pytest

from tether.local.policy.environment import env_changes


@pytest.mark.parametrize(
    ("had", "now", "changed"),
    [
        ({"A": "1"}, {"A": "1"}, []),
        ({"A": "1"}, {"A": "2"}, ["A"]),
        ({"A": "1"}, {}, ["A"]),
        ({}, {"B": "x"}, ["B"]),
        ({"B": "1", "A": "1", "C": "1"}, {"A": "2", "B": "1", "D": "1"}, ["A", "C", "D"]),
    ],
)
def test_env_changes(had: dict[str, str], now: dict[str, str], changed: list[str]) -> None:
    assert env_changes(had, now) == changed
