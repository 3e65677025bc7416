"""Door-level evaluation: seeded approach visits made from labelled scene photos, judged by the pipeline and Policy.

A still photo is not what a door sees. A visit here is a person walking up to the camera: a labelled face (with some
head and shoulders around it) cut from its photo, everyone else in the cut-out blanked (labelled, or found by the
detector), pasted on a plain background and grown from `--start` px to `--end` px tall over `--seconds` at `--fps`,
drifting a little, with sensor noise, blur and JPEG artefacts. Only faces at least `--end` px tall in their photo
are used, so no frame is upsampled. Pairs put two people side by side. Each visit runs through the real detector and
classifier and a fresh Policy on the video's own clock (frame i at i / fps seconds), so the figures are what the
door would decide, frame by frame.

Reported per kind of visit: visits denied, masked visits wrongly denied, visits never decided, time to first deny
(median, p90), visits with an `allow` before a `deny`, deny decisions per visit, and beside them the same faces on
their still photo. Then, for every visit that ended undecided or with the wrong decision, each visitor: frames the
detector found them in, their tracks, votes and their weight, the mean p of their near frames, and the rule that held
the decision back (or made the wrong one).

    python -m training.visits ../shared/datasets/scenes-ilc/labels.csv --split val --max-visits 40

Longer than this project's 200-line guide: making, rendering, judging and reporting visits are one tool with one
seeded story.
"""

from __future__ import annotations

import argparse
import csv
import json
import logging
import sys
import time
from collections import defaultdict
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import cv2
import numpy as np

from appliance.deciding.policy import (
    ALLOW,
    AVERAGE_FRAMES,
    DENIED,
    DENY,
    MASKED,
    UNKNOWN,
    UNSETTLED,
    Policy,
    Track,
    Verdict,
    iou,
)
from appliance.vocab import Decision

if TYPE_CHECKING:  # names for hints only: the model runtime is loaded where used (a --replay needs none)
    from appliance.config import Config
    from appliance.seeing.classifier import MaskClassifier
    from appliance.seeing.detector import FaceDetector

log = logging.getLogger(__name__)

LABELS = ("with_mask", "without_mask", "incorrect_mask")
Box = tuple[float, float, float, float]


@dataclass(frozen=True)
class SourceFace:
    image: str
    box: Box
    label: str
    others: tuple[Box, ...] = ()  # the photo's other labelled faces, blanked out of the cut-out

    @property
    def height(self) -> float:
        return self.box[3] - self.box[1]


@dataclass
class Visit:
    id: str
    kind: str  # a label, or two labels joined by "+"
    faces: list[SourceFace]
    seed: int


@dataclass
class Outcome:
    id: str
    kind: str
    denied: bool
    allowed: bool
    first_deny: float | None  # video seconds from the first frame
    first_allow: float | None
    first_adequate: float | None  # the first frame with a face of at least [policy] min_size: it can vote from here
    deny_size: float | None  # the largest face (shorter side, px) in the frame of the first deny
    denies: int  # decisions that turned to deny
    allow_before_deny: bool
    detected_frames: int
    decisions: list[tuple[float, Decision]] = field(default_factory=list)
    people: list[Person] = field(default_factory=list)  # each visitor's part in it, and what held it back
    stray: int = 0  # faces found on no visitor (an odd box beside a head): an unsettled one holds an allow back

    @property
    def undecided(self) -> bool:
        """The door never decided: no deny and no allow in the whole visit (lock-on-unmasked: the door let them in)."""
        return not self.denied and not self.allowed

    @property
    def wrong(self) -> bool:
        """Ended with the wrong decision: someone not properly masked not denied (allowed, or never decided), or an
        `allow` before the deny; a visit of masked people only, denied."""
        if set(self.kind.split("+")) == {"with_mask"}:
            return self.denied
        return not self.denied or self.allow_before_deny


@dataclass
class Person:
    """One visitor in a visit: what the door saw of them and, when it did not settle them as their label says, why.

    A face is the visitor's when it lies on the visitor's box in the frame as _is_face judges (in a visit saved
    without those boxes, every face of a one-person visit is)."""

    label: str
    frames: int  # frames of the visit
    detected_frames: int  # ... in which a face was found on this visitor
    tracks: int  # tracks their faces made: more than one, the tracker lost them and started again
    longest_track: int  # frames in the longest of them
    votes: int  # frames that cast a vote (weight > 0)
    flagged: float  # the votes' weight for "not properly masked"
    cleared: float  # ... and against
    near_frames: int  # frames at [policy] allow_size or larger
    near_p: float | None  # the average p(not properly masked) over those frames, as the door counts p
    max_size: float  # the largest face found on them, px (shorter side)
    state: str  # what their longest track (a masked visitor's: the one that denied them) ended as: policy's states
    settled_by: str | None  # "votes", "average" or "unsettled rule": what set that state, the last time it changed
    rule: str  # what held the decision back, or what made the wrong one ("" when the door got them right)


