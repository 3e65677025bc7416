"""Masks worn under the nose, made from training crops: more `incorrect_mask` examples than the scene sets hold.

scenes-ilc's training part has 276 incorrectly worn masks, nearly all of them pulled down under the nose, against
1932 faces of the other two classes; the door misses a quarter of them. This makes more, as MaskedFace-Net made its
incorrectly-masked set: the mask of a masked training face (the donor) is moved onto an unmasked training face
(the target), aligned by YuNet's five landmarks, and lowered so that its top edge sits between the target's nose
tip and upper lip: eyes and nose stay the target's own, mouth and chin are the donor's mask. Only training crops
are used, so nothing of a validation part leaks in.

    crops = under_nose(train_set, 600, seed=42)   # a CropSet of (up to) 600 made faces labelled incorrect_mask
"""

from __future__ import annotations

import logging

import cv2
import numpy as np

from training.data import LABELS, CropSet

log = logging.getLogger(__name__)

INCORRECT = LABELS.index("incorrect_mask")
# YuNet's landmark order: right eye, left eye, nose tip, right and left mouth corners (as the image shows them).
EYES, NOSE, MOUTH = [0, 1], 2, [3, 4]
# Where a worn mask's top edge is on the donor: this far from its eye line down to its nose tip (on the bridge).
DONOR_TOP = 0.5
# Where the moved edge lands on the target: this far from its nose tip down to its mouth (under the nose, above the
# lip: what the labelled incorrect masks show).
TARGET_TOP = (0.1, 0.55)
# Faces turned this far (nose off the eyes' centre, in eye distances) or with eyes this close (a share of the crop's
# side: 16 px in a 128 px crop) make masks that float beside the face: neither target nor donor.
MAX_TURN, MIN_EYES = 0.2, 0.125


def landmarks(images: np.ndarray, scale: int = 2) -> np.ndarray:
    """N x 5 x 2 landmarks of the largest face YuNet finds in each crop (NaN where it finds none). The crops are
    enlarged `scale` times first: YuNet is surer of faces that are not at its smallest sizes."""
    from appliance.assets import resolve

    side = images.shape[1] * scale
    net = cv2.FaceDetectorYN.create(str(resolve("yunet")), "", (side, side), 0.5, 0.3, 50)
    out = np.full((len(images), 5, 2), np.nan, np.float32)
    for i, rgb in enumerate(images):
        big = cv2.resize(cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), (side, side), interpolation=cv2.INTER_LINEAR)
        _, rows = net.detect(big)
        if rows is None or not len(rows):
            continue
        best = max(rows, key=lambda r: r[2] * r[3])
        out[i] = best[4:14].reshape(5, 2) / scale
    return out


def _frame(lm: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, float, float]:
    """The face's own axes: centre of the eyes, unit vectors along them and down the face, and the nose's and
    mouth's distances down the face from the eye line."""
    eye = lm[EYES].mean(axis=0)
    along = lm[EYES[1]] - lm[EYES[0]]
    along = along / max(1e-6, float(np.linalg.norm(along)))
    down = np.array([-along[1], along[0]])
    if down[1] < 0:
        down = -down
    nose = float((lm[NOSE] - eye) @ down)
    mouth = float((lm[MOUTH].mean(axis=0) - eye) @ down)
    return eye, along, down, nose, mouth


