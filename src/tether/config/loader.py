"""Finding, reading and validating the configuration, and layering its sources.

The sources, highest precedence first: command-line flags, TETHER_* environment variables, the
project file (tether.toml... in the working directory, or -f FILE), the user file
($XDG_CONFIG_HOME/tether/config.toml) and the defaults. `resolve_config` is the one place that
order is applied.
"""

import copy
import functools
import json
import os
import tomllib
import types
import typing
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ValidationError
from pydantic_core import ErrorDetails

from tether.config.errors import ConfigError
from tether.config.models import TetherConfig

# Looked for in the working directory, first found wins.
CONFIG_NAMES = ("tether.toml", "tether.yaml", "tether.yml", "tether.json")
# Looked for in the user config directory (see user_config_dir), first found wins.
USER_CONFIG_NAMES = ("config.toml", "config.yaml", "config.yml", "config.json")
ENV_PREFIX = "TETHER_"
# The schema nests a few levels; deeper data is refused before anything recurses into it
# (parsers, copy.deepcopy and validation recurse, and would hit Python's recursion limit).
MAX_DEPTH = 32
_FORMATS = {".toml": "TOML", ".yaml": "YAML", ".yml": "YAML", ".json": "JSON"}
_TOO_DEEP = object()  # what a parser that ran out of stack returned

# Highest first; the names `tether config` shows as the source of a value.
PRECEDENCE = (
    "command line",
    "environment (TETHER_*)",
    "project file",
    "user file",
    "default",
)
PRECEDENCE_HELP = (
    "Where settings come from, highest precedence first: command-line flags; TETHER_* "
    "environment variables; the project file (tether.toml, .yaml, .yml or .json in the working "
    "directory, or -f FILE); the user file ($XDG_CONFIG_HOME/tether/config.toml, .yaml, .yml or "
    ".json, by default ~/.config/tether/config.toml); the defaults. Files have this schema; the "
    "project file's tables merge over the user file's key by key, and a value (a list or a table "
    "such as agent.labels is one value) replaces the one below it whole. Each setting's "
    "variable (x-env) is TETHER_ followed by its key path upper-cased with _ between levels, "
    "e.g. TETHER_AGENT_IMAGE for agent.image and TETHER_NAMESPACE for namespace; lists are "
    'comma-separated or JSON (["a", "b"]), tables JSON; an empty variable counts as unset.'
)

Flags = Callable[[TetherConfig], TetherConfig]


def find_config(cwd: Path) -> Path | None:
    """The first of CONFIG_NAMES that exists in `cwd`, or None."""
    return _first_file(cwd, CONFIG_NAMES)


def user_config_dir(environ: Mapping[str, str] = os.environ, home: Path | None = None) -> Path:
    """The directory of the user file: $XDG_CONFIG_HOME/tether, else `home`/.config/tether.

    `home` defaults to $HOME from `environ`, then the account's home directory. As the XDG
    spec says, an empty or relative XDG_CONFIG_HOME is ignored.
    """
    xdg = environ.get("XDG_CONFIG_HOME", "")
    if xdg and Path(xdg).is_absolute():
        return Path(xdg) / "tether"
    if home is None:
        home = Path(environ["HOME"]) if environ.get("HOME") else Path.home()
    return home / ".config" / "tether"


def find_user_config(
    environ: Mapping[str, str] = os.environ, home: Path | None = None
) -> Path | None:
    """The first of USER_CONFIG_NAMES that exists in user_config_dir(environ, home), or None."""
    return _first_file(user_config_dir(environ, home), USER_CONFIG_NAMES)


def _first_file(directory: Path, names: Sequence[str]) -> Path | None:
    for name in names:
        candidate = directory / name
        if candidate.is_file():
            return candidate
    return None


