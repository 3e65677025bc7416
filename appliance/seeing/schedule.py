"""Per-face scheduling: which faces of a frame the mask model runs on, and in what order.

A face is classified again on every frame unless all of these hold, in which case its last verdict is handed on
with its new box (`[schedule] reuse`):

- its track is settled (the policy said masked, unmasked or incorrectly masked on the frame before);
- its box barely moved: IoU with the box it had on the frame before at least `[schedule] iou`;
- its last p(not properly masked) was clear of the threshold by `[schedule] margin` or more;
- it was classified within the last `[schedule] every` - 1 frames, by the same model at the same threshold (so a
  settled face that changes, a mask pulled down without moving the head, is seen at most `every` - 1 frames late:
  one frame with the default 2).

So a new face, a face that moved, an unsure one, and every face once in `every` frames, is classified. The faces that
are classified on a frame go to the model in the order that reaches a deny soonest: unsettled faces first (only
they can start a deny), larger first (a larger face's vote weighs more), then the settled ones due again.

    schedule = FaceSchedule()
    plan = schedule.plan(faces, cfg.schedule, model, threshold)   # plan.due: indices to classify, in order
    ...
    schedule.remember(results, plan)                               # then, after the policy: schedule.settle(flags)
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from appliance.boxes import iou
from appliance.config import ScheduleConfig
from appliance.seeing.detector import Face

if TYPE_CHECKING:
    from appliance.seeing.pipeline import FaceResult


@dataclass
class Seen:
    """A face's verdict on the last frame: the result handed on, frames since the model last ran on it, settled."""

    result: FaceResult
    age: int
    settled: bool = False


@dataclass
class Plan:
    """One frame's plan: `due` the indices of the faces to classify, in the order to classify them; `reuse` maps
    the others' indices to the verdict they keep."""

    due: list[int] = field(default_factory=list)
    reuse: dict[int, Seen] = field(default_factory=dict)


class FaceSchedule:
    """Remembers the last frame's verdicts and says which faces of the next frame need the model; see the module
    docstring. One per stream of frames."""

    def __init__(self) -> None:
        self._last: list[Seen] = []
        self._by: tuple[Any, float] | None = None  # (model, threshold) the remembered verdicts were given with

    def plan(self, faces: list[Face], cfg: ScheduleConfig, model: Any, threshold: float) -> Plan:
        """Which of `faces` to classify (and in what order), and which keep their last verdict."""
        plan = Plan()
        same_model = self._by == (model, threshold)
        settled_of: dict[int, bool] = {}
        taken: set[int] = set()
        for i, face in enumerate(faces):
            best, best_iou = None, 0.0
            for j, seen in enumerate(self._last):
                if j in taken:
                    continue
                overlap = iou(face.box, seen.result.face.box)
                if overlap > best_iou:
                    best, best_iou = j, overlap
            settled_of[i] = best is not None and self._last[best].settled and best_iou >= 0.3
            if best is None or not (cfg.reuse and same_model):
                plan.due.append(i)
                continue
            seen = self._last[best]
            clear = abs(seen.result.p_without_mask - threshold) >= cfg.margin
            if seen.settled and best_iou >= cfg.iou and clear and seen.age + 1 < cfg.every:
                plan.reuse[i] = seen
                taken.add(best)
            else:
                plan.due.append(i)
        plan.due.sort(key=lambda i: (settled_of[i], -faces[i].size))
        return plan

    def remember(self, results: list[FaceResult], plan: Plan, model: Any, threshold: float) -> None:
        """This frame's verdicts (in the faces' order), after `plan` was carried out."""
        self._last = [Seen(r, plan.reuse[i].age + 1 if i in plan.reuse else 0) for i, r in enumerate(results)]
        self._by = (model, threshold)

    def settle(self, settled: list[bool]) -> None:
        """Whether each face of the last frame (in the order remembered) belongs to a settled track."""
        for seen, flag in zip(self._last, settled, strict=False):
            seen.settled = bool(flag)

    def reset(self) -> None:
        self._last, self._by = [], None
