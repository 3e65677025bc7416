"""What motion gating and per-face scheduling save: CPU per frame and frames per second of the real service on door
videos, with `[detector] motion_gating` and `[schedule] reuse` both on and both off, in alternating rounds; and the
validation visits run through the door's own per-frame path (`Pipeline.step`, the policy, `Pipeline.settled`) with
both on and off, to show the door decides the same.

    python benchmarks/gating.py [--rounds 3] [--seconds 30] [--json docs/results/gating.json]
    python benchmarks/gating.py --visits ../shared/datasets/scenes-ilc/labels.csv --split val --max-visits 60 \\
        --pairs 20

The videos are made here from ../shared photos (640x480, 15 fps, MJPEG, sensor noise), like a door camera's:
`empty` (a blurred shop background, nobody there), `visitor` (one person walks in over a second and waits at the
door), `three` (three people walk in and wait side by side), `walking` (three people who never stop moving: the
detector must run on every frame, the worst case for gating). Each round runs `mask-appliance run`'s service on one
video, read as fast as it decodes (`[source] realtime = false`); CPU is the process's user + system time from the first
frame to the last (start-up left out), so the figure is the frame loop's and its threads'. Timings on a shared VM
vary from run to run: compare rounds of one run, and run it alone (flock /tmp/heavy.lock).
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import cv2
import numpy as np

REPO = Path(__file__).resolve().parent.parent
SCENES = REPO.parent / "shared" / "datasets" / "scenes-dev"
SIZE = (640, 480)
FPS = 15.0
BACKGROUND = "images/scene_0000.jpg"  # blurred beyond any face: the shop behind the door
KINDS = ("empty", "visitor", "three", "walking")
LIGHT_ON = 1.3  # seconds into the "light" video


def _read(path: Path) -> np.ndarray:
    image = cv2.imread(str(path))
    if image is None:
        raise OSError(f"{path}: unreadable photo")
    return image


def background() -> np.ndarray:
    """The empty door: a scenes-dev photo blurred until nothing in it is a face, 640x480."""
    image = _read(SCENES / BACKGROUND)
    image = cv2.resize(image, SIZE, interpolation=cv2.INTER_AREA)
    return cv2.GaussianBlur(image, (0, 0), 9.0)


def people(count: int, face: float = 100.0) -> list[np.ndarray]:
    """`count` people from scenes-dev's large labelled faces (unmasked and masked in turn): each a cut-out with head
    and shoulders, scaled so that the face is `face` px tall; the face sits at (0.3 w .. 0.7 w, 0.25 h .. 0.5 h)."""
    with open(SCENES / "labels.csv", newline="") as f:
        rows = [r for r in csv.DictReader(f) if float(r["y2"]) - float(r["y1"]) >= 120]
    by_label = {lab: [r for r in rows if r["label"] == lab] for lab in ("without_mask", "with_mask")}
    out = []
    for k in range(count):
        r = by_label[("without_mask", "with_mask")[k % 2]][k * 7]
        image = _read(SCENES / r["image_path"])
        x1, y1, x2, y2 = (float(r[c]) for c in ("x1", "y1", "x2", "y2"))
        w, h = x2 - x1, y2 - y1
        a, b = int(max(0, x1 - 0.6 * w)), int(max(0, y1 - 0.5 * h))
        c, d = int(min(image.shape[1], x2 + 0.6 * w)), int(min(image.shape[0], y2 + 1.0 * h))
        s = face / h
        out.append(cv2.resize(image[b:d, a:c], None, fx=s, fy=s, interpolation=cv2.INTER_AREA))
    return out


def _paste(canvas: np.ndarray, patch: np.ndarray, cx: float, top: float) -> None:
    ph, pw = patch.shape[:2]
    ox, oy = int(round(cx - pw / 2)), int(round(top))
    H, W = canvas.shape[:2]  # noqa: N806
    a, b, c, d = max(0, ox), max(0, oy), min(W, ox + pw), min(H, oy + ph)
    if c > a and d > b:
        canvas[b:d, a:c] = patch[b - oy:d - oy, a - ox:c - ox]


def frames(kind: str, seconds: float, seed: int = 5) -> Iterator[np.ndarray]:
    """The frames of one door video of `kind` (KINDS, or "light": the empty door, its light switched on at
    LIGHT_ON s)."""
    rng = np.random.default_rng(seed)
    base = background().astype(np.float32)
    n = int(round(seconds * FPS))
    count = {"empty": 0, "light": 0, "visitor": 1, "three": 3, "walking": 3}[kind]
    walkers = people(count)
    W, H = SIZE  # noqa: N806
    spots = [W * (k + 1) / (count + 1) for k in range(count)]
    lamp = np.linspace(0.6, 1.4, W, dtype=np.float32)[None, :, None]  # a lamp on the right lights unevenly
    for i in range(n):
        t = i / FPS
        scene = base
        if kind == "light":
            scene = base * 0.35 if t < LIGHT_ON else base * lamp
        canvas = np.clip(scene, 0, 255).astype(np.uint8)
        for k, patch in enumerate(walkers):
            arrive = 0.5 + 0.3 * k  # each walks in from the left over one second, then waits (or keeps moving)
            if t < arrive:
                continue
            walked = min(1.0, t - arrive)
            cx = -patch.shape[1] / 2 + (spots[k] + patch.shape[1] / 2) * walked
            if kind == "walking":  # never still: sways a few pixels a frame around the spot
                cx += 25 * np.sin(2 * np.pi * 0.4 * t + k)
            _paste(canvas, patch, cx, H * 0.18)
        noisy = canvas.astype(np.float32) + rng.normal(0, 4.0, canvas.shape)
        yield np.clip(noisy, 0, 255).astype(np.uint8)


def write_video(path: Path, images: Iterator[np.ndarray], fps: float = FPS) -> Path:
    """An MJPEG .avi of `images` (what a USB door camera gives)."""
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter.fourcc(*"MJPG"), fps, SIZE)
    for image in images:
        writer.write(image)
    writer.release()
    return path


def one_round(video: Path, gating: bool, tmp: Path, index: int) -> dict[str, float]:
    """Frames per second, CPU ms per frame (user + system), the frames detected and the faces classified, of the
    service on `video`, start-up and shutdown left out."""
    from gpiozero import Device
    from gpiozero.pins.mock import MockFactory

    from appliance import config
    from appliance.reporting.metrics import Metrics
    from appliance.seeing.sources import VideoFileSource
    from appliance.service import Service

    Device.pin_factory = MockFactory()
    table = {"classifier": {"model": str(REPO / "models/mask_classifier.tflite")},
             "events": {"database": str(tmp / f"events-{index}.db")}, "service": {"camera_timeout": 600},
             "detector": {"motion_gating": gating}, "schedule": {"reuse": gating}}
    service = Service(config.parse(table))
    metrics = Metrics()
    service.events.subscribe(metrics)
    source = VideoFileSource([video], realtime=False)
    inner = source.frames
    stamps: list[tuple[float, os.times_result]] = []

    def timed():
        for frame in inner():
            if not stamps:
                stamps.append((time.perf_counter(), os.times()))
            yield frame
        stamps.append((time.perf_counter(), os.times()))

    source.frames = timed  # type: ignore[method-assign]
    service.run(source)
    Device.pin_factory.reset()
    (w0, c0), (w1, c1) = stamps[0], stamps[-1]
    cpu = (c1.user - c0.user) + (c1.system - c0.system)
    text = metrics.render().decode()
    gated = _sample(text, "mask_appliance_gated_frames_total")
    classified = _sample(text, "mask_appliance_classified_faces_total")
    n = service.frames
    return {"fps": n / (w1 - w0), "cpu_ms": 1000 * cpu / n, "frames": n, "detected": n - gated,
            "faces_per_frame": classified / n}


def _sample(text: str, name: str) -> float:
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    return 0.0


def benchmark(args: argparse.Namespace, tmp: Path) -> int:
    videos = {kind: write_video(tmp / f"{kind}.avi", frames(kind, args.seconds)) for kind in args.kinds}
    figures: dict[str, dict[str, list[dict[str, float]]]] = {k: {"off": [], "on": []} for k in args.kinds}
    index = 0
    for r in range(args.rounds):
        for kind in args.kinds:
            for mode in ("off", "on") if r % 2 == 0 else ("on", "off"):
                got = one_round(videos[kind], mode == "on", tmp, index)
                index += 1
                figures[kind][mode].append(got)
                print(f"round {r + 1} {kind:8} gating {mode:3}: {got['fps']:6.1f} fps, {got['cpu_ms']:5.2f} ms CPU "
                      f"per frame, detector on {got['detected']:.0f}/{got['frames']:.0f} frames, "
                      f"{got['faces_per_frame']:.2f} faces classified per frame", flush=True)
    summary: dict[str, dict[str, dict[str, float]]] = {}
    print(f"\nmedians of {args.rounds} rounds, {args.seconds:g} s videos ({int(args.seconds * FPS)} frames):")
    print("| door | gating | fps | CPU per frame | detector ran on | faces classified per frame |")
    print("|---|---|---|---|---|---|")
    for kind in args.kinds:
        summary[kind] = {}
        for mode in ("off", "on"):
            rows = figures[kind][mode]
            med = {key: statistics.median(x[key] for x in rows) for key in rows[0]}
            summary[kind][mode] = med
            print(f"| {kind} | {mode} | {med['fps']:.1f} | {med['cpu_ms']:.2f} ms | "
                  f"{med['detected']:.0f}/{med['frames']:.0f} frames | {med['faces_per_frame']:.2f} |")
        off, on = summary[kind]["off"], summary[kind]["on"]
        print(f"|  | on / off | {on['fps'] / off['fps']:.2f}x | {on['cpu_ms'] / off['cpu_ms']:.2f}x | | |")
    if args.json:
        args.json.write_text(json.dumps({"rounds": figures, "median": summary, "seconds": args.seconds}, indent=1))
    return 0


def visits(args: argparse.Namespace) -> int:
    """The validation visits through Pipeline.step, each visit a fresh stream, with gating on and off on the same
    frames; the door's figures of both, and how much later any visit was denied with gating on."""
    from appliance import config
    from appliance.deciding.policy import UNKNOWN, Policy, Verdict
    from appliance.seeing.classifier import load_model
    from appliance.seeing.pipeline import Pipeline
    from appliance.seeing.sources import Frame
    from training.visits import Render, door_counts, format_table, judge, plan_set, render, summarise

    cfg_on = config.load(args.config)
    cfg_off = config.load(args.config)
    cfg_on.detector.motion_gating, cfg_off.detector.motion_gating = True, False
    cfg_on.schedule.reuse, cfg_off.schedule.reuse = not args.no_reuse, False
    model = load_model(cfg_on.classifier.model, 1)
    pipelines = {"off": Pipeline.from_config(cfg_off, model), "on": Pipeline.from_config(cfg_on, model)}
    r = Render()
    planned = plan_set(args.visits, args.split, args.max_visits, args.pairs, args.seed, r.end)
    seen: dict[str, dict[str, list]] = {"off": {}, "on": {}}
    detected = {"off": 0, "on": 0}
    total = 0
    started = time.monotonic()
    cache: dict[str, np.ndarray] = {}
    from appliance.seeing.detector import make_detector

    bystanders = make_detector(cfg_on.detector, photos=True)
    classified = {"off": 0, "on": 0}
    for n, visit in enumerate(planned):
        live = {}
        for mode, p in pipelines.items():
            p.restart()  # each visit is a stream of its own
            seen[mode][visit.id] = []
            live[mode] = Policy(cfg_on.policy, p.threshold)
        for i, (t, image, _) in enumerate(render(visit, r, cache, bystanders)):
            frame = Frame(image, t, i)
            total += 1
            for mode, p in pipelines.items():  # what the frame loop does: step, the policy, settled
                results = p.step(frame)
                detected[mode] += p.times.detected
                classified[mode] += p.times.classified
                decision = live[mode].update(results, t)
                p.settled([track.state != UNKNOWN for track in decision.faces])
                seen[mode][visit.id].append((t, [Verdict.of(x) for x in results]))
        if len(cache) > 64:
            cache.clear()
        if (n + 1) % 25 == 0:
            print(f"{n + 1}/{len(planned)} visits, {time.monotonic() - started:.0f} s", file=sys.stderr, flush=True)
    threshold = pipelines["on"].threshold
    outcomes = {mode: {v.id: judge(v, seen[mode][v.id], Policy(cfg_on.policy, threshold)) for v in planned}
                for mode in seen}
    for mode in ("off", "on"):
        table = summarise(list(outcomes[mode].values()))
        print(f"\ngating and reuse {mode}: detector on {detected[mode]}/{total} frames, "
              f"{classified[mode]} faces classified")
        print(format_table(table))
        print(door_counts(table))
    differ, later = [], []
    for v in planned:
        a, b = outcomes["off"][v.id], outcomes["on"][v.id]
        if (a.first_deny, a.first_allow, a.decisions) != (b.first_deny, b.first_allow, b.decisions):
            differ.append((v.id, v.kind, a.first_deny, b.first_deny, a.first_allow, b.first_allow))
        if a.first_deny is not None and b.first_deny is not None:
            later.append(round((b.first_deny - a.first_deny) * r.fps))
    print(f"\nvisits decided differently with gating and reuse on: {len(differ)} (id, kind, first deny off, on, "
          "first allow off, on)")
    for row in differ:
        print("  ", row)
    if later:
        print(f"deny later with them on, in frames: max {max(later)}, visits later {sum(x > 0 for x in later)}, "
              f"earlier {sum(x < 0 for x in later)}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3, help="rounds of each, alternating on and off (default 3)")
    parser.add_argument("--seconds", type=float, default=30.0, help="length of each video (default 30 s)")
    parser.add_argument("--kinds", nargs="+", choices=KINDS, default=list(KINDS), help="door videos to run")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    parser.add_argument("--visits", type=Path, help="a scene set's labels.csv: run its visits instead (see above)")
    parser.add_argument("--split", choices=("val", "train", "all"), default="val")
    parser.add_argument("--max-visits", type=int, default=60)
    parser.add_argument("--pairs", type=int, default=20)
    parser.add_argument("--seed", type=int, default=17)
    parser.add_argument("--config", type=Path, help="appliance config; default: the built-in defaults")
    parser.add_argument("--no-reuse", action="store_true", help="visits: gating alone, every face classified")
    args = parser.parse_args(argv)
    os.environ.setdefault("MASK_APPLIANCE_ASSETS", str(REPO.parent / "shared" / "assets"))  # the mirror, as tests do
    if args.visits:
        return visits(args)
    tmp = Path(tempfile.mkdtemp(prefix="bench-gating-"))
    try:
        return benchmark(args, tmp)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)  # the videos and event logs


if __name__ == "__main__":
    sys.path.insert(0, str(REPO))
    sys.exit(main())
