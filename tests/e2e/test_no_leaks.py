"""Last: nothing the cluster did left the machine (conntrack holds only on-machine flows)."""

from devcluster import safety


def test_conntrack_has_no_flow_leaving_the_machine() -> None:
    table = safety.conntrack_table()
    assert "src=" in table, "conntrack -L returned no flows at all: cannot judge"
    assert safety.leaks(table) == []
