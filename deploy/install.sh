#!/usr/bin/env bash
# Install or update mask-appliance on Raspberry Pi OS (64-bit) Bookworm or Trixie, from this checkout. Idempotent:
# running it again changes nothing unless the code, the unit or a package is missing or different.
#
#   sudo deploy/install.sh [--deploy-user USER]   install or update; USER (default: $SUDO_USER) may push models
#   sudo deploy/install.sh --uninstall [--purge]   remove the service; --purge also removes config, models, events
#
# MASK_INSTALL_ROOT=/some/dir runs every file step under that folder instead of / and reads its etc/os-release (the
# tests use it, with stub system commands on PATH). MASK_INSTALL_ANY_ARCH=1 installs on a machine that is not arm64
# (a test machine; nothing else is supported).
set -euo pipefail
umask 022  # what this writes under /opt is root's alone, whatever the caller's umask

ROOT=${MASK_INSTALL_ROOT:-}
SRC=$(cd "$(dirname "$0")/.." && pwd)
APP=$ROOT/opt/mask-appliance
ETC=$ROOT/etc/mask-appliance
STATE=$ROOT/var/lib/mask-appliance
CACHE=$ROOT/var/cache/mask-appliance
UNIT=$ROOT/etc/systemd/system/mask-appliance.service
SERVICE_USER=mask-appliance
SUPPORTED="Raspberry Pi OS Bookworm or Trixie, 64-bit (arm64), on a Raspberry Pi 4 or 5"
# python3-picamera2/libcamera: the camera (Raspberry Pi archive only); python3-systemd: sd_notify; python3-lgpio:
# gpiozero's pins on a Pi 4 and 5; python3-numpy: the numpy that Picamera2 is built against (1.24 on Bookworm, 2.2
# on Trixie); python3-venv: the venv. The names are the same on both releases.
APT_PACKAGES=(python3-venv python3-numpy python3-picamera2 python3-libcamera python3-systemd python3-lgpio)

changed=0
say() { echo "install: $*"; }
refuse() { echo "install: $*" >&2; exit 1; }

detect_release() {  # sets RELEASE to a codename that has deploy/constraints/RELEASE.txt, or refuses
    local os_release=$ROOT/etc/os-release id codename pretty arch
    [ -r "$os_release" ] || refuse "$os_release not found; supported: $SUPPORTED"
    read -r id codename pretty < <(
        # shellcheck disable=SC1090
        . "$os_release"; echo "${ID:-?} ${VERSION_CODENAME:-?} ${PRETTY_NAME:-$ID}")
    arch=$(dpkg --print-architecture)
    case "$arch" in
        arm64) ;;
        armhf|armel) refuse "$pretty is a 32-bit system ($arch), and LiteRT has no 32-bit wheel; supported: $SUPPORTED" ;;
        *) [ "${MASK_INSTALL_ANY_ARCH:-0}" = 1 ] ||
            refuse "this machine is $arch, not arm64 (MASK_INSTALL_ANY_ARCH=1 installs anyway); supported: $SUPPORTED" ;;
    esac
    if [[ $id != debian && $id != raspbian ]] || [ ! -f "$SRC/deploy/constraints/$codename.txt" ]; then
        refuse "$pretty ($id $codename) is not supported; supported: $SUPPORTED"
    fi
    RELEASE=$codename
}

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

# What the wheel is built from (pyproject.toml's packages; appliance/models, a link to models/, is its package data).
PACKAGE_PARTS=(appliance training deploy models pyproject.toml README.md)

source_stamp() {  # a hash of everything the install takes from this checkout
    (cd "$1" && find "${PACKAGE_PARTS[@]}" systemd -type f ! -path '*/__pycache__/*' -print0 | sort -z |
        xargs -0 sha256sum | sha256sum | cut -d' ' -f1)
}

venv_python() {  # the venv's python on the installed package: -I keeps a checkout in the current folder off sys.path
    "$APP/venv/bin/python" -I "$@"
}

installed_models() {  # the folder of the shipped model and asset manifest inside the installed package
    venv_python -c 'from appliance import MODELS_DIR; print(MODELS_DIR)'
}

