"""The agent's command line and ready line: one definition, read back by the agent."""

import pytest

from tether.protocol.launch import AgentArgs, parse_agent_args, parse_ready, ready_line


@pytest.mark.parametrize(
    "args",
    [
        AgentArgs(),
        AgentArgs(port=5000, idle_timeout=2.5),
        AgentArgs(port=0, listen="0.0.0.0", container_id="containerd://abc"),
        AgentArgs(pod_uid="a36de71d-e32e-4328-9515-8c5b88f87ef3"),
        AgentArgs(port=0, in_pod=True),
    ],
)
def test_the_agent_reads_back_what_the_cli_writes(args: AgentArgs) -> None:
    assert parse_agent_args(args.to_argv()) == args


def test_the_argv_the_job_carries() -> None:
    assert AgentArgs(47047, idle_timeout=30, container_id="cri-o://x").to_argv() == [
        "--port", "47047", "--idle-timeout", "30", "--container-id", "cri-o://x",
    ]  # fmt: skip


@pytest.mark.parametrize(
    ("log", "ready"),
    [
        (ready_line(47047, "0.1.0") + "\n", (47047, "0.1.0")),
        ("starting\n" + ready_line(1, "dev") + "\nmore\n", (1, "dev")),
        ("tether-agent ready port=x version=1\n", None),
        ("prefix tether-agent ready port=1 version=1\n", None),
        ("", None),
    ],
)
def test_parse_ready(log: str, ready: tuple[int, str] | None) -> None:
    assert parse_ready(log) == ready
