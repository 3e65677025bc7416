"""The live model pair on disk: load it at start (falling back to the previous pair), then poll it for a new push.

mask-deploy puts a new pair in place by two renames (card, then model, or the other way round), so a poll can fall
between them and see a new card beside the old model. Such a half-written pair is "not yet": it is checked again at
each poll and refused (once) only at the first poll MISMATCH_WAIT seconds or more after it was first seen, whatever
[service] model_poll is.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from appliance.seeing.card import card_path_for
from appliance.seeing.classifier import MaskClassifier, load_model
from appliance.vocab import Fault, Kind

if TYPE_CHECKING:
    from appliance.seeing.pipeline import Pipeline

log = logging.getLogger("appliance.service")

# Seconds a changed pair may stay mismatched (card and model sha256 disagree) before it is refused. Time, not polls:
# patience counted in polls shrank with the poll interval (3 polls refused a pair 0.4 s after its first sight at
# model_poll = 0.2). A push's two renames are milliseconds apart, a copy by hand some seconds; mask-deploy waits 30 s
# (--timeout) for the service's verdict, so a pair it half-wrote is still refused within that.
MISMATCH_WAIT = 10.0


@dataclass(frozen=True)
class FileStamp:
    """Inode, size and mtime of the model and of its card: a push (a rename) changes at least one."""

    model: tuple | None
    card: tuple | None

    @classmethod
    def of(cls, path: Path) -> FileStamp:
        def one(p: Path) -> tuple | None:
            try:
                st = p.stat()
                return (st.st_ino, st.st_size, st.st_mtime_ns)
            except FileNotFoundError:
                return None

        return cls(one(path), one(card_path_for(path)))

    @property
    def complete(self) -> bool:
        return self.model is not None and self.card is not None


def pair_matches(path: Path) -> bool:
    """True when the card beside `path` names the sha256 of the model's bytes (a whole pair, old or new)."""
    try:
        card = json.loads(card_path_for(path).read_text())
        return isinstance(card, dict) and card.get("sha256") == hashlib.sha256(path.read_bytes()).hexdigest()
    except (OSError, ValueError):
        return False


def forced_push(model_path: Path) -> dict[str, Any] | None:
    """The card's "push" entry when mask-deploy pushed this pair with --force, else None."""
    try:
        push = json.loads(card_path_for(model_path).read_text()).get("push")
    except (OSError, ValueError, AttributeError):
        return None
    return push if isinstance(push, dict) and push.get("forced") is True else None


def previous_of(live: Path) -> Path:
    return live.with_name(f"{live.stem}.previous{live.suffix}")


class ModelWatcher:
    """Loads the start model (live pair, else the previous pair, loudly) and polls the live pair for pushes.

    `record` is EventLog.record. `poll()` returns a newly loaded model to swap in, or None; it never raises.
    """

    def __init__(self, path: Path, threads: int, poll_every: float, record: Callable[..., None]):
        self.path, self.threads, self.poll_every, self.record = Path(path), threads, poll_every, record
        self.fallback: str | None = None  # why the previous pair runs, while it does
        self.incomplete = 0  # half-written pairs seen (polls answered "not yet")
        self._stamp = FileStamp.of(self.path)
        self._mismatched_since: float | None = None  # when a poll first saw the changed pair mismatched (monotonic)
        self._next = 0.0

    def load_start(self) -> MaskClassifier:
        """The live model; if it does not load, the previous pair with a fault; if neither, the live one's error."""
        live = self.path
        self.fallback = None
        try:
            return load_model(live, self.threads)
        except Exception as exc:  # any failure of the live pair: try the pair mask-deploy kept
            previous = previous_of(live)
            try:
                model = load_model(previous, self.threads)
            except Exception:
                raise exc from None  # neither loads: refuse to start, as the live pair's own error
            self.fallback = f"{live.name} refused at start ({exc}); running {previous.name}"
            log.error("%s", self.fallback)
            self.record(Kind.FAULT, None, what=Fault.MODEL_REFUSED_AT_START, model=str(live), reason=str(exc),
                        running=str(previous), sha256=model.sha256)
            return model

    def retarget(self, path: Path, threads: int, poll_every: float) -> None:
        """A reload changed [classifier] model/threads or [service] model_poll: watch the new values."""
        self.path, self.threads, self.poll_every = Path(path), threads, poll_every
        self._stamp, self._mismatched_since = FileStamp.of(self.path), None

    def set_poll(self, every: float) -> None:
        """A reload changed [service] model_poll: the next poll comes no later than `every` from now."""
        self.poll_every = every
        self._next = min(self._next, time.monotonic() + every)

    def poll(self, kept_sha256: str) -> MaskClassifier | None:
        """At most once per poll_every: a new, whole, loadable pair as a model, else None (refusals recorded)."""
        now = time.monotonic()
        if now < self._next:
            return None
        self._next = now + self.poll_every
        stamp = FileStamp.of(self.path)
        if stamp == self._stamp or not stamp.complete:
            self._mismatched_since = None
            return None
        waited = None
        if not pair_matches(self.path):
            if self._mismatched_since is None:
                self._mismatched_since = now
                log.info("%s: card and model disagree, perhaps mid-push; waiting up to %g s for the rest", self.path,
                         MISMATCH_WAIT)
            waited = now - self._mismatched_since
            if waited < MISMATCH_WAIT:
                self.incomplete += 1
                return None
        self._mismatched_since = None
        self._stamp = stamp  # refused or swapped, this version is done with
        try:
            return load_model(self.path, self.threads)
        except Exception as exc:  # any failure to load is a refusal, never a crash
            self.record(Kind.FAULT, None, what=Fault.MODEL_REFUSED, model=str(self.path), reason=str(exc),
                        kept=kept_sha256, **({"mismatched_for": round(waited, 1)} if waited is not None else {}))
            return None

    def install(self, pipeline: Pipeline, new: MaskClassifier) -> None:
        """Put `new` (from poll()) into `pipeline` for the next frame and record the swap."""
        old, pipeline.classifier, self.fallback = pipeline.classifier, new, None
        push = forced_push(new.path)
        self.record(Kind.MODEL, None, what="model swapped", model=str(new.path), sha256=new.sha256,
                    previous=old.sha256, **({"forced_push": push} if push else {}))
