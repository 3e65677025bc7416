"""Per-frame verdicts -> a door decision (`idle`, `allow`, `deny`) that does not flicker.

Faces are tracked across frames by IoU. A track settles as masked or unmasked only after `votes` agreeing verdicts
among its last `window` frames, and changes its mind only the same way (hysteresis). One unmasked face denies at
once; the decision then holds `deny_hold` seconds after the last unmasked face has gone (and `allow_hold` for allow).
"""

from __future__ import annotations

import itertools
from collections import deque
from dataclasses import dataclass, field

from appliance.config import PolicyConfig

IDLE, ALLOW, DENY = "idle", "allow", "deny"
UNKNOWN, MASKED, UNMASKED = "unknown", "masked", "unmasked"


@dataclass
class Verdict:
    box: tuple[float, float, float, float]
    p_without_mask: float
    flagged: bool  # p_without_mask at or above the model's threshold


@dataclass
class Track:
    id: int
    box: tuple[float, float, float, float]
    last_seen: float
    votes: deque[bool]
    state: str = UNKNOWN

    def vote(self, flagged: bool, needed: int) -> None:
        self.votes.append(flagged)
        unmasked = sum(self.votes)
        masked = len(self.votes) - unmasked
        if unmasked >= needed and masked < needed:
            self.state = UNMASKED
        elif masked >= needed and unmasked < needed:
            self.state = MASKED


@dataclass
class Decision:
    state: str
    t: float
    changed: bool
    tracks: list[Track] = field(default_factory=list)

    @property
    def unmasked(self) -> int:
        return sum(t.state == UNMASKED for t in self.tracks)

    @property
    def masked(self) -> int:
        return sum(t.state == MASKED for t in self.tracks)


def iou(a, b) -> float:
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


class Policy:
    def __init__(self, cfg: PolicyConfig):
        self.cfg = cfg
        self.tracks: list[Track] = []
        self.state = IDLE
        self._ids = itertools.count(1)
        self._last_deny = float("-inf")  # last time an unmasked face was present
        self._last_allow = float("-inf")  # last time every face present was masked (and there was one)

    def _match(self, verdicts: list[Verdict], t: float) -> None:
        # Tracks unseen for too long end first, so that a face that comes later never continues them.
        self.tracks = [tr for tr in self.tracks if t - tr.last_seen <= self.cfg.track_timeout]
        pairs = sorted(((iou(tr.box, v.box), i, j) for i, tr in enumerate(self.tracks)
                        for j, v in enumerate(verdicts)), reverse=True)
        used_tracks, used_verdicts = set(), set()
        for overlap, i, j in pairs:
            if overlap < self.cfg.track_iou:
                break
            if i in used_tracks or j in used_verdicts:
                continue
            used_tracks.add(i)
            used_verdicts.add(j)
            track, v = self.tracks[i], verdicts[j]
            track.box, track.last_seen = v.box, t
            track.vote(v.flagged, self.cfg.votes)
        for j, v in enumerate(verdicts):
            if j not in used_verdicts:
                track = Track(next(self._ids), v.box, t, deque(maxlen=self.cfg.window))
                track.vote(v.flagged, self.cfg.votes)
                self.tracks.append(track)

    def update(self, verdicts: list[Verdict], t: float) -> Decision:
        """Feed one frame's verdicts (taken at monotonic time t) and get the door decision."""
        self._match(verdicts, t)
        present = self.tracks
        if any(tr.state == UNMASKED for tr in present):
            self._last_deny = t
        elif present and all(tr.state == MASKED for tr in present):
            self._last_allow = t
        if t - self._last_deny <= self.cfg.deny_hold:
            state = DENY  # one unmasked face wins, and the denial outlasts it by deny_hold
        elif t - self._last_allow <= self.cfg.allow_hold:
            state = ALLOW
        else:
            state = IDLE
        changed = state != self.state
        self.state = state
        return Decision(state, t, changed, list(present))