# --- Layers -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Layer:
    """Settings from one source, shaped like the config file (nested tables).

    `source` names it in errors and in `tether config`: a file path, or "environment".
    `variables` maps each key path the environment set to its variable, so that errors and
    sources name the variable.
    """

    source: str
    data: dict[str, Any]
    variables: Mapping[tuple[str, ...], str] = field(default_factory=dict)

    def apply(self, config: TetherConfig) -> TetherConfig:
        """`config` with this layer merged on top (see merge_settings), validated again.

        Raises ConfigError naming this layer (or its variables) when the result is invalid.
        """
        merged = merge_settings(config.model_dump(), self.data)
        try:
            return TetherConfig.model_validate(merged)
        except ValidationError as exc:
            if self.variables:
                raise ConfigError(self._describe_for_variables(exc)) from None
            raise ConfigError(f"{self.source}: {describe_validation_error(exc)}") from None

    def source_of(self, key: tuple[str, ...]) -> str:
        """What set `key` in this layer: its variable, or the layer's source."""
        return self.variables.get(key, self.source)

    def _describe_for_variables(self, exc: ValidationError) -> str:
        parts = []
        for error in exc.errors():
            loc = tuple(error["loc"])
            names = tuple(str(item) for item in loc)
            owner = next(
                ((key, name) for key, name in self.variables.items() if names[: len(key)] == key),
                None,
            )
            if owner is not None:
                # The variable already says which key; only a list index or table key is added.
                key, name = owner
                rest = _key_path(loc[len(key) :])
                parts.append(
                    f"{name}: {rest}: {_message(error)}" if rest else f"{name}: {_message(error)}"
                )
                continue
            # A check across keys (a model validator): name every variable under it.
            under = [name for key, name in self.variables.items() if key[: len(names)] == names]
            parts.append(f"{', '.join(under) or self.source}: {_describe_error(error)}")
        return "; ".join(parts)


def merge_settings(
    base: Mapping[str, Any], over: Mapping[str, Any], model: type[BaseModel] = TetherConfig
) -> dict[str, Any]:
    """`base` with `over` on top, both shaped like the config file of `model`.

    Sections (the model's nested tables: agent, network.dns, ...) merge key by key; any other
    value, a list or a table-valued setting such as agent.labels included, replaces the one in
    `base` whole. Keys the model does not know are kept, for validation to report.
    """
    merged = copy.deepcopy(dict(base))
    for key, value in over.items():
        spec = model.model_fields.get(key)
        section = _model_of(spec.annotation) if spec is not None else None
        below = merged.get(key)
        if section is not None and isinstance(value, Mapping) and isinstance(below, Mapping):
            merged[key] = merge_settings(below, value, section)
        else:
            merged[key] = copy.deepcopy(value)
    return merged


def file_layer(path: Path, shown: str) -> Layer:
    """The settings in the file at `path`, named `shown` in errors.

    A relative `kubeconfig` is made relative to the file's directory, as kubectl does.
    Raises ConfigError (one line naming the file) when it cannot be read or parsed.
    """
    data = _read(path, shown)
    if not isinstance(data, dict):
        raise ConfigError(f"{shown}: expected a table of settings, got {type(data).__name__}")
    kubeconfig = data.get("kubeconfig")
    if isinstance(kubeconfig, str):
        try:
            kube = Path(kubeconfig).expanduser()
        except RuntimeError as exc:  # ~USER of a user this machine does not know
            raise ConfigError(f"{shown}: kubeconfig: cannot expand {kubeconfig!r}: {exc}") from None
        if not kube.is_absolute():
            data = {**data, "kubeconfig": str(path.parent / kube)}
    return Layer(shown, data)


def project_layer(path: Path | None, cwd: Path) -> Layer | None:
    """The project file's layer: `path` (relative to `cwd`) or, if None, the first of
    CONFIG_NAMES in `cwd`; None when there is none. Raises ConfigError if `path` is missing."""
    if path is None:
        found = find_config(cwd)
        return None if found is None else file_layer(found, found.name)
    full = path if path.is_absolute() else cwd / path
    if not full.is_file():
        raise ConfigError(f"{path}: no such config file")
    return file_layer(full, str(path))


def user_layer(environ: Mapping[str, str] = os.environ, home: Path | None = None) -> Layer | None:
    """The user file's layer (see find_user_config), or None when there is no user file."""
    found = find_user_config(environ, home)
    return None if found is None else file_layer(found, str(found))


