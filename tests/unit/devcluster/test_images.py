"""Image archives are what `ctr images import` expects (docker-save layout)."""

import hashlib
import json
import tarfile
from pathlib import Path

import pytest

from devcluster import images, layout


@pytest.fixture
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setattr(layout, "LAYERS", tmp_path / "layers")
    return tmp_path


def _populate(root: Path) -> None:
    (root / "etc").mkdir()
    (root / "etc" / "hello").write_text("hi\n")


def test_layer_is_cached_and_digest_matches(cache: Path) -> None:
    calls = []

    def populate(root: Path) -> None:
        calls.append(root)
        _populate(root)

    a = images.cached_layer("k", populate)
    b = images.cached_layer("k", populate)
    assert a == b
    assert len(calls) == 1
    assert hashlib.sha256(a.path.read_bytes()).hexdigest() == a.diff_id
    with tarfile.open(a.path) as tar:
        member = tar.getmember("etc/hello")
        assert (member.uid, member.gid, member.mtime) == (0, 0, 0)


def test_archive_has_manifest_config_and_layers(cache: Path, tmp_path: Path) -> None:
    layer = images.cached_layer("x", _populate)
    dest = tmp_path / "img.tar"
    images._archive("docker.io/t/x:1", [layer], {"Cmd": ["sh"]}, dest)
    with tarfile.open(dest) as tar:
        manifest = json.load(tar.extractfile("manifest.json"))  # type: ignore[arg-type]
        (entry,) = manifest
        assert entry["RepoTags"] == ["docker.io/t/x:1"]
        config = json.load(tar.extractfile(entry["Config"]))  # type: ignore[arg-type]
        assert config["rootfs"]["diff_ids"] == [f"sha256:{layer.diff_id}"]
        assert config["config"]["Cmd"] == ["sh"]
        data = tar.extractfile(entry["Layers"][0]).read()  # type: ignore[union-attr]
        assert hashlib.sha256(data).hexdigest() == layer.diff_id
