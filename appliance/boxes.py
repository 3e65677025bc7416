"""Boxes (x1, y1, x2, y2) compared: what the policy's tracks and the per-face schedule both match faces by, and how
labelled faces are paired with detected ones (scoring, and training on the detector's own boxes)."""

from __future__ import annotations

from collections.abc import Sequence


def iou(a: Sequence[float], b: Sequence[float]) -> float:
    """Intersection over union of two boxes (0 when they do not overlap)."""
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def contained(a: Sequence[float], b: Sequence[float]) -> float:
    """How much of the smaller of two boxes lies inside the other (1: wholly)."""
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    smaller = min((a[2] - a[0]) * (a[3] - a[1]), (b[2] - b[0]) * (b[3] - b[1]))
    return ix * iy / smaller if smaller > 0 else 0.0


def pair(truth: Sequence[Sequence[float]], found: Sequence[Sequence[float]], min_iou: float) -> list[int | None]:
    """For each box of `truth`, the index of the box of `found` paired with it (IoU > min_iou, one to one, best
    overlap first), else None."""
    pairs = sorted(((iou(t, f), i, j) for i, t in enumerate(truth) for j, f in enumerate(found)), reverse=True)
    out: list[int | None] = [None] * len(truth)
    used: set[int] = set()
    for overlap, i, j in pairs:
        if overlap <= min_iou:
            break
        if out[i] is None and j not in used:
            out[i] = j
            used.add(j)
    return out
