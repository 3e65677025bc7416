"""The few shell steps mask-deploy runs on a Pi over SSH, as POSIX sh with fixed arguments.

The state folder on the Pi is $MASK_APPLIANCE_STATE, else /var/lib/mask-appliance (the service's StateDirectory):
models in models/, status in status.json, events in events.db, collected face crops in collect/ (reporting/collect.py:
one JPEG per crop and a line each in index.jsonl).

The models folder holds the live pair (mask_classifier.tflite and .json), the rollback target
(mask_classifier.previous.*) and, only while a push waits for the service, the pair it replaced (.pending.*). Every
step that changes it runs while mask-deploy holds `flock` on the folder (`lock`), from the swap until the service
has confirmed the new model or the old one is back: two pushes to one Pi take turns instead of swapping each
other's models. The rollback target changes only when a push is confirmed, so a failed push or a re-push of the
live model leaves it as it was. deploy/ansible/site.yml runs the same steps; keep the two in step.

A step whose output mask-deploy reads prints MARK first: what a login shell's start-up files print comes before
it and is ignored.

Longer than this project's 200-line guide on purpose: every step that runs on the Pi (shell, and Python for the Pi's
own python3) is here, as strings, so that what runs there can be read in one place.
"""

from __future__ import annotations

import shlex

from appliance.vocab import Kind

STATE = 'S="${MASK_APPLIANCE_STATE:-/var/lib/mask-appliance}"; M="$S/models"; '
MODEL, CARD = "mask_classifier.tflite", "mask_classifier.json"
PREV_MODEL, PREV_CARD = "mask_classifier.previous.tflite", "mask_classifier.previous.json"
PENDING_MODEL, PENDING_CARD = ".pending.tflite", ".pending.json"
MARK = "@@mask-deploy-output@@"
LOCKED = "locked"
LOCK_BUSY = 75  # flock's exit code when another push or rollback still holds the folder after the wait
_MARK = f"printf '%s\\n' {MARK}; "


def upload(name: str) -> str:
    """stdin -> $M/name (a temporary name: the service never looks at it)."""
    return STATE + f'mkdir -p "$M" && umask 022 && cat > "$M/{name}"'


def _in_models(names: tuple[str, ...]) -> str:
    return " ".join(f'"$M/{n}"' for n in names)


def sha256(*names: str) -> str:
    return STATE + _MARK + f"sha256sum {_in_models(names)}"


def lock(wait: float) -> str:
    """Hold an exclusive flock on the models folder until stdin closes (the client ends the step or dies: ssh
    closes the channel either way). Prints MARK and LOCKED once held; exits LOCK_BUSY after `wait` seconds."""
    held = f"printf '%s\\n' {MARK} {LOCKED}; exec cat > /dev/null"
    return STATE + f'flock -x -E {LOCK_BUSY} -w {wait:g} "$M" -c {shlex.quote(held)}'


def swap(tmp_model: str, tmp_card: str) -> str:
    """Under the lock: put the uploaded pair live, card first (each rename is atomic, so the live model is always
    whole, old or new), keeping the pair it replaces as .pending.* until `commit` or `restore`. A pending pair left
    by a push whose client died is kept instead: it is the last model the service confirmed. The live model itself
    re-pushed replaces only the card, and nothing becomes pending. Prints `swapped` or `same`. Copies, not
    hard links: the installed model belongs to the service user, and Debian's protected_hardlinks forbids the
    deploy user to link it."""
    return STATE + _MARK + (
        f'cd "$M" && rm -f .pending-new.json .pending-new.tflite && '
        f"if [ -f {MODEL} ] && cmp -s {tmp_model} {MODEL}; then "
        f"mv -f {tmp_card} {CARD} && rm -f {tmp_model} && echo same; exit; fi && "
        f"if [ -f {PENDING_MODEL} ] && [ -f {PENDING_CARD} ]; then :; "
        f"elif [ -f {MODEL} ]; then cp {CARD} .pending-new.json && cp {MODEL} .pending-new.tflite && "
        f"mv -f .pending-new.json {PENDING_CARD} && mv -f .pending-new.tflite {PENDING_MODEL}; fi && "
        f"mv -f {tmp_card} {CARD} && mv -f {tmp_model} {MODEL} && echo swapped"
    )


def commit() -> str:
    """Under the lock, once the service runs the new model: the pair it replaced becomes the rollback target."""
    return STATE + (
        f'cd "$M" && if [ -f {PENDING_MODEL} ]; then mv -f {PENDING_CARD} {PREV_CARD} && '
        f"mv -f {PENDING_MODEL} {PREV_MODEL}; fi"
    )


def restore() -> str:
    """Under the lock, when the service did not take the new model up: the pair it replaced goes back live; the
    rollback target is untouched."""
    return STATE + (
        f'cd "$M" && [ -f {PENDING_MODEL} ] && [ -f {PENDING_CARD} ] || '
        f'{{ echo "no model was live in $M before this push" >&2; exit 3; }}; '
        f"mv -f {PENDING_CARD} {CARD} && mv -f {PENDING_MODEL} {MODEL}"
    )


def rollback() -> str:
    """Under the lock: a pair left pending by a push whose client died goes back first (it was live before that
    push); otherwise the rollback target, by copy then rename, so that it stays for another rollback."""
    return STATE + (
        f'cd "$M" && if [ -f {PENDING_MODEL} ] && [ -f {PENDING_CARD} ]; then '
        f"mv -f {PENDING_CARD} {CARD} && mv -f {PENDING_MODEL} {MODEL}; exit; fi; "
        f'[ -f {PREV_MODEL} ] && [ -f {PREV_CARD} ] || {{ echo "no previous model in $M" >&2; exit 3; }}; '
        f"cp -p {PREV_CARD} .rollback.json && cp -p {PREV_MODEL} .rollback.tflite && "
        f"mv -f .rollback.json {CARD} && mv -f .rollback.tflite {MODEL}"
    )


