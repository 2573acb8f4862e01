"""The layers of the configuration: the user file, the project file, TETHER_* variables and
the command line, and the one order they are applied in."""

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest

from tether.config import (
    PRECEDENCE_HELP,
    ConfigError,
    TetherConfig,
    config_schema,
    env_layer,
    env_settings,
    env_var_name,
    find_user_config,
    load_config,
    merge_cli,
    merge_settings,
    parse_env_value,
    resolve_config,
    user_config_dir,
)
from tether.config.loader import EnvSetting


def _resolve(
    tmp_path: Path,
    environ: Mapping[str, str] | None = None,
    flags: dict[str, Any] | None = None,
    config_path: Path | None = None,
) -> tuple[TetherConfig, dict[str, str]]:
    """resolve_config with the user file in tmp_path/xdg/tether and the project in tmp_path/proj,
    never the real user's."""
    env = {"XDG_CONFIG_HOME": str(tmp_path / "xdg"), "HOME": str(tmp_path / "home")}
    env.update(environ or {})
    project = tmp_path / "proj"
    project.mkdir(exist_ok=True)
    resolved = resolve_config(
        config_path,
        project,
        None if flags is None else (lambda config: merge_cli(config, **flags)),
        environ=env,
        home=tmp_path / "home",
    )
    return resolved.config, resolved.sources


def _user_file(tmp_path: Path, text: str, name: str = "config.toml") -> Path:
    path = tmp_path / "xdg" / "tether" / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def _project_file(tmp_path: Path, text: str, name: str = "tether.toml") -> Path:
    path = tmp_path / "proj" / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def _get(config: TetherConfig, dotted: str) -> object:
    value: Any = config.model_dump()
    for part in dotted.split("."):
        value = value[part]
    return value


# --- Environment variable names and values ----------------------------------------------


@pytest.mark.parametrize(
    ("key", "name"),
    [
        (("namespace",), "TETHER_NAMESPACE"),
        (("agent", "image"), "TETHER_AGENT_IMAGE"),
        (("agent", "idle_timeout"), "TETHER_AGENT_IDLE_TIMEOUT"),
        (("network", "dns", "enabled"), "TETHER_NETWORK_DNS_ENABLED"),
        (("incoming", "http_filter", "path"), "TETHER_INCOMING_HTTP_FILTER_PATH"),
        (("some-key", "with.dots"), "TETHER_SOME_KEY_WITH_DOTS"),
    ],
)
def test_env_var_name(key: tuple[str, ...], name: str) -> None:
    assert env_var_name(key) == name


def _model_leaves(schema: dict[str, Any], props: dict[str, Any], prefix: str) -> list[str]:
    leaves = []
    for name, spec in props.items():
        refs = [spec.get("$ref")] + [s.get("$ref") for s in spec.get("anyOf", [])]
        ref = next((r for r in refs if r), None)
        if ref is None:
            leaves.append(prefix + name)
        else:
            sub = schema["$defs"][ref.rsplit("/", 1)[1]]["properties"]
            leaves.extend(_model_leaves(schema, sub, f"{prefix}{name}."))
    return leaves


def test_every_leaf_key_has_one_variable() -> None:
    schema = TetherConfig.model_json_schema()
    leaves = _model_leaves(schema, schema["properties"], "")
    assert [s.dotted for s in env_settings()] == leaves
    names = [s.name for s in env_settings()]
    assert len(set(names)) == len(names)
    assert all(s.name == env_var_name(s.key) for s in env_settings())


@pytest.mark.parametrize(
    ("name", "kind"),
    [
        ("TETHER_TARGET", "text"),
        ("TETHER_AGENT_PORT", "text"),
        ("TETHER_AGENT_PRIVILEGED", "text"),
        ("TETHER_AGENT_IMAGE_PULL_POLICY", "text"),
        ("TETHER_AGENT_LABELS", "table"),
        ("TETHER_ENV_EXCLUDE", "list"),
        ("TETHER_INCOMING_PORTS", "list"),
        ("TETHER_INCOMING_PORT_MAP", "table"),
        ("TETHER_INCOMING_HTTP_FILTER_PATH", "text"),
        ("TETHER_INCOMING_HTTP_FILTER_METHODS", "list"),
    ],
)
def test_variable_kinds_follow_the_field_types(name: str, kind: str) -> None:
    assert {s.name: s.kind for s in env_settings()}[name] == kind


