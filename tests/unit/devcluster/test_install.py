"""What the set-up installs covers what it calls; the preflight names what is missing."""

from pathlib import Path

import pytest

from devcluster import install
from devcluster.errors import DevclusterError


def test_every_program_called_comes_from_a_package_the_setup_installs() -> None:
    # Otherwise only a machine where someone installed it by hand has it (rsync was one).
    providers = set(install.PACKAGES) | install.BASE_SYSTEM
    assert {p: pkg for p, pkg in install.PROGRAMS.items() if pkg not in providers} == {}


def test_the_kubernetes_build_needs_rsync() -> None:
    assert install.PROGRAMS["rsync"] == "rsync"


@pytest.fixture
def bindir(tmp_path: Path) -> Path:
    for name in ("make", "go"):
        exe = tmp_path / name
        exe.write_text("#!/bin/sh\n")
        exe.chmod(0o755)
    (tmp_path / "plugin").write_text("")
    return tmp_path


@pytest.mark.parametrize(
    ("programs", "missing"),
    [
        ({"make": "make", "go": "golang-go"}, {}),
        ({"make": "make", "rsync": "rsync"}, {"rsync": "rsync"}),
        (
            {"/nope/bridge": "containernetworking-plugins"},
            {"/nope/bridge": "containernetworking-plugins"},
        ),
    ],
)
def test_missing_programs(bindir: Path, programs: dict[str, str], missing: dict[str, str]) -> None:
    # sbin directories are searched too, so name programs no machine has in them.
    found = install.missing_programs(programs, {"PATH": str(bindir)})
    assert found == missing


def test_an_absolute_program_must_exist_as_a_file(bindir: Path) -> None:
    plugin = str(bindir / "plugin")
    assert install.missing_programs({plugin: "x"}, {"PATH": "/nonexistent"}) == {}


def test_the_message_names_each_program_and_its_package() -> None:
    line = install.describe_missing({"rsync": "rsync", "go": "golang-go"})
    assert line == (
        "missing: rsync (Debian package rsync), go (Debian package golang-go);"
        " install with: apt-get install golang-go rsync"
    )
    assert "\n" not in line


def test_preflight_raises_one_line(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(install, "PROGRAMS", {"tether-no-such-program": "tether-pkg"})
    with pytest.raises(DevclusterError, match=r"^missing: tether-no-such-program \(Debian"):
        install.preflight()
