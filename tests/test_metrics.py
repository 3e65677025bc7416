"""Prometheus metrics fed by a real EventLog, read back with prometheus_client's own parser."""

from __future__ import annotations

import sqlite3

import prometheus_client
import pytest
from prometheus_client.parser import text_string_to_metric_families

from appliance.reporting.events import EventLog
from appliance.reporting.metrics import STAGE_BUCKETS, Metrics, is_recovery
from appliance.vocab import Fault, Kind, Recovery

SHA = "ab" * 32


def scrape(metrics: Metrics) -> dict[str, dict[tuple, float]]:
    """{sample name: {sorted label items: value}} from the text format, through the library's own parser."""
    out: dict[str, dict[tuple, float]] = {}
    for family in text_string_to_metric_families(metrics.render().decode()):
        for sample in family.samples:
            out.setdefault(sample.name, {})[tuple(sorted(sample.labels.items()))] = sample.value
    return out


def frame(capture=0.004, detect=0.03, classify=0.012, decide=0.0002, **faces) -> dict:
    return {"t": 0.0, "stages": {"capture": capture, "detect": detect, "classify": classify, "decide": decide},
            "faces": {"with_mask": 0, "without_mask": 0, "incorrect_mask": 0, **faces}}


@pytest.fixture
def fed(tmp_path):
    """A run's worth of events through a real EventLog into a Metrics output."""
    log = EventLog(tmp_path / "events.db")
    metrics = Metrics()
    log.subscribe(metrics)
    log.record("start", None, model=SHA, door="released")
    log.status({"frames": 0, "skipped": 0, "fps": 0.0, "door": "released", "decision": "idle",
                "model": "/m/mask_classifier.tflite", "model_sha256": SHA, "camera_lost": False})
    for i in range(40):
        log.frame(frame(with_mask=1 if i < 10 else 0, without_mask=2 if 20 <= i < 25 else 0,
                        detect=0.03 if i % 2 else 0.3))
    for state, door in [("allow", "released"), ("idle", "released"), ("deny", "locked"), ("idle", "released"),
                        ("deny", "locked")]:
        log.record("decision", state, masked=0, unmasked=1, incorrect=0, door=door)
    log.record("fault", None, what="no frames", seconds=3.0, door="released")
    log.record("model", None, what="model swapped", sha256="cd" * 32, previous=SHA)
    log.status({"frames": 40, "skipped": 3, "fps": 7.5, "door": "locked", "decision": "deny",
                "model": "/m/mask_classifier.tflite", "model_sha256": "cd" * 32, "camera_lost": True})
    assert log.flush()
    yield log, metrics
    log.close()


def test_counters_match_the_event_log(fed):
    log, metrics = fed
    m = scrape(metrics)
    db = sqlite3.connect(log.path)
    for state, n in db.execute("SELECT state, COUNT(*) FROM events WHERE kind = 'decision' GROUP BY state"):
        assert m["mask_appliance_decisions_total"][(("decision", state),)] == n
    assert m["mask_appliance_decisions_total"][(("decision", "deny"),)] == 2
    faults = db.execute("SELECT COUNT(*) FROM events WHERE kind = 'fault'").fetchone()[0]
    assert sum(m["mask_appliance_faults_total"].values()) == faults == 1
    assert m["mask_appliance_faults_total"][(("kind", "no frames"),)] == 1
    assert m["mask_appliance_model_swaps_total"][()] == 1
    assert m["mask_appliance_frames_total"][()] == 40  # 40 frames seen, and the status' 40 adds none twice
    assert m["mask_appliance_skipped_frames_total"][()] == 3
    assert m["mask_appliance_faces_total"] == {(("label", "with_mask"),): 10, (("label", "without_mask"),): 10,
                                                (("label", "incorrect_mask"),): 0}