TEXT = EnvSetting("TETHER_X", ("x",), "text")
LIST = EnvSetting("TETHER_X", ("x",), "list")
TABLE = EnvSetting("TETHER_X", ("x",), "table")


@pytest.mark.parametrize(
    ("setting", "text", "value"),
    [
        (TEXT, "docker.io/tether/agent:dev", "docker.io/tether/agent:dev"),
        (TEXT, " spaced ", " spaced "),
        (TEXT, "a,b", "a,b"),
        (LIST, "a", ["a"]),
        (LIST, "a,b", ["a", "b"]),
        (LIST, " a , b ,", ["a", "b"]),
        (LIST, "80,443", ["80", "443"]),
        (LIST, '["a,b", "c"]', ["a,b", "c"]),
        (LIST, " [80, 443] ", [80, 443]),
        (LIST, "[]", []),
        (LIST, "[Xx]-dev: a", ["[Xx]-dev: a"]),
        (TABLE, '{"team": "a"}', {"team": "a"}),
        (TABLE, '{"8080": 9000}', {"8080": 9000}),
        (TABLE, "{}", {}),
    ],
)
def test_parse_env_value(setting: EnvSetting, text: str, value: object) -> None:
    assert parse_env_value(setting, text) == value


@pytest.mark.parametrize(
    ("setting", "text", "message"),
    [
        (LIST, "[1,]", "invalid JSON"),
        (TABLE, "team=a", "invalid JSON"),
        (TABLE, "[1]", "expected a JSON object"),
        (TABLE, '"x"', "expected a JSON object"),
    ],
)
def test_parse_env_value_errors(setting: EnvSetting, text: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_env_value(setting, text)


@pytest.mark.parametrize(
    ("environ", "key", "value"),
    [
        (
            {"TETHER_AGENT_IMAGE": "docker.io/tether/agent:dev"},
            "agent.image",
            "docker.io/tether/agent:dev",
        ),
        ({"TETHER_NAMESPACE": "shop"}, "namespace", "shop"),
        ({"TETHER_AGENT_PORT": "5000"}, "agent.port", 5000),
        ({"TETHER_AGENT_IDLE_TIMEOUT": "2.5"}, "agent.idle_timeout", 2.5),
        ({"TETHER_AGENT_PRIVILEGED": "true"}, "agent.privileged", True),
        ({"TETHER_AGENT_PRIVILEGED": "yes"}, "agent.privileged", True),
        ({"TETHER_AGENT_PRIVILEGED": "1"}, "agent.privileged", True),
        ({"TETHER_NETWORK_DNS_ENABLED": "false"}, "network.dns.enabled", False),
        ({"TETHER_NETWORK_DNS_ENABLED": "no"}, "network.dns.enabled", False),
        ({"TETHER_NETWORK_DNS_ENABLED": "0"}, "network.dns.enabled", False),
        ({"TETHER_AGENT_IMAGE_PULL_POLICY": "Never"}, "agent.image_pull_policy", "Never"),
        ({"TETHER_ENV_EXCLUDE": "SECRET_*,TOKEN"}, "env.exclude", ["SECRET_*", "TOKEN"]),
        ({"TETHER_INCOMING_PORTS": "80, 443"}, "incoming.ports", [80, 443]),
        ({"TETHER_INCOMING_PORTS": "[80]"}, "incoming.ports", [80]),
        ({"TETHER_INCOMING_PORT_MAP": '{"8080": 9000}'}, "incoming.port_map", {8080: 9000}),
        ({"TETHER_AGENT_LABELS": '{"team": "a"}'}, "agent.labels", {"team": "a"}),
        (
            {"TETHER_INCOMING_HTTP_FILTER_METHODS": "get,post"},
            "incoming.http_filter.methods",
            ["GET", "POST"],
        ),
        # Empty counts as unset; names that are no setting (tether's own, other tools') are
        # left alone.
        ({"TETHER_NAMESPACE": ""}, "namespace", None),
        ({"TETHER_ENV_EXCLUDE": ""}, "env.exclude", []),
        (
            {"TETHER_SECRET": "00ff", "TETHER_BENCH_AGENT_IMAGE": "x"},
            "agent.image",
            TetherConfig().agent.image,
        ),
        (
            {"TETHER_AGENT_IMAGEE": "x", "tether_agent_image": "y"},
            "agent.image",
            TetherConfig().agent.image,
        ),
    ],
)
def test_variables_set_values(
    tmp_path: Path, environ: dict[str, str], key: str, value: object
) -> None:
    config, _ = _resolve(tmp_path, environ)
    assert _get(config, key) == value


@pytest.mark.parametrize(
    ("environ", "message"),
    [
        (
            {"TETHER_AGENT_PORT": "abc"},
            "TETHER_AGENT_PORT: Input should be a valid integer, unable to parse string as an "
            "integer",
        ),
        (
            {"TETHER_AGENT_IDLE_TIMEOUT": "abc"},
            "TETHER_AGENT_IDLE_TIMEOUT: Input should be a valid number, unable to parse string "
            "as a number",
        ),
        (
            {"TETHER_AGENT_PRIVILEGED": "maybe"},
            "TETHER_AGENT_PRIVILEGED: Input should be a valid boolean, unable to interpret input",
        ),
        (
            {"TETHER_AGENT_PORT": "70000"},
            "TETHER_AGENT_PORT: Input should be less than or equal to 65535",
        ),
        (
            {"TETHER_INCOMING_PORTS": "80,x"},
            "TETHER_INCOMING_PORTS: [1]: Input should be a valid integer, unable to parse string "
            "as an integer",
        ),
        ({"TETHER_AGENT_LABELS": "team=a"}, "TETHER_AGENT_LABELS: invalid JSON: Expecting value"),
        ({"TETHER_FS_MODE": "rw"}, "TETHER_FS_MODE: Input should be 'local', 'read' or 'write'"),
        (
            {"TETHER_INCOMING_MODE": "mirror", "TETHER_INCOMING_HTTP_FILTER_PATH": "^/api"},
            "TETHER_INCOMING_MODE, TETHER_INCOMING_HTTP_FILTER_PATH: incoming: http_filter "
            'applies to mode "steal" only (mirror copies all)',
        ),
    ],
)
def test_bad_variable_is_one_line_naming_it(
    tmp_path: Path, environ: dict[str, str], message: str
) -> None:
    with pytest.raises(ConfigError) as info:
        _resolve(tmp_path, environ)
    assert str(info.value).startswith(message)
    assert "\n" not in str(info.value)


def test_env_layer_reads_only_the_mapping_given() -> None:
    layer = env_layer({"TETHER_AGENT_IMAGE": "a", "TETHER_NETWORK_DNS_ENABLED": "no"})
    assert layer.data == {"agent": {"image": "a"}, "network": {"dns": {"enabled": "no"}}}
    assert layer.source_of(("agent", "image")) == "TETHER_AGENT_IMAGE"
    assert env_layer({}).data == {}


# --- Merging ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("base", "over", "merged"),
    [
        ({}, {}, {}),
        ({"namespace": "a"}, {}, {"namespace": "a"}),
        ({}, {"namespace": "b"}, {"namespace": "b"}),
        ({"namespace": "a"}, {"namespace": "b"}, {"namespace": "b"}),
        (
            {"agent": {"image": "u", "port": 1}},
            {"agent": {"port": 2}},
            {"agent": {"image": "u", "port": 2}},
        ),
        (
            {"network": {"dns": {"enabled": False, "local": ["a"]}, "outgoing": {"mode": "local"}}},
            {"network": {"dns": {"local": ["b"]}}},
            {"network": {"dns": {"enabled": False, "local": ["b"]}, "outgoing": {"mode": "local"}}},
        ),
        # Lists are replaced, not concatenated.
        (
            {"env": {"exclude": ["A", "B"]}},
            {"env": {"exclude": ["C"]}},
            {"env": {"exclude": ["C"]}},
        ),
        ({"env": {"exclude": ["A"]}}, {"env": {"exclude": []}}, {"env": {"exclude": []}}),
        # A table-valued setting is one value too.
        (
            {"agent": {"labels": {"team": "a"}}},
            {"agent": {"labels": {"app": "b"}}},
            {"agent": {"labels": {"app": "b"}}},
        ),
        # An optional section merges when both sides have it, and can be set or cleared.
        (
            {"incoming": {"http_filter": {"path": "^/a", "match": "any"}}},
            {"incoming": {"http_filter": {"path": "^/b"}}},
            {"incoming": {"http_filter": {"path": "^/b", "match": "any"}}},
        ),
        (
            {"incoming": {"http_filter": None}},
            {"incoming": {"http_filter": {"path": "^/b"}}},
            {"incoming": {"http_filter": {"path": "^/b"}}},
        ),
        (
            {"incoming": {"http_filter": {"path": "^/a"}}},
            {"incoming": {"http_filter": None}},
            {"incoming": {"http_filter": None}},
        ),
        # A section given as something else replaces it, for validation to report.
        ({"agent": {"image": "u"}}, {"agent": "x"}, {"agent": "x"}),
        ({"agent": {"image": "u"}}, {"agent": {"bogus": 1}}, {"agent": {"image": "u", "bogus": 1}}),
    ],
)
def test_merge_settings(base: dict[str, Any], over: dict[str, Any], merged: dict[str, Any]) -> None:
    assert merge_settings(base, over) == merged


