"""The command line's side of the configuration layers: `tether config`, `tether schema`, and
one-line errors naming the variable or file."""

import json
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result

from tether.cli.main import build_config, format_sources, main
from tether.config import ResolvedConfig, TetherConfig, env_settings


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A working directory, HOME and XDG_CONFIG_HOME of the test's own, and no TETHER_*
    settings from whoever runs the tests (e.g. after `eval "$(devcluster env)"`)."""
    (tmp_path / "proj").mkdir()
    (tmp_path / "xdg" / "tether").mkdir(parents=True)
    monkeypatch.chdir(tmp_path / "proj")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "xdg"))
    for setting in env_settings():
        monkeypatch.delenv(setting.name, raising=False)
    return tmp_path


def _run(*args: str, env: dict[str, str] | None = None) -> Result:
    return CliRunner().invoke(main, list(args), env=env)


def test_config_json_shows_values_and_sources(home: Path) -> None:
    user = home / "xdg" / "tether" / "config.toml"
    user.write_text('namespace = "u"\ncontext = "dev"\n[agent]\nimage = "u/agent"\nport = 5000\n')
    (home / "proj" / "tether.toml").write_text('namespace = "p"\n[agent]\nport = 6000\n')
    result = _run(
        "config",
        "-o",
        "json",
        "--agent-namespace",
        "agents",
        env={"TETHER_AGENT_IMAGE": "docker.io/tether/agent:dev"},
    )
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["config"]["namespace"] == "p"
    assert data["config"]["context"] == "dev"
    assert data["config"]["agent"]["image"] == "docker.io/tether/agent:dev"
    assert data["config"]["agent"]["port"] == 6000
    assert data["config"]["agent"]["namespace"] == "agents"
    assert data["sources"]["namespace"] == "tether.toml"
    assert data["sources"]["context"] == str(user)
    assert data["sources"]["agent.image"] == "TETHER_AGENT_IMAGE"
    assert data["sources"]["agent.namespace"] == "command line"
    assert data["sources"]["agent.idle_timeout"] == "default"


def test_flag_beats_variable(home: Path) -> None:
    result = _run(
        "config", "-o", "json", "--agent-image", "flag/agent", env={"TETHER_AGENT_IMAGE": "env"}
    )
    data = json.loads(result.stdout)
    assert data["config"]["agent"]["image"] == "flag/agent"
    assert data["sources"]["agent.image"] == "command line"


def test_config_text_names_the_files(home: Path) -> None:
    (home / "proj" / "tether.toml").write_text('namespace = "p"\n')
    result = _run("config")
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert lines[0].startswith("# precedence, highest first: command line > environment")
    assert lines[1] == f"# user file: none in {home / 'xdg' / 'tether'}"
    assert lines[2] == f"# project file: {home / 'proj' / 'tether.toml'}"
    assert any(
        line.startswith("namespace ") and line.endswith('= "p"  # tether.toml') for line in lines
    )


@pytest.mark.parametrize(
    ("env", "user_text", "message"),
    [
        (
            {"TETHER_AGENT_PORT": "abc"},
            None,
            "tether: error: TETHER_AGENT_PORT: Input should be a valid integer, unable to parse "
            "string as an integer",
        ),
        (
            {"TETHER_AGENT_LABELS": "team=a"},
            None,
            "tether: error: TETHER_AGENT_LABELS: invalid JSON: Expecting value: line 1 column 1 "
            "(char 0)",
        ),
        (
            {},
            "[agent]\nport = 0\n",
            "tether: error: {user}: agent.port: Input should be greater than or equal to 1",
        ),
    ],
)
@pytest.mark.parametrize("command", [["config"], ["env", "-t", "pod/x"], ["ls"]])
def test_bad_setting_is_one_error_line(
    home: Path, env: dict[str, str], user_text: str | None, message: str, command: list[str]
) -> None:
    user = home / "xdg" / "tether" / "config.toml"
    if user_text is not None:
        user.write_text(user_text)
    result = _run(*command, env=env)
    assert result.exit_code == 1
    assert result.stderr == message.format(user=user) + "\n"
    assert result.stdout == ""


def test_build_config_layers_flags_over_the_rest(
    home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (home / "xdg" / "tether" / "config.toml").write_text('[agent]\nimage = "u/agent"\n')
    monkeypatch.setenv("TETHER_NAMESPACE", "env-ns")
    opts: dict[str, Any] = {"config_path": None, "quiet": True, "verbose": False}
    config, _ = build_config({**opts, "target": "pod/x", "agent_image": None})
    assert (config.target, config.namespace, config.agent.image) == ("pod/x", "env-ns", "u/agent")
    config, _ = build_config({**opts, "namespace": "flag-ns", "incoming_flag": "mirror"})
    assert (config.namespace, config.incoming.mode) == ("flag-ns", "mirror")


def test_schema_command_shows_variables(home: Path) -> None:
    result = _run("schema")
    schema = json.loads(result.stdout)
    assert "TETHER_* environment variables" in schema["description"]
    assert schema["$defs"]["AgentConfig"]["properties"]["image"]["x-env"] == "TETHER_AGENT_IMAGE"


@pytest.mark.parametrize(
    ("sources", "lines"),
    [
        ({}, []),
        ({"namespace": "tether.toml"}, ['namespace = "shop"  # tether.toml']),
        (
            {"target": "default", "agent.image": "TETHER_AGENT_IMAGE", "env.exclude": "/u.toml"},
            [
                "target      = null  # default",
                'agent.image = "a/b"  # TETHER_AGENT_IMAGE',
                'env.exclude = ["X_*"]  # /u.toml',
            ],
        ),
        ({"incoming.port_map": "command line"}, ['incoming.port_map = {"80": 81}  # command line']),
    ],
)
def test_format_sources(sources: dict[str, str], lines: list[str]) -> None:
    config = TetherConfig.model_validate(
        {
            "namespace": "shop",
            "agent": {"image": "a/b"},
            "env": {"exclude": ["X_*"]},
            "incoming": {"port_map": {80: 81}},
        }
    )
    assert format_sources(ResolvedConfig(config, sources)) == "".join(f"{x}\n" for x in lines)