def remove(*names: str) -> str:
    return STATE + f"rm -f {_in_models(names)}"


CARD_IN_USE = STATE + _MARK + f'cat "$M/{CARD}"'

# Everything `mask-deploy status` needs, in one JSON object, read with the Pi's own python3 (json and sqlite3 are in
# its standard library): status.json and its age, whether its pid is alive, systemd's verdict on the unit where
# systemd runs, and the last decisions. The database is opened read-only, and immutable where a read-only open
# fails (a stopped service leaves no -shm file, and the deploy user may not create one in the state folder).
_STATUS_PY = r"""
import json, os, sqlite3, subprocess, sys, time
state, unit, mark, decision = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4]
out = {}
path = os.path.join(state, "status.json")
try:
    with open(path, "rb") as f:
        out["age"] = time.time() - os.fstat(f.fileno()).st_mtime
        out["status"] = json.loads(f.read().decode("utf-8", "replace"))
except (OSError, ValueError) as exc:
    out["error"] = "status.json: " + str(exc)
pid = out.get("status", {}).get("pid") if isinstance(out.get("status"), dict) else None
if isinstance(pid, int) and pid > 0:
    out["pid_alive"] = os.path.exists("/proc/%d" % pid)
if unit and os.path.isdir("/run/systemd/system"):
    try:
        r = subprocess.run(["systemctl", "is-active", unit], capture_output=True, text=True, timeout=10)
        out["systemd"] = r.stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError) as exc:
        out["systemd_error"] = str(exc)
db = os.path.join(state, "events.db")
query = "SELECT time, state, detail FROM events WHERE kind = ? ORDER BY id DESC LIMIT 5"
if os.path.exists(db):
    for mode in ("mode=ro", "mode=ro&immutable=1"):
        try:
            con = sqlite3.connect("file:" + db + "?" + mode, uri=True, timeout=2)
            try:
                out["decisions"] = con.execute(query, (decision,)).fetchall()
            finally:
                con.close()
            out.pop("events_error", None)
            break
        except sqlite3.Error as exc:
            out["events_error"] = str(exc)
print(mark)
print(json.dumps(out))
"""
STATUS = STATE + (
    f'python3 -c {shlex.quote(_STATUS_PY)} "$S" "${{MASK_APPLIANCE_UNIT-mask-appliance.service}}" {MARK} '
    f'{Kind.DECISION}'
)


# `mask-deploy pull`: the Pi's own python3 lists, sends and deletes collected crops. Only names a crop can have
# (reporting.collect.NAME) are ever opened or deleted, whatever is asked; a crop is deleted only when its sha256 on
# the Pi is still the one the laptop verified its copy against.
_COLLECT_PY = r"""
import hashlib, json, os, re, sys
folder, mark, command = sys.argv[1], sys.argv[2], sys.argv[3]
NAME = re.compile(r"[0-9]{8}T[0-9]{6}-[0-9]{3}-[0-9a-f]{6}\.jpg")
out = sys.stdout.buffer
def digest(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 16), b""):
            h.update(block)
    return h.hexdigest()
out.write(mark.encode() + b"\n")
if command == "list":
    lines = {}
    try:
        with open(os.path.join(folder, "index.jsonl"), encoding="utf-8", errors="replace") as f:
            for line in f:
                try:
                    d = json.loads(line)
                except ValueError:
                    continue
                if isinstance(d, dict) and isinstance(d.get("file"), str):
                    lines[d["file"]] = d
    except FileNotFoundError:
        pass
    for name in sorted(lines):
        path = os.path.join(folder, name)
        if NAME.fullmatch(name) and os.path.isfile(path):
            try:
                sha = digest(path)
            except OSError as exc:  # unreadable for this user: said, and the others still listed
                sys.stderr.write("%s: %s\n" % (name, exc))
                continue
            out.write(json.dumps({"file": name, "sha256": sha, "size": os.path.getsize(path),
                                  "info": lines[name]}).encode() + b"\n")
elif command == "send":
    for name in sys.stdin.read().split():
        path = os.path.join(folder, name)
        try:
            if not NAME.fullmatch(name):
                raise FileNotFoundError(name)
            with open(path, "rb") as f:
                data = f.read()
        except FileNotFoundError:
            out.write(json.dumps({"file": name, "size": -1}).encode() + b"\n")
            continue
        out.write(json.dumps({"file": name, "size": len(data)}).encode() + b"\n")
        out.write(data)
elif command == "delete":
    deleted, changed = 0, []
    for line in sys.stdin.read().splitlines():
        name, _, want = line.partition(" ")
        path = os.path.join(folder, name)
        if not NAME.fullmatch(name) or not os.path.isfile(path):
            continue
        if digest(path) != want:
            changed.append(name)
            continue
        os.unlink(path)
        deleted += 1
    out.write(json.dumps({"deleted": deleted, "changed": changed}).encode() + b"\n")
out.flush()
"""


def collect(command: str) -> str:
    """`list` (a JSON line per crop: file, sha256, size, its index line), `send` (names on stdin -> for each a JSON
    header line with its size, -1 when gone, then its bytes) or `delete` ("name sha256" lines on stdin)."""
    return STATE + f'python3 -c {shlex.quote(_COLLECT_PY)} "$S/collect" {MARK} {shlex.quote(command)}'