def move_mask(target: np.ndarray, t_lm: np.ndarray, donor: np.ndarray, d_lm: np.ndarray,
              rng: np.random.Generator) -> np.ndarray | None:
    """The target face wearing the donor's mask under its nose; None when the landmarks make no sense."""
    t_eye, t_along, t_down, t_nose, t_mouth = _frame(t_lm)
    d_eye, d_along, _, d_nose, d_mouth = _frame(d_lm)
    if min(t_nose, t_mouth - t_nose, d_nose, d_mouth - d_nose) <= 2:
        return None
    # Scale: the eye distances; then lower the donor so that its mask's top lands under the target's nose.
    scale = float(np.linalg.norm(t_lm[EYES[1]] - t_lm[EYES[0]])) / max(
        1e-6, float(np.linalg.norm(d_lm[EYES[1]] - d_lm[EYES[0]])))
    angle = np.arctan2(t_along[1], t_along[0]) - np.arctan2(d_along[1], d_along[0])
    d_top = DONOR_TOP * d_nose * scale  # donor's mask top, below its eye line, in target pixels
    t_top = t_nose + rng.uniform(*TARGET_TOP) * (t_mouth - t_nose)
    shift = t_down * (t_top - d_top)
    c, s = np.cos(angle) * scale, np.sin(angle) * scale
    m = np.array([[c, -s, 0.0], [s, c, 0.0]])
    m[:, 2] = t_eye + shift - m[:, :2] @ d_eye
    size = target.shape[1], target.shape[0]
    warped = cv2.warpAffine(donor, m, size, flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT)
    # Where the mask goes: below the moved top edge, as wide as the face (1.15 eye distances each side of centre).
    h, w = target.shape[:2]
    ys, xs = np.mgrid[0:h, 0:w].astype(np.float32)
    rel = np.stack([xs - t_eye[0], ys - t_eye[1]], axis=-1)
    down_d = rel @ t_down
    across = np.abs(rel @ t_along)
    half = 1.15 * float(np.linalg.norm(t_lm[EYES[1]] - t_lm[EYES[0]]))
    alpha = ((down_d >= t_top) & (across <= half)).astype(np.float32)
    alpha = cv2.GaussianBlur(alpha, (0, 0), max(1.0, 0.02 * w))[..., None]
    return (alpha * warped + (1 - alpha) * target).astype(np.uint8)


def usable(lm: np.ndarray, side: int) -> np.ndarray:
    """Which faces' landmarks (in crops `side` px square) are found, frontal enough and large enough to take or give
    a mask."""
    eyes = np.linalg.norm(lm[:, EYES[1]] - lm[:, EYES[0]], axis=1)
    turn = np.abs(lm[:, NOSE, 0] - lm[:, EYES, 0].mean(axis=1)) / np.maximum(eyes, 1e-6)
    with np.errstate(invalid="ignore"):
        return ~np.isnan(lm).any(axis=(1, 2)) & (eyes >= MIN_EYES * side) & (turn <= MAX_TURN)


def under_nose(train: CropSet, n: int, seed: int) -> CropSet:
    """Up to `n` made incorrect_mask crops: unmasked training faces wearing masked training faces' masks under the
    nose (none when no unmasked or no masked face has usable landmarks)."""
    rng = np.random.default_rng(seed)
    targets = np.flatnonzero(train.labels == LABELS.index("without_mask"))
    donors = np.flatnonzero(train.labels == LABELS.index("with_mask"))
    nothing = CropSet(train.images[:0], train.labels[:0], [])
    if n <= 0 or not len(targets) or not len(donors):
        return nothing
    lm = np.full((len(train), 5, 2), np.nan, np.float32)
    both = np.concatenate([targets, donors])
    lm[both] = landmarks(train.images[both])
    found = usable(lm, train.images.shape[1])
    targets, donors = targets[found[targets]], donors[found[donors]]
    if not len(targets) or not len(donors):
        log.warning("no masks made: %d unmasked and %d masked training faces have usable landmarks",
                    len(targets), len(donors))
        return nothing
    images: list[np.ndarray] = []
    paths: list[str] = []
    tries = 0
    while len(images) < n and tries < 4 * n:
        tries += 1
        t, d = int(rng.choice(targets)), int(rng.choice(donors))
        made = move_mask(train.images[t], lm[t], train.images[d], lm[d], rng)
        if made is not None:
            images.append(made)
            paths.append(f"made: {train.paths[t]} wearing the mask of {train.paths[d]}")
    log.log(logging.INFO if len(images) == n else logging.WARNING,
            "made %d of %d under-nose masks from %d unmasked and %d masked training faces with landmarks",
            len(images), n, len(targets), len(donors))
    return CropSet(np.stack(images) if images else train.images[:0], np.full(len(images), INCORRECT), paths)