def read_labels(labels_csv: Path) -> dict[str, list[tuple[Box, str]]]:
    """labels.csv (image_path,x1,y1,x2,y2,label, paths relative to its folder) as {photo path: [(box, label)]}."""
    labels_csv = Path(labels_csv)
    out: dict[str, list[tuple[Box, str]]] = defaultdict(list)
    with open(labels_csv, newline="") as f:
        for line, row in enumerate(csv.DictReader(f), start=2):
            try:
                box = tuple(float(row[k]) for k in ("x1", "y1", "x2", "y2"))
                label = row["label"]
            except (KeyError, ValueError, TypeError):
                raise ValueError(f"{labels_csv}:{line}: bad row {row}") from None
            if label not in LABELS:
                raise ValueError(f"{labels_csv}:{line}: unknown label {label!r}")
            out[str(labels_csv.parent / row["image_path"])].append((box, label))  # type: ignore[arg-type]
    return dict(out)


def source_faces(labels: dict[str, list[tuple[Box, str]]], photos: list[str] | None, min_height: float
                 ) -> list[SourceFace]:
    """Faces at least `min_height` px tall (so a visit never upsamples them), in photo and box order."""
    chosen = []
    for image in sorted(photos if photos is not None else labels):
        faces = labels.get(image, [])
        for i, (box, label) in enumerate(faces):
            if box[3] - box[1] >= min_height and box[2] - box[0] >= min_height * 0.5:
                others = tuple(b for j, (b, _) in enumerate(faces) if j != i)
                chosen.append(SourceFace(image, box, label, others))
    return chosen


def plan_visits(faces: list[SourceFace], max_visits: int, pairs: int, seed: int) -> list[Visit]:
    """Seeded: up to `max_visits` one-person visits per label, and `pairs` two-person visits of each pair kind
    (masked + unmasked, masked + masked, unmasked + unmasked)."""
    rng = np.random.default_rng(seed)
    by_label: dict[str, list[SourceFace]] = {lab: [f for f in faces if f.label == lab] for lab in LABELS}
    visits: list[Visit] = []
    for label in LABELS:
        pool = by_label[label]
        order = rng.permutation(len(pool))[:max_visits]
        visits += [Visit(f"{label}-{k}", label, [pool[i]], int(rng.integers(2**31))) for k, i in enumerate(order)]
    for a, b in (("with_mask", "without_mask"), ("with_mask", "with_mask"), ("without_mask", "without_mask")):
        if len(by_label[a]) < 1 or len(by_label[b]) < 1 or (a == b and len(by_label[a]) < 2):
            continue
        for k in range(pairs):
            i = int(rng.integers(len(by_label[a])))
            j = int(rng.integers(len(by_label[b])))
            while a == b and j == i:
                j = int(rng.integers(len(by_label[b])))
            visits.append(Visit(f"{a}+{b}-{k}", f"{a}+{b}", [by_label[a][i], by_label[b][j]],
                                int(rng.integers(2**31))))
    return visits


def _cutout(image: np.ndarray, face: SourceFace, background: tuple[int, int, int], found: Sequence[Box] = ()
            ) -> tuple[np.ndarray, Box]:
    """The face with some head and shoulders around it, and the face's box in it. Everyone else in the cut-out is
    blanked: the photo's other labelled faces, and `found` (faces a detector found in the photo), which takes in the
    bystanders a set leaves unlabelled. A visit is one person: an unmasked stranger behind a masked visitor is not
    the masked visitor being denied. The visitor's own face box is never blanked, even where a neighbour's overlaps."""
    x1, y1, x2, y2 = face.box
    w, h = x2 - x1, y2 - y1
    H, W = image.shape[:2]  # noqa: N806
    cx1, cy1 = int(max(0, x1 - 0.4 * w)), int(max(0, y1 - 0.4 * h))
    cx2, cy2 = int(min(W, x2 + 0.4 * w)), int(min(H, y2 + 0.6 * h))
    patch = image[cy1:cy2, cx1:cx2].copy()
    others = [b for b in face.others if iou(face.box, b) <= 0.5]
    # A detector's box is the face alone: grown by a fifth each way, it takes in the ears and hair around it too.
    others += [_grown(b, 0.2) for b in found if not _is_face(b, face.box) and all(iou(b, o) <= 0.3 for o in others)]
    for ox1, oy1, ox2, oy2 in others:
        a, b = int(max(0, ox1 - cx1)), int(max(0, oy1 - cy1))
        c, d = int(min(patch.shape[1], ox2 - cx1)), int(min(patch.shape[0], oy2 - cy1))
        if c > a and d > b:
            patch[b:d, a:c] = background
    fx1, fy1, fx2, fy2 = (int(v) for v in (x1 - cx1, y1 - cy1, x2 - cx1, y2 - cy1))
    patch[max(0, fy1):fy2, max(0, fx1):fx2] = image[cy1 + max(0, fy1):cy1 + fy2, cx1 + max(0, fx1):cx1 + fx2]
    return patch, (x1 - cx1, y1 - cy1, x2 - cx1, y2 - cy1)


