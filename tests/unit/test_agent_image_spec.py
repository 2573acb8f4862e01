"""The agent image is declared once (agent-image/): Containerfile and devcluster's builder both
read that declaration, and it holds exactly what the agent imports."""

import ast
import importlib.metadata
import re
import sys
import tomllib
from pathlib import Path

import pytest
from packaging.requirements import Requirement

from devcluster import images
from devcluster.errors import DevclusterError

REPO = Path(__file__).resolve().parents[2]
SRC = REPO / "src"
SPEC = images.AgentSpec.read(REPO / images.AGENT_SPEC_DIR)
CONTAINERFILE = (REPO / "Containerfile").read_text()


def _pins() -> dict[str, str]:
    pins = {}
    for line in SPEC.requirements_text.splitlines():
        req = Requirement(line)
        (spec,) = req.specifier
        assert spec.operator == "==", f"{line}: pin an exact version"
        pins[req.name.lower()] = spec.version
    return pins


def _module_file(name: str) -> Path | None:
    base = SRC.joinpath(*name.split("."))
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def _agent_imports() -> set[str]:
    """Top-level names of the non-tether modules reachable from the agent's entry point."""
    todo, seen, outside = ["tether.agent.__main__"], set(), set()
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        path = _module_file(name)
        if path is None:
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module, *(f"{node.module}.{a.name}" for a in node.names)]
            else:
                continue
            for n in names:
                if n.split(".")[0] == "tether":
                    todo.append(n)
                elif n.split(".")[0] not in sys.stdlib_module_names:
                    outside.add(n.split(".")[0])
    return outside


def _distributions(modules: set[str]) -> set[str]:
    owners = importlib.metadata.packages_distributions()
    return {d.lower() for m in modules for d in owners.get(m, [m])}


def _with_dependencies(dists: set[str]) -> set[str]:
    todo, closure = list(dists), set()
    while todo:
        d = todo.pop()
        if d in closure:
            continue
        closure.add(d)
        for line in importlib.metadata.requires(d) or []:
            req = Requirement(line)
            if req.marker is None or req.marker.evaluate({"extra": ""}):
                todo.append(req.name.lower())
    return closure


def test_requirements_are_exactly_what_the_agent_imports() -> None:
    imported = _distributions(_agent_imports())
    assert imported == {"msgpack", "dnspython", "h11", "h2"}
    assert set(_pins()) == _with_dependencies(imported)


def test_each_pin_satisfies_the_projects_range() -> None:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
    ranges = {Requirement(r).name.lower(): Requirement(r).specifier for r in project}
    for name, version in _pins().items():
        if name in ranges:
            assert ranges[name].contains(version), f"{name}=={version} is outside {ranges[name]}"


def test_the_agents_programs_come_from_declared_packages() -> None:
    # The e2e test checks the built image; this names the package a program needs.
    assert {"python3", "iptables", "iproute2"} <= set(SPEC.packages)


def _stages() -> list[str]:
    return re.split(r"^FROM ", CONTAINERFILE, flags=re.M)[1:]


def test_containerfile_installs_the_declaration_and_nothing_else() -> None:
    *builders, final = _stages()
    base = f"docker.io/library/debian:{images.DEBIAN_SUITE}-slim"
    assert all(stage.startswith(base) for stage in [*builders, final])
    # The final stage's Debian packages are the declared ones, read from the file.
    installs = re.findall(r"apt-get install ([^&]*)", final.replace("\\\n", " "))
    assert [" ".join(i.split()) for i in installs] == [
        "-y --no-install-recommends $(sed 's/#.*//' /agent-image/debian-packages.txt)"
    ]
    assert "COPY agent-image/debian-packages.txt /agent-image/debian-packages.txt" in final
    # The Python requirements come from the declared file, into the site devcluster uses.
    (builder,) = builders
    assert "-r /agent-image/requirements.txt" in builder
    assert "COPY agent-image/requirements.txt /agent-image/requirements.txt" in builder
    assert f"COPY --from=python-deps /deps /{images.AGENT_SITE}\n" in final
    assert f"COPY src/tether /{images.AGENT_SITE}/tether\n" in final
    assert "pip install" not in final
    cmd = re.search(r"^CMD (.*)$", final, flags=re.M)
    assert cmd is not None and ast.literal_eval(cmd.group(1)) == images.AGENT_CONFIG["Cmd"]


@pytest.mark.parametrize(
    ("text", "packages"),
    [
        ("python3\niptables\n", ["python3", "iptables"]),
        ("# comment\n\n  iproute2  # ss -K\n", ["iproute2"]),
    ],
)
def test_declaration_lines(tmp_path: Path, text: str, packages: list[str]) -> None:
    (tmp_path / "debian-packages.txt").write_text(text)
    (tmp_path / "requirements.txt").write_text("# pins\nh11==0.16.0\n")
    spec = images.AgentSpec.read(tmp_path)
    assert spec.packages == packages
    assert spec.requirements_text == "h11==0.16.0"


def test_an_empty_or_missing_declaration_is_one_line(tmp_path: Path) -> None:
    with pytest.raises(DevclusterError, match="cannot read the agent image declaration"):
        images.AgentSpec.read(tmp_path)
    (tmp_path / "debian-packages.txt").write_text("# nothing\n")
    (tmp_path / "requirements.txt").write_text("")
    with pytest.raises(DevclusterError, match="names no package"):
        images.AgentSpec.read(tmp_path)
