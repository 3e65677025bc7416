"""Motion gating on real door videos (made here from ../shared photos as MJPEG with sensor noise, read back through
the video source): which frames the detector ran on, what the policy was given in between, and what /metrics and
`mask-appliance check` say about it."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
from prometheus_client.parser import text_string_to_metric_families
from support.data import REPO, SHIPPED
from support.service import make_service

from appliance import __version__
from appliance import config as config_mod
from appliance.checkup import check_detector, check_model, run_checks
from appliance.deciding.policy import UNKNOWN, Policy
from appliance.reporting.metrics import Metrics
from appliance.seeing.detector import Face
from appliance.seeing.motion import MotionGate, changed_share, motion_image
from appliance.seeing.pipeline import FaceResult, Pipeline
from appliance.seeing.schedule import FaceSchedule, Plan
from appliance.seeing.sources import VideoFileSource

sys.path.insert(0, str(REPO / "benchmarks"))
import gating as bench  # noqa: E402

SECONDS = 4.0  # 60 frames at 15 fps


def _cfg(**detector) -> config_mod.Config:
    return config_mod.parse({"classifier": {"model": str(SHIPPED)}, "detector": detector}, "<test>")


@pytest.fixture(scope="module")
def videos(tmp_path_factory) -> dict[str, Path]:
    tmp = tmp_path_factory.mktemp("door")
    return {kind: bench.write_video(tmp / f"{kind}.avi", bench.frames(kind, SECONDS))
            for kind in ("empty", "visitor", "light")}


@pytest.fixture(scope="module")
def pipeline() -> Pipeline:
    return Pipeline.from_config(_cfg())


def _play(pipeline: Pipeline, video: Path) -> list[tuple[float, bool, list[Face]]]:
    """(frame time, whether the detector ran, the faces handed on) for each frame of `video`, through step()."""
    pipeline.restart()
    out = []
    for frame in VideoFileSource([video], realtime=False).frames():
        results = pipeline.step(frame)
        out.append((frame.t, pipeline.times.detected, [r.face for r in results]))
    return out


def _door(pipeline: Pipeline, video: Path) -> list[tuple[str, int, list[FaceResult]]]:
    """What the frame loop does with `video`: step(), the policy, settled(); (decision, faces classified, results)
    per frame."""
    pipeline.restart()
    policy, out = Policy(_cfg().policy, pipeline.threshold), []
    for frame in VideoFileSource([video], realtime=False).frames():
        results = pipeline.step(frame)
        decision = policy.update(results, frame.t)
        pipeline.settled([track.state != UNKNOWN for track in decision.faces])
        out.append((str(decision.state), pipeline.times.classified, results))
    return out


def _detected(played) -> list[int]:
    return [i for i, (_, ran, _) in enumerate(played) if ran]


def test_an_empty_door_is_detected_once_a_second_only(pipeline, videos):
    played = _play(pipeline, videos["empty"])
    assert len(played) == 60
    assert _detected(played) == [0, 15, 30, 45]  # the first frame, then every idle_every (1 s) of video time
    assert all(not faces for _, _, faces in played)


def test_a_person_walking_in_is_detected_on_every_frame_they_move_and_never_dropped(pipeline, videos):
    played = _play(pipeline, videos["visitor"])
    arrive = int(0.5 * bench.FPS)  # the visitor steps in at 0.5 s and walks for 1 s, then waits at the door
    detected = _detected(played)
    walking = range(arrive + 1, arrive + 15)
    assert set(walking) <= set(detected)  # motion: the detector ran on every frame of the walk
    assert detected[0] == 0 and all(i in detected for i in walking)
    # Once they wait, only the idle looks run (1 s apart), and the face found last is handed on in between.
    still = [i for i in range(arrive + 17, 60)]
    assert 1 <= len([i for i in still if i in detected]) <= 3
    first_face = next(i for i, (_, _, faces) in enumerate(played) if faces)
    assert first_face <= arrive + 8  # found while walking in
    for i in range(first_face + 1, 60):  # from then on, every frame hands the policy a face
        assert played[i][2], i
        if not played[i][1]:  # a gated frame carries the last detection forward unchanged
            assert played[i][2] == played[i - 1][2]


def test_a_light_switched_on_counts_as_motion_for_one_frame(pipeline, videos):
    played = _play(pipeline, videos["light"])
    switch = next(i for i, (t, _, _) in enumerate(played) if t >= bench.LIGHT_ON - 1e-6)
    detected = _detected(played)
    assert switch in detected
    # After the switch: the idle looks alone (every 15 frames from the switch), no run of motion frames.
    assert [i for i in detected if i > switch] == [switch + 15, switch + 30]
    assert all(not faces for _, _, faces in played)


def test_with_gating_off_every_frame_is_detected_and_the_policy_sees_the_same_visit(videos):
    off = Pipeline.from_config(_cfg(motion_gating=False))
    on = Pipeline.from_config(_cfg(), off.classifier)
    played_off, played_on = _play(off, videos["visitor"]), _play(on, videos["visitor"])
    assert _detected(played_off) == list(range(60))
    assert len(_detected(played_on)) < 30
    # The policy is handed a face on the same frames, and its decisions are the same, frame for frame.
    assert [bool(f) for _, _, f in played_off] == [bool(f) for _, _, f in played_on]
    decided = [[state for state, _, _ in _door(pipe, videos["visitor"])] for pipe in (off, on)]
    assert decided[0] == decided[1]
    assert "deny" in decided[0]  # the visitor is unmasked (benchmarks/gating.py's first person)


def test_a_settled_face_that_waits_is_classified_every_other_frame_and_the_door_decides_the_same(videos):
    every = Pipeline.from_config(config_mod.parse({"classifier": {"model": str(SHIPPED)},
                                                   "schedule": {"reuse": False}}))
    reuse = Pipeline.from_config(_cfg(), every.classifier)
    a, b = _door(every, videos["visitor"]), _door(reuse, videos["visitor"])
    assert [state for state, _, _ in a] == [state for state, _, _ in b]
    assert [n for _, n, r in a] == [len(r) for _, _, r in a]  # reuse off: every face, every frame
    waits = range(30, 60)  # the visitor waits at the door, settled unmasked
    assert all(len(b[i][2]) == 1 for i in waits)
    assert sum(b[i][1] for i in waits) == 15  # one frame in two
    assert all(b[i][1] + b[i + 1][1] >= 1 for i in waits[:-1])  # never two frames in a row without
    kept = [i for i in waits if b[i][1] == 0]
    assert all(b[i][2][0].p_without_mask == b[i - 1][2][0].p_without_mask for i in kept)  # its last verdict


def _kept(result: FaceResult, face: Face) -> FaceResult:
    return FaceResult(face, result.p_without_mask, result.label, result.p_incorrect_mask)


def _result(box, p: float) -> FaceResult:
    return FaceResult(Face(box, 0.9), p, "without_mask" if p >= 0.5 else "with_mask")


def test_the_schedule_classifies_new_moved_unsure_and_overdue_faces_unsettled_and_large_first():
    cfg = config_mod.parse({"schedule": {"every": 3}}).schedule  # reuse on, every 3, iou 0.9, margin 0.3
    model, thr = object(), 0.5
    schedule = FaceSchedule()
    sure = (100.0, 100.0, 200.0, 200.0)
    unsure = (300.0, 100.0, 380.0, 180.0)
    faces = [Face(sure, 0.9), Face(unsure, 0.9)]
    plan = schedule.plan(faces, cfg, model, thr)
    assert plan.due == [0, 1] and not plan.reuse  # new faces: both classified, the larger first
    schedule.remember([_result(sure, 0.02), _result(unsure, 0.6)], plan, model, thr)
    assert schedule.plan(faces, cfg, model, thr).due == [0, 1]  # not settled yet: classified
    schedule.settle([True, True])
    plan = schedule.plan(faces, cfg, model, thr)
    assert plan.due == [1] and list(plan.reuse) == [0]  # settled and clear keeps p 0.02; p 0.6 is too near 0.5
    schedule.remember([_kept(plan.reuse[0].result, faces[0]), _result(unsure, 0.6)], plan, model, thr)
    schedule.settle([True, True])
    plan = schedule.plan(faces, cfg, model, thr)
    assert list(plan.reuse) == [0]  # kept a second frame
    schedule.remember([_kept(plan.reuse[0].result, faces[0]), _result(unsure, 0.6)], plan, model, thr)
    schedule.settle([True, True])
    assert schedule.plan(faces, cfg, model, thr).due == [0, 1]  # a third frame: due again (every = 3)
    moved = [Face((110.0, 100.0, 210.0, 200.0), 0.9), faces[1]]  # IoU 0.82 with its last box
    schedule.remember([_result(sure, 0.02), _result(unsure, 0.6)], Plan(due=[0, 1]), model, thr)
    schedule.settle([True, True])
    assert 0 in schedule.plan(moved, cfg, model, thr).due
    assert 0 in schedule.plan(faces, cfg, object(), thr).due  # another model: every face again
    # Order: a new (unsettled) face before the settled ones due, larger first among each.
    newcomer = Face((400.0, 300.0, 440.0, 340.0), 0.9)
    plan = schedule.plan([*moved, newcomer], cfg, model, thr)
    assert plan.due[0] == 2


def test_the_gate_compares_with_the_frame_last_detected_not_the_one_before():
    """A slow drift that never changes 12 grey levels from one frame to the next still reaches the detector."""
    cfg = _cfg().detector
    image = bench.background()
    gate = MotionGate()
    assert gate.look(image, 0.0, cfg) and gate.reason == "first"
    ran = []
    for i in range(1, 14):  # a dark square grows into the picture 4 px a frame, well inside one idle interval
        frame = image.copy()
        frame[200:260, 300:300 + 4 * i] = 0
        if gate.look(frame, i / 15, cfg):
            ran.append(i)
    assert ran and ran[0] <= 3
    assert changed_share(motion_image(image), motion_image(image), 12) == 0.0
    evenly_darker = (image * 0.5).astype(np.uint8)  # exposure halved: no motion at all
    assert changed_share(motion_image(image), motion_image(evenly_darker), 12) == 0.0


def test_metrics_count_gated_frames_and_classified_faces_and_say_the_build(model_dir, tmp_path, videos):
    service = make_service(model_dir, tmp_path, source={"realtime": False})
    metrics = Metrics()
    service.events.subscribe(metrics)
    assert service.run(VideoFileSource([videos["visitor"]], realtime=False)) == 0
    samples = {s.name: s for fam in text_string_to_metric_families(metrics.render().decode()) for s in fam.samples}
    frames = samples["mask_appliance_frames_total"].value
    gated = samples["mask_appliance_gated_frames_total"].value
    classified = samples["mask_appliance_classified_faces_total"].value
    assert frames == 60 and 30 < gated < 60
    faces = sum(s.value for fam in text_string_to_metric_families(metrics.render().decode())
                for s in fam.samples if s.name == "mask_appliance_faces_total")
    # The waiting visitor's settled face keeps its verdict every other frame: about half the faces handed on.
    assert 0 < classified < faces and classified >= faces / 2
    assert samples["mask_appliance_build_info"].labels == {"version": __version__}
    assert samples["mask_appliance_build_info"].value == 1
    assert f'mask_appliance_build_info{{version="{__version__}"}} 1.0' in metrics.render().decode()


def test_check_says_whether_gating_and_reuse_are_on_and_which_release_runs():
    assert "motion gating on" in check_detector(_cfg()).detail
    assert "motion gating off" in check_detector(_cfg(motion_gating=False)).detail
    assert "per-face reuse on" in check_model(_cfg()).detail
    off = config_mod.parse({"classifier": {"model": str(SHIPPED)}, "schedule": {"reuse": False}})
    assert "per-face reuse off" in check_model(off).detail
    assert f"mask-appliance {__version__}" in run_checks(_cfg())[0].detail


def test_the_gating_keys_are_bounded_and_described():
    with pytest.raises(config_mod.ConfigError, match="idle_every"):
        _cfg(idle_every=-1)
    with pytest.raises(config_mod.ConfigError, match="motion_area"):
        _cfg(motion_area=0)
    text = config_mod.describe()
    for key in ("motion_gating", "idle_every", "motion_threshold", "motion_area", "[schedule]", "reuse", "every",
                "margin"):
        assert key in text


def test_the_benchmark_measures_both_ways_on_a_short_video(tmp_path):
    video = bench.write_video(tmp_path / "empty.avi", bench.frames("empty", 2.0))
    off, on = (bench.one_round(video, gating, tmp_path, i) for i, gating in enumerate((False, True)))
    assert off["frames"] == on["frames"] == 30
    assert off["detected"] == 30 and on["detected"] == 2
    assert off["cpu_ms"] > 0 and on["fps"] > 0 and on["faces_per_frame"] == 0