def test_merge_settings_leaves_its_inputs_alone() -> None:
    base = {"agent": {"labels": {"a": "1"}}}
    over = {"agent": {"port": 2}}
    merged = merge_settings(base, over)
    merged["agent"]["labels"]["b"] = "2"
    assert base == {"agent": {"labels": {"a": "1"}}}
    assert over == {"agent": {"port": 2}}


# --- Precedence ---------------------------------------------------------------------------

LAYERS = ("flag", "env", "project", "user")


@pytest.mark.parametrize(
    ("present", "namespace", "image_source"),
    [
        (("flag", "env", "project", "user"), "from-flag", "command line"),
        (("env", "project", "user"), "from-env", "TETHER_AGENT_IMAGE"),
        (("project", "user"), "from-project", "tether.toml"),
        (("user",), "from-user", "USER"),
        ((), None, "default"),
        # Each layer alone, and gaps in between.
        (("flag",), "from-flag", "command line"),
        (("env",), "from-env", "TETHER_AGENT_IMAGE"),
        (("project",), "from-project", "tether.toml"),
        (("flag", "user"), "from-flag", "command line"),
        (("env", "user"), "from-env", "TETHER_AGENT_IMAGE"),
    ],
)
def test_precedence_flag_env_project_user_default(
    tmp_path: Path, present: tuple[str, ...], namespace: str | None, image_source: str
) -> None:
    user = _user_file(tmp_path, 'namespace = "from-user"\n[agent]\nimage = "user/agent"\n')
    if "user" not in present:
        user.unlink()
    if "project" in present:
        _project_file(tmp_path, 'namespace = "from-project"\n[agent]\nimage = "project/agent"\n')
    environ = {}
    if "env" in present:
        environ = {"TETHER_NAMESPACE": "from-env", "TETHER_AGENT_IMAGE": "env/agent"}
    flags = {"namespace": "from-flag", "agent_image": "flag/agent"} if "flag" in present else {}
    config, sources = _resolve(tmp_path, environ, flags)
    images = {
        "command line": "flag/agent",
        "TETHER_AGENT_IMAGE": "env/agent",
        "tether.toml": "project/agent",
        "USER": "user/agent",
        "default": TetherConfig().agent.image,
    }
    assert config.namespace == namespace
    assert config.agent.image == images[image_source]
    assert sources["agent.image"] == (str(user) if image_source == "USER" else image_source)