def load_config(path: Path | None, cwd: Path) -> TetherConfig:
    """Load the project file alone, over the defaults: `path` (relative to `cwd`) or, if None,
    the first tether.{toml,yaml,yml,json} in `cwd`; the defaults when there is none.

    Raises ConfigError (one line naming the file and the bad key) on any problem. The user file
    and the environment are not read: see resolve_config for that.
    """
    layer = project_layer(path, cwd)
    return TetherConfig() if layer is None else layer.apply(TetherConfig())


def validate_config(data: object, source: str) -> TetherConfig:
    """Validate already-parsed data; `source` names where it came from in errors."""
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: expected a table of settings, got {type(data).__name__}")
    try:
        return TetherConfig.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(f"{source}: {describe_validation_error(exc)}") from None


# --- Environment variables ----------------------------------------------------------------


@dataclass(frozen=True)
class EnvSetting:
    """The environment variable of one config key, and how its value is read.

    `kind` "text": the value as is, for validation to convert to the field's type (numbers,
    booleans true/false/1/0/yes/no); "list": comma-separated items (blanks around them and
    empty ones dropped) or a JSON array `[...]`; "table": a JSON object.
    """

    name: str
    key: tuple[str, ...]
    kind: Literal["text", "list", "table"]

    @property
    def dotted(self) -> str:
        """The key as the config file and `tether config` write it: `agent.image`."""
        return ".".join(self.key)


def env_var_name(key: Sequence[str]) -> str:
    """TETHER_ and the key path upper-cased, `_` between levels, `-` and `.` made `_`."""
    parts = (part.upper().replace("-", "_").replace(".", "_") for part in key)
    return ENV_PREFIX + "_".join(parts)


@functools.cache
def env_settings() -> tuple[EnvSetting, ...]:
    """One EnvSetting for every leaf key of TetherConfig, in the model's order."""
    return tuple(_settings_of(TetherConfig, ()))


def _settings_of(model: type[BaseModel], prefix: tuple[str, ...]) -> Iterator[EnvSetting]:
    for name, spec in model.model_fields.items():
        key = (*prefix, name)
        section = _model_of(spec.annotation)
        if section is not None:
            yield from _settings_of(section, key)
        else:
            yield EnvSetting(env_var_name(key), key, _kind(spec.annotation))


def _kind(annotation: object) -> Literal["text", "list", "table"]:
    annotation = _strip(annotation)
    origin = typing.get_origin(annotation)
    if origin in (list, tuple, set, frozenset):
        return "list"
    if origin is dict:
        return "table"
    return "text"


def parse_env_value(setting: EnvSetting, text: str) -> object:
    """The value of `setting`'s variable as the config file would hold it.

    Raises ValueError (a short reason, without the variable's name) on a malformed list or
    table; other types are checked by validation.
    """
    if setting.kind == "text":
        return text
    if setting.kind == "list":
        stripped = text.strip()
        # Only a whole `[...]` is JSON, so a glob or regex that merely starts with `[` is not.
        if stripped.startswith("[") and stripped.endswith("]"):
            value = _json(text)
            if not isinstance(value, list):
                raise ValueError("expected a JSON array")
            return value
        return [item.strip() for item in text.split(",") if item.strip()]
    value = _json(text)
    if not isinstance(value, dict):
        raise ValueError('expected a JSON object, e.g. {"key": "value"}')
    return value


def _json(text: str) -> object:
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ValueError(f"invalid JSON: {exc}") from None
    except RecursionError:
        pass
    else:
        if not _too_deep(value):
            return value
    raise ValueError(f"invalid JSON: nested more than {MAX_DEPTH} levels deep")


def _too_deep(data: object) -> bool:
    """Whether lists and tables in `data` nest more than MAX_DEPTH levels (YAML's anchors
    can make it refer to itself: that is deeper than any limit)."""
    deepest: dict[int, int] = {}  # by id: a shared value is looked into again only deeper
    stack: list[tuple[object, int]] = [(data, 1)]
    while stack:
        value, depth = stack.pop()
        if not isinstance(value, dict | list) or deepest.get(id(value), 0) >= depth:
            continue
        if depth > MAX_DEPTH:
            return True
        deepest[id(value)] = depth
        children = value.values() if isinstance(value, dict) else value
        stack.extend((child, depth + 1) for child in children)
    return False


