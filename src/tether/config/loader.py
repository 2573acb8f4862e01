"""Finding, reading and validating the configuration file; command-line overrides."""

import json
import tomllib
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from tether.config.errors import ConfigError
from tether.config.models import TetherConfig

# Looked for in the working directory, first found wins.
CONFIG_NAMES = ("tether.toml", "tether.yaml", "tether.yml", "tether.json")


def find_config(cwd: Path) -> Path | None:
    """The first of CONFIG_NAMES that exists in `cwd`, or None."""
    for name in CONFIG_NAMES:
        candidate = cwd / name
        if candidate.is_file():
            return candidate
    return None


def load_config(path: Path | None, cwd: Path) -> TetherConfig:
    """Load the configuration from `path` (relative to `cwd`) or, if None, from the first
    tether.{toml,yaml,yml,json} in `cwd`; defaults when there is none.

    Raises ConfigError (one line naming the file and the bad key) on any problem.
    """
    if path is None:
        found = find_config(cwd)
        if found is None:
            return TetherConfig()
        shown = found.name
        full = found
    else:
        shown = str(path)
        full = path if path.is_absolute() else cwd / path
        if not full.is_file():
            raise ConfigError(f"{shown}: no such config file")
    data = _read(full, shown)
    config = validate_config(data, shown)
    if config.kubeconfig is not None:
        # A relative kubeconfig in a file means relative to that file, as kubectl does.
        kube = Path(config.kubeconfig).expanduser()
        if not kube.is_absolute():
            config = config.model_copy(update={"kubeconfig": str(full.parent / kube)})
    return config


def validate_config(data: object, source: str) -> TetherConfig:
    """Validate already-parsed data; `source` names where it came from in errors."""
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: expected a table of settings, got {type(data).__name__}")
    try:
        return TetherConfig.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(f"{source}: {describe_validation_error(exc)}") from None


def merge_cli(config: TetherConfig, **overrides: object) -> TetherConfig:
    """A copy of `config` with every non-None override applied.

    Keys are top-level fields (`target`, `namespace`, `context`, `kubeconfig`) or a section's
    field as `SECTION_FIELD`, nested sections joined the same way (e.g. `agent_image`,
    `env_exclude`, `fs_mode`, `network_outgoing_mode`, `network_dns_enabled`). The result is
    validated again, so a bad value raises ConfigError naming "command line".
    """
    data = config.model_dump()
    for key, value in overrides.items():
        if value is None:
            continue
        if not _override(data, TetherConfig, key, value):
            raise TypeError(f"merge_cli: unknown override {key!r}")
    return validate_config(data, "command line")


def _override(data: dict[str, Any], model: type[BaseModel], key: str, value: object) -> bool:
    # Field names hold underscores too, so try each field as a prefix rather than splitting.
    for name, field in model.model_fields.items():
        section = _section_model(field.annotation)
        if section is None:
            if key == name:
                data[name] = value
                return True
        elif key.startswith(name + "_") and _override(
            data[name], section, key[len(name) + 1 :], value
        ):
            return True
    return False


def _section_model(annotation: object) -> type[BaseModel] | None:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    return None


def config_schema() -> dict[str, Any]:
    """The JSON schema of the configuration file, with every field described."""
    return TetherConfig.model_json_schema()


def describe_validation_error(exc: ValidationError) -> str:
    """One line: `key.path: message` for each error, joined by "; "."""
    parts = []
    for error in exc.errors():
        loc = tuple(error["loc"])
        where = _key_path(loc) or "(top level)"
        if error["type"] == "extra_forbidden":
            allowed = _allowed_keys(loc[:-1])
            hint = f" (allowed: {', '.join(allowed)})" if allowed else ""
            parts.append(f"{where}: unknown key{hint}")
        else:
            # Our validators raise ValueError with a full sentence; pydantic's prefix is noise.
            message = error["msg"].removeprefix("Value error, ")
            parts.append(f"{where}: {message}")
    return "; ".join(parts)


def _key_path(loc: tuple[int | str, ...]) -> str:
    text = ""
    for item in loc:
        if isinstance(item, int):
            text += f"[{item}]"
        else:
            text += f".{item}" if text else item
    return text


def _allowed_keys(loc: tuple[int | str, ...]) -> list[str]:
    model: type[BaseModel] = TetherConfig
    for item in loc:
        field = model.model_fields.get(str(item))
        section = _section_model(field.annotation) if field is not None else None
        if section is None:
            return []
        model = section
    return list(model.model_fields)


def _read(path: Path, shown: str) -> object:
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{shown}: cannot read: {exc}") from None
    suffix = path.suffix.lower()
    try:
        if suffix == ".toml":
            return tomllib.loads(text)
        if suffix in (".yaml", ".yml"):
            # An empty YAML file is an empty configuration, not an error.
            loaded = yaml.safe_load(text)
            return {} if loaded is None else loaded
        if suffix == ".json":
            return json.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{shown}: invalid TOML: {exc}") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{shown}: invalid YAML: {exc}") from None
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{shown}: invalid JSON: {exc}") from None
    raise ConfigError(f"{shown}: unknown config format (use .toml, .yaml, .yml or .json)")
