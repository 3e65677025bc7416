"""Door visits: seeded approach videos from real labelled photos, judged by the real pipeline and Policy."""

from __future__ import annotations

import argparse
import csv
import json
from pathlib import Path

import numpy as np
import pytest
from support.data import SCENES, scene_images

from appliance.config import DetectorConfig, PolicyConfig
from appliance.deciding.policy import Policy, Verdict
from appliance.seeing.detector import make_detector
from training import visits


@pytest.fixture(scope="module")
def small_set(tmp_path_factory) -> Path:
    """A labels.csv of a few scenes-dev photos whose faces are all of one label and at least 150 px."""
    photos = {p.name for lab in ("with_mask", "without_mask") for p in scene_images(lab, min_face=150, limit=2)}
    out = tmp_path_factory.mktemp("set") / "labels.csv"
    with open(SCENES / "labels.csv", newline="") as f, open(out, "w", newline="") as g:
        reader = csv.DictReader(f)
        writer = csv.DictWriter(g, reader.fieldnames)
        writer.writeheader()
        for row in reader:
            if Path(row["image_path"]).name in photos:
                writer.writerow({**row, "image_path": str(SCENES / row["image_path"])})
    return out


def test_visits_are_seeded_and_grow_the_face_without_upsampling(small_set):
    faces = visits.source_faces(visits.read_labels(small_set), None, 150)
    assert faces and all(f.height >= 150 for f in faces)
    plan = visits.plan_visits(faces, 2, 1, seed=3)
    assert [v.id for v in plan] == [v.id for v in visits.plan_visits(faces, 2, 1, seed=3)]
    assert {v.kind for v in plan} >= {"with_mask", "without_mask", "with_mask+without_mask"}
    r = visits.Render(seconds=1.0, fps=10)
    one = list(visits.render(plan[0], r))
    again = list(visits.render(plan[0], r))
    assert len(one) == 10 and all(np.array_equal(a[1], b[1]) for a, b in zip(one, again, strict=True))
    assert [t for t, _, _ in one] == pytest.approx([i / 10 for i in range(10)])  # video time
    heights = [boxes[0][3] - boxes[0][1] for _, _, boxes in one]
    assert heights[0] == pytest.approx(40) and heights[-1] == pytest.approx(150) and heights == sorted(heights)
    assert one[0][1].shape == (480, 640, 3)


def test_a_visit_shows_its_visitor_alone_even_when_the_set_leaves_bystanders_unlabelled():
    # A crowd photo (scenes-dev) with its other faces' labels left out, as a set that labels only some people does.
    face = visits.SourceFace(str(SCENES / "images" / "scene_0009.jpg"), (748.0, 65.0, 862.0, 215.0), "with_mask")
    visit = visits.Visit("crowd", "with_mask", [face], seed=5)
    door = make_detector(DetectorConfig())
    r = visits.Render(seconds=1.0, fps=5)
    _, bare, _ = list(visits.render(visit, r))[-1]
    _, alone, (box,) = list(visits.render(visit, r, {}, make_detector(DetectorConfig(), photos=True)))[-1]
    assert len(door.detect(bare)) >= 3  # the strangers behind the visitor are in the cut-out
    (found,) = door.detect(alone)
    assert visits.iou(found.box, box) > 0.5  # ... and with them blanked, the door sees the visitor only


def test_an_odd_second_box_on_the_visitors_own_head_is_not_blanked():
    # scenes-ilc: the photo detector boxes this face twice, once well off to one side (IoU 0.15 with the label).
    photo = SCENES.parent / "scenes-ilc" / "images" / "cb6109dcd39b5c64.jpg"
    face = visits.SourceFace(str(photo), (695.0, 160.0, 784.0, 354.0), "without_mask", ((487.0, 118.0, 602.0, 265.0),))
    visit = visits.Visit("odd", "without_mask", [face], seed=5)
    frames = list(visits.render(visit, visits.Render(seconds=1.0, fps=5), {}, make_detector(DetectorConfig(),
                                                                                           photos=True)))
    door = make_detector(DetectorConfig())
    for _, image, (box,) in frames[2:]:  # 95 px and up
        assert any(visits.iou(f.box, box) > 0.3 for f in door.detect(image))


