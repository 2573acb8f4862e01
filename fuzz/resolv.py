"""Fuzz the agent's reading of the target's resolv.conf and hosts files
(tether.agent.resolver: `parse_resolv_conf`, `parse_hosts`, `search_candidates`), with text
decoded the way the agent reads the files (UTF-8, undecodable bytes replaced).

Invariants:
- only the documented clamps come out: ndots 0..15, timeout 1..30 s, attempts 1..5, 1 to 3
  nameservers (127.0.0.1 when the file names none), each a normalised IP address the file
  named; search domains non-empty, without a trailing dot, each a word of the file;
- parse(render(x)) == x: a ResolvConf written out as resolv.conf reads back the same, and
  so does the hosts table;
- hosts: names lower-case, addresses normalised, none twice for a name;
- the search candidates are absolute, distinct, one per search domain plus the name itself
  (the name alone when it ends in a dot), as-is first exactly when it has ndots dots.
"""

from __future__ import annotations

import ipaddress
import sys

import atheris

from fuzz.common import check, provider, run

with atheris.instrument_imports(include=["tether"]):
    from tether.agent.resolver import (
        ResolvConf,
        parse_hosts,
        parse_resolv_conf,
        search_candidates,
    )


def render_resolv_conf(conf: ResolvConf) -> str:
    lines = [f"nameserver {server}" for server in conf.nameservers]
    if conf.search:
        lines.append("search " + " ".join(conf.search))
    options = [f"ndots:{conf.ndots}", f"timeout:{conf.timeout:g}", f"attempts:{conf.attempts}"]
    options += ["rotate"] * conf.rotate + ["edns0"] * conf.edns0
    lines.append("options " + " ".join(options))
    return "\n".join(lines) + "\n"


def render_hosts(hosts: dict[str, list[str]]) -> str:
    return "".join(
        f"{address} {name}\n" for name, addresses in hosts.items() for address in addresses
    )


def check_resolv_conf(text: str) -> ResolvConf:
    conf = parse_resolv_conf(text)
    check(0 <= conf.ndots <= 15, f"ndots {conf.ndots}")
    check(1 <= conf.timeout <= 30, f"timeout {conf.timeout}")
    check(1 <= conf.attempts <= 5, f"attempts {conf.attempts}")
    check(1 <= len(conf.nameservers) <= 3, f"{len(conf.nameservers)} nameservers")
    words = set(text.split())
    for server in conf.nameservers:
        check(str(ipaddress.ip_address(server)) == server, f"nameserver {server!r}")
        check(
            server == "127.0.0.1" or any(_same_address(w, server) for w in words),
            f"nameserver {server!r} is not in the file",
        )
    for domain in conf.search:
        check(bool(domain) and not domain.endswith("."), f"search domain {domain!r}")
        check(any(w.rstrip(".") == domain for w in words), f"{domain!r} is not in the file")
    again = parse_resolv_conf(render_resolv_conf(conf))
    check(again == conf, f"rendered and read again: {again} instead of {conf}")
    return conf


def _same_address(word: str, server: str) -> bool:
    try:
        return str(ipaddress.ip_address(word)) == server
    except ValueError:
        return False


def check_hosts(text: str) -> None:
    hosts = parse_hosts(text)
    for name, addresses in hosts.items():
        check(name == name.lower(), f"host name {name!r} is not lower-case")
        check(len(set(addresses)) == len(addresses), f"{name!r}: an address twice")
        for address in addresses:
            check(str(ipaddress.ip_address(address)) == address, f"address {address!r}")
    again = parse_hosts(render_hosts(hosts))
    check(again == hosts, "the hosts table, rendered and read again, changed")


def check_candidates(name: str, conf: ResolvConf) -> None:
    candidates = search_candidates(name, conf)
    check(len(set(candidates)) == len(candidates), f"a candidate twice: {candidates}")
    check(all(c.endswith(".") for c in candidates), f"a relative candidate: {candidates}")
    if name.endswith("."):
        check(candidates == [name], f"an absolute name was searched: {candidates}")
        return
    as_is = name + "."
    check(as_is in candidates, f"{name!r} itself is not tried")
    wanted = {as_is, *(f"{name}.{d}." for d in conf.search)}
    check(set(candidates) == wanted, f"candidates {candidates} instead of {sorted(wanted)}")
    if name.count(".") >= conf.ndots:
        check(candidates[0] == as_is, f"{name!r} has ndots dots but is not tried first")
    else:
        check(candidates[-1] == as_is, f"{name!r} has too few dots but is not tried last")


def test_one_input(data: bytes) -> None:
    """One fuzz input: a name to search for, then the file's bytes."""
    fdp = provider(data)
    name = fdp.ConsumeBytes(fdp.ConsumeIntInRange(0, 64)).decode("utf-8", "replace")
    text = fdp.ConsumeBytes(atheris.ALL_REMAINING).decode("utf-8", "replace")
    conf = check_resolv_conf(text)
    check_hosts(text)
    check_candidates(name, conf)


def main() -> None:
    """Run the harness under libFuzzer with the command line's flags."""
    run(test_one_input, sys.argv)


if __name__ == "__main__":
    main()