def test_gauges_and_histograms(fed):
    _, metrics = fed
    m = scrape(metrics)
    assert m["mask_appliance_door_locked"][()] == 1
    assert m["mask_appliance_camera_up"][()] == 0
    assert m["mask_appliance_fps"][()] == 7.5
    assert m["mask_appliance_model_info"] == {(("model", "/m/mask_classifier.tflite"), ("sha256", "cd" * 32)): 1}
    # Per-stage histograms with the Pi's buckets: 20 detects at 30 ms and 20 at 300 ms.
    buckets = m["mask_appliance_stage_seconds_bucket"]
    assert sorted(float(dict(k)["le"]) for k in buckets if dict(k)["stage"] == "detect") == sorted(
        [*STAGE_BUCKETS, float("inf")])
    assert buckets[(("le", "0.03"), ("stage", "detect"))] == 20
    assert buckets[(("le", "0.25"), ("stage", "detect"))] == 20
    assert buckets[(("le", "0.5"), ("stage", "detect"))] == 40
    assert m["mask_appliance_stage_seconds_count"][(("stage", "classify"),)] == 40
    assert m["mask_appliance_stage_seconds_sum"][(("stage", "detect"),)] == pytest.approx(20 * 0.03 + 20 * 0.3)
    assert not any(name.endswith("_created") for name in m), "no _created series"


def test_frames_shed_by_the_writer_are_caught_up_from_status():
    metrics = Metrics()
    for _ in range(5):
        metrics.on_frame(frame())
    metrics.on_status({"frames": 12, "skipped": 0})  # seven frames never reached us
    metrics.on_frame(frame())  # frame 6 arriving late counts nothing twice
    assert scrape(metrics)["mask_appliance_frames_total"][()] == 12
    metrics.on_record({"id": 9, "time": 0, "kind": "fault", "state": None, "detail": {"what": "frames back"}})
    assert scrape(metrics)["mask_appliance_camera_up"][()] == 1


def test_recoveries_have_their_own_counter(tmp_path):
    """Faults count faults only; a recovery counts in recoveries (and frames back puts the camera up), in its new
    kind and in an older log's form (a fault); a config reload counts with model swaps, in either form."""
    log = EventLog(tmp_path / "events.db")
    metrics = Metrics()
    log.subscribe(metrics)
    log.record(Kind.FAULT, None, what=Fault.NO_FRAMES, seconds=3.0, door="locked")
    log.record(Kind.FAULT, None, what=Fault.GUARD_FAILED, reason="RuntimeError()", door="locked")
    assert log.flush()
    assert scrape(metrics)["mask_appliance_camera_up"][()] == 0
    log.record(Kind.RECOVERY, None, what=Recovery.FRAMES_BACK)
    log.record(Kind.RECOVERY, None, what=Recovery.GUARD_BACK)
    assert log.flush()
    m = scrape(metrics)
    assert m["mask_appliance_camera_up"][()] == 1
    assert m["mask_appliance_faults_total"] == {(("kind", "no frames"),): 1, (("kind", "camera guard failed"),): 1}
    assert m["mask_appliance_recoveries_total"] == {(("kind", "frames back"),): 1,
                                                    (("kind", "camera guard back"),): 1}
    log.record("fault", None, what="no frames", seconds=3.0, door="locked")
    log.record("fault", None, what="frames back")  # an older log's way of saying it
    log.record(Kind.CONFIG, None, what="config reloaded", sha256=SHA, changed=["[policy] unsure"])
    log.record("model", None, what="config reloaded", sha256=SHA)
    assert log.flush()
    m = scrape(metrics)
    assert m["mask_appliance_camera_up"][()] == 1
    assert m["mask_appliance_faults_total"][(("kind", "no frames"),)] == 2
    assert m["mask_appliance_recoveries_total"][(("kind", "frames back"),)] == 2
    assert m["mask_appliance_model_swaps_total"][()] == 2
    log.close()


def test_is_recovery_reads_both_forms():
    def rec(kind, what):
        return {"id": 1, "time": 0.0, "kind": kind, "state": None, "detail": {"what": what}}

    assert is_recovery(rec("recovery", "frames back")) and is_recovery(rec("fault", "camera guard back"))
    assert is_recovery(rec("recovery", "something new"))  # the kind says it, whatever the what
    assert not is_recovery(rec("fault", "no frames")) and not is_recovery(rec("decision", "frames back"))
    assert not is_recovery({"kind": "fault"})


def test_registry_is_our_own():
    a, b = Metrics(), Metrics()  # a second one (a test, a reload) registers nothing twice
    a.on_frame(frame())
    assert scrape(a)["mask_appliance_frames_total"][()] == 1
    assert scrape(b)["mask_appliance_frames_total"][()] == 0
    assert prometheus_client.REGISTRY.get_sample_value("mask_appliance_frames_total") is None
