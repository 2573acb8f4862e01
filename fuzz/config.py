"""Fuzz the configuration loader (tether.config.loader): config files in every format
(TOML, YAML, JSON and unknown suffixes; any bytes, undecodable ones included) and TETHER_*
environment variables, through the same entry points as the CLI (`load_config`,
`resolve_config`).

Invariants:
- the result is a TetherConfig or a ConfigError, nothing else;
- a ConfigError's message is one non-empty line that names its source (the file as given,
  or a TETHER_* variable that was set);
- parse(render(x)) == x: a loaded configuration written back as JSON and as YAML loads as
  the same configuration; a list or table variable's value renders back to the same value;
- a kubeconfig path from a file is absolute (made relative to the file's directory);
- what validation accepted works where it is used: path and name patterns compile, and
  the agent reads the HTTP filter back as sent;
- `tether config`'s sources name, for each key, a variable that was set or "default".
"""

from __future__ import annotations

import json
import re
import sys
import warnings
from pathlib import Path
from typing import Any

import atheris
import yaml

from fuzz.common import check, flag, provider, run, scratch_dir, text

with atheris.instrument_imports(include=["tether", "tomllib", "yaml"]):
    from tether.agent.incoming.filters import HttpFilter
    from tether.config import (
        ConfigError,
        TetherConfig,
        env_settings,
        load_config,
        parse_env_value,
        resolve_config,
    )
    from tether.config.models import name_pattern_regex, path_pattern_regex

# re warns about patterns that may mean something else in a later Python: noise here.
warnings.simplefilter("ignore", FutureWarning)
SUFFIXES = (".toml", ".yaml", ".yml", ".json", ".conf")
WORK = scratch_dir("config")  # every input writes a file
PROJECT = WORK / "project"
HOME = WORK / "home"
PROJECT.mkdir()
HOME.mkdir()


def check_error(exc: ConfigError, sources: list[str]) -> None:
    message = str(exc)
    check(bool(message), "a ConfigError without a message")
    check(len(message.splitlines()) == 1, f"a ConfigError of several lines: {message!r}")
    check(
        any(message.startswith(source) for source in sources),
        f"a ConfigError that names none of {sources}: {message!r}",
    )


def load(name: str, content: bytes) -> TetherConfig | ConfigError:
    path = PROJECT / name
    path.write_bytes(content)
    try:
        return load_config(Path(name), PROJECT)
    except ConfigError as exc:
        return exc
    finally:
        path.unlink()


def fuzz_file(fdp: Any) -> None:
    name = "tether" + SUFFIXES[fdp.ConsumeIntInRange(0, len(SUFFIXES) - 1)]
    result = load(name, fdp.ConsumeBytes(atheris.ALL_REMAINING))
    if isinstance(result, ConfigError):
        check_error(result, [name])
        return
    if result.kubeconfig is not None:
        check(Path(result.kubeconfig).is_absolute(), f"kubeconfig {result.kubeconfig!r}")
    check_usable(result)
    dumped = result.model_dump(mode="json")
    for rendered, content in [
        ("tether.json", json.dumps(dumped)),
        ("tether.yaml", yaml.safe_dump(dumped, allow_unicode=True)),
    ]:
        again = load(rendered, content.encode("utf-8", "surrogatepass"))
        check(again == result, f"{rendered}: rendered and loaded again, it is {again!r}")


def check_usable(config: TetherConfig) -> None:
    """What validation accepted works where it is used: the patterns compile (as
    tether.local.policy.rules compiles them), the agent takes the HTTP filter (as it is sent)."""
    fs = config.fs
    for pattern in [*fs.local, *fs.read_only, *fs.read_write, *fs.not_found]:
        re.compile(path_pattern_regex(pattern, "/home/dev"))
    for pattern in [*config.network.dns.local, *config.network.dns.remote]:
        re.compile(name_pattern_regex(pattern))
    http_filter = config.incoming.http_filter
    if http_filter is not None:
        wire = http_filter.to_wire()
        taken = HttpFilter.from_wire(wire).to_wire()
        check(
            all(taken[key] == wire[key] for key in ("headers", "path", "mode"))
            and sorted(taken["methods"]) == sorted(set(http_filter.methods)),
            f"the agent read the filter {wire} as {taken}",
        )


def fuzz_env(fdp: Any) -> None:
    settings = env_settings()
    environ: dict[str, str] = {}
    for _ in range(fdp.ConsumeIntInRange(1, 4)):
        setting = settings[fdp.ConsumeIntInRange(0, len(settings) - 1)]
        environ[setting.name] = text(fdp, 200)
    set_names = [name for name, value in environ.items() if value]
    for setting in settings:
        value = environ.get(setting.name)
        if value:
            check_rendered(setting, value)
    try:
        resolved = resolve_config(None, PROJECT, environ=environ, home=HOME)
    except ConfigError as exc:
        check_error(exc, set_names)
        return
    check_usable(resolved.config)
    for dotted, source in resolved.sources.items():
        check(source == "default" or source in set_names, f"{dotted} comes from {source!r}")
    for setting in settings:
        if environ.get(setting.name):
            got = resolved.sources.get(setting.dotted)
            check(got == setting.name, f"{setting.dotted} set by {setting.name}, says {got!r}")


def check_rendered(setting: Any, text: str) -> None:
    """A variable's value, rendered as a user would write it, reads back the same."""
    try:
        value = parse_env_value(setting, text)
    except ValueError:
        return
    if setting.kind == "list" and isinstance(value, list):
        joined = ",".join(str(item) for item in value)
        plain = all(isinstance(i, str) and i and i == i.strip() and "," not in i for i in value)
        # A comma list that reads as JSON (`[a-z]`) is JSON: only JSON renders that one.
        if plain and value and not (joined.startswith("[") and joined.endswith("]")):
            check(parse_env_value(setting, joined) == value, "comma list round trip")
        check(_same_json(parse_env_value(setting, json.dumps(value)), value), "JSON list")
    elif setting.kind == "table":
        check(_same_json(parse_env_value(setting, json.dumps(value)), value), "JSON table")
    else:
        check(value == text, "a text variable's value was changed")


def _same_json(a: object, b: object) -> bool:
    # Compared as JSON text: NaN, which JSON allows here, is not equal to itself.
    return json.dumps(a) == json.dumps(b)


def test_one_input(data: bytes) -> None:
    """One fuzz input: a config file (the suffix, then the bytes), or TETHER_* variables."""
    fdp = provider(data)
    if flag(fdp):
        fuzz_env(fdp)
    else:
        fuzz_file(fdp)


def main() -> None:
    """Run the harness under libFuzzer with the command line's flags."""
    run(test_one_input, sys.argv)


if __name__ == "__main__":
    main()
