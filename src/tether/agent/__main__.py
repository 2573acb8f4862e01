"""`python3 -m tether.agent`: the agent's entry point inside its Job's pod."""

import asyncio
import logging
import os
import sys
import time

from tether.agent.guard import run_guarded
from tether.agent.server import Agent
from tether.agent.target import Target, TargetNotFound
from tether.protocol.launch import MIN_SECRET_BYTES, SECRET_ENV, parse_agent_args
from tether.tunnel.allocator import tune_allocator

# An agent started for a pod's sandbox may come up before the sandbox does.
SANDBOX_WAIT = 60.0


def _find(container_id: str | None, pod_uid: str | None) -> Target:
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


def main(argv: list[str] | None = None) -> int:
    """Parse arguments, find the target, serve; exit status 2 for bad input."""
    args = parse_agent_args(argv)
    logging.basicConfig(
        level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(levelname)s %(message)s"
    )
    secret_hex = os.environ.pop(SECRET_ENV, "")
    try:
        secret = bytes.fromhex(secret_hex)
    except ValueError:
        secret = b""
    if len(secret) < MIN_SECRET_BYTES:
        print(
            f"tether-agent: {SECRET_ENV} must hold at least {MIN_SECRET_BYTES} hex-encoded bytes",
            file=sys.stderr,
        )
        return 2
    try:
        target = _find(args.container_id, args.pod_uid)
    except (TargetNotFound, ValueError) as exc:
        print(f"tether-agent: {exc}", file=sys.stderr)
        return 2

    def serve() -> int:
        # Runs in the guard's child: threads and the event loop only start here.
        tune_allocator()
        agent = Agent(target, secret, args.idle_timeout)
        asyncio.run(agent.serve(args.listen, args.port))
        return 0

    try:
        # The guard removes the agent's iptables chains however the serving process exits.
        return run_guarded(serve, target.netns_path)
    except OSError as exc:
        if target.netns_path is None:
            raise  # from serve() itself: targetless agents run it in this process
        # Opening the namespace (the target exited since we found it) or fork failed.
        print(f"tether-agent: cannot start the exit guard: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
