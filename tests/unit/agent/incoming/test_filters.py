"""HttpFilter: matching semantics, wire form, probes, overlap heuristic."""

from __future__ import annotations

import re

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tether.agent.incoming.filters import HttpFilter, is_probe, overlaps


def hf(
    headers: tuple[str, ...] = (),
    path: str | None = None,
    methods: tuple[str, ...] = (),
    mode: str = "all",
    steal_probes: bool = False,
) -> HttpFilter:
    return HttpFilter.from_wire(
        {
            "headers": list(headers),
            "path": path,
            "methods": list(methods),
            "mode": mode,
            "steal_probes": steal_probes,
        }
    )


def test_header_pattern_matches_name_as_sent_or_lower_case() -> None:
    f = hf(headers=("^x-dev: alice$",))
    assert f.matches("GET", "/", [("X-Dev", "alice")])
    assert f.matches("GET", "/", [("x-dev", "alice")])
    assert f.matches("GET", "/", [("Accept", "*/*"), ("X-DEV", "alice")])
    assert not f.matches("GET", "/", [("X-Dev", "alice2")])
    assert not f.matches("GET", "/", [("X-Dev", "bob")])
    assert not f.matches("GET", "/", [])
    # As sent: an upper-case pattern matches the name as the client wrote it.
    assert hf(headers=("^X-Dev: alice$",)).matches("GET", "/", [("X-Dev", "alice")])
    assert not hf(headers=("^X-Dev: alice$",)).matches("GET", "/", [("x-dev", "alice")])


def test_path_is_searched_in_path_and_query() -> None:
    f = hf(path=r"^/api/")
    assert f.matches("GET", "/api/users?x=1", [])
    assert not f.matches("GET", "/web/api/", [])
    q = hf(path=r"[?&]debug=1(&|$)")
    assert q.matches("GET", "/x?a=2&debug=1", [])
    assert not q.matches("GET", "/x?debug=10", [])


def test_methods() -> None:
    f = hf(methods=("get", "POST"))
    assert f.methods == frozenset({"GET", "POST"})
    assert f.matches("GET", "/", [])
    assert f.matches("post", "/", [])
    assert not f.matches("DELETE", "/", [])


def test_all_and_any() -> None:
    every = hf(("^x-dev: alice$",), "^/api", ("POST",))
    some = hf(("^x-dev: alice$",), "^/api", ("POST",), mode="any")
    alice = [("x-dev", "alice")]
    assert every.matches("POST", "/api/x", alice)
    assert not every.matches("GET", "/api/x", alice)
    assert not every.matches("POST", "/web", alice)
    assert some.matches("GET", "/web", alice)
    assert some.matches("POST", "/web", [])
    assert some.matches("GET", "/api", [])
    assert not some.matches("GET", "/web", [("x-dev", "bob")])
    # Each header pattern is a criterion of its own.
    two = hf(headers=("^x-dev: alice$", "^x-team: a$"))
    assert not two.matches("GET", "/", alice)
    assert two.matches("GET", "/", [*alice, ("X-Team", "a")])
    assert hf(headers=("^x-dev: alice$", "^x-team: a$"), mode="any").matches("GET", "/", alice)


def test_probes() -> None:
    probe = [("User-Agent", "kube-probe/1.30"), ("x-dev", "alice")]
    assert is_probe(probe)
    assert is_probe([("user-agent", "Kube-Probe/1.2")])
    assert not is_probe([("User-Agent", "curl/8"), ("X-Agent", "kube-probe/1")])
    f = hf(headers=("^x-dev: alice$",))
    assert f.matches("GET", "/healthz", probe)  # the criteria alone
    assert not f.takes("GET", "/healthz", probe)  # but a probe is not taken
    assert f.takes("GET", "/healthz", probe[1:])
    assert hf(headers=("^x-dev: alice$",), steal_probes=True).takes("GET", "/healthz", probe)


@pytest.mark.parametrize(
    ("wire", "message"),
    [
        ({}, "needs a header, path or method"),
        ({"headers": [], "path": None, "methods": []}, "needs a header, path or method"),
        ({"headers": ["(unclosed"]}, "filter field headers: invalid regex '(unclosed'"),
        ({"path": "[a-"}, "filter field path: invalid regex '[a-'"),
        ({"headers": "^x: y$"}, "headers must be a list of strings"),
        ({"headers": [1]}, "headers must be a list of strings"),
        ({"path": 3}, "path must be a string"),
        ({"methods": ["GET", "NOT A METHOD"]}, "not an upper-case HTTP method"),
        ({"path": "/", "mode": "some"}, 'mode must be "all" or "any"'),
        ({"path": "/", "steal_probes": "yes"}, "steal_probes must be true or false"),
        ({"path": "/", "query": "x"}, "unknown HTTP filter field(s): query"),
        (["^x$"], "must be a map"),
    ],
)
def test_from_wire_errors(wire: object, message: str) -> None:
    with pytest.raises(ValueError, match=re.escape(message)) as info:
        HttpFilter.from_wire(wire)
    assert "\n" not in str(info.value)


