"""The agent's session secret from its environment: the secret (a Job's agent) or only its
digest (an ephemeral agent, whose environment is in the pod's spec)."""

import hashlib

import pytest

from tether.agent.__main__ import _session_secret
from tether.protocol.launch import SECRET_DIGEST_ENV, SECRET_ENV

SECRET = bytes(range(32))
DIGEST = hashlib.sha256(SECRET).digest()


@pytest.mark.parametrize(
    ("environ", "found"),
    [
        ({SECRET_ENV: SECRET.hex()}, (SECRET, None)),
        ({SECRET_DIGEST_ENV: DIGEST.hex()}, (None, DIGEST)),
        ({SECRET_ENV: SECRET.hex(), SECRET_DIGEST_ENV: DIGEST.hex()}, (SECRET, None)),
        ({}, (None, None)),
        ({SECRET_ENV: "ab" * 8 + "a"}, (None, None)),  # not hex
        ({SECRET_ENV: "ab" * 15}, (None, None)),  # too short
        ({SECRET_DIGEST_ENV: "ab" * 31}, (None, None)),  # not a SHA-256
        ({SECRET_ENV: "ab", SECRET_DIGEST_ENV: DIGEST.hex()}, (None, None)),  # a bad secret
    ],
)
def test_session_secret(environ: dict[str, str], found: tuple[bytes | None, bytes | None]) -> None:
    env = {**environ, "PATH": "/bin"}
    assert _session_secret(env) == found
    assert env == {"PATH": "/bin"}  # nothing the agent starts inherits either
