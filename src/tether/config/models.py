"""The configuration models: what `tether.toml` (or .yaml/.json) may hold.

The field descriptions feed `tether schema`, so they are written for users.
"""

import ipaddress
import re
from dataclasses import dataclass
from typing import Annotated, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, model_validator

from tether.protocol.launch import DEFAULT_IDLE_TIMEOUT, DEFAULT_PORT
from tether.protocol.messages import IncomingSubscribe

DEFAULT_AGENT_IMAGE = "ghcr.io/tether-dev/tether-agent:0.1.0"
DEFAULT_AGENT_PORT = DEFAULT_PORT


class AgentConfig(BaseModel):
    """The agent: a short-lived Job that tether starts next to the target and removes after."""

    model_config = ConfigDict(extra="forbid")

    image: str = Field(
        default=DEFAULT_AGENT_IMAGE,
        description="Container image of the agent. Pin it to the version of your tether.",
    )
    mode: Literal["auto", "job", "ephemeral"] = Field(
        default="auto",
        description="How the agent runs next to a target. job: a Job on the target's node "
        "(hostPID and capabilities; everything works). ephemeral: a container added to the "
        "target pod (no privileges asked on Kubernetes < 1.22: env, files, outgoing and DNS, "
        "but no mirror or steal; it stays in the pod's spec until the pod goes). auto: the Job, "
        "or the ephemeral container when admission refuses the Job's pod. Targetless "
        "sessions always use a Job.",
    )
    namespace: str | None = Field(
        default=None,
        description="Namespace the agent Job is created in (default: the target's namespace; "
        "an ephemeral agent is always in the target's pod).",
    )
    port: int = Field(
        default=DEFAULT_AGENT_PORT,
        ge=1,
        le=65535,
        description="Port the agent listens on, on 127.0.0.1 inside its own pod.",
    )
    idle_timeout: float = Field(
        default=DEFAULT_IDLE_TIMEOUT,
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
    reconnect_timeout: float = Field(
        default=120.0,
        ge=0,
        description="Seconds a session tries to reconnect to its agent after the connection "
        "drops (the API server or kubelet restarted, the network changed) before it ends; the "
        "agent holds the session, its streams and the program's connections that long. "
        "0: no reconnect.",
    )
    max_lifetime: int = Field(
        default=86400,
        ge=60,
        description="Hard cap, in seconds, on the agent Job's life (activeDeadlineSeconds), "
        "whatever its sessions do: a stuck agent cannot outlive it.",
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


# --- Pattern syntax, shared by the models (validation) and local.policy.rules (matching). ---

PATH_PATTERN_HELP = (
    "Path patterns are globs on absolute paths: `*` and `?` match within one path component "
    "(dotfiles included), `[abc]`/`[!abc]` a character class, and `**` as a whole component any "
    "number of components (`/etc/shop/**` is /etc/shop and everything below it, as is "
    "`/etc/shop/`). A pattern starting with `~/` is under the local home directory; one not "
    "starting with `/` matches at any depth (`*.py`, `node_modules/**`, `.env`)."
)

NAME_PATTERN_HELP = (
    "Name patterns are case-insensitive globs on DNS names: `*` matches any characters, dots "
    "included (`*.svc.cluster.local`, `db-?.internal.example.com`); a trailing dot is ignored."
)

OUTGOING_FILTER_HELP = (
    "Each entry is `HOST[:PORT]`, `CIDR[:PORT]` or `:PORT`; HOST is an IP address or a name "
    "pattern matched against the name the process looked up (`*.svc.cluster.local`, "
    "`db.example.com:5432`, `10.0.0.0/8`, `[fd00::1]:443`, `:6379`); `*` or an empty HOST is "
    "any host. IPv6 with a port goes in brackets."
)

_NAME_CHARS = re.compile(r"[A-Za-z0-9_*?.-]+")
_NUMERIC_HOST = re.compile(r"[0-9.]+|.*[:/].*")


def path_pattern_regex(pattern: str, home: str = "/~") -> str:
    """The regex (for `re.fullmatch` on an absolute, normalized path) of a path pattern.

    See PATH_PATTERN_HELP for the syntax; `~/` expands to `home`. Raises ValueError on a
    malformed pattern.
    """
    if not pattern:
        raise ValueError("empty path pattern")
    if "\0" in pattern:
        raise ValueError(f"path pattern {pattern!r} contains a NUL byte")
    if pattern == "~" or pattern.startswith("~/"):
        pattern = (home.rstrip("/") + pattern[1:]) or "/"
    elif pattern.startswith("~"):
        raise ValueError(f"path pattern {pattern!r}: only `~/` (the local home) is supported")
    anchored = pattern.startswith("/")
    segments = pattern.split("/")
    if anchored:
        segments = segments[1:]
    if segments[-1] == "" and (anchored or len(segments) > 1):
        # A trailing slash names a directory; it means the directory and all below it.
        segments[-1] = "**"
    regex = ""
    for index, segment in enumerate(segments):
        last = index == len(segments) - 1
        if segment == "**":
            # `(?:/.*)?` at the end also matches the directory itself; inside, zero or more
            # whole components.
            regex += "(?:/.*)?" if last else "(?:/[^/]+)*"
            continue
        if segment in ("", ".", ".."):
            shown = "an empty component" if segment == "" else f"a {segment!r} component"
            raise ValueError(f"path pattern {pattern!r} has {shown}")
        if "**" in segment:
            raise ValueError(f"path pattern {pattern!r}: `**` must be a whole path component")
        regex += "/" + _segment_regex(segment, pattern)
    if not anchored:
        regex = "(?:/[^/]+)*" + regex
    return regex or "/"


def _segment_regex(segment: str, pattern: str) -> str:
    out: list[str] = []
    i = 0
    while i < len(segment):
        char = segment[i]
        if char == "*":
            out.append("[^/]*")
        elif char == "?":
            out.append("[^/]")
        elif char == "[":
            start = i + 1
            negate = segment[start : start + 1] == "!"
            if negate:
                start += 1
            # A `]` right after the opening bracket is a member, as in shell globs.
            end = segment.find("]", start + 1)
            if end < 0:
                raise ValueError(f"path pattern {pattern!r}: unclosed `[`")
            members = "".join("\\" + c if c in "\\]^[" else c for c in segment[start:end])
            # A range such as `+-0` spans `/`, which a component never holds.
            regex = f"[^/{members}]" if negate else f"(?!/)[{members}]"
            try:
                re.compile(regex)
            except re.error as exc:  # a reversed range, such as `[z-a]`
                raise ValueError(f"path pattern {pattern!r}: {exc.msg}") from None
            out.append(regex)
            i = end
        else:
            out.append(re.escape(char))
        i += 1
    return "".join(out)


def name_pattern_regex(pattern: str) -> str:
    """The regex (for `re.fullmatch` on a lower-cased name without trailing dot) of a name
    pattern; see NAME_PATTERN_HELP. Raises ValueError on a malformed pattern."""
    name = pattern.lower().removesuffix(".")
    if not name or not _NAME_CHARS.fullmatch(name) or name.startswith(".") or ".." in name:
        raise ValueError(f"{pattern!r} is not a DNS name pattern")
    return "".join(".*" if c == "*" else "." if c == "?" else re.escape(c) for c in name)


IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


@dataclass(frozen=True)
class OutgoingFilter:
    """One parsed `network.outgoing` entry: an address range or a name pattern, and a port.

    At most one of `network` and `name` is set; neither means any host. `port` None means any.
    """

    network: IPNetwork | None
    name: str | None
    port: int | None


def parse_outgoing_filter(entry: str) -> OutgoingFilter:
    """Parse `HOST[:PORT]`, `CIDR[:PORT]` or `:PORT` (see OUTGOING_FILTER_HELP).

    Raises ValueError naming the entry when it is malformed.
    """
    try:
        return _parse_outgoing_filter(entry)
    except ValueError as exc:
        raise ValueError(f"bad filter {entry!r}: {exc}") from None


def _parse_outgoing_filter(entry: str) -> OutgoingFilter:
    if not entry:
        raise ValueError("empty")
    port_text: str | None = None
    if entry.startswith("["):
        host, bracket, rest = entry[1:].partition("]")
        if not bracket:
            raise ValueError("unclosed `[`")
        if rest:
            if not rest.startswith(":"):
                raise ValueError("expected `:PORT` after `]`")
            port_text = rest[1:]
        network = _network(host)
        if network.version != 6:
            raise ValueError("brackets are for IPv6 addresses")
        return OutgoingFilter(network, None, _port(port_text))
    if entry.count(":") > 1:
        # Several colons and no brackets: a bare IPv6 address or range, which takes no port.
        return OutgoingFilter(_network(entry), None, None)
    host, colon, port_part = entry.partition(":")
    if colon:
        port_text = port_part
    port = _port(port_text)
    if not host:
        if port is None:
            raise ValueError("expected HOST, CIDR or :PORT")
        return OutgoingFilter(None, None, port)
    if host == "*":
        return OutgoingFilter(None, None, port)
    if _NUMERIC_HOST.fullmatch(host):
        return OutgoingFilter(_network(host), None, port)
    name = host.lower().removesuffix(".")
    name_pattern_regex(name)
    return OutgoingFilter(None, name, port)


def _network(text: str) -> IPNetwork:
    try:
        return ipaddress.ip_network(text, strict=True)
    except ValueError as exc:
        raise ValueError(str(exc) or f"{text!r} is not an IP address or CIDR") from None


def _port(text: str | None) -> int | None:
    if text is None:
        return None
    # isdigit() alone admits non-ASCII digits, which no one means in a port.
    if not (text.isascii() and text.isdigit()) or not 1 <= int(text) <= 65535:
        raise ValueError(f"port {text!r} is not a number from 1 to 65535")
    return int(text)


def _check_path_pattern(pattern: str) -> str:
    path_pattern_regex(pattern)
    return pattern


def _check_name_pattern(pattern: str) -> str:
    name_pattern_regex(pattern)
    return pattern


def _check_filter(entry: str) -> str:
    parse_outgoing_filter(entry)
    return entry


def _is_always_local(network: IPNetwork) -> bool:
    if network.version == 4:
        return network.subnet_of(ipaddress.IPv4Network("127.0.0.0/8")) or (
            network == ipaddress.IPv4Network("0.0.0.0/32")
        )
    return network in (ipaddress.IPv6Network("::1/128"), ipaddress.IPv6Network("::/128"))


def _check_remote_filter(entry: str) -> str:
    parsed = parse_outgoing_filter(entry)
    if parsed.network is not None and _is_always_local(parsed.network):
        # Loopback always stays local; accepting it here would silently do nothing.
        raise ValueError(
            f"bad filter {entry!r}: loopback and unspecified addresses are always local"
        )
    return entry


PathPattern = Annotated[str, AfterValidator(_check_path_pattern)]
NamePattern = Annotated[str, AfterValidator(_check_name_pattern)]
OutgoingFilterEntry = Annotated[str, AfterValidator(_check_filter)]
RemoteFilterEntry = Annotated[str, AfterValidator(_check_remote_filter)]


class FsConfig(BaseModel):
    """Which side serves each file the local process opens: the target's or this machine's.

    Explicit patterns win (not_found, then local, then read_write, then read_only); then the
    built-in defaults (system trees, the working and home directories, interpreter and library
    files are local; /etc/resolv.conf, /etc/hosts and /etc/hostname are the target's); then
    `mode`.
    """

    model_config = ConfigDict(extra="forbid")

    mode: Literal["local", "read", "write"] = Field(
        default="read",
        description='"read": other files are read from the target, writes go to local files; '
        '"write": other files are read and written on the target; "local": every file is '
        "local except those the patterns send to the target.",
    )
    local: list[PathPattern] = Field(
        default_factory=list,
        description="Path patterns always served by this machine. " + PATH_PATTERN_HELP,
    )
    read_only: list[PathPattern] = Field(
        default_factory=list,
        description="Path patterns read from the target; opening one for writing fails with "
        "EROFS (read-only file system). " + PATH_PATTERN_HELP,
    )
    read_write: list[PathPattern] = Field(
        default_factory=list,
        description="Path patterns read and written on the target, even in read mode. "
        + PATH_PATTERN_HELP,
    )
    not_found: list[PathPattern] = Field(
        default_factory=list,
        description="Path patterns that appear not to exist (ENOENT), locally or on the "
        "target. " + PATH_PATTERN_HELP,
    )


class OutgoingConfig(BaseModel):
    """Which side makes the local process's outgoing connections."""

    model_config = ConfigDict(extra="forbid")

    mode: Literal["remote", "local"] = Field(
        default="remote",
        description='Where connections no filter matches are made: "remote" (from the target '
        'pod\'s network) or "local" (from this machine). Loopback is always local.',
    )
    remote: list[RemoteFilterEntry] = Field(
        default_factory=list,
        description="Destinations always connected from the target's network. "
        + OUTGOING_FILTER_HELP,
    )
    local: list[OutgoingFilterEntry] = Field(
        default_factory=list,
        description="Destinations always connected from this machine; wins over `remote`. "
        + OUTGOING_FILTER_HELP,
    )
    udp: bool = Field(
        default=True,
        description="Send connected UDP sockets through the target too (false: all UDP stays "
        "local, whatever the filters say).",
    )


class DnsConfig(BaseModel):
    """Which side resolves the names the local process looks up."""

    model_config = ConfigDict(extra="forbid")

    enabled: bool = Field(
        default=True,
        description="Resolve names as the target does (its resolv.conf search list, /etc/hosts "
        "and cluster DNS); false: locally, except the `remote` patterns.",
    )
    local: list[NamePattern] = Field(
        default_factory=list,
        description="Names always resolved on this machine (localhost and *.localhost always "
        "are). " + NAME_PATTERN_HELP,
    )
    remote: list[NamePattern] = Field(
        default_factory=list,
        description="Names resolved by the target even when `enabled` is false (`local` wins). "
        + NAME_PATTERN_HELP,
    )


class NetworkConfig(BaseModel):
    """The local process's network: outgoing connections and DNS."""

    model_config = ConfigDict(extra="forbid")

    outgoing: OutgoingConfig = Field(
        default_factory=OutgoingConfig,
        description="Outgoing connections (TCP, connected UDP).",
    )
    dns: DnsConfig = Field(
        default_factory=DnsConfig,
        description="Name resolution.",
    )


def _regex(value: str) -> str:
    try:
        re.compile(value)
    except (re.error, OverflowError, RecursionError) as exc:
        # re raises more than re.error: OverflowError for a{99999999999}, RecursionError for
        # thousands of nested groups.
        raise ValueError(f"invalid regular expression {value!r}: {exc}") from None
    return value


Regex = Annotated[str, AfterValidator(_regex)]


def _method(value: str) -> str:
    upper = value.upper()
    if not re.fullmatch(r"[A-Z][A-Z0-9_-]*", upper):
        raise ValueError(f"not an HTTP method: {value!r}")
    return upper


class HttpFilterConfig(BaseModel):
    """Which HTTP requests a steal takes; the others keep reaching the target's own app."""

    model_config = ConfigDict(extra="forbid")

    header: list[Regex] = Field(
        default_factory=list,
        description='Regular expressions searched in each request header written "Name: value" '
        '(e.g. "^x-dev: alice$"; the name matches in any case).',
    )
    path: Regex | None = Field(
        default=None,
        description="Regular expression searched in the request's path and query.",
    )
    methods: list[Annotated[str, AfterValidator(_method)]] = Field(
        default_factory=list,
        description='HTTP methods a request must have (e.g. ["GET", "POST"]); empty: any.',
    )
    match: Literal["all", "any"] = Field(
        default="all",
        description='"all": a request must meet every criterion given; "any": one is enough.',
    )

    def is_empty(self) -> bool:
        """Whether no criterion is set (then the steal takes whole connections)."""
        return not self.header and self.path is None and not self.methods

    def to_wire(self) -> dict[str, object]:
        """The filter as the agent's `incoming.subscribe` request carries it."""
        return {
            "headers": list(self.header),
            "path": self.path,
            "methods": list(self.methods),
            "mode": self.match,
        }


class IncomingConfig(BaseModel):
    """Traffic that reaches the target: copy it to your local app, or take it."""

    model_config = ConfigDict(extra="forbid")

    mode: Literal["off", "mirror", "steal"] = Field(
        default="off",
        description='"mirror": your local app gets a copy of each connection to the target\'s '
        'ports (its answers are dropped); "steal": your local app gets the traffic itself '
        '(all of it, or with http_filter only matching HTTP requests); "off": nothing. '
        "tether exec applies it to the ports your app listens on.",
    )
    ports: list[Annotated[int, Field(ge=1, le=65535)]] = Field(
        default_factory=list,
        description="Remote ports to mirror or steal (default: every port the local app "
        "listens on, mapped back through port_map).",
    )
    port_map: dict[Annotated[int, Field(ge=1, le=65535)], Annotated[int, Field(ge=1, le=65535)]] = (
        Field(
            default_factory=dict,
            description="Remote port -> local port the traffic is delivered to (default: the "
            "same port).",
        )
    )
    http_filter: HttpFilterConfig | None = Field(
        default=None,
        description="Steal only the HTTP/1.1 and HTTP/2 (gRPC included) requests that match.",
    )
    override: bool = Field(
        default=False,
        description="Take a port another session steals (it loses it) with a steal without "
        "a filter.",
    )
    steal_probes: bool = Field(
        default=False,
        description="Also steal Kubernetes probe requests (User-Agent kube-probe/...). Off: "
        "probes always reach the target's app, so it is not restarted while you debug.",
    )
    reset_connections: bool = Field(
        default=True,
        description="When a steal starts, reset the target app's open connections on that "
        "port so keep-alive clients reconnect through tether.",
    )

    @model_validator(mode="after")
    def _filter_needs_steal(self) -> "IncomingConfig":
        if self.http_filter is not None and self.mode == "mirror":
            raise ValueError('http_filter applies to mode "steal" only (mirror copies all)')
        if self.http_filter is not None and self.http_filter.is_empty():
            raise ValueError("http_filter needs header, path or methods")
        return self

    def subscription(
        self, port: int, who: str, mode: Literal["mirror", "steal"] | None = None
    ) -> IncomingSubscribe:
        """The one message that asks the agent for `port`'s traffic as this config says
        (`mode` overrides the config's; "off" asks for a mirror). The filter goes with a
        steal only, and `steal_probes` travels once, beside it."""
        chosen = mode or ("steal" if self.mode == "steal" else "mirror")
        wire = self.http_filter.to_wire() if chosen == "steal" and self.http_filter else None
        return IncomingSubscribe(
            port=port,
            mode=chosen,
            filter=wire,
            steal_probes=self.steal_probes,
            override=self.override,
            reset=self.reset_connections,
            who=who,
        )

    def local_port(self, remote: int) -> int:
        """Where traffic for `remote` is delivered on this machine."""
        return self.port_map.get(remote, remote)

    def remote_port(self, local: int) -> int | None:
        """The remote port whose traffic goes to local port `local`, if it is wanted."""
        for remote, mapped in self.port_map.items():
            if mapped == local:
                return remote if not self.ports or remote in self.ports else None
        if local in self.port_map:
            return None  # that remote port is delivered elsewhere
        return local if not self.ports or local in self.ports else None


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
    on_target_lost: Literal["stop", "keep"] = Field(
        default="stop",
        description="What tether exec does when the session loses its target (the pod was "
        "deleted or restarted, the agent went away): stop the program (SIGTERM, then SIGKILL "
        "after exec_stop_grace seconds) and exit non-zero, or keep it running without the "
        "target.",
    )
    exec_stop_grace: float = Field(
        default=10.0,
        gt=0,
        description="Seconds a program stopped because its target was lost gets between "
        "SIGTERM and SIGKILL.",
    )
    agent: AgentConfig = Field(
        default_factory=AgentConfig,
        description="The agent tether starts in the cluster.",
    )
    env: EnvConfig = Field(
        default_factory=EnvConfig,
        description="Environment variables taken from the target.",
    )
    fs: FsConfig = Field(
        default_factory=FsConfig,
        description="Which files come from the target and which from this machine.",
    )
    network: NetworkConfig = Field(
        default_factory=NetworkConfig,
        description="Outgoing connections and DNS: through the target or from this machine.",
    )
    incoming: IncomingConfig = Field(
        default_factory=IncomingConfig,
        description="Traffic to the target's ports: mirrored or stolen to your local app.",
    )
