"""tether's configuration: the models, the file loader and command-line overrides."""

from tether.config.errors import ConfigError
from tether.config.loader import (
    CONFIG_NAMES,
    config_schema,
    find_config,
    load_config,
    merge_cli,
    validate_config,
)
from tether.config.models import AgentConfig, EnvConfig, TetherConfig

__all__ = [
    "CONFIG_NAMES",
    "AgentConfig",
    "ConfigError",
    "EnvConfig",
    "TetherConfig",
    "config_schema",
    "find_config",
    "load_config",
    "merge_cli",
    "validate_config",
]
