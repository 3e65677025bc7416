"""Two `mask-appliance detect --json` runs compared face by face: the test deploy/pi_check.py passes or fails on.

A run is `{image: [face, ...]}`, a face as detect writes it (`box` in pixels, `p_without_mask`, `label`). Every face
found here must be found on the other side (IoU 0.5) with the same label, its box within BOX_TOL_PX and its
probability within P_TOL, and the other side may find no face that this one did not.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

Face = dict[str, Any]
Detections = dict[str, list[Face]]

# The int8 model's output moves in steps of 1/256; a few steps either way is arithmetic, not a different answer.
P_TOL = 0.02
BOX_TOL_PX = 2.0
# A box that moved (by at most BOX_TOL_PX: another OpenCV resizes a little differently) is another crop, and the
# three-class model answers another crop with another p: on Trixie (OpenCV 4.14 against 5.0 here) a 1 px shift moved
# one confidently masked face from 0.070 to 0.047. The labels must still agree.
P_TOL_MOVED = 0.05
MATCH_IOU = 0.5  # a face on the other side is the same face when its box overlaps this one's this much


@dataclass
class Gaps:
    """How far apart two runs are: faces matched, labels that differ, the largest box and probability gaps."""

    faces: int = 0
    labels_differ: int = 0
    box_px: float = 0.0
    p: float = 0.0

    def summary(self) -> str:
        """One line for the report, with the tolerances the gaps were held to."""
        return (f"{self.faces} faces, {self.labels_differ} labels differ; largest gaps: box {self.box_px:.1f} px "
                f"(allowed {BOX_TOL_PX}), p_without_mask {self.p:.4f} (allowed {P_TOL}, {P_TOL_MOVED} where the box "
                "moved)")


def parse_detect(stdout: str) -> Detections:
    """`detect --json` output (one JSON object per line) as {image: faces}."""
    return {row["image"]: row["faces"] for row in map(json.loads, stdout.splitlines())}


def compare(reference: Detections, other: Detections, p_tol: float = P_TOL,
            box_tol: float = BOX_TOL_PX) -> tuple[list[str], Gaps]:
    """Differences between the reference run (this machine) and another (arm64), one line each, naming the image;
    and the gaps measured on the faces that matched."""
    from appliance.boxes import iou

    problems: list[str] = []
    gaps = Gaps()
    for image, ref_faces in reference.items():
        name = Path(image).name
        if image not in other:
            problems.append(f"{name}: no result from arm64")
            continue
        left = list(other[image])
        for face in ref_faces:
            match = max(left, key=lambda f: iou(f["box"], face["box"]), default=None)
            if match is None or iou(match["box"], face["box"]) < MATCH_IOU:
                problems.append(f"{name}: face at {face['box']} not found on arm64")
                continue
            left.remove(match)
            problems += _face_problems(name, face, match, gaps, p_tol, box_tol)
        problems += [f"{name}: arm64 found a face at {f['box']} that this machine did not" for f in left]
    return problems, gaps


def _face_problems(name: str, face: Face, match: Face, gaps: Gaps, p_tol: float, box_tol: float) -> list[str]:
    """One matched face: its gaps added to `gaps`, and a line for each that is too large."""
    problems = []
    gaps.faces += 1
    box_gap = max(abs(u - v) for u, v in zip(match["box"], face["box"], strict=True))
    p_gap = abs(match["p_without_mask"] - face["p_without_mask"])
    gaps.box_px, gaps.p = max(gaps.box_px, box_gap), max(gaps.p, p_gap)
    if match["label"] != face["label"]:
        gaps.labels_differ += 1
        problems.append(f"{name}: face at {face['box']} is {match['label']} on arm64, {face['label']} here")
    if box_gap > box_tol:
        problems.append(f"{name}: face at {face['box']} boxed {match['box']} on arm64 ({box_gap:.1f} px)")
    if p_gap > (p_tol if box_gap == 0 else max(p_tol, P_TOL_MOVED)):
        problems.append(f"{name}: face at {face['box']} p_without_mask {match['p_without_mask']} on arm64, "
                        f"{face['p_without_mask']} here")
    return problems
