"""The incoming section of the config and the command-line flags that fill it."""

from pathlib import Path
from typing import Literal

import pytest

from tether.config import ConfigError, TetherConfig, validate_config
from tether.config.flags import INCOMING_KEYS, apply_incoming
from tether.config.models import IncomingConfig
from tether.config.ports import PortSpec, PortSpecError, parse_port_spec


def test_defaults_receive_nothing() -> None:
    config = TetherConfig()
    assert config.incoming.mode == "off"
    assert config.incoming.http_filter is None
    assert config.incoming.reset_connections is True


def test_port_map_maps_both_ways() -> None:
    incoming = validate_config(
        {"incoming": {"mode": "steal", "port_map": {"8080": 9000}}}, "t"
    ).incoming
    assert incoming.local_port(8080) == 9000
    assert incoming.local_port(81) == 81
    assert incoming.remote_port(9000) == 8080
    # 8080 itself is delivered to 9000, so a local listener on 8080 wants nothing.
    assert incoming.remote_port(8080) is None
    assert incoming.remote_port(5000) == 5000


def test_ports_restrict_what_listening_subscribes() -> None:
    incoming = validate_config({"incoming": {"mode": "mirror", "ports": [8080]}}, "t").incoming
    assert incoming.remote_port(8080) == 8080
    assert incoming.remote_port(9229) is None


@pytest.mark.parametrize(
    ("incoming", "needle"),
    [
        ({"mode": "mirror", "http_filter": {"header": ["^x: y$"]}}, "steal"),
        ({"mode": "steal", "http_filter": {}}, "needs header, path or methods"),
        ({"mode": "steal", "http_filter": {"path": "("}}, "invalid regular expression"),
        ({"mode": "steal", "http_filter": {"methods": ["G T"]}}, "not an HTTP method"),
        ({"mode": "sometimes"}, "incoming.mode"),
        ({"port_map": {"8080": 70000}}, "port_map"),
    ],
)
def test_bad_incoming_config_is_one_clear_line(incoming: dict[str, object], needle: str) -> None:
    with pytest.raises(ConfigError) as info:
        validate_config({"incoming": incoming}, "tether.toml")
    message = str(info.value)
    assert "\n" not in message and needle in message, message


def test_filter_wire_form() -> None:
    incoming = validate_config(
        {
            "incoming": {
                "mode": "steal",
                "http_filter": {"header": ["^x-dev: alice$"], "methods": ["get"], "match": "any"},
            }
        },
        "t",
    ).incoming
    assert incoming.http_filter is not None
    assert incoming.http_filter.to_wire() == {
        "headers": ["^x-dev: alice$"],
        "path": None,
        "methods": ["GET"],
        "mode": "any",
    }


def _flags(**given: object) -> dict[str, object]:
    return {key: given.get(key) for key in INCOMING_KEYS} | {
        k: v for k, v in given.items() if k not in INCOMING_KEYS
    }


def test_header_flag_implies_steal_with_a_filter() -> None:
    config = apply_incoming(TetherConfig(), _flags(http_header=("^x-dev: alice$",)))
    assert config.incoming.mode == "steal"
    assert config.incoming.http_filter is not None
    assert config.incoming.http_filter.header == ["^x-dev: alice$"]


def test_mirror_flag_drops_a_file_filter(tmp_path: Path) -> None:
    base = validate_config(
        {"incoming": {"mode": "steal", "http_filter": {"path": "^/api"}}}, "tether.toml"
    )
    config = apply_incoming(base, _flags(incoming_flag="mirror"))
    assert config.incoming.mode == "mirror" and config.incoming.http_filter is None


def test_port_map_and_switches() -> None:
    config = apply_incoming(
        TetherConfig(),
        _flags(
            incoming_flag="steal",
            override=True,
            no_reset_connections=True,
            steal_probes=True,
            port_map=("8080:9000",),
            incoming_port=(8080,),
        ),
    )
    assert config.incoming.port_map == {8080: 9000}
    assert config.incoming.ports == [8080]
    assert config.incoming.override and config.incoming.steal_probes
    assert not config.incoming.reset_connections


@pytest.mark.parametrize(
    ("text", "spec"), [("8080", PortSpec(8080, 8080)), ("80:9000", PortSpec(80, 9000))]
)
def test_port_specs(text: str, spec: PortSpec) -> None:
    assert parse_port_spec(text) == spec


@pytest.mark.parametrize("text", ["", "x", "0", "1:2:3", "70000", "80:"])
def test_bad_port_specs(text: str) -> None:
    with pytest.raises(PortSpecError, match="REMOTE_PORT"):
        parse_port_spec(text)


@pytest.mark.parametrize(
    ("config", "mode", "expected"),
    [
        (IncomingConfig(), None, ("mirror", None)),
        (IncomingConfig(mode="mirror"), None, ("mirror", None)),
        (IncomingConfig(mode="steal"), None, ("steal", None)),
        (
            IncomingConfig.model_validate(
                {"mode": "steal", "http_filter": {"header": ["^x-dev: a$"]}}
            ),
            None,
            ("steal", {"headers": ["^x-dev: a$"], "path": None, "methods": [], "mode": "all"}),
        ),
        # A filter is for steals: asked to mirror, the same config sends none.
        (
            IncomingConfig.model_validate({"mode": "steal", "http_filter": {"path": "^/api"}}),
            "mirror",
            ("mirror", None),
        ),
    ],
)
def test_the_subscription_message_is_decided_here(
    config: IncomingConfig, mode: Literal["mirror", "steal"] | None, expected: tuple[str, object]
) -> None:
    request = config.subscription(8080, "alice@host (pid 1)", mode)
    assert (request.mode, request.filter) == expected
    assert request.port == 8080 and request.who == "alice@host (pid 1)"
    # steal_probes travels once, beside the filter, never inside it.
    assert request.filter is None or "steal_probes" not in request.filter


def test_subscription_carries_the_flags() -> None:
    config = IncomingConfig(mode="steal", steal_probes=True, override=True, reset_connections=False)
    request = config.subscription(80, "bob")
    assert (request.steal_probes, request.override, request.reset) == (True, True, False)
