"""`mask-train label DIR`: a labelling page for the face crops `mask-deploy pull` fetched, on 127.0.0.1 only.

The crops (every index.jsonl in DIR and its sub-folders, one per door) are shown in a grid, sorted by the model's
guess (p(without_mask), as the door saw it). Keys: 1 with_mask, 2 without_mask, 3 incorrect_mask, 0 skip, u undo;
a click picks another crop. Every key is saved at once (whole files, written then renamed), so closing the page or
the command loses nothing and the next run resumes where it stopped.

What it writes, in DIR:
- labels.csv: `image_path,x1,y1,x2,y2,label`, the scene-set format training and evaluation already read. Each crop
  is the classifier's square crop of a face box grown by the card's margin on each side, so the box is the crop's
  centre square of side S / (1 + 2 * margin): cut again with that margin, it gives back the same crop. Training
  takes it as one more scene source (split by photo, its validation part held back), `mask-train gate` scores
  the held-back part;
- .label-state.json: every decision (skips too) and their order, for undo and resume.

Longer than this project's 200-line guide: the page's server, its saved state and its undo are one small
application.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import logging
import os
import threading
import webbrowser
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlparse

import cv2

from appliance.seeing.card import LABELS, Crop

log = logging.getLogger(__name__)

LABELS_FILE, STATE_FILE, INDEX = "labels.csv", ".label-state.json", "index.jsonl"
SKIP = "skip"
CHOICES = (*LABELS, SKIP)


class LabelError(ValueError):
    """The folder cannot be labelled; the message names it."""


def _atomic_write(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "w", newline="") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


class Session:
    """The crops of DIR, the decisions so far, and the files they are saved in. Thread-safe."""

    def __init__(self, root: Path, margin: float = Crop().margin):
        self.root, self.margin = Path(root).resolve(), margin
        if not self.root.is_dir():
            raise LabelError(f"{root}: not a folder")
        self.items = self._load_items()
        if not self.items:
            raise LabelError(f"{root}: no crops listed in an {INDEX} here or in a sub-folder (mask-deploy pull "
                             "writes them)")
        self.by_path = {it["path"]: it for it in self.items}
        self.decisions: dict[str, str] = {}
        self.history: list[tuple[str, str | None]] = []  # (crop, its label before) for undo
        self._lock = threading.Lock()
        self._resume()

    def _load_items(self) -> list[dict[str, Any]]:
        items = []
        for index in sorted([self.root / INDEX, *self.root.glob(f"*/{INDEX}")]):
            if not index.is_file():
                continue
            for n, line in enumerate(index.read_text().splitlines(), start=1):
                try:
                    d = json.loads(line)
                    name = d["file"]
                    p = float(d.get("p_without_mask", float("nan")))
                except (ValueError, KeyError, TypeError):
                    raise LabelError(f"{index}:{n}: not a crop's line: {line[:80]!r}") from None
                path = (index.parent / name).resolve()
                if path.parent != index.parent.resolve() or not path.is_file():
                    continue  # pruned, or a name that leaves the folder
                image = cv2.imread(str(path))
                if image is None:
                    continue
                items.append({"path": path.relative_to(self.root).as_posix(), "p": p, "guess": d.get("label"),
                              "size": image.shape[:2], "host": d.get("host")})
        # The model's guess in order: sure masks first, the undecided middle, sure unmasked faces last.
        items.sort(key=lambda it: (it["p"] if it["p"] == it["p"] else 0.5, it["path"]))
        return items

    def _resume(self) -> None:
        state_path = self.root / STATE_FILE
        if not state_path.exists():
            return
        try:
            state = json.loads(state_path.read_text())
            decisions = dict(state["decisions"])
            history = [(str(p), None if prev is None else str(prev)) for p, prev in state["history"]]
        except (ValueError, KeyError, TypeError) as exc:
            raise LabelError(f"{state_path}: unreadable ({exc}); move it away to start over") from None
        # Crops gone since (pruned) drop out; everything else resumes as it was.
        self.decisions = {k: v for k, v in decisions.items() if k in self.by_path and v in CHOICES}
        self.history = [(p, prev) for p, prev in history if p in self.decisions]

    # -- changes ------------------------------------------------------------------------------------------------
    def decide(self, path: str, label: str) -> None:
        if label not in CHOICES:
            raise LabelError(f"label {label!r} is not one of {', '.join(CHOICES)}")
        with self._lock:
            if path not in self.by_path:
                raise LabelError(f"{path!r} is not a crop of {self.root}")
            self.history.append((path, self.decisions.get(path)))
            self.decisions[path] = label
            self._save()

    def undo(self) -> str | None:
        """Take back the last decision (a relabelled crop gets its earlier label back); the crop it was about, or
        None when there is nothing to undo."""
        with self._lock:
            if not self.history:
                return None
            path, previous = self.history.pop()
            if previous is None:
                self.decisions.pop(path, None)
            else:
                self.decisions[path] = previous
            self._save()
            return path

    def _save(self) -> None:
        _atomic_write(self.root / STATE_FILE, json.dumps({"decisions": self.decisions, "history": self.history},
                                                         indent=0))
        out = io.StringIO()
        w = csv.writer(out, lineterminator="\n")
        w.writerow(["image_path", "x1", "y1", "x2", "y2", "label"])
        for it in self.items:
            label = self.decisions.get(it["path"])
            if label in LABELS:
                w.writerow([it["path"], *(f"{v:.2f}" for v in self.box(it)), label])
        _atomic_write(self.root / LABELS_FILE, out.getvalue())

    def box(self, item: dict[str, Any]) -> tuple[float, float, float, float]:
        """The face box inside a crop that, grown by `margin` and squared, is the crop again."""
        h, w = item["size"]
        side = min(h, w) / (1.0 + 2.0 * self.margin)
        cx, cy = w / 2.0, h / 2.0
        return cx - side / 2, cy - side / 2, cx + side / 2, cy + side / 2

    # -- what the page reads ------------------------------------------------------------------------------------
    def state(self) -> dict[str, Any]:
        with self._lock:
            counts = {k: 0 for k in CHOICES}
            for v in self.decisions.values():
                counts[v] += 1
            return {"items": [{"path": it["path"], "p": None if it["p"] != it["p"] else round(it["p"], 3),
                               "guess": it["guess"], "label": self.decisions.get(it["path"])}
                              for it in self.items],
                    "done": len(self.decisions), "total": len(self.items), "counts": counts,
                    "last": self.history[-1][0] if self.history else None}


PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Label door crops</title>
<style>
body { font: 15px system-ui, sans-serif; margin: 0; background: #f4f4f4; color: #222; }
header { position: sticky; top: 0; background: #fff; padding: 10px 16px; border-bottom: 1px solid #ccc; z-index: 1; }
#progress { font-weight: 600; }
kbd { border: 1px solid #999; border-radius: 3px; padding: 0 4px; background: #fafafa; }
#grid { display: grid; grid-template-columns: repeat(auto-fill, 150px); gap: 10px; padding: 16px; }
.tile { background: #fff; border: 3px solid #fff; border-radius: 6px; padding: 4px; text-align: center;
        font-size: 12px; cursor: pointer; }
.tile img { width: 128px; height: 128px; display: block; margin: 0 auto 4px; image-rendering: auto; }
.tile.current { border-color: #1565c0; box-shadow: 0 0 0 3px #90caf9; }
.label { display: inline-block; padding: 1px 6px; border-radius: 3px; color: #fff; }
.with_mask { background: #2e7d32; } .without_mask { background: #c62828; }
.incorrect_mask { background: #ef6c00; } .skip { background: #757575; }
</style></head>
<body>
<header>
  <span id="progress">loading</span> &nbsp;
  <kbd>1</kbd> with mask &nbsp; <kbd>2</kbd> without mask &nbsp; <kbd>3</kbd> mask worn wrong (under nose or chin)
  &nbsp; <kbd>0</kbd> skip &nbsp; <kbd>u</kbd> undo &nbsp; (click a crop to pick it)
  <span id="message"></span>
</header>
<div id="grid"></div>
<script>
const KEYS = {"1": "with_mask", "2": "without_mask", "3": "incorrect_mask", "0": "skip"};
let state = null, current = 0;
async function call(url, body) {
  const r = await fetch(url, body === undefined ? {} : {method: "POST", headers: {"Content-Type": "application/json"},
                                                         body: JSON.stringify(body)});
  if (!r.ok) { document.getElementById("message").textContent = "not saved: " + await r.text(); return null; }
  return r.json();
}
function firstOpen(from) {
  const items = state.items;
  for (let k = 0; k < items.length; k++) { const i = (from + k) % items.length; if (!items[i].label) return i; }
  return -1;
}
function render() {
  const c = state.counts;
  document.getElementById("progress").textContent =
    `${state.done} / ${state.total} done (${c.with_mask} with, ${c.without_mask} without, ` +
    `${c.incorrect_mask} incorrect, ${c.skip} skipped)` + (state.done === state.total ? " - all done" : "");
  const grid = document.getElementById("grid");
  if (grid.children.length !== state.items.length) {
    grid.innerHTML = "";
    state.items.forEach((it, i) => {
      const d = document.createElement("div");
      d.className = "tile"; d.dataset.index = i;
      d.innerHTML = `<img alt="" loading="lazy" src="/crop?path=${encodeURIComponent(it.path)}">` +
        `<div>guess ${it.p === null ? "?" : it.p.toFixed(2)}</div><div class="l"></div>`;
      d.onclick = () => { current = i; render(); };
      grid.appendChild(d);
    });
  }
  state.items.forEach((it, i) => {
    const d = grid.children[i];
    d.classList.toggle("current", i === current);
    d.querySelector(".l").innerHTML = it.label ? `<span class="label ${it.label}">${it.label}</span>` : "&nbsp;";
  });
  const cur = grid.children[current];
  if (cur) cur.scrollIntoView({block: "nearest"});
}
document.addEventListener("keydown", async (e) => {
  if (!state || e.ctrlKey || e.metaKey || e.altKey) return;
  if (e.key in KEYS && current >= 0) {
    const s = await call("/api/label", {path: state.items[current].path, label: KEYS[e.key]});
    if (!s) return;
    state = s;
    const next = firstOpen(current + 1);
    current = next < 0 ? current : next;
  } else if (e.key === "u") {
    const s = await call("/api/undo", {});
    if (!s) return;
    state = s;
    if (s.undone !== null) current = state.items.findIndex(it => it.path === s.undone);
  } else { return; }
  document.getElementById("message").textContent = "";
  render();
});
(async () => { state = await call("/api/state"); current = Math.max(0, firstOpen(0)); render(); })();
</script>
</body></html>
"""