def test_project_file_merges_over_user_file_key_by_key(tmp_path: Path) -> None:
    user = _user_file(
        tmp_path,
        'namespace = "u"\ncontext = "dev"\n[agent]\nimage = "u/agent"\nport = 5000\n'
        '[env]\nexclude = ["A", "B"]\n[network.dns]\nenabled = false\nlocal = ["*.corp"]\n',
    )
    _project_file(
        tmp_path,
        'namespace = "p"\n[agent]\nport = 6000\n[env]\nexclude = ["C"]\n'
        '[network.dns]\nlocal = ["*.lan"]\n',
    )
    config, sources = _resolve(tmp_path, {"TETHER_AGENT_IDLE_TIMEOUT": "5"})
    assert (config.namespace, config.context) == ("p", "dev")
    assert (config.agent.image, config.agent.port, config.agent.idle_timeout) == (
        "u/agent",
        6000,
        5,
    )
    assert config.env.exclude == ["C"]
    assert (config.network.dns.enabled, config.network.dns.local) == (False, ["*.lan"])
    assert sources["namespace"] == "tether.toml"
    assert sources["context"] == str(user)
    assert sources["agent.image"] == str(user)
    assert sources["agent.port"] == "tether.toml"
    assert sources["agent.idle_timeout"] == "TETHER_AGENT_IDLE_TIMEOUT"
    assert sources["agent.startup_timeout"] == "default"
    assert sources["network.dns.enabled"] == str(user)


