"""HTTP request filters of a filtered steal: which requests of a port a session takes.

A filter's criteria are regular expressions on the request's headers and path and a set of
methods. They combine with "all" (every criterion given must hold) or "any" (one is enough).
Kubernetes probes (`User-Agent: kube-probe/...`) are a separate policy: `matches` looks at the
criteria only, `takes` also keeps probes away unless the filter has `steal_probes`.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

Mode = Literal["all", "any"]

_WIRE_KEYS = frozenset({"headers", "path", "methods", "mode", "steal_probes"})
# The same rule as the CLI's configuration (tether.config.models), so what the CLI accepts the
# agent accepts too.
_METHOD = re.compile(r"[A-Z][A-Z0-9_-]*")
# A header pattern that starts with a literal header name, e.g. "^x-dev: alice$" or
# "(?i)^X-Dev:": used by `overlaps` only.
_PATTERN_NAME = re.compile(r"(?:\(\?i\))?\^?([A-Za-z0-9_-]+):")
# A path pattern that is a plain literal prefix, e.g. "^/api/": used by `overlaps` only.
_LITERAL_PREFIX = re.compile(r"\^([A-Za-z0-9/_~%=&,;:@!'-]*)")


@dataclass(frozen=True)
class HttpFilter:
    """Which HTTP requests a filtered steal takes.

    `headers`: patterns searched (`re.search`) in every request header written "Name: value";
    a pattern holds when one header matches, with the name as sent or lower-cased (so
    `^x-dev: alice$` matches `X-Dev: alice`; HTTP/2 names are always lower-case).
    `path`: searched in the request target (path and query). `methods`: upper-case, empty =
    any method. `mode`: "all" = every criterion given must hold, "any" = one is enough (each
    header pattern is a criterion of its own). `steal_probes`: Kubernetes probes are taken
    too (see `takes`).
    """

    headers: tuple[re.Pattern[str], ...] = ()
    path: re.Pattern[str] | None = None
    methods: frozenset[str] = field(default_factory=frozenset)
    mode: Mode = "all"
    steal_probes: bool = False

    def __post_init__(self) -> None:
        if not self.headers and self.path is None and not self.methods:
            raise ValueError("an HTTP filter needs a header, path or method criterion")
        if self.mode not in ("all", "any"):
            raise ValueError(f'filter mode must be "all" or "any", not {self.mode!r}')
        for method in self.methods:
            if not _METHOD.fullmatch(method):
                raise ValueError(f"not an upper-case HTTP method: {method!r}")

    # -- wire format ----------------------------------------------------------------------

    @classmethod
    def from_wire(cls, wire: object) -> HttpFilter:
        """Build a filter from its wire form (see `to_wire`); missing keys take defaults.

        Raises ValueError with a one-line message for anything malformed. Unknown keys are
        refused rather than ignored: a criterion this agent does not know would otherwise be
        dropped silently and the filter would steal more than its author meant.
        """
        if not isinstance(wire, dict):
            raise ValueError(f"an HTTP filter must be a map, not {type(wire).__name__}")
        unknown = sorted(str(k) for k in wire if k not in _WIRE_KEYS)
        if unknown:
            raise ValueError(f"unknown HTTP filter field(s): {', '.join(unknown)}")
        headers = tuple(_compile("headers", p) for p in _str_list(wire.get("headers"), "headers"))
        path_value = wire.get("path")
        if path_value is not None and not isinstance(path_value, str):
            raise ValueError("filter field path must be a string or null")
        path = _compile("path", path_value) if path_value is not None else None
        methods = frozenset(m.upper() for m in _str_list(wire.get("methods"), "methods"))
        mode = wire.get("mode", "all")
        if mode not in ("all", "any"):
            raise ValueError(f'filter field mode must be "all" or "any", not {mode!r}')
        steal_probes = wire.get("steal_probes", False)
        if not isinstance(steal_probes, bool):
            raise ValueError("filter field steal_probes must be true or false")
        return cls(headers, path, methods, mode, steal_probes)

    def to_wire(self) -> dict[str, Any]:
        """The filter as plain (msgpack-able) values; `from_wire` reads it back."""
        return {
            "headers": [p.pattern for p in self.headers],
            "path": self.path.pattern if self.path is not None else None,
            "methods": sorted(self.methods),
            "mode": self.mode,
            "steal_probes": self.steal_probes,
        }

    # -- matching ---------------------------------------------------------------------------

    def matches(self, method: str, target: str, headers: Sequence[tuple[str, str]]) -> bool:
        """Whether a request meets the filter's criteria (probes are not looked at here)."""
        results: list[bool] = []
        if self.headers:
            lines = _header_lines(headers)
            results.extend(any(p.search(line) for line in lines) for p in self.headers)
        if self.path is not None:
            results.append(self.path.search(target) is not None)
        if self.methods:
            results.append(method.upper() in self.methods)
        return all(results) if self.mode == "all" else any(results)

    def takes(self, method: str, target: str, headers: Sequence[tuple[str, str]]) -> bool:
        """Whether the filtered steal takes this request: it matches, and it is not a
        Kubernetes probe unless the filter has `steal_probes`."""
        if not self.steal_probes and is_probe(headers):
            return False
        return self.matches(method, target, headers)

    def describe(self) -> str:
        """A short human description, e.g. `header "^x-dev: alice$" and path "^/api"`."""
        parts = [f"header {p.pattern!r}" for p in self.headers]
        if self.path is not None:
            parts.append(f"path {self.path.pattern!r}")
        if self.methods:
            parts.append("method " + "|".join(sorted(self.methods)))
        text = f" {'and' if self.mode == 'all' else 'or'} ".join(parts)
        if self.steal_probes:
            text += " (probes included)"
        return text


