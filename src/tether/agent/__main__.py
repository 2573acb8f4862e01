"""`python3 -m tether.agent`: the agent's entry point inside its Job's pod."""

import asyncio
import hashlib
import logging
import os
import sys
import time
from collections.abc import MutableMapping

from tether.agent.guard import run_guarded
from tether.agent.server import Agent
from tether.agent.target import Target, TargetNotFound, incoming_refusal
from tether.protocol.launch import (
    MIN_SECRET_BYTES,
    SECRET_DIGEST_ENV,
    SECRET_ENV,
    parse_agent_args,
)
from tether.tunnel.allocator import tune_allocator

# An agent started for a pod's sandbox may come up before the sandbox does.
SANDBOX_WAIT = 60.0


def _find(container_id: str | None, pod_uid: str | None, in_pod: bool) -> Target:
    if in_pod:
        return Target.find(None, in_pod=True)
    if container_id is not None or pod_uid is None:
        return Target.find(container_id)
    deadline = time.monotonic() + SANDBOX_WAIT
    while True:
        try:
            return Target.find(None, pod_uid=pod_uid)
        except TargetNotFound:
            if time.monotonic() >= deadline:
                raise
            time.sleep(0.1)


def _session_secret(environ: MutableMapping[str, str]) -> tuple[bytes | None, bytes | None]:
    """The session secret, or its SHA-256, from the environment (taken out of it, so that
    nothing the agent starts inherits it); (None, None) if neither is well-formed."""
    secret_hex, digest_hex = environ.pop(SECRET_ENV, ""), environ.pop(SECRET_DIGEST_ENV, "")
    try:
        secret, digest = bytes.fromhex(secret_hex), bytes.fromhex(digest_hex)
    except ValueError:
        return None, None
    if len(secret) >= MIN_SECRET_BYTES:
        return secret, None
    if not secret and len(digest) == hashlib.sha256().digest_size:
        return None, digest
    return None, None


def main(argv: list[str] | None = None) -> int:
    """Parse arguments, find the target, serve; exit status 2 for bad input."""
    args = parse_agent_args(argv)
    logging.basicConfig(
        level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(levelname)s %(message)s"
    )
    secret, digest = _session_secret(os.environ)
    if secret is None and digest is None:
        print(
            f"tether-agent: {SECRET_ENV} must hold at least {MIN_SECRET_BYTES} hex-encoded bytes"
            f" (or {SECRET_DIGEST_ENV} the hex SHA-256 of such a secret)",
            file=sys.stderr,
        )
        return 2
    try:
        target = _find(args.container_id, args.pod_uid, args.in_pod)
    except (TargetNotFound, ValueError) as exc:
        print(f"tether-agent: {exc}", file=sys.stderr)
        return 2

    def serve() -> int:
        # Runs in the guard's child: threads and the event loop only start here.
        tune_allocator()
        agent = Agent(target, secret or b"", args.idle_timeout, secret_digest=digest)
        asyncio.run(agent.serve(args.listen, args.port))
        return 0

    # The guard removes the agent's iptables chains however the serving process exits; an
    # agent that may not make any (an ephemeral one without NET_ADMIN) needs none.
    guarded = target.netns_path if incoming_refusal(target) is None or not target.in_pod else None
    try:
        return run_guarded(serve, guarded)
    except OSError as exc:
        if guarded is None:
            raise  # from serve() itself: targetless agents run it in this process
        # Opening the namespace (the target exited since we found it) or fork failed.
        print(f"tether-agent: cannot start the exit guard: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