def env_layer(environ: Mapping[str, str] = os.environ) -> Layer:
    """The settings in the TETHER_* variables of `environ`.

    An empty variable counts as unset. Variables that name no setting are ignored: the
    environment is shared with other programs (and tether's own, e.g. TETHER_SECRET).
    Raises ConfigError naming the variable when its value is malformed.
    """
    data: dict[str, Any] = {}
    variables: dict[tuple[str, ...], str] = {}
    for setting in env_settings():
        text = environ.get(setting.name, "")
        if not text:
            continue
        try:
            value = parse_env_value(setting, text)
        except ValueError as exc:
            raise ConfigError(f"{setting.name}: {exc}") from None
        table = data
        for part in setting.key[:-1]:
            table = table.setdefault(part, {})
        table[setting.key[-1]] = value
        variables[setting.key] = setting.name
    return Layer("environment", data, variables)


# --- Precedence ---------------------------------------------------------------------------


@dataclass(frozen=True)
class ResolvedConfig:
    """The effective configuration and, for each leaf key (`agent.image`), what set it: a
    file path, a TETHER_* variable, "command line" or "default"."""

    config: TetherConfig
    sources: dict[str, str]


def config_layers(
    config_path: Path | None,
    cwd: Path,
    *,
    environ: Mapping[str, str] = os.environ,
    home: Path | None = None,
) -> list[Layer]:
    """The layers below the command line, lowest precedence first: the user file, the project
    file (`config_path` relative to `cwd`, or found in `cwd`), the environment."""
    layers = [user_layer(environ, home), project_layer(config_path, cwd), env_layer(environ)]
    return [layer for layer in layers if layer is not None]


def resolve_config(
    config_path: Path | None,
    cwd: Path,
    flags: Flags | None = None,
    *,
    environ: Mapping[str, str] = os.environ,
    home: Path | None = None,
) -> ResolvedConfig:
    """The effective configuration: the defaults, then the user file, the project file, the
    environment and last `flags` (the command line, a function of the config below it), each
    on top of the ones before (see PRECEDENCE_HELP).

    Each layer is validated as it is applied, so a ConfigError names the layer that made the
    configuration invalid: a file path, a variable, or "command line".
    """
    config = TetherConfig()
    sources = dict.fromkeys(_leaves(config), "default")
    for layer in config_layers(config_path, cwd, environ=environ, home=home):
        config = layer.apply(config)
        set_here = list(_set_keys(TetherConfig, layer.data, ()))
        updated: dict[str, str] = {}
        for dotted in _leaves(config):
            key = tuple(dotted.split("."))
            setter = next((k for k in set_here if key[: len(k)] == k), None)
            updated[dotted] = (
                layer.source_of(setter) if setter is not None else sources.get(dotted, "default")
            )
        sources = updated
    if flags is not None:
        before = _leaves(config)
        config = flags(config)
        after = _leaves(config)
        sources = {
            dotted: "command line"
            if dotted not in before or before[dotted] != value
            else sources.get(dotted, "default")
            for dotted, value in after.items()
        }
    return ResolvedConfig(config, sources)


def _leaves(config: TetherConfig) -> dict[str, Any]:
    return dict(_flatten(TetherConfig, config.model_dump(), ()))


def _flatten(
    model: type[BaseModel], data: Mapping[str, Any], prefix: tuple[str, ...]
) -> Iterator[tuple[str, Any]]:
    for name, spec in model.model_fields.items():
        value = data.get(name)
        section = _model_of(spec.annotation)
        if section is not None and isinstance(value, Mapping):
            yield from _flatten(section, value, (*prefix, name))
        else:
            yield ".".join((*prefix, name)), value


