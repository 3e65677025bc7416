"""Per-frame verdicts -> a door decision (`idle`, `allow`, `deny`) that judges the visit, not the frame.

Faces are tracked across frames by IoU (a second box inside a face's box in the same frame is that face, and votes
nothing). Each frame of a track casts a weighted vote: nothing below `min_size` (the model cannot tell a mask on a
face that small) or from a box that suddenly shrank, then a weight rising with
the face's size (size / `full_size`, up to 1) and with how sure the model is (nothing while it is less sure than
`unsure`, full weight from `sure`, on a 0..1 scale from the threshold to p = 0 or 1). A track's votes add up, for
"not properly masked" and against it, into one score kept within ±(deny_evidence + allow_evidence), so that a
track can change its mind, but only on as much evidence again. A track settles as unmasked (or incorrectly
masked) when its score reaches `deny_evidence`, and as masked when it falls to -`allow_evidence` and the face has
been seen at least `allow_size` large. With `judge_average`, a face seen at `allow_size` or larger is also judged
on its average p over its last such frames, at the model's threshold: at or above it the face settles as not properly
masked, and it settles as masked only below it (a mask just under the nose gives p wavering around the threshold,
so few of its frames are sure enough to vote). With `unsettled = "deny"`, a face seen at `allow_size` or larger
for `unsettled_after` seconds that has settled neither way is denied (it may still settle later, as any face may).
One unmasked face denies at once; the decision then holds `deny_hold` seconds after the last unmasked face has gone
(and `allow_hold` for allow). An unsettled face never allows.

The clock `t` is the frame's own time: a camera's capture time, or a video file's timestamps.

Longer than this project's 200-line guide on purpose: the tracker, the votes and the holds are one state machine,
read top to bottom as the door's specification.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass, field
from typing import Any

from appliance import vocab
from appliance.boxes import contained, iou
from appliance.config import PolicyConfig

IDLE, ALLOW, DENY = vocab.Decision.IDLE, vocab.Decision.ALLOW, vocab.Decision.DENY
UNKNOWN, MASKED, UNMASKED, INCORRECT = "unknown", "masked", "unmasked", "incorrect"  # a track's state
UNSETTLED = "unsettled"  # unsettled = "deny": near for unsettled_after seconds and settled neither way: denied
DENIED = (UNMASKED, INCORRECT, UNSETTLED)  # the states that deny
WITH_MASK, WITHOUT_MASK, INCORRECT_MASK = vocab.Label.WITH_MASK, vocab.Label.WITHOUT_MASK, vocab.Label.INCORRECT_MASK
# A box this much smaller than its track's last one is a detector that lost part of the face (a turned head cut the
# mask off in issue 17's videos, p 0.004 -> 0.67): that frame casts no vote. The validation visits (faces that grow
# steadily) never shrink a box this much, so they neither chose nor contradict it: 0.0 to 0.9 gave the same figures.
SHRINK = 0.8
# Frames at allow_size or larger before a face's average p counts (judge_average): 0.67 s of a near face at 15 fps.
# Chosen on replays of scenes-ilc's validation visits (README, Door visits): wrong visits of every kind fell from 10
# (2 frames: 9, 3 to 6: 10) to 8 at 10 and 12 frames and 7 at 16 and 20, which allow fewer masked visitors within
# the 3 s visit (49 and 48 of 60, against 50); of those within one visit of the fewest, the fewest frames.
AVERAGE_FRAMES = 10
# ... and the average is of the last this many near frames, not of the whole track: a visitor who stood unmasked for
# a minute and then puts a mask on must not wait for a minute of masked frames. Over 20 frames the average falls
# below a threshold of 0.56 after 9 masked ones, as the votes change their mind (from +5.5 to -3: 9 frames). On the
# validation visits, windows of 10 to 30 frames and the whole track gave the same figures.
AVERAGE_WINDOW = 20
# A second box in a frame that lies this much inside a face's box, or around it (of the smaller box's area), is the
# same head boxed twice: it joins that face's track and casts no vote. More than half of it: two people's faces
# overlap far less. scenes-ilc's validation visits give the same figures from 0.5 to 0.9 (8 of 266 visitors had two
# boxes on the head in some frame); on scenes-dev's, masked visitors wrongly denied 5/60 -> 4/60 at 0.5 and 0.6
# (none from 0.8). A box that changes size between frames is NOT matched this way: a smaller face appearing where
# a settled one was would inherit its state, and a new person must earn their own.
CONTAIN = 0.6


@dataclass(frozen=True)
class Verdict:
    """One face in one frame, as the pipeline labelled it."""

    box: tuple[float, float, float, float]  # x1, y1, x2, y2 in the pixels faces are cropped from
    p_without_mask: float  # probability the face is NOT properly masked (no mask, or one worn wrong)
    label: str  # with_mask, without_mask or incorrect_mask (vocab.Label): the pipeline's FaceResult.label
    p_incorrect_mask: float | None = None  # a 3-class model's share of p_without_mask that is a mask worn wrong

    def __post_init__(self) -> None:
        if self.label not in (WITH_MASK, WITHOUT_MASK, INCORRECT_MASK):
            raise ValueError(f"face label {self.label!r} is not with_mask, without_mask or incorrect_mask")

    @property
    def size(self) -> float:
        return min(self.box[2] - self.box[0], self.box[3] - self.box[1])

    @classmethod
    def of(cls, result: Any) -> Verdict:
        """A Verdict from a pipeline FaceResult (face.box, p_without_mask, label, p_incorrect_mask) or a Verdict."""
        if isinstance(result, Verdict):
            return result
        return cls(tuple(result.face.box), float(result.p_without_mask), result.label,
                   getattr(result, "p_incorrect_mask", None))


@dataclass
class Track:
    """One face followed across frames: its box, its weighted evidence either way, and what it settled as."""

    id: int
    box: tuple[float, float, float, float]
    last_seen: float
    score: float = 0.0  # > 0: evidence that the face is not properly masked; < 0: that it is
    incorrect: float = 0.0  # of the positive votes, the weight that said "mask worn wrong"
    without: float = 0.0  # ... and the weight that said "no mask"
    max_size: float = 0.0
    frames: int = 0
    state: str = UNKNOWN
    flagged: float = 0.0  # every vote's weight for "not properly masked", never capped (for collection)
    cleared: float = 0.0  # ... and against it
    near: list[tuple[float, float]] = field(default_factory=list)  # judge_average: the last AVERAGE_WINDOW frames
    # seen at allow_size or larger, as (p(not properly masked), the share of it that said "mask worn wrong")
    near_since: float | None = None  # the time of its first frame at allow_size or larger (unsettled = "deny")

    @property
    def settled(self) -> bool:
        """Judged one way or the other by its votes or its average (an UNSETTLED face was denied for want of that)."""
        return self.state in (MASKED, UNMASKED, INCORRECT)

    @property
    def disagreed(self) -> bool:
        """The model changed its mind on this face: at least one full vote each way (worth a person's label)."""
        return min(self.flagged, self.cleared) >= 1.0

    @property
    def size(self) -> float:
        return min(self.box[2] - self.box[0], self.box[3] - self.box[1])


@dataclass
class Decision:
    """The policy's answer for one frame: `state` is what it says (idle, allow, deny), `changed` when it moved."""

    state: vocab.Decision
    t: float
    changed: bool
    tracks: list[Track] = field(default_factory=list)
    faces: list[Track] = field(default_factory=list)  # the track of each face passed to update(), in that order

    @property
    def unmasked(self) -> int:
        return sum(t.state == UNMASKED for t in self.tracks)

    @property
    def incorrect(self) -> int:
        return sum(t.state == INCORRECT for t in self.tracks)

    @property
    def masked(self) -> int:
        return sum(t.state == MASKED for t in self.tracks)

    @property
    def unsettled(self) -> int:
        """Faces denied because they stayed unsettled near the door (unsettled = "deny")."""
        return sum(t.state == UNSETTLED for t in self.tracks)


class Policy:
    """Tracks, weighted votes and holds. `threshold` is the model's (or the config's) p(without_mask) cut-off."""

    def __init__(self, cfg: PolicyConfig, threshold: float = 0.5):
        self.cfg = cfg
        self.threshold = threshold
        self.tracks: list[Track] = []
        self.state = IDLE
        self._ids = itertools.count(1)
        self._last_deny = float("-inf")  # last time an unmasked face was present
        self._last_allow = float("-inf")  # last time every face present was masked (and there was one)

    def weight(self, v: Verdict, previous_size: float | None = None) -> tuple[float, bool, bool]:
        """(weight, not properly masked?, worn wrong?) of one face's vote in one frame; `previous_size` is its
        track's face size in the frame before."""
        cfg = self.cfg
        p = self.p(v)
        flagged = v.label == WITHOUT_MASK or (v.label == INCORRECT_MASK and not self.allow_incorrect)
        size = v.size
        if size < cfg.min_size or self.shrank(v, previous_size):
            return 0.0, flagged, False
        # How sure the model is of what it said: 0 at the threshold, 1 at p = 0 or 1, whatever the threshold. A p on
        # the other side of the threshold from the label (a mask worn wrong, allowed, may be either) casts no vote.
        thr = self.threshold
        sure = (p - thr) / (1.0 - thr) if flagged else (thr - p) / thr
        confidence = min(1.0, max(0.0, (sure - cfg.unsure) / max(1e-6, cfg.sure - cfg.unsure)))
        w = min(1.0, size / cfg.full_size) * confidence
        return w, flagged, flagged and v.label == INCORRECT_MASK

    @property
    def allow_incorrect(self) -> bool:
        """Whether a mask worn wrong counts as a mask ([policy] incorrect_mask; a reload may change it)."""
        return self.cfg.incorrect_mask == "allow"

    def p(self, v: Verdict) -> float:
        """The face's p(not properly masked) as this door counts it."""
        if self.allow_incorrect and v.p_incorrect_mask is not None:
            return v.p_without_mask - v.p_incorrect_mask  # a mask worn wrong counts as a mask: only "no mask" flags
        return v.p_without_mask

    @staticmethod
    def shrank(v: Verdict, previous_size: float | None) -> bool:
        return previous_size is not None and v.size < SHRINK * previous_size

    def _near_sums(self, track: Track, v: Verdict, previous_size: float | None) -> tuple[float, float] | None:
        """judge_average: the near window's sums of p and of its "worn wrong" share (None: not counted yet)."""
        if not self.cfg.judge_average:
            return None
        if v.size >= self.cfg.allow_size and not self.shrank(v, previous_size):
            worn_wrong = 0.0 if self.allow_incorrect else (v.p_incorrect_mask or 0.0)
            track.near.append((self.p(v), worn_wrong))
            del track.near[:-AVERAGE_WINDOW]
        if len(track.near) < AVERAGE_FRAMES:
            return None
        # fsum: the same sum on every Python (3.12's sum() compensates, 3.11's does not), so a Pi on Bookworm and
        # one on Trixie decide alike when the average sits on the threshold.
        p, worn_wrong = (math.fsum(x) for x in zip(*track.near, strict=True))
        return p, worn_wrong

    def _vote(self, track: Track, v: Verdict, previous_size: float | None) -> None:
        cfg = self.cfg
        w, flagged, incorrect = self.weight(v, previous_size)
        if track.near_since is None and v.size >= cfg.allow_size and not self.shrank(v, previous_size):
            track.near_since = track.last_seen  # _match has set it to this frame's time
        near = self._near_sums(track, v, previous_size)
        cap = cfg.deny_evidence + cfg.allow_evidence
        track.score = max(-cap, min(cap, track.score + (w if flagged else -w)))
        if flagged:
            track.flagged += w
        else:
            track.cleared += w
        if flagged:
            if incorrect:
                track.incorrect += w
            else:
                track.without += w
        track.max_size = max(track.max_size, v.size)
        track.frames += 1
        if track.score >= cfg.deny_evidence:
            track.state = INCORRECT if track.incorrect > track.without else UNMASKED
        elif near is not None and near[0] / len(track.near) >= self.threshold:
            # Settled by the average alone (at or above the threshold): "worn wrong" when that was most of it.
            p, worn_wrong = near
            track.state = INCORRECT if 2 * worn_wrong > p else UNMASKED
        elif (track.score <= -cfg.allow_evidence and track.max_size >= cfg.allow_size
              and (near is not None or not cfg.judge_average)):  # the average, if on, counted and below
            track.state = MASKED

    def _match(self, verdicts: list[Verdict], t: float) -> list[Track]:
        # Tracks unseen for too long end first, so that a face that comes later never continues them.
        self.tracks = [tr for tr in self.tracks if t - tr.last_seen <= self.cfg.track_timeout]
        pairs = sorted(((iou(tr.box, v.box), i, j) for i, tr in enumerate(self.tracks)
                        for j, v in enumerate(verdicts)), reverse=True)
        used_tracks, used_verdicts = set(), set()
        faces: list[Track | None] = [None] * len(verdicts)
        for overlap, i, j in pairs:
            if overlap < self.cfg.track_iou:
                break
            if i in used_tracks or j in used_verdicts:
                continue
            used_tracks.add(i)
            used_verdicts.add(j)
            track, v = self.tracks[i], verdicts[j]
            before = track.size
            track.box, track.last_seen = v.box, t
            self._vote(track, v, before)
            faces[j] = track
        for j, v in enumerate(verdicts):
            if j not in used_verdicts:
                # A second box on a head already seen in this frame: the same face, so its track, and no vote.
                same = next((k for k in used_verdicts if contained(verdicts[k].box, v.box) >= CONTAIN), None)
                if same is not None:
                    faces[j] = faces[same]
                    continue
                track = Track(next(self._ids), v.box, t)
                self._vote(track, v, None)
                self.tracks.append(track)
                faces[j] = track
                used_verdicts.add(j)
        return [f for f in faces if f is not None]  # every slot is filled above: all of them

    def update(self, verdicts: list[Any], t: float) -> Decision:
        """Feed one frame's faces (Verdicts or pipeline FaceResults), taken at time t (seconds), and get the door
        decision."""
        faces = self._match([Verdict.of(v) for v in verdicts], t)
        present = self.tracks
        if self.cfg.unsettled == "deny":
            for tr in present:
                if tr.state == UNKNOWN and tr.near_since is not None and t - tr.near_since >= self.cfg.unsettled_after:
                    tr.state = UNSETTLED  # near long enough to be judged, and not judged: denied, not let in
        if any(tr.state in DENIED for tr in present):
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
        return Decision(state, t, changed, list(present), faces)
