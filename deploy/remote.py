"""The few shell steps mask-deploy runs on a Pi over SSH, as POSIX sh with fixed arguments.

The state folder on the Pi is $MASK_APPLIANCE_STATE, else /var/lib/mask-appliance (the service's StateDirectory):
models in models/, status in status.json, events in events.db.
"""

from __future__ import annotations

STATE = 'S="${MASK_APPLIANCE_STATE:-/var/lib/mask-appliance}"; M="$S/models"; '
MODEL, CARD = "mask_classifier.tflite", "mask_classifier.json"
PREV_MODEL, PREV_CARD = "mask_classifier.previous.tflite", "mask_classifier.previous.json"


def upload(name: str) -> str:
    """stdin -> $M/name (a temporary name: the service never looks at it)."""
    return STATE + f'mkdir -p "$M" && umask 022 && cat > "$M/{name}"'


def _in_models(names: tuple[str, ...]) -> str:
    return " ".join(f'"$M/{n}"' for n in names)


def sha256(*names: str) -> str:
    return STATE + f"sha256sum {_in_models(names)}"


def swap(tmp_model: str, tmp_card: str) -> str:
    """Keep the current model as previous, then rename the new card and model into place, card first: each rename
    is atomic, so the live model is always whole, old or new. Previous is a copy, not a hard link: the installed
    model belongs to the service user, and Debian's protected_hardlinks forbids the deploy user to link it."""
    return STATE + (
        f'cd "$M" && if [ -f {MODEL} ]; then cp {CARD} .previous.json && cp {MODEL} .previous.tflite && '
        f"mv -f .previous.json {PREV_CARD} && mv -f .previous.tflite {PREV_MODEL}; fi && "
        f"mv -f {tmp_card} {CARD} && mv -f {tmp_model} {MODEL}"
    )


def rollback() -> str:
    """Put previous back in place, by copy then rename, so that previous stays for another rollback."""
    return STATE + (
        f'cd "$M" && [ -f {PREV_MODEL} ] && [ -f {PREV_CARD} ] || {{ echo "no previous model in $M" >&2; exit 3; }}; '
        f"cp -p {PREV_CARD} .rollback.json && cp -p {PREV_MODEL} .rollback.tflite && "
        f"mv -f .rollback.json {CARD} && mv -f .rollback.tflite {MODEL}"
    )


def remove(*names: str) -> str:
    return STATE + f"rm -f {_in_models(names)}"


STATUS = STATE + 'cat "$S/status.json"'
CARD_IN_USE = STATE + f'cat "$M/{CARD}"'

# The last decisions, read with the Pi's own python3 (sqlite3 is in its standard library).
LAST_DECISIONS = STATE + (
    "python3 -c 'import json, sqlite3, sys; db = sqlite3.connect(\"file:\" + sys.argv[1] + \"?mode=ro\", uri=True); "
    "print(json.dumps(db.execute(\"SELECT time, state, detail FROM events WHERE kind = ? ORDER BY id DESC LIMIT 5\", "
    "(\"decision\",)).fetchall()))' \"$S/events.db\""
)
