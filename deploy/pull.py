"""`mask-deploy pull`: the face crops a Pi collected (reporting/collect.py), copied into DIR/<host>/, each checked
against the sha256 computed on the Pi, and only then deleted there. An interrupted pull loses nothing and resumes."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
from collections.abc import Iterator
from pathlib import Path

from deploy import remote
from deploy.ssh import DeployError, Host, Result, clean

CROP_NAME = re.compile(r"[0-9]{8}T[0-9]{6}-[0-9]{3}-[0-9a-f]{6}\.jpg")  # appliance.reporting.collect.NAME
PULL_BATCH = 100  # crops per transfer: an interrupted pull redoes at most one batch
INDEX = "index.jsonl"


def _manifest(host: Host) -> list[dict]:
    """The Pi's crops with their sha256 (computed there) and index lines; anything malformed is dropped."""
    text = host.run_marked_bytes(remote.collect("list"), what="list crops").decode(errors="replace")
    crops = []
    for line in text.splitlines():
        try:
            d = json.loads(line)
        except ValueError:
            continue
        if (isinstance(d, dict) and isinstance(d.get("file"), str) and CROP_NAME.fullmatch(d["file"])
                and isinstance(d.get("sha256"), str) and re.fullmatch(r"[0-9a-f]{64}", d["sha256"])
                and isinstance(d.get("info"), dict)):
            crops.append(d)
    return crops


def _frames(data: bytes) -> Iterator[tuple[str, bytes | None]]:
    """(name, bytes or None where the crop was gone) from remote.collect("send")'s stream."""
    pos = 0
    while pos < len(data):
        end = data.index(b"\n", pos)
        head = json.loads(data[pos:end])
        size = int(head["size"])
        pos = end + 1
        if size < 0:
            yield head["file"], None
            continue
        if pos + size > len(data):
            raise DeployError(f"fetch crops: the stream ends inside {clean(head['file'])}")
        yield head["file"], data[pos:pos + size]
        pos += size


def _fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class _Local:
    """DIR/<host>/: verified crops and index.jsonl (one line per crop: the Pi's line, its sha256 and host)."""

    def __init__(self, folder: Path, host: str):
        self.folder, self.host = folder, host
        folder.mkdir(parents=True, exist_ok=True)
        self.index = folder / INDEX
        self.listed: set[str] = set()
        if self.index.exists():
            for line in self.index.read_text().splitlines():
                with contextlib.suppress(ValueError, AttributeError):
                    self.listed.add(json.loads(line).get("file"))

    def has(self, crop: dict) -> bool:
        path = self.folder / crop["file"]
        return path.is_file() and hashlib.sha256(path.read_bytes()).hexdigest() == crop["sha256"]

    def store(self, crop: dict, data: bytes) -> None:
        """The verified crop in place (whole or absent), then its index line; both on disk before returning."""
        path = self.folder / crop["file"]
        tmp = self.folder / f".{crop['file']}.part"
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        tmp.replace(path)
        self.list(crop)

    def list(self, crop: dict) -> None:
        if crop["file"] in self.listed:
            return
        line = {**crop["info"], "file": crop["file"], "sha256": crop["sha256"], "host": self.host}
        with open(self.index, "a") as f:
            f.write(json.dumps(line) + "\n")
            f.flush()
            os.fsync(f.fileno())
        self.listed.add(crop["file"])


def pull_one(host: Host, dest: Path, keep: bool, batch: int | None = None) -> Result:
    """Copy the Pi's new crops into dest/<host>/, each checked against the sha256 the Pi computed, and delete on the
    Pi only those whose copy is verified and on disk here. Run again after an interruption: crops already here are
    not fetched again (only deleted there), and nothing is deleted that is not here."""
    if "/" in host.name or host.name in (".", ".."):
        return Result(host.name, False, "refused: a host name for pull cannot contain '/' (it names a folder)")
    try:
        crops = _manifest(host)
        local = _Local(dest / host.name, host.name)
        here = [c for c in crops if local.has(c)]
        for c in here:  # copied by an interrupted pull, perhaps before its line was written
            local.list(c)
        todo = [c for c in crops if c not in here]
        fetched, corrupt, deleted, changed = 0, [], 0, 0
        verified = [(c["file"], c["sha256"]) for c in here]
        batch = max(1, batch or PULL_BATCH)
        for part in [todo[i:i + batch] for i in range(0, len(todo), batch)] or [[]]:
            if part:
                wanted = {c["file"]: c for c in part}
                stream = host.run_marked_bytes(remote.collect("send"), stdin="\n".join(wanted).encode(),
                                               what="fetch crops", timeout=host.timeouts.upload)
                try:
                    frames = list(_frames(stream))
                except (ValueError, KeyError, TypeError) as exc:
                    raise DeployError(f"fetch crops: unreadable answer from the Pi ({clean(exc)})") from None
                for name, data in frames:
                    crop = wanted.pop(name, None)
                    if crop is None or data is None:
                        continue  # not asked for, or pruned on the Pi meanwhile
                    if hashlib.sha256(data).hexdigest() != crop["sha256"]:
                        corrupt.append(name)  # left on the Pi: the next pull tries again
                        continue
                    local.store(crop, data)
                    verified.append((name, crop["sha256"]))
                    fetched += 1
                _fsync_dir(local.folder)
            if verified and not keep:
                answer = json.loads(host.run_marked_bytes(
                    remote.collect("delete"), stdin="".join(f"{n} {h}\n" for n, h in verified).encode(),
                    what="delete pulled crops"))
                deleted += int(answer.get("deleted", 0))
                changed += len(answer.get("changed", []))
            verified = []
    except DeployError as exc:
        return Result(host.name, False, str(exc))
    except (OSError, ValueError) as exc:
        return Result(host.name, False, f"pull: {clean(exc)}")
    detail = f"{fetched} new crops in {local.folder}"
    if here:
        detail += f", {len(here)} were here already"
    detail += ", kept on the Pi" if keep else f", {deleted} deleted on the Pi"
    if corrupt:
        detail += f"; {len(corrupt)} arrived corrupted and stay on the Pi (pull again)"
    if changed:
        detail += f"; {changed} changed on the Pi after listing and were kept there"
    return Result(host.name, not corrupt, detail)