def test_flags_see_the_layers_below(tmp_path: Path) -> None:
    _user_file(tmp_path, "[incoming]\nport_map = { 8080 = 9000 }\n")

    def flags(config: TetherConfig) -> TetherConfig:
        port_map = {**config.incoming.port_map, 81: 82}
        return config.model_copy(
            update={"incoming": config.incoming.model_copy(update={"port_map": port_map})}
        )

    resolved = resolve_config(
        None, tmp_path, flags, environ={"XDG_CONFIG_HOME": str(tmp_path / "xdg")}
    )
    assert resolved.config.incoming.port_map == {8080: 9000, 81: 82}
    assert resolved.sources["incoming.port_map"] == "command line"


def test_explicit_project_file_is_layered_too(tmp_path: Path) -> None:
    _user_file(tmp_path, 'context = "dev"\n')
    _project_file(tmp_path, 'namespace = "cwd"\n')
    other = tmp_path / "other.yaml"
    other.write_text("namespace: explicit\n")
    config, sources = _resolve(tmp_path, config_path=other)
    assert (config.namespace, config.context) == ("explicit", "dev")
    assert sources["namespace"] == str(other)


def test_load_config_reads_the_project_file_alone(tmp_path: Path) -> None:
    _user_file(tmp_path, 'context = "dev"\n')
    assert load_config(None, tmp_path) == TetherConfig()


# --- The user file ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("environ", "home", "expected"),
    [
        ({"XDG_CONFIG_HOME": "/xdg"}, "/home/u", "/xdg/tether"),
        ({"XDG_CONFIG_HOME": "/xdg", "HOME": "/other"}, None, "/xdg/tether"),
        ({}, "/home/u", "/home/u/.config/tether"),
        ({"XDG_CONFIG_HOME": ""}, "/home/u", "/home/u/.config/tether"),
        # The XDG spec: a relative path is invalid and ignored.
        ({"XDG_CONFIG_HOME": "rel/dir"}, "/home/u", "/home/u/.config/tether"),
        ({"HOME": "/from-env"}, None, "/from-env/.config/tether"),
        ({"HOME": "/from-env"}, "/given", "/given/.config/tether"),
    ],
)
def test_user_config_dir(environ: dict[str, str], home: str | None, expected: str) -> None:
    assert user_config_dir(environ, None if home is None else Path(home)) == Path(expected)


@pytest.mark.parametrize(
    ("names", "found"),
    [
        ((), None),
        (("config.json",), "config.json"),
        (("config.json", "config.yml"), "config.yml"),
        (("config.json", "config.yml", "config.yaml"), "config.yaml"),
        (("config.json", "config.yaml", "config.toml"), "config.toml"),
        (("tether.toml",), None),
    ],
)
def test_find_user_config_first_found_wins(
    tmp_path: Path, names: tuple[str, ...], found: str | None
) -> None:
    directory = tmp_path / "tether"
    directory.mkdir()
    for name in names:
        (directory / name).write_text("{}")
    result = find_user_config({"XDG_CONFIG_HOME": str(tmp_path)}, Path("/nonexistent"))
    assert result == (None if found is None else directory / found)


@pytest.mark.parametrize(
    ("name", "text"),
    [
        ("config.toml", 'namespace = "u"\n[agent]\nport = 5000\n'),
        ("config.yaml", "namespace: u\nagent:\n  port: 5000\n"),
        ("config.yml", "namespace: u\nagent: {port: 5000}\n"),
        ("config.json", json.dumps({"namespace": "u", "agent": {"port": 5000}})),
    ],
)
def test_user_file_formats(tmp_path: Path, name: str, text: str) -> None:
    _user_file(tmp_path, text, name)
    config, _ = _resolve(tmp_path)
    assert (config.namespace, config.agent.port) == ("u", 5000)


def test_user_file_under_home_without_xdg(tmp_path: Path) -> None:
    path = tmp_path / "home" / ".config" / "tether" / "config.toml"
    path.parent.mkdir(parents=True)
    path.write_text('namespace = "home"\n')
    resolved = resolve_config(None, tmp_path, environ={}, home=tmp_path / "home")
    assert resolved.config.namespace == "home"


