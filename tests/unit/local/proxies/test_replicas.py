"""Which replicas of a workload a session joins and leaves at each poll."""

from dataclasses import dataclass, field

import pytest

from tether.kube.targets import ResolvedTarget, TargetKind
from tether.local.proxies.replicas import plan


def pod(uid: str, deleting: bool = False) -> ResolvedTarget:
    return ResolvedTarget(
        kind=TargetKind.DEPLOYMENT,
        name="web",
        namespace="shop",
        pod_name=f"web-{uid}",
        pod_uid=uid,
        node_name="n",
        container_name="web",
        container_id=f"containerd://{uid}",
        pod_ip=None,
        deleting=deleting,
    )


NOW = 100.0


@dataclass
class S:
    """The session's state at a poll."""

    joined: set[str] = field(default_factory=set)
    closed: set[str] = field(default_factory=set)
    joining: set[str] = field(default_factory=set)
    primary: str = "p"
    promoting: str | None = None
    retry: dict[str, float] = field(default_factory=dict)


@pytest.mark.parametrize(
    ("listed", "state", "gone", "new"),
    [
        # The session's own pod is never a replica.
        (["p", "a", "b"], S(), [], ["a", "b"]),
        (["p", "a"], S(joined={"a"}), [], []),
        # A pod no longer listed is left; its tunnel closing leaves it too.
        (["p"], S(joined={"a"}), ["a"], []),
        (["p", "a"], S(joined={"a"}, closed={"a"}), ["a"], []),
        # A pod being deleted is kept while it runs, and never joined.
        (["p", "a!", "b!"], S(joined={"a"}), [], []),
        # Being joined, being promoted, or waiting out a failure: not joined again.
        (["p", "a", "b", "c"], S(joining={"a"}, promoting="b", retry={"c": 101}), [], []),
        (["p", "c"], S(retry={"c": 99}), [], ["c"]),
        # The pod being promoted is not left even though it is unlisted as a replica.
        (["b"], S(joined={"b"}, promoting="b", primary="b"), [], []),
    ],
)
def test_plan(listed: list[str], state: S, gone: list[str], new: list[str]) -> None:
    targets = [pod(x.rstrip("!"), deleting=x.endswith("!")) for x in listed]
    got_gone, got_new = plan(
        targets,
        joined=state.joined,
        closed=state.closed,
        joining=state.joining,
        primary=state.primary,
        promoting=state.promoting,
        retry_at=state.retry,
        now=NOW,
    )
    assert (got_gone, [t.pod_uid for t in got_new]) == (gone, new)
