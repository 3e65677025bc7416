"""Third-party model files: find them in a mirror, the cache or upstream, and always check their sha256."""

from __future__ import annotations

import hashlib
import os
import tempfile
import tomllib
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from platformdirs import user_cache_dir

from appliance import MODELS_DIR

MANIFEST = MODELS_DIR / "assets.toml"
MIRROR_ENV = "MASK_APPLIANCE_ASSETS"


class AssetError(RuntimeError):
    """An asset is unknown, missing everywhere, or fails its checksum."""


@dataclass(frozen=True)
class Asset:
    """A third-party model file of the manifest (models/assets.toml): where it comes from and its sha256."""

    name: str
    path: str
    url: str
    sha256: str


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def load_manifest(manifest: Path = MANIFEST) -> dict[str, Asset]:
    """The manifest's assets by name; a missing or malformed manifest is one AssetError line naming it."""
    try:
        with open(manifest, "rb") as f:
            table = tomllib.load(f)
    except FileNotFoundError:
        # The manifest is package data (appliance/models): an install without it was built without models/.
        raise AssetError(f"{manifest}: not found (a package built without its models/ data?)") from None
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise AssetError(f"{manifest}: {exc}") from None
    assets = {}
    for name, entry in table.items():
        for key in ("path", "url", "sha256"):
            if not isinstance(entry, dict) or not isinstance(entry.get(key), str):
                raise AssetError(f"{manifest}: [{name}] {key} must be a string")
        assets[name] = Asset(name, entry["path"], entry["url"], entry["sha256"])
    return assets


def cache_dir() -> Path:
    return Path(os.environ.get("MASK_APPLIANCE_CACHE") or user_cache_dir("mask-appliance")) / "assets"


def resolve(name: str, *, download: bool = True, manifest: Path = MANIFEST) -> Path:
    """Return a local, checksum-verified path for the asset `name` from the manifest."""
    assets = load_manifest(manifest)
    if name not in assets:
        raise AssetError(f"{manifest}: no asset named {name!r} (known: {', '.join(sorted(assets))})")
    asset = assets[name]
    looked: list[str] = []
    candidates = []
    if mirror := os.environ.get(MIRROR_ENV):
        candidates.append(Path(mirror) / asset.path)
    cached = cache_dir() / asset.path
    candidates.append(cached)
    for candidate in candidates:
        looked.append(str(candidate))
        if candidate.is_file():
            actual = sha256_of(candidate)
            if actual == asset.sha256:
                return candidate
            raise AssetError(f"{candidate}: sha256 {actual} does not match the manifest's {asset.sha256}")
    if download:
        looked.append(asset.url)
        try:
            return _download(asset, cached)
        except OSError as exc:
            raise AssetError(f"asset {name!r} not found; looked in {', '.join(looked)} ({exc})") from exc
    raise AssetError(f"asset {name!r} not found; looked in {', '.join(looked)} (set ${MIRROR_ENV} to a mirror)")


def _download(asset: Asset, target: Path) -> Path:
    target.parent.mkdir(parents=True, exist_ok=True)
    # Download next to the target and rename, so an interrupted download never leaves a torn file in the cache.
    with (
        tempfile.NamedTemporaryFile(dir=target.parent, delete=False) as tmp,
        urllib.request.urlopen(asset.url, timeout=60) as response,
    ):
        while block := response.read(1 << 20):
            tmp.write(block)
    tmp_path = Path(tmp.name)
    actual = sha256_of(tmp_path)
    if actual != asset.sha256:
        tmp_path.unlink()
        raise AssetError(f"{asset.url}: downloaded sha256 {actual} does not match the manifest's {asset.sha256}")
    tmp_path.replace(target)
    return target
