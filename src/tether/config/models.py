"""The configuration models: what `tether.toml` (or .yaml/.json) may hold.

The field descriptions feed `tether schema`, so they are written for users.
"""

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

DEFAULT_AGENT_IMAGE = "ghcr.io/tether-dev/tether-agent:0.1.0"
DEFAULT_AGENT_PORT = 47047


class AgentConfig(BaseModel):
    """The agent: a short-lived Job that tether starts next to the target and removes after."""

    model_config = ConfigDict(extra="forbid")

    image: str = Field(
        default=DEFAULT_AGENT_IMAGE,
        description="Container image of the agent. Pin it to the version of your tether.",
    )
    namespace: str | None = Field(
        default=None,
        description="Namespace the agent Job is created in (default: the target's namespace).",
    )
    port: int = Field(
        default=DEFAULT_AGENT_PORT,
        ge=1,
        le=65535,
        description="Port the agent listens on, on 127.0.0.1 inside its own pod.",
    )
    idle_timeout: float = Field(
        default=30.0,
        gt=0,
        description="Seconds the agent keeps running after its last client left.",
    )
    startup_timeout: float = Field(
        default=60.0,
        gt=0,
        description="Seconds to wait for the agent to be scheduled, pulled, started and ready.",
    )
    ttl_seconds_after_finished: int = Field(
        default=60,
        ge=0,
        description="Seconds Kubernetes keeps the finished agent Job before deleting it.",
    )
    privileged: bool = Field(
        default=False,
        description="Run the agent container privileged (only if added capabilities are not "
        "enough on your cluster).",
    )
    image_pull_policy: Literal["Always", "IfNotPresent", "Never"] | None = Field(
        default=None,
        description="Pull policy of the agent image (default: the cluster's).",
    )
    labels: dict[str, str] = Field(
        default_factory=dict,
        description="Extra labels on the agent Job and its pod.",
    )
    annotations: dict[str, str] = Field(
        default_factory=dict,
        description="Extra annotations on the agent Job and its pod.",
    )


class EnvConfig(BaseModel):
    """Which environment variables of the target the local process gets."""

    model_config = ConfigDict(extra="forbid")

    include: list[str] = Field(
        default_factory=lambda: ["*"],
        description="Glob patterns of the target's variables to copy (default: all).",
    )
    exclude: list[str] = Field(
        default_factory=list,
        description="Glob patterns of variables not to copy, applied after include.",
    )
    override: dict[str, str] = Field(
        default_factory=dict,
        description="Variables set to these values whatever the target has.",
    )


class TetherConfig(BaseModel):
    """tether's configuration: a tether.toml / tether.yaml / tether.json file."""

    model_config = ConfigDict(extra="forbid")

    target: str | None = Field(
        default=None,
        description='What to run against: "pod/NAME", "deployment/NAME", "statefulset/NAME" '
        '(each optionally followed by "/container/NAME"), or "targetless".',
    )
    namespace: str | None = Field(
        default=None,
        description="Namespace of the target (default: the kubeconfig context's namespace).",
    )
    context: str | None = Field(
        default=None,
        description="kubeconfig context to use (default: the current context).",
    )
    kubeconfig: str | None = Field(
        default=None,
        description="Path of the kubeconfig file (default: $KUBECONFIG, then ~/.kube/config).",
    )
    agent: AgentConfig = Field(
        default_factory=AgentConfig,
        description="The agent tether starts in the cluster.",
    )
    env: EnvConfig = Field(
        default_factory=EnvConfig,
        description="Environment variables taken from the target.",
    )