def _grown(box: Box, share: float) -> Box:
    x1, y1, x2, y2 = box
    dx, dy = share * (x2 - x1), share * (y2 - y1)
    return x1 - dx, y1 - dy, x2 + dx, y2 + dy


def _is_face(found: Box, box: Box) -> bool:
    """Whether a detector's box may be the labelled face `box` (or a second, odd box on it), so is not blanked:
    labelled boxes run looser or tighter than the detector's, and a turned head gets odd boxes, so it is when either
    box lies a third or more inside the other, or the found box's centre lies inside the labelled one. A stranger
    that close would hide the visitor anyway."""
    cx, cy = (found[0] + found[2]) / 2, (found[1] + found[3]) / 2
    w = max(0.0, min(found[2], box[2]) - max(found[0], box[0]))
    h = max(0.0, min(found[3], box[3]) - max(found[1], box[1]))
    smaller = min((found[2] - found[0]) * (found[3] - found[1]), (box[2] - box[0]) * (box[3] - box[1]))
    return w * h >= smaller / 3 or (box[0] <= cx <= box[2] and box[1] <= cy <= box[3])


@dataclass
class Render:
    size: tuple[int, int] = (640, 480)
    start: float = 40.0  # face height, px, in the first frame
    end: float = 150.0  # ... and in the last
    seconds: float = 3.0
    fps: float = 15.0

    @property
    def n_frames(self) -> int:
        return int(round(self.seconds * self.fps))


def render(visit: Visit, r: Render, cache: dict[str, np.ndarray] | None = None, detector: FaceDetector | None = None
           ) -> Iterator[tuple[float, np.ndarray, list[Box]]]:
    """The visit's frames: (video time, BGR frame, each person's labelled face box in the frame). `detector` (for
    still photos): the faces it finds in a photo, other than the visitor's, are blanked from the cut-out too."""
    from appliance.seeing.imaging import read_bgr

    rng = np.random.default_rng(visit.seed)
    W, H = r.size  # noqa: N806
    r_, g_, b_ = (int(v) for v in rng.integers(40, 216, 3))
    background = (r_, g_, b_)
    blur = float(rng.uniform(0.0, 1.2))
    noise = float(rng.uniform(2.0, 7.0))
    quality = int(rng.integers(45, 91))
    people: list[dict[str, Any]] = []
    for k, face in enumerate(visit.faces):
        image = cache.get(face.image) if cache is not None else None
        if image is None:
            image = read_bgr(Path(face.image))
            if image is None:
                raise OSError(f"{face.image}: unreadable photo")
            if cache is not None:
                cache[face.image] = image
        patch, box = _cutout(image, face, background, _found(face.image, image, detector, cache))
        n = len(visit.faces)
        cx = W * ((k + 1) / (n + 1)) + rng.uniform(-0.06, 0.06) * W
        people.append({"patch": patch, "box": box, "cx": cx, "cy": H * rng.uniform(0.38, 0.48),
                       "drift": rng.uniform(-30, 30), "scale": 1.0 if k == 0 else rng.uniform(0.85, 1.0)})
    n_frames = r.n_frames
    for i in range(n_frames):
        frac = i / max(1, n_frames - 1)
        canvas = np.empty((H, W, 3), np.uint8)
        canvas[:] = background
        boxes = []
        for p in people:
            x1, y1, x2, y2 = p["box"]
            height = (r.start + (r.end - r.start) * frac) * p["scale"]
            s = height / (y2 - y1)
            patch = cv2.resize(p["patch"], None, fx=s, fy=s, interpolation=cv2.INTER_AREA)
            # Face centre at (cx, cy), drifting sideways, jittering a pixel or two as a walker does.
            fx = p["cx"] + p["drift"] * frac + rng.uniform(-2, 2) - (x1 + x2) / 2 * s
            fy = p["cy"] + rng.uniform(-2, 2) - (y1 + y2) / 2 * s
            ox, oy = int(round(fx)), int(round(fy))
            ph, pw = patch.shape[:2]
            a, b, c, d = max(0, ox), max(0, oy), min(W, ox + pw), min(H, oy + ph)
            if c > a and d > b:
                canvas[b:d, a:c] = patch[b - oy:d - oy, a - ox:c - ox]
            boxes.append((ox + x1 * s, oy + y1 * s, ox + x2 * s, oy + y2 * s))
        blurred = cv2.GaussianBlur(canvas, (0, 0), blur) if blur > 0.3 else canvas
        noisy = np.clip(blurred + rng.normal(0, noise, canvas.shape), 0, 255).astype(np.uint8)
        ok, jpeg = cv2.imencode(".jpg", noisy, [cv2.IMWRITE_JPEG_QUALITY, quality])
        yield i / r.fps, np.asarray(cv2.imdecode(jpeg, cv2.IMREAD_COLOR)), boxes