install_code() {
    local stamp numpy models
    stamp=$(source_stamp "$SRC")
    [ "$(cat "$APP/.stamp" 2>/dev/null)" = "$stamp" ] || code_changed=1
    # A venv belongs to one release's Python: a Pi moved to another release gets a new one.
    if [ ! -x "$APP/venv/bin/python" ] || [ "$(cat "$APP/venv/.release" 2>/dev/null)" != "$RELEASE" ]; then
        say "virtual environment $APP/venv (with the system's Picamera2 and numpy)"
        rm -rf "$APP/venv"
        mkdir -p "$APP"
        python3 -m venv --system-site-packages "$APP/venv"
        echo "$RELEASE" > "$APP/venv/.release"
        code_changed=1
    fi
    ((code_changed)) || return 0
    # pip builds the wheel from a fresh copy that is root's and read-only to everyone else, whoever owns the
    # checkout: the service runs this code with the gpio group, so a user who could edit it could drive the relay.
    # Fresh, because pip builds in the tree it is given and a build/ left from an earlier run could carry a deleted
    # module into the next wheel.
    STAGE=$(mktemp -d "$APP/build.XXXXXX")
    (cd "$SRC" && tar --exclude=__pycache__ -cf - "${PACKAGE_PARTS[@]}") |
        tar -C "$STAGE" --no-same-owner --no-same-permissions -xf -
    chmod -R go-w "$STAGE"
    numpy=$(system_numpy "$APP/numpy-from-apt.txt")
    say "pip install into $APP/venv (constraints: deploy/constraints/$RELEASE.txt, numpy $numpy from apt kept)"
    # Not editable: the venv holds the package, its shipped model and asset manifest (package data) included.
    "$APP/venv/bin/pip" install -q -c "$STAGE/deploy/constraints/$RELEASE.txt" -c "$APP/numpy-from-apt.txt" \
        "${STAGE}[pi]"
    keeps_system_numpy
    models=$(installed_models)
    if [ ! -f "$models/assets.toml" ] || [ ! -f "$models/mask_classifier.tflite" ]; then
        refuse "the installed package has no shipped model and asset manifest in $models (built without models/?)"
    fi
    # $APP/src: the editable checkout that installs before the wheel kept.
    rm -rf "$STAGE" "$APP/src"
    STAGE=
    echo "$stamp" > "$APP/.stamp"  # last: a failed pip install is retried on the next run
    changed=1
}

system_numpy() {  # pin: write "numpy==VERSION" of apt's numpy to the file, print VERSION
    local version file
    read -r version file < <(python3 -c 'import numpy; print(numpy.__version__, numpy.__file__)') ||
        refuse "python3 cannot import numpy (apt package python3-numpy)"
    [[ $file == /usr/lib/python3/dist-packages/* ]] ||
        refuse "python3's numpy comes from $file, not from apt (python3-numpy): remove it first (sudo pip uninstall numpy)"
    echo "numpy==$version" > "$1"
    echo "$version"
}

keeps_system_numpy() {  # Picamera2 and simplejpeg break against any numpy but apt's: the venv must not hide it
    local file
    file=$(venv_python -c 'import numpy; print(numpy.__file__)')
    [[ $file == /usr/lib/python3/dist-packages/* ]] ||
        refuse "pip put a numpy of its own in the venv ($file), which would shadow apt's that Picamera2 needs"
}

install_files() {
    mkdir -p "$ETC" "$STATE/models" "$CACHE"
    if [ ! -f "$ETC/config.toml" ]; then
        say "config $ETC/config.toml"
        install -m 0640 "$SRC/deploy/config.pi.toml" "$ETC/config.toml"
        changed=1
    fi
    # It may hold an RTSP password: root writes it, the service reads it, nobody else does.
    chown "root:$SERVICE_USER" "$ETC/config.toml"
    chmod 0640 "$ETC/config.toml"
    if [ ! -f "$STATE/models/mask_classifier.tflite" ]; then
        local models
        models=$(installed_models)  # the model the installed package ships, not the checkout's
        say "model into $STATE/models"
        install -m 0644 "$models/mask_classifier.json" "$STATE/models/mask_classifier.json"
        install -m 0644 "$models/mask_classifier.tflite" "$STATE/models/mask_classifier.tflite"
        changed=1
    fi
    # The service owns its state; the group (and so the deploy user) may put models in, set-gid keeps the group.
    chown -R "$SERVICE_USER:$SERVICE_USER" "$STATE" "$CACHE"
    chmod 2775 "$STATE/models"
    chmod 0750 "$STATE"
    # Fetch the face detector once now (from $MASK_APPLIANCE_ASSETS or its upstream URL, sha256-checked).
    MASK_APPLIANCE_CACHE=$CACHE venv_python -c "from appliance.assets import resolve; resolve('yunet')"
    chown -R "$SERVICE_USER:$SERVICE_USER" "$CACHE"
}

install_unit() {
    # The unit's Documentation= links point here (the wheel keeps the README only as its metadata's description),
    # and so do the README's links into the manual: its pages and pictures go beside it, as in the checkout.
    local page pages=0
    if ! cmp -s "$SRC/README.md" "$APP/README.md"; then
        say "README $APP/README.md"
        install -D -m 0644 "$SRC/README.md" "$APP/README.md"
        changed=1
    fi
    while IFS= read -r -d '' page; do
        if ! cmp -s "$SRC/$page" "$APP/$page"; then
            install -D -m 0644 "$SRC/$page" "$APP/$page"
            pages=$((pages + 1))
        fi
    done < <(cd "$SRC" && [ -d docs ] && find docs \( -name _generated -o -name _ext \) -prune -o -type f \( -name '*.md' -o -name '*.png' \) -print0)
    if ((pages)); then
        say "manual: $pages pages and pictures in $APP/docs"
        changed=1
    fi
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

STAGE=
trap 'rm -rf "${STAGE:-}"' EXIT  # the build copy, if pip or a check failed
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
detect_release
install_packages
create_user
install_code
install_files
install_unit
if ((changed)); then say "done: mask-appliance is installed and running"; else say "nothing to change"; fi
