"""The command line as a configuration layer: flags applied over everything below them.

Most flags map one to one onto a config key (`merge_cli`); the incoming-traffic flags are a
small policy of their own (a filter implies a steal, `--mirror` drops a file's filter), which
lives here, beside the other layers, rather than in the CLI.
"""

from typing import Any

from tether.config.loader import Flags, merge_cli, validate_config
from tether.config.models import TetherConfig
from tether.config.ports import parse_port_spec

INCOMING_KEYS = (
    "incoming_flag",
    "http_header",
    "http_path",
    "http_methods",
    "http_filter_any",
    "steal_probes",
    "override",
    "no_reset_connections",
)


def apply_incoming(config: TetherConfig, opts: dict[str, Any]) -> TetherConfig:
    """`config` with the incoming-traffic flags (popped from `opts`) applied."""
    flags = {key: opts.pop(key, None) for key in INCOMING_KEYS}
    port_maps = opts.pop("port_map", ()) or ()
    ports = opts.pop("incoming_port", ()) or ()
    data = config.model_dump()
    incoming = data["incoming"]
    filter_given = bool(flags["http_header"] or flags["http_path"] or flags["http_methods"])
    if flags["incoming_flag"]:
        incoming["mode"] = flags["incoming_flag"]
    elif filter_given:
        incoming["mode"] = "steal"
    if filter_given:
        incoming["http_filter"] = {
            "header": list(flags["http_header"] or []),
            "path": flags["http_path"],
            "methods": list(flags["http_methods"] or []),
            "match": "any" if flags["http_filter_any"] else "all",
        }
    elif flags["incoming_flag"] == "mirror":
        incoming["http_filter"] = None  # a file's filter is for steals; --mirror copies all
    elif flags["http_filter_any"] and incoming["http_filter"]:
        incoming["http_filter"]["match"] = "any"
    if flags["steal_probes"]:
        incoming["steal_probes"] = True
    if flags["override"]:
        incoming["override"] = True
    if flags["no_reset_connections"]:
        incoming["reset_connections"] = False
    for text in port_maps:
        spec = parse_port_spec(text)
        incoming["port_map"][spec.remote] = spec.local
    if ports:
        incoming["ports"] = [parse_port_spec(str(p)).remote for p in ports]
    return validate_config(data, "command line")


def cli_flags(opts: dict[str, Any]) -> Flags:
    """The command-line layer for resolve_config: the flags in `opts` (None or absent when not
    given; incoming ones as apply_incoming takes them, the rest as merge_cli does) applied to
    the configuration below them."""

    def apply(config: TetherConfig) -> TetherConfig:
        flags = dict(opts)
        if any(key in flags for key in INCOMING_KEYS):
            config = apply_incoming(config, flags)
        return merge_cli(config, **flags)

    return apply