def _found(path: str, image: np.ndarray, detector: FaceDetector | None, cache: dict[str, np.ndarray] | None
           ) -> list[Box]:
    """The boxes `detector` finds in a photo (none without one), kept in `cache` beside the photo."""
    if detector is None:
        return []
    key = path + "#faces"  # beside the photo under a key no path has
    boxes = cache.get(key) if cache is not None else None
    if boxes is None:
        boxes = np.array([f.box for f in detector.detect(image)], np.float64).reshape(-1, 4)
        if cache is not None:
            cache[key] = boxes
    return [(float(a), float(b), float(c), float(d)) for a, b, c, d in boxes]


FrameFaces = list[list[Verdict]]


def judge(visit: Visit, frames: list[tuple[float, list[Verdict]]], policy: Policy,
          truth: list[list[Box]] | None = None) -> Outcome:
    """Run one visit's faces through a fresh policy in video time. `truth`: each frame's visitor boxes (as render()
    gives them), to say which faces were whose; without it, every face of a one-person visit is the visitor's."""
    decisions = []
    deny_size = None
    kinds = visit.kind.split("+")
    seen: list[list[tuple[int, Verdict, Track, float, bool]]] = [[] for _ in kinds]  # each person's faces: frame,
    # face, track, its vote's weight and whether the vote said "not properly masked"
    settled_by: dict[int, str] = {}
    stray = 0
    sizes: dict[int, float] = {}  # each track's face size in the frame before, as the policy weighs votes
    for i, (t, verdicts) in enumerate(frames):
        states = {tr.id: tr.state for tr in policy.tracks}
        d = policy.update(verdicts, t)
        for v, track in zip([Verdict.of(x) for x in verdicts], d.faces, strict=True):
            w, flagged, _ = policy.weight(v, sizes.get(track.id))
            sizes[track.id] = v.size
            if track.state != states.get(track.id, UNKNOWN):
                settled_by[track.id] = ("unsettled rule" if track.state == UNSETTLED else "votes"
                                        if track.score >= policy.cfg.deny_evidence or track.state == MASKED
                                        else "average")
            k = _whose(v, truth[i] if truth is not None and i < len(truth) else None, len(kinds))
            if k is not None:
                seen[k].append((i, v, track, w, flagged))
            else:
                stray += 1
        if d.changed:
            decisions.append((round(t, 4), d.state))
            if d.state == DENY and deny_size is None:
                deny_size = round(max(v.size for v in verdicts), 1) if verdicts else None
    first_deny = next((t for t, s in decisions if s == DENY), None)
    first_allow = next((t for t, s in decisions if s == ALLOW), None)
    first_adequate = next((round(t, 4) for t, vs in frames if any(v.size >= policy.cfg.min_size for v in vs)), None)
    out = Outcome(visit.id, visit.kind, first_deny is not None, first_allow is not None, first_deny, first_allow,
                  first_adequate, deny_size, sum(s == DENY for _, s in decisions),
                  first_allow is not None and first_deny is not None and first_allow < first_deny,
                  sum(1 for _, v in frames if v), decisions)
    out.stray = stray
    out.people = [_person(label, faces, len(frames), settled_by, policy, out) for label, faces in zip(kinds, seen,
                                                                                                      strict=True)]
    return out


def _whose(v: Verdict, boxes: list[Box] | None, people: int) -> int | None:
    """Which visitor a face is on (the one it overlaps most, among those whose face it may be: labelled boxes run
    tighter than the detector's, so as _is_face judges); None for a box on no one."""
    if boxes is None:
        return 0 if people == 1 else None
    on = [k for k in range(len(boxes)) if _is_face(v.box, boxes[k])]
    return max(on, key=lambda k: iou(v.box, boxes[k]), default=None)


def _person(label: str, faces: list[tuple[int, Verdict, Track, float, bool]], n_frames: int,
            settled_by: dict[int, str], policy: Policy, outcome: Outcome) -> Person:
    cfg = policy.cfg
    tracks: dict[int, Track] = {}
    length: dict[int, int] = defaultdict(int)
    for (_, tid), track in {(i, track.id): track for i, _, track, *_ in faces}.items():  # each frame of a track once
        tracks[tid] = track
        length[tid] += 1
    near = [policy.p(v) for _, v, *_ in faces if v.size >= cfg.allow_size]
    main = tracks[max(length, key=lambda k: length[k])] if tracks else None
    # A track that denied a masked visitor (a second, odd box on the head, say) explains more than the longest one.
    shown = next((tr for tr in tracks.values() if tr.state in DENIED), main) if label == "with_mask" else main
    person = Person(label, n_frames, len({i for i, *_ in faces}), len(tracks), max(length.values(), default=0),
                    sum(w > 0 for *_, w, _ in faces),
                    round(sum(w for *_, w, flagged in faces if flagged), 3),
                    round(sum(w for *_, w, flagged in faces if not flagged), 3),
                    len(near), round(float(np.mean(near)), 3) if near else None,
                    round(max((v.size for _, v, *_ in faces), default=0.0), 1),
                    shown.state if shown else UNKNOWN, settled_by.get(shown.id) if shown else None, "")
    person.rule = _rule(person, label, shown, tracks, policy, outcome)
    return person


