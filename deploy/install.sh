#!/usr/bin/env bash
# Install or update mask-appliance on Raspberry Pi OS Bookworm, from this checkout. Idempotent: running it again
# changes nothing unless the code, the unit or a package is missing or different.
#
#   sudo deploy/install.sh [--deploy-user USER]   install or update; USER (default: $SUDO_USER) may push models
#   sudo deploy/install.sh --uninstall [--purge]   remove the service; --purge also removes config, models, events
#
# MASK_INSTALL_ROOT=/some/dir runs every file step under that folder instead of / (the tests use it, with stub
# system commands on PATH).
set -euo pipefail

ROOT=${MASK_INSTALL_ROOT:-}
SRC=$(cd "$(dirname "$0")/.." && pwd)
APP=$ROOT/opt/mask-appliance
ETC=$ROOT/etc/mask-appliance
STATE=$ROOT/var/lib/mask-appliance
CACHE=$ROOT/var/cache/mask-appliance
UNIT=$ROOT/etc/systemd/system/mask-appliance.service
SERVICE_USER=mask-appliance
# python3-picamera2/libcamera: the camera (Raspberry Pi archive only); python3-systemd: sd_notify; python3-lgpio:
# gpiozero's pins on a Pi 4 and 5; python3-numpy: the 1.24 that Picamera2 is built against; python3-venv: the venv.
APT_PACKAGES=(python3-venv python3-numpy python3-picamera2 python3-libcamera python3-systemd python3-lgpio)

changed=0
say() { echo "install: $*"; }

install_packages() {
    local missing=()
    for p in "${APT_PACKAGES[@]}"; do
        dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
    done
    if ((${#missing[@]})); then
        say "apt packages: ${missing[*]}"
        apt-get update -q
        DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${missing[@]}"
        changed=1
    fi
}

create_user() {
    if ! getent passwd "$SERVICE_USER" >/dev/null; then
        say "user $SERVICE_USER"
        useradd --system --user-group --home-dir /var/lib/mask-appliance --shell /usr/sbin/nologin "$SERVICE_USER"
        changed=1
    fi
    local groups=(video gpio)
    [ -n "$DEPLOY_USER" ] && add_to_group "$DEPLOY_USER" "$SERVICE_USER"
    for g in "${groups[@]}"; do
        getent group "$g" >/dev/null && add_to_group "$SERVICE_USER" "$g"
    done
    return 0
}

add_to_group() {  # user group
    if ! id -nG "$1" | tr ' ' '\n' | grep -qx "$2"; then
        say "adding $1 to group $2"
        usermod -aG "$2" "$1"
        changed=1
    fi
}

source_stamp() {  # a hash of everything the install takes from this checkout
    (cd "$1" && find appliance models deploy systemd pyproject.toml README.md -type f ! -path '*/__pycache__/*' \
        -print0 | sort -z | xargs -0 sha256sum | sha256sum | cut -d' ' -f1)
}

install_code() {
    local stamp
    stamp=$(source_stamp "$SRC")
    if [ ! -f "$APP/src/.stamp" ] || [ "$(cat "$APP/src/.stamp")" != "$stamp" ]; then
        say "code into $APP/src"
        rm -rf "$APP/src.new"
        mkdir -p "$APP/src.new"
        (cd "$SRC" && tar --exclude=__pycache__ -cf - appliance models deploy systemd pyproject.toml README.md) |
            tar -C "$APP/src.new" -xf -
        echo "$stamp" > "$APP/src.new/.stamp"
        rm -rf "$APP/src"
        mv "$APP/src.new" "$APP/src"
        code_changed=1
        changed=1
    fi
    if [ ! -x "$APP/venv/bin/python" ]; then
        say "virtual environment $APP/venv (with the system's Picamera2 and numpy)"
        python3 -m venv --system-site-packages "$APP/venv"
        code_changed=1
        changed=1
    fi
    if ((code_changed)); then
        say "pip install (constraints: deploy/pi-constraints.txt)"
        # Editable, so that the installed package finds models/assets.toml beside it in $APP/src.
        "$APP/venv/bin/pip" install -q -c "$APP/src/deploy/pi-constraints.txt" -e "$APP/src[pi]"
    fi
}

install_files() {
    mkdir -p "$ETC" "$STATE/models" "$CACHE"
    if [ ! -f "$ETC/config.toml" ]; then
        say "config $ETC/config.toml"
        install -m 0644 "$SRC/deploy/config.pi.toml" "$ETC/config.toml"
        changed=1
    fi
    if [ ! -f "$STATE/models/mask_classifier.tflite" ]; then
        say "model into $STATE/models"
        install -m 0644 "$SRC/models/mask_classifier.json" "$STATE/models/mask_classifier.json"
        install -m 0644 "$SRC/models/mask_classifier.tflite" "$STATE/models/mask_classifier.tflite"
        changed=1
    fi
    # The service owns its state; the group (and so the deploy user) may put models in, set-gid keeps the group.
    chown -R "$SERVICE_USER:$SERVICE_USER" "$STATE" "$CACHE"
    chmod 2775 "$STATE/models"
    chmod 0750 "$STATE"
    # Fetch the face detector once now (from $MASK_APPLIANCE_ASSETS or its upstream URL, sha256-checked).
    MASK_APPLIANCE_CACHE=$CACHE "$APP/venv/bin/python" -c "from appliance.assets import resolve; resolve('yunet')"
    chown -R "$SERVICE_USER:$SERVICE_USER" "$CACHE"
}

install_unit() {
    if ! cmp -s "$SRC/systemd/mask-appliance.service" "$UNIT"; then
        say "unit $UNIT"
        install -D -m 0644 "$SRC/systemd/mask-appliance.service" "$UNIT"
        systemctl daemon-reload
        code_changed=1
        changed=1
    fi
    if ! systemctl is-enabled --quiet mask-appliance; then
        systemctl enable mask-appliance
        changed=1
    fi
    if ! systemctl is-active --quiet mask-appliance; then
        systemctl start mask-appliance
        changed=1
    elif ((code_changed)); then
        systemctl restart mask-appliance
    fi
}

uninstall() {
    if [ -f "$UNIT" ]; then
        systemctl disable --now mask-appliance || true
        rm -f "$UNIT"
        systemctl daemon-reload
    fi
    rm -rf "$APP"
    if ((PURGE)); then
        rm -rf "$ETC" "$STATE" "$CACHE"
        getent passwd "$SERVICE_USER" >/dev/null && userdel "$SERVICE_USER"
        say "removed the service, its code, config, models and events"
    else
        say "removed the service and its code; kept $ETC and $STATE (--purge removes them)"
    fi
}

DEPLOY_USER=${SUDO_USER:-}
UNINSTALL=0
PURGE=0
code_changed=0
while (($#)); do
    case "$1" in
        --deploy-user) DEPLOY_USER=$2; shift 2 ;;
        --uninstall) UNINSTALL=1; shift ;;
        --purge) PURGE=1; shift ;;
        *) echo "install: unknown option $1" >&2; exit 2 ;;
    esac
done
if [ -z "$ROOT" ] && [ "$(id -u)" != 0 ]; then
    echo "install: run as root (sudo $0)" >&2
    exit 1
fi
[ "$DEPLOY_USER" = root ] && DEPLOY_USER=
if ((UNINSTALL)); then
    uninstall
    exit 0
fi
install_packages
create_user
install_code
install_files
install_unit
if ((changed)); then say "done: mask-appliance is installed and running"; else say "nothing to change"; fi
