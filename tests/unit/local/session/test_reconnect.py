"""The reconnect policy: when silence means a dead transport, and how long to wait."""

import pytest

from tether.agent.server import MAX_RESUME_GRACE, resume_grace
from tether.local.session.reconnect import BACKOFF_CAP, DEAD_AFTER, backoff, transport_dead

INTERVAL = 2.5


@pytest.mark.parametrize(
    ("now", "last_received", "last_tick", "dead"),
    [
        (100.0, 99.0, 97.5, False),  # a byte a second ago
        (100.0, 100.0 - DEAD_AFTER + 0.1, 97.5, False),  # just inside the limit
        (100.0, 100.0 - DEAD_AFTER, 97.5, True),  # silent for exactly the limit
        (100.0, 50.0, 97.5, True),  # long silent while we ran on time
        # We were stopped (SIGSTOP, a sleeping laptop): the tick came 60 s late, the
        # silence is ours, not the agent's.
        (100.0, 39.0, 40.0, False),
        (100.0, 39.0, 100.0 - INTERVAL - DEAD_AFTER / 2 - 0.1, False),
        (100.0, 39.0, 100.0 - INTERVAL - DEAD_AFTER / 2, True),
    ],
)
def test_transport_dead(now: float, last_received: float, last_tick: float, dead: bool) -> None:
    assert transport_dead(now, last_received, last_tick, INTERVAL) is dead


@pytest.mark.parametrize(
    ("attempt", "wait"), [(0, 0.0), (1, 0.25), (2, 0.5), (3, 1.0), (4, 2.0), (5, 3.0), (50, 3.0)]
)
def test_backoff_starts_at_once_and_is_capped(attempt: int, wait: float) -> None:
    assert backoff(attempt) == wait
    assert backoff(attempt) <= BACKOFF_CAP


@pytest.mark.parametrize(
    ("asked", "held"),
    [
        (120, 120.0),
        (2.5, 2.5),
        (0, 0.0),
        (-5, 0.0),
        (10**9, MAX_RESUME_GRACE),
        (None, 0.0),  # an old client that asks nothing is not held
        ("120", 0.0),
        (True, 0.0),
    ],
)
def test_the_agent_holds_what_the_client_asks_within_bounds(asked: object, held: float) -> None:
    assert resume_grace(asked) == held