def _rule(person: Person, label: str, main: Track | None, tracks: dict[int, Track], policy: Policy,
          outcome: Outcome) -> str:
    """What held a visitor's decision back, or made the wrong one; "" when the door got them right. `main`: their
    longest track, or for a masked visitor the track that denied them."""
    cfg = policy.cfg
    masked = label == "with_mask" or (label == "incorrect_mask" and policy.allow_incorrect)
    states = {tr.state for tr in tracks.values()}
    if masked and MASKED in states and not states & set(DENIED):
        if outcome.undecided and UNKNOWN in states:
            return f"track broke: {len(tracks)} tracks, one settled masked, another never settled and held the allow"
        return ""
    if not masked and states & set(DENIED) and not outcome.allow_before_deny:
        return ""
    if main is None:
        return "not found: the detector never found this face"
    if person.max_size < cfg.min_size:
        return f"too small: never {cfg.min_size:g} px, so no vote"
    if main.state == UNSETTLED and masked:
        return (f"unsettled, denied: settled neither way {policy.cfg.unsettled_after:g} s after its first frame at "
                f"{cfg.allow_size:g} px (votes {main.score:+.2f}, near p {_p(person.near_p)})")
    if main.state in DENIED and masked:
        second = f" on one of its {len(tracks)} tracks" if len(tracks) > 1 else ""
        return f"read wrong: denied by the {person.settled_by}{second} (near p {_p(person.near_p)})"
    if main.state == MASKED and not masked:
        return f"read wrong: allowed by the votes and an average below the threshold (near p {_p(person.near_p)})"
    if outcome.allow_before_deny:
        return "read wrong: allowed before it was denied"
    # Unsettled: the longest track neither reached the evidence either way nor was denied on its average.
    score = sum(tr.score for tr in tracks.values())
    near_all = sum(len(tr.near) for tr in tracks.values())
    if len(tracks) > 1 and (score >= cfg.deny_evidence or score <= -cfg.allow_evidence
                            or (len(main.near) < AVERAGE_FRAMES <= near_all)):
        return f"track broke: {len(tracks)} tracks, whose votes ({score:+.2f}) or near frames together would settle"
    if cfg.judge_average and len(main.near) < AVERAGE_FRAMES:
        return (f"average not ready: {len(main.near)} near frames of the {AVERAGE_FRAMES} it needs (a face seen at "
                f"{cfg.allow_size:g} px or more)")
    side = "to allow" if main.score < 0 else "to deny"
    need = cfg.allow_evidence if main.score < 0 else cfg.deny_evidence
    return (f"unsure: votes {main.score:+.2f} of the {need:g} needed {side}, and near p {_p(person.near_p)} below the "
            f"threshold {policy.threshold:g}")


def _p(p: float | None) -> str:
    return "-" if p is None else f"{p:.2f}"


def still_figures(faces: list[SourceFace], pipeline) -> dict[str, dict[str, float]]:
    """Each source face on its own still photo: found (IoU > 0.3 with a detection), and flagged (not with_mask)."""
    from appliance.seeing.imaging import read_bgr
    from appliance.seeing.sources import Frame

    out: dict[str, dict[str, float]] = {}
    by_image: dict[str, list[SourceFace]] = defaultdict(list)
    for f in faces:
        by_image[f.image].append(f)
    counts: dict[str, list[int]] = defaultdict(lambda: [0, 0, 0])
    for image_path, group in by_image.items():
        image = read_bgr(Path(image_path))
        results = pipeline.run(Frame(image, 0.0, 0)) if image is not None else []
        for f in group:
            c = counts[f.label]
            c[0] += 1
            best = max(results, key=lambda r: iou(r.face.box, f.box), default=None)
            if best is not None and iou(best.face.box, f.box) > 0.3:
                c[1] += 1
                c[2] += best.label != "with_mask"
    for label, (n, found, flagged) in counts.items():
        out[label] = {"faces": n, "found": found, "flagged": flagged}
    return out


def summarise(outcomes: list[Outcome]) -> dict[str, dict]:
    """Per kind: visits, denied, allowed, allow-before-deny, time to first deny (median, p90), deny decisions."""
    table: dict[str, dict] = {}
    kinds = sorted({o.kind for o in outcomes}, key=lambda k: (("+" in k), k))
    for kind in kinds:
        group = [o for o in outcomes if o.kind == kind]
        times = [o.first_deny for o in group if o.first_deny is not None]
        # From the first frame in which a face was large enough to vote: what the policy itself takes.
        after = [o.first_deny - o.first_adequate for o in group if o.first_deny is not None and
                 o.first_adequate is not None]
        sizes = [o.deny_size for o in group if o.deny_size is not None]
        allows = [o.first_allow for o in group if o.first_allow is not None]
        table[kind] = {
            "visits": len(group),
            "denied": sum(o.denied for o in group),
            "allowed": sum(o.allowed for o in group),
            "undecided": sum(o.undecided for o in group),
            "allow_before_deny": sum(o.allow_before_deny for o in group),
            "one_deny": sum(o.denies == 1 for o in group),
            "never_detected": sum(o.detected_frames == 0 for o in group),
            "deny_median_s": round(float(np.median(times)), 3) if times else None,
            "deny_p90_s": round(float(np.percentile(times, 90)), 3) if times else None,
            "deny_after_adequate_median_s": round(float(np.median(after)), 3) if after else None,
            "deny_face_median_px": round(float(np.median(sizes)), 1) if sizes else None,
            "allow_median_s": round(float(np.median(allows)), 3) if allows else None,
        }
    return table