def is_probe(headers: Iterable[tuple[str, str]]) -> bool:
    """Whether a request is a Kubernetes probe: its User-Agent starts with "kube-probe/"."""
    return any(
        name.lower() == "user-agent" and value.strip().lower().startswith("kube-probe/")
        for name, value in headers
    )


def overlaps(a: HttpFilter, b: HttpFilter) -> bool:
    """A cheap guess whether some request could match both filters (to warn their owners).

    Each filter is turned into its "sufficient sets": the criteria that together make it
    match (mode "all": one set of every criterion; mode "any": each criterion alone). The
    filters overlap when a sufficient set of each can hold for the same request:

    - methods: either set is empty (any method) or they share a method;
    - path: either set has no path, the patterns are equal, or both are plain literal
      prefixes ("^/api") and one extends the other;
    - headers: no two patterns that start with the same literal header name ("x-dev:") differ.
      Patterns on different names, or whose name cannot be read, are assumed to be able to
      hold together (a request may carry both headers).

    So `^x-dev: alice$` and `^x-dev: bob$` do not overlap (a client sends one value), while
    `path ^/api` and `header ^x-dev: bob$` do (a request to /api with x-dev: bob matches
    both). Equal filters always overlap. It is a heuristic: regular expressions are compared
    as text, never for what they accept.
    """
    return any(_compatible(sa, sb) for sa in _sufficient_sets(a) for sb in _sufficient_sets(b))


# -- helpers -------------------------------------------------------------------------------------


def _compile(field_name: str, pattern: str) -> re.Pattern[str]:
    try:
        return re.compile(pattern)
    except (re.error, OverflowError, RecursionError) as exc:  # a{99999999999}, deep nesting
        raise ValueError(f"filter field {field_name}: invalid regex {pattern!r}: {exc}") from None


def _str_list(value: object, field_name: str) -> list[str]:
    if value is None:
        return []
    if not isinstance(value, list | tuple) or not all(isinstance(v, str) for v in value):
        raise ValueError(f"filter field {field_name} must be a list of strings")
    return list(value)


def _header_lines(headers: Sequence[tuple[str, str]]) -> list[str]:
    lines: list[str] = []
    for name, value in headers:
        lines.append(f"{name}: {value}")
        lower = name.lower()
        if lower != name:
            lines.append(f"{lower}: {value}")
    return lines


@dataclass(frozen=True)
class _Criteria:
    headers: frozenset[str]
    path: str | None
    methods: frozenset[str]


def _sufficient_sets(f: HttpFilter) -> list[_Criteria]:
    headers = frozenset(p.pattern for p in f.headers)
    path = f.path.pattern if f.path is not None else None
    if f.mode == "all":
        return [_Criteria(headers, path, f.methods)]
    sets = [_Criteria(frozenset({h}), None, frozenset()) for h in headers]
    if path is not None:
        sets.append(_Criteria(frozenset(), path, frozenset()))
    if f.methods:
        sets.append(_Criteria(frozenset(), None, f.methods))
    return sets


def _compatible(a: _Criteria, b: _Criteria) -> bool:
    if a.methods and b.methods and not a.methods & b.methods:
        return False
    if a.path is not None and b.path is not None and not _paths_compatible(a.path, b.path):
        return False
    names_a = {p: _pattern_name(p) for p in a.headers}
    for pb in b.headers:
        name_b = _pattern_name(pb)
        if name_b is None:
            continue
        for pa, name_a in names_a.items():
            if name_a == name_b and pa != pb:
                return False
    return True


def _paths_compatible(a: str, b: str) -> bool:
    if a == b:
        return True
    ma, mb = _LITERAL_PREFIX.fullmatch(a), _LITERAL_PREFIX.fullmatch(b)
    if ma is None or mb is None:
        return False
    prefix_a, prefix_b = ma.group(1), mb.group(1)
    return prefix_a.startswith(prefix_b) or prefix_b.startswith(prefix_a)


def _pattern_name(pattern: str) -> str | None:
    m = _PATTERN_NAME.match(pattern)
    return m.group(1).lower() if m else None
