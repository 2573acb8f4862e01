"""tether.config: file formats, discovery order, errors, CLI overrides, the schema."""

import json
from pathlib import Path
from typing import Any

import pytest

from tether.config import (
    AgentConfig,
    ConfigError,
    TetherConfig,
    config_schema,
    load_config,
    merge_cli,
)

TOML = """
target = "deployment/frontend"
namespace = "shop"

[agent]
image = "example.com/agent:1"
port = 5000
privileged = true
labels = { team = "a" }

[env]
exclude = ["SECRET_*"]
override = { SHOP_MODE = "local" }
"""

YAML = """
target: deployment/frontend
namespace: shop
agent:
  image: example.com/agent:1
  port: 5000
  privileged: true
  labels: {team: a}
env:
  exclude: ["SECRET_*"]
  override: {SHOP_MODE: local}
"""

DATA: dict[str, Any] = {
    "target": "deployment/frontend",
    "namespace": "shop",
    "agent": {
        "image": "example.com/agent:1",
        "port": 5000,
        "privileged": True,
        "labels": {"team": "a"},
    },
    "env": {"exclude": ["SECRET_*"], "override": {"SHOP_MODE": "local"}},
}


def _check_loaded(config: TetherConfig) -> None:
    assert config.target == "deployment/frontend"
    assert config.namespace == "shop"
    assert config.agent.image == "example.com/agent:1"
    assert config.agent.port == 5000
    assert config.agent.privileged is True
    assert config.agent.labels == {"team": "a"}
    assert config.agent.idle_timeout == 30.0
    assert config.env.include == ["*"]
    assert config.env.exclude == ["SECRET_*"]
    assert config.env.override == {"SHOP_MODE": "local"}


@pytest.mark.parametrize(
    ("name", "text"),
    [
        ("tether.toml", TOML),
        ("tether.yaml", YAML),
        ("tether.yml", YAML),
        ("tether.json", json.dumps(DATA)),
    ],
)
def test_each_format_is_found_in_cwd(tmp_path: Path, name: str, text: str) -> None:
    (tmp_path / name).write_text(text)
    _check_loaded(load_config(None, tmp_path))


def test_explicit_path_relative_to_cwd(tmp_path: Path) -> None:
    (tmp_path / "conf").mkdir()
    (tmp_path / "conf" / "mine.yaml").write_text(YAML)
    _check_loaded(load_config(Path("conf/mine.yaml"), tmp_path))


def test_defaults_without_a_file(tmp_path: Path) -> None:
    config = load_config(None, tmp_path)
    assert config == TetherConfig()
    assert config.agent.image == "ghcr.io/tether-dev/tether-agent:0.1.0"
    assert config.agent.port == 47047
    assert config.agent.idle_timeout == 30.0
    assert config.agent.startup_timeout == 60.0
    assert config.agent.ttl_seconds_after_finished == 60
    assert config.agent.privileged is False
    assert config.agent.image_pull_policy is None
    assert config.env.include == ["*"]
    assert config.target is None


def test_discovery_order_toml_first(tmp_path: Path) -> None:
    (tmp_path / "tether.json").write_text(json.dumps({"namespace": "from-json"}))
    (tmp_path / "tether.yml").write_text("namespace: from-yml\n")
    assert load_config(None, tmp_path).namespace == "from-yml"
    (tmp_path / "tether.yaml").write_text("namespace: from-yaml\n")
    assert load_config(None, tmp_path).namespace == "from-yaml"
    (tmp_path / "tether.toml").write_text('namespace = "from-toml"\n')
    assert load_config(None, tmp_path).namespace == "from-toml"


def test_explicit_path_beats_cwd(tmp_path: Path) -> None:
    (tmp_path / "tether.toml").write_text('namespace = "cwd"\n')
    other = tmp_path / "other.json"
    other.write_text(json.dumps({"namespace": "explicit"}))
    assert load_config(other, tmp_path).namespace == "explicit"


def test_missing_explicit_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"^nope\.toml: no such config file$"):
        load_config(Path("nope.toml"), tmp_path)


def test_unknown_key_is_named(tmp_path: Path) -> None:
    (tmp_path / "tether.toml").write_text("[agent]\nimagee = 'x'\n")
    with pytest.raises(ConfigError) as info:
        load_config(None, tmp_path)
    message = str(info.value)
    assert message.startswith("tether.toml: agent.imagee: unknown key (allowed: image, ")
    assert "\n" not in message


def test_unknown_top_level_key(tmp_path: Path) -> None:
    (tmp_path / "tether.yaml").write_text("targt: pod/x\n")
    with pytest.raises(ConfigError, match=r"^tether\.yaml: targt: unknown key \(allowed: target"):
        load_config(None, tmp_path)


def test_bad_type_names_file_and_key_path(tmp_path: Path) -> None:
    (tmp_path / "tether.toml").write_text("[agent]\nport = 'abc'\n")
    with pytest.raises(ConfigError) as info:
        load_config(None, tmp_path)
    assert str(info.value) == "tether.toml: agent.port: Input should be a valid integer, " + (
        "unable to parse string as an integer"
    )


def test_bad_literal_and_list_item(tmp_path: Path) -> None:
    (tmp_path / "tether.json").write_text(
        json.dumps({"agent": {"image_pull_policy": "Sometimes"}, "env": {"include": ["a", 3]}})
    )
    with pytest.raises(ConfigError) as info:
        load_config(None, tmp_path)
    message = str(info.value)
    assert "agent.image_pull_policy: Input should be 'Always', 'IfNotPresent' or 'Never'" in message
    assert "env.include[1]: Input should be a valid string" in message
    assert "\n" not in message


