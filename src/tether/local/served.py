"""Files tether itself serves to the process: a resolv.conf that makes every resolver use TCP
(so DNS rides the same connect redirection as everything else) and an nsswitch.conf that sends
host lookups to it rather than to systemd-resolved, nscd or mDNS."""


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