def format_table(table: dict[str, dict], still: dict[str, dict] | None = None) -> str:
    lines = ["| visit | n | denied | allowed | undecided | allow, then deny | one deny | deny median s | deny p90 s | "
             "deny median s from min_size | face at deny px | allow median s | still photo flagged |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for kind, row in table.items():
        s = (still or {}).get(kind)
        shown = f"{s['flagged']}/{s['found']} (found {s['found']}/{s['faces']})" if s else ""
        lines.append(f"| {kind} | {row['visits']} | {row['denied']}/{row['visits']} | {row['allowed']} | "
                     f"{row.get('undecided', '')} | {row['allow_before_deny']} | {row['one_deny']} | "
                     f"{row['deny_median_s']} | {row['deny_p90_s']} | {row['deny_after_adequate_median_s']} | "
                     f"{row['deny_face_median_px']} | {row['allow_median_s']} | {shown} |")
    return "\n".join(lines)


def format_why(outcomes: list[Outcome]) -> str:
    """One row per visitor of every visit that ended undecided or with the wrong decision: what the door saw of them
    and what held their decision back (or made the wrong one)."""
    lines = ["| visit | ended | visitor | found in frames | tracks (longest) | votes (weight for / against) | "
             "near frames (mean p) | largest px | settled as | why |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for o in outcomes:
        if not (o.undecided or o.wrong):
            continue
        ended = "undecided" if o.undecided else "allowed" if o.allowed and not o.denied else "denied"
        if o.allow_before_deny:
            ended = "allowed, then denied"
        for who in o.people:
            lines.append(f"| {o.id} | {ended} | {who.label} | {who.detected_frames}/{who.frames} | {who.tracks} "
                         f"({who.longest_track}) | {who.votes} ({who.flagged:.2f} / {who.cleared:.2f}) | "
                         f"{who.near_frames} ({_p(who.near_p)}) | {who.max_size:g} | {who.state}"
                         f"{' by the ' + who.settled_by if who.settled_by else ''} | {who.rule or '-'} |")
        if o.stray and not any(who.rule for who in o.people):
            lines.append(f"| {o.id} | {ended} | (none) | {o.stray} faces on no visitor | | | | | | stray box: a face "
                         f"found beside the visitors, unsettled, holds the allow back |")
    return "\n".join(lines)


def why_counts(outcomes: list[Outcome]) -> dict[str, int]:
    """How many visitors of undecided or wrong visits each cause held back: the first word of their rule."""
    counts: dict[str, int] = defaultdict(int)
    for o in outcomes:
        if o.undecided or o.wrong:
            for who in o.people:
                if who.rule:
                    counts[f"{who.label}: {who.rule.split(':')[0]}"] += 1
    return dict(sorted(counts.items()))


def verdicts_to_json(frames: list[tuple[float, list[Verdict]]]) -> list:
    # Full precision: a replay must judge exactly the faces the pipeline gave.
    return [[t, [[*v.box, v.p_without_mask, v.label, v.p_incorrect_mask] for v in vs]] for t, vs in frames]


def verdicts_from_json(data: list) -> list[tuple[float, list[Verdict]]]:
    return [(t, [Verdict(tuple(v[:4]), v[4], v[5], v[6]) for v in vs]) for t, vs in data]


def relabelled(frames: list[tuple[float, list[Verdict]]], threshold: float) -> list[tuple[float, list[Verdict]]]:
    """Each face's label read again at `threshold`, as the pipeline reads a model's output (label_of)."""
    from appliance.seeing.card import INCORRECT, MASKED, POSITIVE
    from appliance.seeing.pipeline import label_of

    def label(v: Verdict) -> str:
        p, wrong = v.p_without_mask, v.p_incorrect_mask
        if wrong is None:
            return label_of(np.array([1 - p, p]), (MASKED, POSITIVE), p, threshold)
        return label_of(np.array([1 - p, p - wrong, wrong]), (MASKED, POSITIVE, INCORRECT), p, threshold)

    return [(t, [replace(v, label=label(v)) for v in vs]) for t, vs in frames]


@dataclass
class DoorRun:
    """One model's seeded visits of one labelled set: every frame's faces, and the faces on their still photos
    (None when not asked for)."""

    visits: list[Visit]
    frames: dict[str, list[tuple[float, list[Verdict]]]]
    still: dict[str, dict[str, float]] | None
    threshold: float
    truth: dict[str, list[list[Box]]] = field(default_factory=dict)  # each frame's visitor boxes, in faces' order


def plan_set(labels_csv: Path, split: str, max_visits: int, pairs: int, seed: int, end: float) -> list[Visit]:
    """The seeded visits of a labelled set's `split` (val, train or all); a ValueError naming the file when it has
    no face at least `end` px tall to grow a visit from."""
    from training.splits import split_scenes

    labels = read_labels(labels_csv)
    photos = None
    if split != "all":
        train, val = split_scenes(labels_csv)
        photos = val if split == "val" else train
    visits = plan_visits(source_faces(labels, photos, end), max_visits, pairs, seed)
    if not visits:
        part = "" if split == "all" else f" in its {split} part"
        raise ValueError(f"{labels_csv}: no face at least {end:g} px tall{part} to make visits from")
    return visits


def door_visits(cfg: Config, model: MaskClassifier, labels_csv: Path, split: str, max_visits: int, pairs: int,
                seed: int, r: Render | None = None) -> DoorRun:
    """Make the seeded visits of a labelled set's `split` (val, train or all) and run `model` (a loaded
    MaskClassifier) with cfg's detector on every frame. The same seed and set make the same videos for any model."""
    return door_runs(cfg, [model], labels_csv, split, max_visits, pairs, seed, r, still=True)[0]


def door_runs(cfg: Config, models: Sequence[MaskClassifier], labels_csv: Path, split: str, max_visits: int, pairs: int,
              seed: int, r: Render | None = None, still: bool = False) -> list[DoorRun]:
    """door_visits for several models at once, one DoorRun each: every frame is rendered once and cfg's detector
    runs once on it, then each model classifies the same faces, so the models are judged on the same detections
    (and rendering and detection, most of the work, are not repeated per model). `still`: also each model's
    still-photo figures (the table's last column; the gate does not use them)."""
    from appliance.seeing.detector import make_detector
    from appliance.seeing.pipeline import Pipeline
    from appliance.seeing.sources import Frame

    if not models:
        raise ValueError("door_runs needs at least one model")
    r = r or Render()
    visits = plan_set(labels_csv, split, max_visits, pairs, seed, r.end)
    first = Pipeline.from_config(cfg, models[0])
    # The others share the first one's detector: what from_config would build for each, built once.
    pipelines = [first, *(Pipeline(first.detector, m, cfg.classifier.threshold) for m in models[1:])]
    started = time.monotonic()
    frames: list[dict[str, list[tuple[float, list[Verdict]]]]] = [{} for _ in pipelines]
    truth: dict[str, list[list[Box]]] = {}
    photo_cache: dict[str, np.ndarray] = {}
    bystanders = make_detector(cfg.detector, photos=True)  # blanks the people a set leaves unlabelled
    for n, visit in enumerate(visits):
        for seen in frames:
            seen[visit.id] = []
        truth[visit.id] = []
        for i, (t, image, boxes) in enumerate(render(visit, r, photo_cache, bystanders)):
            truth[visit.id].append(boxes)
            frame = Frame(image, t, i)
            faces = first.detect(frame)
            for seen, pipeline in zip(frames, pipelines, strict=True):
                seen[visit.id].append((t, [Verdict.of(x) for x in pipeline.classify(frame, faces)]))
        if len(photo_cache) > 64:
            photo_cache.clear()
        if (n + 1) % 25 == 0:
            log.info("%d/%d visits, %.0f s", n + 1, len(visits), time.monotonic() - started)
    used = list({id(f): f for v in visits for f in v.faces}.values())
    return [DoorRun(visits, seen, still_figures(used, pipeline) if still else None, pipeline.threshold, truth)
            for seen, pipeline in zip(frames, pipelines, strict=True)]


def door_counts(table: dict[str, dict]) -> dict[str, int]:
    """What the door did, in visits, from a summarise() table: visits with someone unmasked (alone or beside others)
    and how many were denied, masked-only visits and how many were wrongly denied, incorrectly masked visits and how
    many were denied, visits of someone not properly masked that saw an `allow` at any time, and of all visits, how
    many ended with no decision at all (in lock-on-unmasked, a visitor the door let in without judging them)."""
    def total(kinds, key):
        return sum(table[k][key] for k in kinds)

    unmasked = [k for k in table if "without_mask" in k.split("+")]
    masked = [k for k in table if set(k.split("+")) == {"with_mask"}]
    incorrect = [k for k in table if "incorrect_mask" in k.split("+") and k not in unmasked]
    return {"unmasked": total(unmasked, "visits"), "unmasked_denied": total(unmasked, "denied"),
            "masked": total(masked, "visits"), "masked_denied": total(masked, "denied"),
            "incorrect": total(incorrect, "visits"), "incorrect_denied": total(incorrect, "denied"),
            "not_masked_allowed": total(unmasked + incorrect, "allowed"),
            "visits": total(list(table), "visits"), "undecided": total(list(table), "undecided")}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("labels", type=Path, nargs="?", help="a scene set's labels.csv (image_path,x1,y1,x2,y2,label)")
    parser.add_argument("--split", choices=("val", "train", "all"), default="all",
                        help="the photos of training/splits.py's split to use (default: all)")
    parser.add_argument("--config", type=Path, help="appliance config (detector, classifier, policy); default: "
                        "the built-in defaults")
    parser.add_argument("--model", type=Path, help="override [classifier] model")
    parser.add_argument("--threads", type=int, default=1, help="classifier threads (default 1)")
    parser.add_argument("--max-visits", type=int, default=40, help="one-person visits per label (default 40)")
    parser.add_argument("--pairs", type=int, default=10, help="two-person visits per pair kind (default 10)")
    parser.add_argument("--seed", type=int, default=17)
    parser.add_argument("--fps", type=float, default=15.0)
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--start", type=float, default=40.0, help="face height in the first frame, px")
    parser.add_argument("--end", type=float, default=150.0, help="face height in the last frame, px (faces smaller "
                        "than this in their photo are not used)")
    parser.add_argument("--save-frames", type=Path, help="write every frame's faces (box, p, label) as JSON, to "
                        "replay other policies with --replay")
    parser.add_argument("--replay", type=Path, help="judge the faces saved by --save-frames with this config's "
                        "policy, without running the pipeline")
    parser.add_argument("--threshold", type=float, help="p(without_mask) that flags a face, instead of the model "
                        "card's (with --replay, each saved face's label is read again at it)")
    parser.add_argument("--json", type=Path, help="write the figures and every visit's decisions as JSON")


def _config(args):
    from appliance import config as config_mod

    cfg = config_mod.load(args.config)
    if args.model:
        cfg.classifier.model = args.model
    cfg.classifier.threads = args.threads
    if args.threshold is not None:  # checked as [classifier] threshold is in a config file
        cfg.classifier.threshold = config_mod.parse({"classifier": {"threshold": args.threshold}},
                                                    "--threshold").classifier.threshold
    return cfg


def run(args: argparse.Namespace) -> int:
    """`mask-train visits`: the figures table on stdout; a bad config, labels file or replay is one line, exit 1."""
    from appliance.config import ConfigError

    try:
        return _run(args)
    except (ConfigError, OSError, ValueError, KeyError) as exc:
        print(f"visits: {exc}", file=sys.stderr)
        return 1


def _run(args: argparse.Namespace) -> int:
    cfg = _config(args)
    started = time.monotonic()
    if args.replay:
        saved = json.loads(Path(args.replay).read_text())
        threshold = saved["threshold"]
        visits = [Visit(v["id"], v["kind"], [], 0) for v in saved["visits"]]
        frames = {v["id"]: verdicts_from_json(v["frames"]) for v in saved["visits"]}
        truth = {v["id"]: [[tuple(b) for b in boxes] for boxes in v["truth"]] for v in saved["visits"] if "truth" in v}
        still = saved.get("still")
        if args.threshold is not None and args.threshold != threshold:
            threshold = args.threshold
            frames = {k: relabelled(f, threshold) for k, f in frames.items()}
            still = None  # the still photos were flagged at the saved threshold, and their p is not saved
    else:
        if args.labels is None:
            print("visits: give a labels.csv, or --replay FILE", file=sys.stderr)
            return 2
        from appliance.seeing.classifier import load_model

        r = Render(start=args.start, end=args.end, seconds=args.seconds, fps=args.fps)
        run_ = door_visits(cfg, load_model(cfg.classifier.model, args.threads), args.labels, args.split,
                           args.max_visits, args.pairs, args.seed, r)
        visits, frames, still, threshold, truth = run_.visits, run_.frames, run_.still, run_.threshold, run_.truth
        if args.save_frames:
            args.save_frames.write_text(json.dumps({
                "threshold": threshold, "still": still,
                "visits": [{"id": v.id, "kind": v.kind, "frames": verdicts_to_json(frames[v.id]),
                            "truth": truth[v.id]} for v in visits]}))
    outcomes = [judge(v, frames[v.id], Policy(cfg.policy, threshold), truth.get(v.id)) for v in visits]
    table = summarise(outcomes)
    print(format_table(table, still))
    if any(o.undecided or o.wrong for o in outcomes):
        print("\nvisits that ended undecided or with the wrong decision, each visitor:")
        print(format_why(outcomes))
        print("causes: " + ", ".join(f"{k} {n}" for k, n in why_counts(outcomes).items()))
    print(f"{len(visits)} visits, {time.monotonic() - started:.0f} s, policy {asdict(cfg.policy)}")
    if args.json:
        args.json.write_text(json.dumps({"table": table, "still": still, "policy": asdict(cfg.policy),
                                         "outcomes": [asdict(o) for o in outcomes]}, indent=1))
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m training.visits", description=__doc__.split("\n\n")[0])
    add_arguments(parser)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