@pytest.mark.parametrize(
    ("name", "text", "what"),
    [
        ("tether.toml", "target = \n", "invalid TOML"),
        ("tether.yaml", "a: [\n", "invalid YAML"),
        ("tether.json", "{", "invalid JSON"),
        ("tether.yaml", "- a\n- b\n", "expected a table of settings"),
    ],
)
def test_syntax_errors_are_one_line(tmp_path: Path, name: str, text: str, what: str) -> None:
    (tmp_path / name).write_text(text)
    with pytest.raises(ConfigError) as info:
        load_config(None, tmp_path)
    assert str(info.value).startswith(f"{name}: {what}")
    assert "\n" not in str(info.value)


def test_empty_yaml_is_defaults(tmp_path: Path) -> None:
    (tmp_path / "tether.yaml").write_text("")
    assert load_config(None, tmp_path) == TetherConfig()


def test_relative_kubeconfig_is_relative_to_the_file(tmp_path: Path) -> None:
    (tmp_path / "proj").mkdir()
    (tmp_path / "proj" / "tether.toml").write_text('kubeconfig = "kube/config"\n')
    config = load_config(Path("proj/tether.toml"), tmp_path)
    assert config.kubeconfig == str(tmp_path / "proj" / "kube" / "config")


def test_cli_overrides_file_when_not_none(tmp_path: Path) -> None:
    (tmp_path / "tether.toml").write_text(TOML)
    config = load_config(None, tmp_path)
    merged = merge_cli(
        config,
        target="pod/x",
        namespace=None,
        context="ctx",
        agent_image="local/agent:dev",
        agent_image_pull_policy="Never",
        env_exclude=None,
    )
    assert merged.target == "pod/x"
    assert merged.namespace == "shop"
    assert merged.context == "ctx"
    assert merged.agent.image == "local/agent:dev"
    assert merged.agent.image_pull_policy == "Never"
    assert merged.agent.port == 5000
    assert merged.env.exclude == ["SECRET_*"]
    assert config.target == "deployment/frontend", "the original is left alone"


def test_cli_bad_value_and_unknown_key() -> None:
    with pytest.raises(ConfigError, match=r"^command line: agent\.port: "):
        merge_cli(TetherConfig(), agent_port="x")
    with pytest.raises(TypeError, match="bogus"):
        merge_cli(TetherConfig(), bogus=1)
    with pytest.raises(TypeError, match="agent_nope"):
        merge_cli(TetherConfig(), agent_nope=1)


def test_schema_has_descriptions() -> None:
    schema = config_schema()
    props = schema["properties"]
    assert set(props) == {
        "target",
        "namespace",
        "context",
        "kubeconfig",
        "on_target_lost",
        "exec_stop_grace",
        "agent",
        "env",
        "fs",
        "network",
        "incoming",
    }
    for name in props:
        assert props[name].get("description"), name
    defs = schema["$defs"]
    assert set(defs) == {
        "AgentConfig",
        "EnvConfig",
        "FsConfig",
        "NetworkConfig",
        "OutgoingConfig",
        "DnsConfig",
        "IncomingConfig",
        "HttpFilterConfig",
    }
    for model in defs:
        assert defs[model].get("description"), model
        assert defs[model]["additionalProperties"] is False
        for field, spec in defs[model]["properties"].items():
            assert spec.get("description"), f"{model}.{field}"
    assert defs["AgentConfig"]["properties"]["port"]["default"] == 47047
    json.dumps(schema)


def test_agent_config_is_strict_about_ranges() -> None:
    with pytest.raises(ValueError, match="port"):
        AgentConfig(port=0)


@pytest.mark.parametrize(
    ("name", "text", "what"),
    [
        # Found writing fuzz/config.py's invariant "ConfigError or a config": the parsers,
        # re and Path.expanduser raise more than the errors we caught.
        ("tether.yaml", "target: 2001-02-30\n", "invalid YAML: day is out of range for month"),
        ("tether.json", "[" * 1200, "invalid JSON: nested more than 32 levels deep"),
        ("tether.toml", "a = " + "[" * 600, "invalid TOML: nested more than 32 levels deep"),
        ("tether.yml", "[" * 600, "invalid YAML: nested more than 32 levels deep"),
        ("tether.toml", "namespace = " + "1" * 4400, "invalid TOML: Exceeds the limit"),
        ("tether.yaml", "kubeconfig: ~nosuchuser-tether/config\n", "kubeconfig: cannot expand"),
        (
            "tether.yaml",
            "incoming: {mode: steal, http_filter: {path: 'a{99999999999}'}}",
            "incoming.http_filter.path: invalid regular expression",
        ),
        (
            "tether.yaml",
            "incoming: {mode: steal, http_filter: {header: ['" + "(" * 600 + "']}}",
            "incoming.http_filter.header[0]: invalid regular expression",
        ),
    ],
)
def test_what_the_parsers_choke_on_is_a_config_error(
    tmp_path: Path, name: str, text: str, what: str
) -> None:
    (tmp_path / name).write_text(text)
    with pytest.raises(ConfigError) as info:
        load_config(None, tmp_path)
    assert str(info.value).startswith(f"{name}: {what}"), str(info.value)
    assert len(str(info.value).splitlines()) == 1
