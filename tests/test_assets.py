"""The asset manifest and resolver: mirror first, then the cache, then the URL; sha256 always checked."""

from __future__ import annotations

import hashlib
import shutil

import pytest
from support.data import REPO, SHARED

from appliance.assets import MANIFEST, AssetError, load_manifest, resolve, sha256_of


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("MASK_APPLIANCE_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache" / "assets"


def test_manifest_lists_the_detectors_with_their_upstream_sha256():
    assets = load_manifest()
    assert {"yunet", "ssd_weights", "ssd_config"} <= set(assets)
    for asset in assets.values():
        assert asset.url.startswith("https://")
        assert sha256_of(SHARED / "assets" / asset.path) == asset.sha256


def test_the_manifest_is_the_repositorys_in_a_checkout():
    # appliance/models, the package data a wheel carries, is a link to models/ here (tests/test_install.py builds one)
    assert MANIFEST == REPO / "models" / "assets.toml"


@pytest.mark.parametrize("text, expected", [
    (None, r"assets\.toml: not found \(a package built without its models/ data\?\)"),
    ("[yunet\n", r"assets\.toml: .*line 1"),
    ('[yunet]\npath = "a"\nurl = "https://example.org/a"\n', r"assets\.toml: \[yunet\] sha256 must be a string"),
    ('yunet = 1\n', r"assets\.toml: \[yunet\] path must be a string"),
])
def test_a_missing_or_malformed_manifest_is_one_line_naming_it(tmp_path, text, expected):
    manifest = tmp_path / "assets.toml"
    if text is not None:
        manifest.write_text(text)
    with pytest.raises(AssetError, match=expected) as err:
        resolve("yunet", manifest=manifest)
    assert str(manifest) in str(err.value) and "\n" not in str(err.value)


def test_resolves_from_the_mirror(cache):
    path = resolve("yunet", download=False)
    assert path == SHARED / "assets" / "face-detectors" / "face_detection_yunet_2026may.onnx"


def test_a_mirror_copy_with_the_wrong_sha256_is_refused(tmp_path, monkeypatch, cache):
    mirror = tmp_path / "mirror" / "face-detectors"
    mirror.mkdir(parents=True)
    (mirror / "face_detection_yunet_2026may.onnx").write_bytes(b"tampered")
    monkeypatch.setenv("MASK_APPLIANCE_ASSETS", str(tmp_path / "mirror"))
    with pytest.raises(AssetError, match="face_detection_yunet_2026may.onnx: sha256 .* does not match"):
        resolve("yunet", download=False)


def test_a_missing_asset_says_where_it_looked(tmp_path, monkeypatch, cache):
    monkeypatch.setenv("MASK_APPLIANCE_ASSETS", str(tmp_path / "empty"))
    with pytest.raises(AssetError) as err:
        resolve("yunet", download=False)
    message = str(err.value)
    assert "not found" in message and str(tmp_path / "empty") in message and str(cache) in message
    assert "\n" not in message


def test_an_unknown_asset_is_named():
    with pytest.raises(AssetError, match="no asset named 'nope'"):
        resolve("nope")


def _manifest(tmp_path, url: str, sha: str):
    manifest = tmp_path / "assets.toml"
    manifest.write_text(f'[thing]\npath = "things/thing.bin"\nurl = "{url}"\nsha256 = "{sha}"\n')
    return manifest


def test_download_is_checked_and_cached(tmp_path, monkeypatch, cache):
    # A local file:// URL stands in for the upstream server: the same urllib code path, no network.
    source = tmp_path / "upstream.bin"
    shutil.copy(MANIFEST, source)
    sha = hashlib.sha256(source.read_bytes()).hexdigest()
    monkeypatch.delenv("MASK_APPLIANCE_ASSETS", raising=False)
    manifest = _manifest(tmp_path, source.as_uri(), sha)
    path = resolve("thing", manifest=manifest)
    assert path == cache / "things" / "thing.bin" and sha256_of(path) == sha
    source.unlink()
    assert resolve("thing", manifest=manifest) == path  # now from the cache


def test_a_download_with_the_wrong_sha256_is_not_kept(tmp_path, monkeypatch, cache):
    source = tmp_path / "upstream.bin"
    source.write_bytes(b"something else")
    monkeypatch.delenv("MASK_APPLIANCE_ASSETS", raising=False)
    with pytest.raises(AssetError, match="downloaded sha256"):
        resolve("thing", manifest=_manifest(tmp_path, source.as_uri(), "0" * 64))
    assert not list((cache / "things").iterdir())