def make_server(session: Session, port: int = 0) -> ThreadingHTTPServer:
    """The page's server on 127.0.0.1 (port 0: any free one); call serve_forever() to run it."""

    class Handler(BaseHTTPRequestHandler):
        server_version = "mask-train-label"

        def log_message(self, fmt: str, *args: Any) -> None:
            log.debug("label page: " + fmt, *args)

        def _host_ok(self) -> bool:
            # Only this machine's own names: a web page elsewhere that rebinds its name to 127.0.0.1 gets nothing.
            port = self.server.server_address[1]  # type: ignore[index]  # an IPv4 (host, port) address
            return self.headers.get("Host", "") in (f"127.0.0.1:{port}", f"localhost:{port}")

        def _send(self, status: int, body: bytes, kind: str) -> None:
            self.send_response(status)
            self.send_header("Content-Type", kind)
            self.send_header("Content-Length", str(len(body)))
            self.send_header("Cache-Control", "no-store")
            self.end_headers()
            self.wfile.write(body)

        def _json(self, value: Any) -> None:
            self._send(HTTPStatus.OK, json.dumps(value).encode(), "application/json")

        def do_GET(self) -> None:  # noqa: N802 (http.server's name)
            if not self._host_ok():
                return self._send(HTTPStatus.FORBIDDEN, b"wrong host", "text/plain")
            url = urlparse(self.path)
            if url.path == "/":
                return self._send(HTTPStatus.OK, PAGE.encode(), "text/html; charset=utf-8")
            if url.path == "/api/state":
                return self._json(session.state())
            if url.path == "/crop":
                path = parse_qs(url.query).get("path", [""])[0]
                if path not in session.by_path:  # only listed crops: no path reaches outside DIR
                    return self._send(HTTPStatus.NOT_FOUND, b"no such crop", "text/plain")
                return self._send(HTTPStatus.OK, (session.root / path).read_bytes(), "image/jpeg")
            return self._send(HTTPStatus.NOT_FOUND, b"not found", "text/plain")

        def do_POST(self) -> None:  # noqa: N802
            port = self.server.server_address[1]  # type: ignore[index]  # an IPv4 (host, port) address
            origin = self.headers.get("Origin")
            if not self._host_ok() or (origin and origin not in (f"http://127.0.0.1:{port}",
                                                                 f"http://localhost:{port}")):
                return self._send(HTTPStatus.FORBIDDEN, b"wrong host or origin", "text/plain")
            try:
                length = int(self.headers.get("Content-Length", "0"))
                body = json.loads(self.rfile.read(min(length, 65536)) or b"{}")
                if self.path == "/api/label":
                    session.decide(str(body.get("path")), str(body.get("label")))
                    return self._json(session.state())
                if self.path == "/api/undo":
                    undone = session.undo()
                    return self._json({**session.state(), "undone": undone})
            except (LabelError, ValueError, AttributeError) as exc:
                return self._send(HTTPStatus.BAD_REQUEST, str(exc).encode(), "text/plain")
            except OSError as exc:  # a full disk: the page says the key was not saved
                return self._send(HTTPStatus.INTERNAL_SERVER_ERROR, f"cannot save: {exc}".encode(), "text/plain")
            return self._send(HTTPStatus.NOT_FOUND, b"not found", "text/plain")

    server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
    server.daemon_threads = True
    return server


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("dir", type=Path, help="the folder `mask-deploy pull --to` filled (or one door's folder in it)")
    parser.add_argument("--port", type=int, default=8765, help="port on 127.0.0.1 (default 8765; 0: any free one)")
    parser.add_argument("--margin", type=float, default=Crop().margin,
                        help="the crop margin of the model that collected the crops (its card's crop.margin; "
                             f"default {Crop().margin})")
    parser.add_argument("--no-browser", dest="browser", action="store_false", help="do not open a browser")


def run(args: argparse.Namespace) -> int:
    """Serve the page until Ctrl-C. Raises LabelError (a ValueError) for a folder without crops."""
    if not 0 <= args.margin < 1:
        raise LabelError(f"--margin {args.margin} is not between 0 and 1")
    session = Session(args.dir, args.margin)
    server = make_server(session, args.port)
    url = f"http://127.0.0.1:{server.server_address[1]}/"
    print(f"labelling {session.state()['total']} crops of {session.root} at {url} (Ctrl-C to stop; every key is "
          f"saved to {session.root / LABELS_FILE})", flush=True)
    if args.browser:
        webbrowser.open(url)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
    s = session.state()
    print(f"{s['done']} of {s['total']} crops decided; labels in {session.root / LABELS_FILE}")
    return 0