def test_wire_round_trip_and_defaults() -> None:
    f = HttpFilter.from_wire({"headers": ["^x-dev: alice$"]})  # as the CLI may send it
    assert (f.mode, f.steal_probes, f.path, f.methods) == ("all", False, None, frozenset())
    wire = hf(("^a: b$", "c"), "^/p", ("PUT", "GET"), "any", True).to_wire()
    assert wire == {
        "headers": ["^a: b$", "c"],
        "path": "^/p",
        "methods": ["GET", "PUT"],
        "mode": "any",
        "steal_probes": True,
    }
    assert HttpFilter.from_wire(wire).to_wire() == wire


def test_describe() -> None:
    f = hf(("^x-dev: alice$",), "^/api", ("GET",), "any", True)
    assert f.describe() == (
        "header '^x-dev: alice$' or path '^/api' or method GET (probes included)"
    )


def test_overlaps() -> None:
    alice = hf(headers=("^x-dev: alice$",))
    bob = hf(headers=("^x-dev: bob$",))
    api = hf(path="^/api")
    assert overlaps(alice, hf(headers=("^x-dev: alice$",)))
    assert not overlaps(alice, bob)  # one header, two values
    assert overlaps(api, bob)  # /api with x-dev: bob matches both
    assert overlaps(api, hf(path="^/api/v2"))  # literal prefixes
    assert not overlaps(api, hf(path="^/web"))
    assert not overlaps(hf(methods=("GET",)), hf(methods=("POST",)))
    assert overlaps(hf(methods=("GET", "PUT")), hf(methods=("PUT",)))
    assert overlaps(hf(headers=("^x-dev: alice$",), path="^/api"), alice)
    assert not overlaps(hf(headers=("^x-dev: alice$",), path="^/api"), bob)
    # mode "any": one criterion in common is enough.
    assert overlaps(hf(headers=("^x-dev: bob$",), path="^/api", mode="any"), api)


_patterns = st.sampled_from(["^x-dev: alice$", "a", r"^x-(\w+): .*$", "^/api", "v[0-9]+", ""])
_methods = st.lists(st.sampled_from(["GET", "POST", "PUT", "PATCH", "M-SEARCH"]), unique=True)


@st.composite
def filters(draw: st.DrawFn) -> HttpFilter:
    headers = tuple(draw(st.lists(_patterns, max_size=3)))
    path = draw(st.none() | _patterns)
    methods = frozenset(draw(_methods))
    if not headers and path is None and not methods:
        methods = frozenset({"GET"})
    return HttpFilter(
        headers=tuple(re.compile(h) for h in headers),
        path=re.compile(path) if path is not None else None,
        methods=methods,
        mode=draw(st.sampled_from(["all", "any"])),
        steal_probes=draw(st.booleans()),
    )


_header_lists = st.lists(
    st.tuples(st.sampled_from(["X-Dev", "x-dev", "Host", "User-Agent"]), st.text(max_size=8)),
    max_size=4,
)


@given(filters(), st.sampled_from(["GET", "POST", "get"]), st.text(max_size=12), _header_lists)
def test_wire_round_trip_property(
    f: HttpFilter, method: str, target: str, headers: list[tuple[str, str]]
) -> None:
    back = HttpFilter.from_wire(f.to_wire())
    assert back == f
    assert back.matches(method, target, headers) == f.matches(method, target, headers)
    assert overlaps(f, back)  # a filter always overlaps its equal


@pytest.mark.parametrize("pattern", ["a{99999999999}", "(" * 2000 + ")" * 2000])
def test_from_wire_refuses_what_re_cannot_compile_with_a_value_error(pattern: str) -> None:
    # Found writing fuzz/config.py (the CLI's own check had the same hole): re.compile raises
    # OverflowError or RecursionError for these, which escaped from_wire's ValueError contract.
    with pytest.raises(ValueError, match="filter field path: invalid regex"):
        HttpFilter.from_wire({"path": pattern})