def test_blanking_a_neighbour_never_cuts_into_the_visitors_face():
    image = np.full((400, 400, 3), 200, np.uint8)
    face = visits.SourceFace("p.jpg", (150.0, 150.0, 250.0, 270.0), "with_mask", others=((220.0, 120.0, 330.0, 240.0),))
    patch, (x1, y1, x2, y2) = visits._cutout(image, face, (0, 0, 0), found=[(60.0, 60.0, 140.0, 160.0)])
    assert (patch[int(y1):int(y2), int(x1):int(x2)] == 200).all()  # the visitor's face is whole
    neighbour = patch[int(y1):int(y1) + 20, int(x2):]  # beside it, the labelled neighbour is blanked
    stranger = patch[0:10, 0:10]  # and up left, the found stranger (grown by a fifth)
    assert neighbour.size and (neighbour == 0).all() and (stranger == 0).all()


def test_judge_counts_an_allow_before_a_deny():
    visit = visits.Visit("v", "without_mask", [], 0)
    face = (100.0, 100.0, 220.0, 250.0)
    masked = [Verdict(face, 0.02, "with_mask")] * 5
    unmasked = [Verdict(face, 0.98, "without_mask")] * 10
    frames = [(i / 15, [v]) for i, v in enumerate(masked + unmasked)]
    out = visits.judge(visit, frames, Policy(PolicyConfig(allow_evidence=3.0, judge_average=False), 0.5))  # votes
    assert out.allowed and out.denied and out.allow_before_deny and out.denies == 1
    assert out.first_allow == pytest.approx(2 / 15, abs=1e-3) and out.first_deny > out.first_allow
    table = visits.summarise([out])
    assert table["without_mask"]["allow_before_deny"] == 1 and table["without_mask"]["denied"] == 1


def test_an_undecided_visit_says_which_rule_held_it_back():
    # A mask under the nose: 100 px from the first frame, p wavering below the threshold, no frame sure enough to
    # vote. Waiting, the door never decides (lock-on-unmasked lets the visitor in); the diagnostics say why.
    face = (100.0, 100.0, 200.0, 220.0)
    frames = [(i / 15, [Verdict(face, p, "with_mask")]) for i, p in enumerate([0.3, 0.5] * 20)]
    truth = [[face]] * len(frames)
    visit = visits.Visit("v", "incorrect_mask", [], 0)
    waits = PolicyConfig(unsure=0.7, unsettled="wait")
    out = visits.judge(visit, frames, Policy(waits, 0.56), truth)
    assert out.undecided and out.wrong and not out.denied
    (who,) = out.people
    assert (who.detected_frames, who.tracks, who.longest_track, who.votes) == (40, 1, 40, 0)
    assert who.near_frames == 40 and who.near_p == pytest.approx(0.4) and who.state == "unknown"
    assert who.rule == "unsure: votes +0.00 of the 2.5 needed to deny, and near p 0.40 below the threshold 0.56"
    table = visits.summarise([out])
    assert table["incorrect_mask"]["undecided"] == 1 and visits.door_counts(table)["undecided"] == 1
    printed = visits.format_why([out])
    assert "| v | undecided | incorrect_mask | 40/40 | 1 (40) | 0 (0.00 / 0.00) | 40 (0.40) |" in printed
    assert visits.why_counts([out]) == {"incorrect_mask: unsure": 1}
    # Denied as unsettled 1.33 s after its first near frame: decided, and no row to explain.
    denied = visits.judge(visit, frames, Policy(PolicyConfig(unsure=0.7), 0.56), truth)
    assert denied.denied and not denied.undecided and not denied.wrong
    assert denied.first_deny == pytest.approx(20 / 15, abs=1e-3)
    assert denied.people[0].state == "unsettled" and denied.people[0].settled_by == "unsettled rule"
    assert denied.people[0].rule == "" and visits.format_why([denied]).count("\n") == 1  # the header alone
    # A face the detector lost and found again as a new track, whose votes together would have settled it.
    moved = (400.0, 100.0, 500.0, 220.0)  # an odd box far from the last: the tracker starts again
    broken = [(i / 15, [Verdict(face if i < 3 else moved, 0.99, "without_mask")]) for i in range(6)]
    split = visits.judge(visits.Visit("b", "without_mask", [], 0), broken,
                         Policy(PolicyConfig(deny_evidence=4.0), 0.56))
    assert split.undecided and split.people[0].tracks == 2
    assert split.people[0].rule.startswith("track broke: 2 tracks")


