"""Every program the agent runs, in one place.

The agent image must hold each of them (its Debian packages are declared in
agent-image/debian-packages.txt); tests/e2e/test_agent_image.py checks that the image the tests
deploy does, so a program added here without its package fails there, not on a user's cluster.
"""

# The agent writes its rules with the iptables backend its target already uses.
IPTABLES_BACKENDS = ("nft", "legacy")

# Resets the app's open connections to a port when a steal starts (`ss -K`).
SS = "ss"


def iptables_save(backend: str) -> str:
    """The `iptables-save` of one backend."""
    return f"iptables-{backend}-save"


def iptables_restore(backend: str) -> str:
    """The `iptables-restore` of one backend."""
    return f"iptables-{backend}-restore"


REQUIRED = (
    SS,
    *(tool(b) for b in IPTABLES_BACKENDS for tool in (iptables_save, iptables_restore)),
)