@pytest.mark.parametrize(
    ("user", "project", "expected"),
    [
        # A relative kubeconfig is relative to the file that names it.
        ("kube/config", None, "{xdg}/kube/config"),
        (None, "kube/config", "{proj}/kube/config"),
        ("kube/user", "kube/project", "{proj}/kube/project"),
        ("/abs/config", None, "/abs/config"),
        ("~/.kube/other", None, "~/.kube/other"),
    ],
)
def test_relative_kubeconfig_follows_its_file(
    tmp_path: Path, user: str | None, project: str | None, expected: str
) -> None:
    _user_file(tmp_path, "" if user is None else f'kubeconfig = "{user}"\n')
    if project is not None:
        _project_file(tmp_path, f'kubeconfig = "{project}"\n')
    config, _ = _resolve(tmp_path)
    xdg, proj = tmp_path / "xdg" / "tether", tmp_path / "proj"
    assert config.kubeconfig == expected.format(xdg=xdg, proj=proj)


def test_kubeconfig_from_the_environment_is_kept_as_given(tmp_path: Path) -> None:
    _user_file(tmp_path, 'kubeconfig = "kube/config"\n')
    config, _ = _resolve(tmp_path, {"TETHER_KUBECONFIG": "rel/config"})
    assert config.kubeconfig == "rel/config"


@pytest.mark.parametrize(
    ("name", "text", "message"),
    [
        (
            "config.toml",
            "[agent]\nport = 'abc'\n",
            "{path}: agent.port: Input should be a valid integer, unable to parse string as an "
            "integer",
        ),
        ("config.toml", "[agent]\nimagee = 'x'\n", "{path}: agent.imagee: unknown key (allowed: "),
        ("config.toml", "namespace = \n", "{path}: invalid TOML"),
        ("config.yaml", "- a\n", "{path}: expected a table of settings, got list"),
        ("config.json", "{", "{path}: invalid JSON"),
    ],
)
def test_bad_user_file_is_one_line_naming_it(
    tmp_path: Path, name: str, text: str, message: str
) -> None:
    path = _user_file(tmp_path, text, name)
    # The project file is fine: the error must still be the user file's.
    _project_file(tmp_path, 'namespace = "p"\n')
    with pytest.raises(ConfigError) as info:
        _resolve(tmp_path)
    assert str(info.value).startswith(message.format(path=path))
    assert "\n" not in str(info.value)


def test_error_across_layers_names_the_layer_that_broke_it(tmp_path: Path) -> None:
    _user_file(tmp_path, '[incoming.http_filter]\nheader = ["^x-dev: a$"]\n')
    _project_file(tmp_path, '[incoming]\nmode = "mirror"\n')
    with pytest.raises(
        ConfigError, match=r'^tether\.toml: incoming: http_filter applies to mode "steal"'
    ):
        _resolve(tmp_path)


# --- The schema ---------------------------------------------------------------------------


def test_schema_carries_variables_and_precedence() -> None:
    schema = config_schema()
    assert PRECEDENCE_HELP in schema["description"]
    for needle in ("command-line flags", "TETHER_AGENT_IMAGE", "~/.config/tether/config.toml"):
        assert needle in schema["description"]
    assert schema["x-precedence"][0] == "command line"
    assert schema["properties"]["namespace"]["x-env"] == "TETHER_NAMESPACE"
    defs = schema["$defs"]
    assert defs["AgentConfig"]["properties"]["image"]["x-env"] == "TETHER_AGENT_IMAGE"
    assert defs["DnsConfig"]["properties"]["enabled"]["x-env"] == "TETHER_NETWORK_DNS_ENABLED"
    assert defs["HttpFilterConfig"]["properties"]["path"]["x-env"] == (
        "TETHER_INCOMING_HTTP_FILTER_PATH"
    )
    found = [
        spec["x-env"]
        for props in [schema["properties"], *(d["properties"] for d in defs.values())]
        for spec in props.values()
        if "x-env" in spec
    ]
    assert sorted(found) == sorted(s.name for s in env_settings())
    assert "x-env" not in schema["properties"]["agent"], "sections have no variable"
    json.dumps(schema)


@pytest.mark.parametrize(
    "value",
    ['{"a": ' * 2000 + "1" + "}" * 2000, "[" * 600 + "]" * 600, '{"a": ' * 600 + "1" + "}" * 600],
)
def test_deeply_nested_json_in_a_variable_is_one_line_naming_it(tmp_path: Path, value: str) -> None:
    # Found writing fuzz/config.py: json.loads (past 1000 levels) or copying the layer (past
    # about 500) raised RecursionError instead of a ConfigError.
    name = "TETHER_AGENT_LABELS" if value.startswith("{") else "TETHER_INCOMING_PORTS"
    with pytest.raises(ConfigError) as info:
        _resolve(tmp_path, {name: value})
    assert str(info.value) == f"{name}: invalid JSON: nested more than 32 levels deep"
