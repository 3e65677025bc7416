"""After the door has moved: a frame's records go out once, to the event log (which hands them to every enabled
output off the frame path: MQTT, /metrics, the status page) and to hard-example collection."""

from __future__ import annotations

import time
from typing import Any

import numpy as np

from appliance.config import Config
from appliance.deciding.policy import Decision
from appliance.reporting.collect import Collector
from appliance.reporting.events import EventLog
from appliance.seeing.classifier import MaskClassifier, crop_faces
from appliance.seeing.pipeline import FaceResult
from appliance.seeing.sources import Frame
from appliance.vocab import Kind, Label

_NO_CROP = np.zeros((0, 0, 3), np.uint8)  # offered for faces outside the band: the collector refuses them unread


def start_outputs(cfg: Config, events: EventLog) -> None:
    """Start the enabled outputs (the status page with /metrics, MQTT) and subscribe each to `events`, which closes
    them when it closes. One at a time: where one fails to start, those already started are the log's to close."""
    from appliance.reporting import mqtt, web  # their libraries load only where the outputs run

    for make in (lambda: web.from_config(cfg.http, events, save_faces=cfg.events.save_faces),
                 lambda: mqtt.from_config(cfg.mqtt, events)):
        output = make()
        if output is not None:
            events.subscribe(output)


class Emitter:
    """`emit()` is the loop's last step; `snapshot` adds the frame itself to the statistics (the status page)."""

    def __init__(self, events: EventLog, collector: Collector, snapshot: bool):
        self.events, self.collector, self.snapshot = events, collector, snapshot

    def emit(self, frame: Frame, results: list[FaceResult], decision: Decision, door: str,
             model: MaskClassifier, stages: dict[str, float]) -> None:
        """The decision (when it changed) to the event log, faces to collection, the frame's statistics out."""
        if decision.changed:
            self.events.record(Kind.DECISION, decision.state, frame=frame.index, image=frame.name or None,
                               t=round(frame.t, 3), unmasked=decision.unmasked, incorrect=decision.incorrect,
                               unsettled=decision.unsettled, masked=decision.masked, door=door,
                               p=[round(r.p_without_mask, 3) for r in results])
            if self.events.faces_dir is not None and results:
                self.events.save_faces(frame.image, [r.face.box for r in results], decision.state)
        if self.collector.cfg.enabled and results:
            self._collect(frame, results, decision, model)
        faces = {str(label): 0 for label in Label}
        for r in results:
            faces[r.label] = faces.get(r.label, 0) + 1
        stats: dict[str, Any] = {"t": frame.t, "stages": stages, "faces": faces}
        if self.snapshot:
            stats.update(image=frame.image, boxes=[r.face.box for r in results])
        self.events.frame(stats)

    def _collect(self, frame: Frame, results: list[FaceResult], decision: Decision, model: MaskClassifier) -> None:
        lo, hi = self.collector.cfg.band
        for r, track in zip(results, decision.faces, strict=True):
            box = r.face.box
            wanted = lo <= r.p_without_mask <= hi or track.disagreed
            # Only a face the collector may take is cropped: collection must not slow the loop.
            # The crop the model judged: aligned by the face's landmarks when the card says so.
            crop = (crop_faces(frame.image, [box], model.card.crop, model.input_size, [r.face.landmarks])[0]
                    if wanted else _NO_CROP)
            self.collector.offer(crop, {
                "time": time.time(), "p_without_mask": r.p_without_mask, "p_incorrect_mask": r.p_incorrect_mask,
                "label": r.label, "decision": decision.state, "model_sha256": model.sha256,
                "face_size": round(r.face.size, 1), "track_id": track.id,
                **({"disagreed": True} if track.disagreed else {})}, t=frame.t)