def test_visitors_are_told_apart_by_their_boxes_and_a_face_never_found_says_so():
    a, b = (100.0, 100.0, 200.0, 220.0), (400.0, 100.0, 500.0, 220.0)
    frames = [(i / 15, [Verdict(a, 0.99, "without_mask")]) for i in range(20)]
    out = visits.judge(visits.Visit("p", "without_mask+with_mask", [], 0), frames,
                       Policy(PolicyConfig(), 0.56), [[a, b]] * 20)
    unmasked, masked = out.people
    assert out.denied and unmasked.detected_frames == 20 and unmasked.rule == ""
    assert masked.detected_frames == 0 and masked.rule == "not found: the detector never found this face"


def _args(**kw) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    visits.add_arguments(parser)
    argv = [str(kw.pop("labels"))] if "labels" in kw else []
    for key, value in kw.items():
        argv += [f"--{key.replace('_', '-')}", str(value)]
    return parser.parse_args(argv)


def test_real_visits_deny_the_unmasked_and_not_the_masked_and_replay_the_same(small_set, tmp_path, capsys):
    saved, report = tmp_path / "frames.json", tmp_path / "report.json"
    args = _args(labels=small_set, max_visits=2, pairs=1, seconds=2.0, fps=10, save_frames=saved, json=report)
    assert visits.run(args) == 0
    table = json.loads(report.read_text())["table"]
    assert table["without_mask"]["visits"] == 2 and table["without_mask"]["denied"] == 2
    assert table["with_mask"]["visits"] == 2 and table["with_mask"]["denied"] == 0
    pair = table["with_mask+without_mask"]
    assert pair["denied"] == 1 and pair["one_deny"] == 1  # both people, one deny
    assert table["with_mask+with_mask"]["denied"] == 0 and table["with_mask+with_mask"]["allowed"] == 1
    assert table["without_mask"]["allow_before_deny"] == 0 and table["without_mask"]["deny_median_s"] <= 1.0
    printed = capsys.readouterr().out
    assert "| without_mask | 2 | 2/2 |" in printed
    # The same faces judged again from the saved frames, without the pipeline: the same figures.
    assert visits.run(_args(replay=saved, json=tmp_path / "again.json")) == 0
    assert json.loads((tmp_path / "again.json").read_text())["table"] == table
    # Every face's label read again at the model's own threshold is the label the pipeline gave it.
    threshold = json.loads(saved.read_text())["threshold"]
    assert visits.run(_args(replay=saved, threshold=threshold, json=tmp_path / "relabelled.json")) == 0
    assert json.loads((tmp_path / "relabelled.json").read_text())["table"] == table


def test_a_replay_reads_each_face_again_at_another_threshold(capsys):
    box = (0.0, 0.0, 90.0, 90.0)
    frames = [(0.0, [Verdict(box, 0.6, "without_mask", 0.4), Verdict(box, 0.6, "without_mask", 0.1),
                     Verdict(box, 0.6, "without_mask")])]
    assert [v.label for v in visits.relabelled(frames, 0.5)[0][1]] == ["incorrect_mask", "without_mask",
                                                                        "without_mask"]
    assert [v.label for v in visits.relabelled(frames, 0.65)[0][1]] == ["with_mask"] * 3
    assert visits.run(_args(replay="frames.json", threshold=1.5)) == 1
    assert capsys.readouterr().err == "visits: --threshold: [classifier] threshold = 1.5 is outside 0.01..0.99\n"


def test_a_labels_file_with_an_unknown_label_is_refused(tmp_path):
    bad = tmp_path / "labels.csv"
    bad.write_text("image_path,x1,y1,x2,y2,label\na.jpg,0,0,10,10,maybe\n")
    with pytest.raises(ValueError, match="labels.csv:2: unknown label 'maybe'"):
        visits.read_labels(bad)


def test_a_missing_labels_file_is_one_line(tmp_path, capsys):
    assert visits.run(_args(labels=tmp_path / "labels.csv")) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("visits: ") and "labels.csv" in err[0]
