"""Files tether itself serves to the process: a resolv.conf that makes every resolver use TCP
(so each query arrives on a connected socket, which the supervisor hands to tether's DNS
proxy) and an nsswitch.conf that sends host lookups to it rather than to systemd-resolved,
nscd or mDNS; and which nameservers a resolv.conf names."""

from tether.local.policy.names import normalize_address


def resolv_conf_for_process(remote: str) -> str:
    """The pod's resolv.conf with `options use-vc` added (glibc, c-ares and Go honour it)."""
    lines = remote.splitlines()
    out: list[str] = []
    options_seen = False
    for line in lines:
        words = line.split()
        if words and words[0] == "options":
            options_seen = True
            if "use-vc" not in words:
                line = line + " use-vc"
        out.append(line)
    if not options_seen:
        out.append("options use-vc")
    return "\n".join(out) + "\n"


def nsswitch_for_process(local: str) -> str:
    """The local nsswitch.conf with the hosts line replaced by `hosts: files dns`."""
    out = [line for line in local.splitlines() if not line.strip().startswith("hosts:")]
    out.append("hosts: files dns")
    return "\n".join(out) + "\n"


def nameservers_in(resolv_conf: str) -> tuple[str, ...]:
    """The `nameserver` addresses of a resolv.conf, in order, once each, in the spelling the
    supervisor sees in a connect() (see `tether.local.policy.names.normalize_address`)."""
    found: dict[str, None] = {}
    for line in resolv_conf.splitlines():
        words = line.split("#", 1)[0].split(";", 1)[0].split()
        if len(words) >= 2 and words[0] == "nameserver":
            found[normalize_address(words[1])] = None
    return tuple(found)