def _set_keys(
    model: type[BaseModel], data: Mapping[str, Any], prefix: tuple[str, ...]
) -> Iterator[tuple[str, ...]]:
    for name, value in data.items():
        spec = model.model_fields.get(name)
        if spec is None:
            continue
        section = _model_of(spec.annotation)
        if section is not None and isinstance(value, Mapping):
            yield from _set_keys(section, value, (*prefix, name))
        else:
            yield (*prefix, name)


# --- Command-line overrides ---------------------------------------------------------------


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
    for name, field_info in model.model_fields.items():
        section = _section_model(field_info.annotation)
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


def _strip(annotation: object) -> object:
    """`annotation` without `| None` and Annotated[...] wrappers."""
    while True:
        origin = typing.get_origin(annotation)
        if origin is typing.Annotated:
            annotation = typing.get_args(annotation)[0]
        elif origin in (typing.Union, types.UnionType):
            others = [arg for arg in typing.get_args(annotation) if arg is not type(None)]
            if len(others) != 1:
                return annotation
            annotation = others[0]
        else:
            return annotation


def _model_of(annotation: object) -> type[BaseModel] | None:
    """The section model of a field, optional sections (incoming.http_filter) included."""
    return _section_model(_strip(annotation))


# --- Schema and error messages ------------------------------------------------------------


def config_schema() -> dict[str, Any]:
    """The JSON schema of the configuration file, with every field described.

    The top-level description adds the precedence of the sources, the user file's path and the
    environment variables' naming rule; each leaf property carries its variable as `x-env`.
    """
    schema = TetherConfig.model_json_schema()
    schema["description"] = f"{schema.get('description', '').strip()} {PRECEDENCE_HELP}".strip()
    schema["x-precedence"] = list(PRECEDENCE)
    for setting in env_settings():
        properties = schema["properties"]
        model: type[BaseModel] = TetherConfig
        for part in setting.key[:-1]:
            section = _model_of(model.model_fields[part].annotation)
            assert section is not None, "env_settings only descends into sections"
            model = section
            properties = schema["$defs"][model.__name__]["properties"]
        properties[setting.key[-1]]["x-env"] = setting.name
    return schema


def describe_validation_error(exc: ValidationError) -> str:
    """One line: `key.path: message` for each error, joined by "; "."""
    return "; ".join(_describe_error(error) for error in exc.errors())


def _describe_error(error: ErrorDetails) -> str:
    loc = tuple(error["loc"])
    where = _key_path(loc) or "(top level)"
    if error["type"] == "extra_forbidden":
        allowed = _allowed_keys(loc[:-1])
        hint = f" (allowed: {', '.join(allowed)})" if allowed else ""
        return f"{where}: unknown key{hint}"
    return f"{where}: {_message(error)}"


def _message(error: ErrorDetails) -> str:
    # Our validators raise ValueError with a full sentence; pydantic's prefix is noise.
    return error["msg"].removeprefix("Value error, ")


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
        field_info = model.model_fields.get(str(item))
        section = _model_of(field_info.annotation) if field_info is not None else None
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
    fmt = _FORMATS.get(suffix)
    try:
        if suffix == ".toml":
            data: object = tomllib.loads(text)
        elif suffix in (".yaml", ".yml"):
            # An empty YAML file is an empty configuration, not an error.
            loaded = yaml.safe_load(text)
            data = {} if loaded is None else loaded
        elif suffix == ".json":
            data = json.loads(text)
        else:
            raise ConfigError(f"{shown}: unknown config format (use .toml, .yaml, .yml or .json)")
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{shown}: invalid TOML: {exc}") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{shown}: invalid YAML: {exc}") from None
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{shown}: invalid JSON: {exc}") from None
    except RecursionError:
        data = _TOO_DEEP
    except ValueError as exc:
        # Beyond their own error types the parsers raise ValueError: a date that does not
        # exist (YAML's 2001-02-30), an integer longer than int() takes (4300 digits).
        raise ConfigError(f"{shown}: invalid {fmt}: {exc}") from None
    if data is _TOO_DEEP or _too_deep(data):
        raise ConfigError(f"{shown}: invalid {fmt}: nested more than {MAX_DEPTH} levels deep")
    return data
