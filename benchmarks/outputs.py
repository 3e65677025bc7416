"""The service's frame rate with its shop outputs on (MQTT to a real Mosquitto, the status page polled and /metrics
scraped every second) against everything off, in alternating rounds on the same scene photos, unpaced.

    python benchmarks/outputs.py [--rounds 4] [--frames 240] [--json docs/results/outputs.json]

Needs Debian's mosquitto (scripts/test installs it). Prints each round and a summary: median frames per second and
process CPU per frame, on against off. Timings on a shared VM vary from run to run: compare rounds of one run.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
SCENES = REPO.parent / "shared" / "datasets" / "scenes-dev"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def photos(count: int = 4) -> list[Path]:
    """The first photos of scenes-dev that have a labelled face, in name order: faces to classify every frame."""
    import csv

    with open(SCENES / "labels.csv", newline="") as f:
        names = sorted({row["image_path"] for row in csv.DictReader(f)})
    return [SCENES / n for n in names[:count]]


def one_round(on: bool, tmp: Path, index: int, broker_port: int, frames: int) -> tuple[float, float]:
    """(frames per second, process CPU ms per frame) of the frame loop alone, start-up and shutdown left out."""
    from gpiozero import Device
    from gpiozero.pins.mock import MockFactory

    from appliance import config
    from appliance.seeing.sources import ImageSource
    from appliance.service import Service

    Device.pin_factory = MockFactory()
    table: dict = {"classifier": {"model": str(REPO / "models/mask_classifier.tflite")},
                   "events": {"database": str(tmp / f"events-{index}.db")}, "service": {"camera_timeout": 600}}
    stop = threading.Event()
    if on:
        http_port = free_port()
        table["mqtt"] = {"host": "127.0.0.1", "port": broker_port, "client_id": f"bench-{index}"}
        table["http"] = {"listen": f"127.0.0.1:{http_port}"}

        def poll() -> None:  # a page open (it polls every second) and a scraper every second: harsher than 15 s
            while not stop.wait(1.0):
                for path in ("/view.json", "/metrics"):
                    with contextlib.suppress(OSError):
                        urllib.request.urlopen(f"http://127.0.0.1:{http_port}{path}", timeout=2).read()

        threading.Thread(target=poll, daemon=True).start()
    service = Service(config.parse(table))
    pictures = photos()
    source = ImageSource(pictures, still_frames=max(1, frames // len(pictures)))
    inner, stamps = source.frames, []

    def timed():
        for frame in inner():
            stamps.append((time.perf_counter(), time.process_time()))
            yield frame
        stamps.append((time.perf_counter(), time.process_time()))

    source.frames = timed  # type: ignore[method-assign]
    service.run(source)
    stop.set()
    Device.pin_factory.reset()
    wall, cpu = stamps[-1][0] - stamps[0][0], stamps[-1][1] - stamps[0][1]
    return service.frames / wall, 1000 * cpu / service.frames


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=4, help="rounds of each, alternating (default 4)")
    parser.add_argument("--frames", type=int, default=240, help="frames per round (default 240)")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args(argv)
    os.environ.setdefault("MASK_APPLIANCE_ASSETS", str(REPO.parent / "shared" / "assets"))  # the mirror, as tests do
    tmp = Path(tempfile.mkdtemp(prefix="bench-outputs-"))
    port = free_port()
    (tmp / "mosquitto.conf").write_text(f"listener {port} 127.0.0.1\nallow_anonymous true\npersistence false\n")
    broker = subprocess.Popen(["/usr/sbin/mosquitto", "-c", str(tmp / "mosquitto.conf")], stderr=subprocess.DEVNULL)
    time.sleep(0.5)
    figures: dict[str, list[tuple[float, float]]] = {"off": [], "on": []}
    try:
        for r in range(args.rounds):
            for mode in ("off", "on") if r % 2 == 0 else ("on", "off"):
                fps, cpu = one_round(mode == "on", tmp, len(figures["off"]) + len(figures["on"]), port, args.frames)
                figures[mode].append((fps, cpu))
                print(f"round {r + 1} {mode:3}: {fps:6.1f} fps, {cpu:5.1f} ms CPU per frame", flush=True)
    finally:
        broker.kill()
    summary = {mode: {"fps": statistics.median(f for f, _ in rows), "cpu_ms": statistics.median(c for _, c in rows)}
               for mode, rows in figures.items()}
    change = 100 * (summary["on"]["fps"] - summary["off"]["fps"]) / summary["off"]["fps"]
    print(f"median: off {summary['off']['fps']:.1f} fps ({summary['off']['cpu_ms']:.1f} ms CPU/frame), "
          f"on {summary['on']['fps']:.1f} fps ({summary['on']['cpu_ms']:.1f} ms CPU/frame): {change:+.1f}% with "
          "MQTT, the page and /metrics on")
    if args.json:
        args.json.write_text(json.dumps({"rounds": figures, "median": summary, "on_vs_off_pct": round(change, 1)},
                                        indent=1))
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(REPO))
    sys.exit(main())
