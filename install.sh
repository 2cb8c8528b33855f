#!/usr/bin/env bash
# Install (or update) nanoclaw as a systemd service on Debian/Ubuntu, and start it.
#
#   sudo ./install.sh                 install, build the agent image, start nanoclaw.target
#   sudo ./install.sh --no-start      install everything but do not start it
#   sudo ./install.sh --no-image      skip building the agent image (set [container] image yourself)
#   sudo ./install.sh --prefix DIR    install the program under DIR (default /opt/nanoclaw)
#   sudo ./install.sh --images DIR    first load every image archive DIR/*.tar (podman save)
#                                     into the service user's storage (offline hosts)
#   sudo ./install.sh --no-apt        never call apt-get; fail if a package is missing
#   sudo ./install.sh --uninstall     stop and remove the units and the program; keep data and config
#   sudo ./install.sh --uninstall --purge   ... and remove data, config and the nanoclaw user too
#
# Safe to run again: every step checks what is already there.
set -euo pipefail

PREFIX=/opt/nanoclaw
START=1 IMAGE=1 UNINSTALL=0 PURGE=0 APT=1 IMAGES=
SRC=$(cd "$(dirname "$0")" && pwd)
USER_NAME=nanoclaw
STATE=/var/lib/nanoclaw
CONF=/etc/nanoclaw
RUN=/run/nanoclaw
UNIT_DIR=/etc/systemd/system

while [ $# -gt 0 ]; do
    case "$1" in
        --prefix) PREFIX=$2; shift ;;
        --prefix=*) PREFIX=${1#*=} ;;
        --images) IMAGES=$2; shift ;;
        --images=*) IMAGES=${1#*=} ;;
        --no-start) START=0 ;;
        --no-image) IMAGE=0 ;;
        --no-apt) APT=0 ;;
        --uninstall) UNINSTALL=1 ;;
        --purge) PURGE=1 ;;
        -h|--help) sed -n '2,15p' "$0"; exit 0 ;;
        *) echo "install.sh: unknown option $1 (see --help)" >&2; exit 2 ;;
    esac
    shift
done

step() { printf '\n==> %s\n' "$*"; }
die() { echo "install.sh: $*" >&2; exit 1; }
[ "$(id -u)" -eq 0 ] || die "run as root (sudo ./install.sh)"
HAVE_SYSTEMD=0
[ -d /run/systemd/system ] && HAVE_SYSTEMD=1
as_user() { runuser -u "$USER_NAME" -- env HOME="$STATE/home" XDG_RUNTIME_DIR="$RUN/xdg" "$@"; }
units() { ls "$SRC"/units/ | grep -E '\.(service|target|path)$'; }

if [ "$UNINSTALL" -eq 1 ]; then
    step "stopping and removing nanoclaw"
    if [ "$HAVE_SYSTEMD" -eq 1 ]; then
        systemctl disable --now nanoclaw.target 2>/dev/null || true
        for u in $(units) $(cd "$UNIT_DIR" && ls nanoclaw-task-*.timer 2>/dev/null); do
            systemctl disable --now "$u" 2>/dev/null || true
            rm -f "$UNIT_DIR/$u"
        done
        systemctl daemon-reload
    fi
    rm -rf "$PREFIX" /usr/local/bin/nanoclaw
    if [ "$PURGE" -eq 1 ]; then
        step "purging data, configuration and the $USER_NAME user"
        # leftover agent containers and their conmon monitors belong to the user
        pkill -KILL -u "$USER_NAME" 2>/dev/null && sleep 1
        rm -rf "$STATE" "$CONF" "$RUN"
        userdel "$USER_NAME" 2>/dev/null || echo "could not remove the user $USER_NAME (still in use?)" >&2
        sed -i "/^$USER_NAME:/d" /etc/subuid /etc/subgid
    else
        echo "kept $STATE (data) and $CONF (configuration); --purge removes them"
    fi
    exit 0
fi

step "prerequisites"
need=()
for p in podman uidmap runc slirp4netns fuse-overlayfs catatonit python3-venv libmagic1; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || need+=("$p")
done
if [ "${#need[@]}" -gt 0 ]; then
    [ "$APT" -eq 1 ] || die "missing packages: ${need[*]}"
    echo "installing ${need[*]}"
    DEBIAN_FRONTEND=noninteractive apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
else
    echo "all present"
fi

step "service user $USER_NAME"
if ! getent passwd "$USER_NAME" >/dev/null; then
    useradd --system --user-group --home-dir "$STATE/home" --shell /usr/sbin/nologin \
        --comment "nanoclaw assistant" "$USER_NAME"
    echo "created"
fi
install -d -o "$USER_NAME" -g "$USER_NAME" -m 0750 "$STATE" "$STATE/home" "$STATE/timers"
install -d -o "$USER_NAME" -g "$USER_NAME" -m 0750 "$RUN"
install -d -o "$USER_NAME" -g "$USER_NAME" -m 0700 "$RUN/xdg"
for f in /etc/subuid /etc/subgid; do
    touch "$f"
    if ! grep -q "^$USER_NAME:" "$f"; then
        # the next free 65536-wide range after every existing one
        start=$(awk -F: 'BEGIN{m=100000} {e=$2+$3; if (e>m) m=e} END{print m}' "$f")
        echo "$USER_NAME:$start:65536" >> "$f"
        echo "added $f range $start+65536"
    fi
done

step "program in $PREFIX"
[ -x "$PREFIX/bin/python" ] || python3 -m venv "$PREFIX"
"$PREFIX/bin/pip" install -q --disable-pip-version-check --upgrade "$SRC"
install -d "$PREFIX/share"
rm -rf "$PREFIX/share/groups" "$PREFIX/share/container"
cp -r "$SRC/groups" "$SRC/container" "$PREFIX/share/"
ln -sf "$PREFIX/bin/nanoclaw" /usr/local/bin/nanoclaw
"$PREFIX/bin/nanoclaw" --version

step "configuration in $CONF"
install -d -o root -g "$USER_NAME" -m 0750 "$CONF"
install -d -o root -g root -m 0700 "$CONF/credentials"
if [ ! -e "$CONF/credentials/anthropic-credential" ]; then
    umask 077
    printf '%s\n' "# Put your Anthropic API key (sk-ant-api...) or OAuth token (sk-ant-oat...) on" \
        "# the next line, then: systemctl restart nanoclaw-proxy" > "$CONF/credentials/anthropic-credential"
    umask 022
    echo "created an empty credential file: $CONF/credentials/anthropic-credential"
fi
chmod 0600 "$CONF/credentials/anthropic-credential"
step "container images for $USER_NAME"
if [ -n "$IMAGES" ]; then
    for tar in "$IMAGES"/*.tar; do
        [ -e "$tar" ] || continue
        echo "loading $tar"
        (cd / && as_user podman load -q -i "$tar" >/dev/null)
    done
fi
base=$(cd / && NANOCLAW_CONFIG_DIR="$CONF" "$PREFIX/bin/python" -c \
    'from nanoclaw import config; print(config.get().container.base_image)')
if (cd / && as_user podman image exists "$base"); then
    echo "base image $base present"
else
    # No registry needed: a debootstrap rootfs (made as root) imported as the service user.
    if ! command -v debootstrap >/dev/null; then
        [ "$APT" -eq 1 ] || die "the base image $base is missing and so is debootstrap to make it"
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq debootstrap >/dev/null
    fi
    PODMAN="runuser -u $USER_NAME -- env HOME=$STATE/home XDG_RUNTIME_DIR=$RUN/xdg podman" \
        bash "$SRC/container/build-base.sh" "$base"
fi

if [ ! -e "$CONF/config.toml" ]; then
    echo "detecting the container runtime options this host needs (as $USER_NAME)..."
    found=$(mktemp -d)
    (cd / && NANOCLAW_CONFIG_DIR="$CONF" "$PREFIX/bin/nanoclaw" doctor --detect-runtime "$found") \
        || die "no container runtime works for $USER_NAME; see: nanoclaw doctor"
    if [ -s "$found/containers.conf" ]; then
        install -d -o "$USER_NAME" -g "$USER_NAME" "$STATE/home/.config" "$STATE/home/.config/containers"
        install -o "$USER_NAME" -g "$USER_NAME" -m 0644 "$found/containers.conf" \
            "$STATE/home/.config/containers/containers.conf"
        echo "wrote $STATE/home/.config/containers/containers.conf"
    fi
    cat > "$CONF/config.toml" <<EOF
# nanoclaw configuration. Unknown keys are errors; see the README for every setting.
# assistant_name = "Andy"
# default_trigger = "@Andy"
# timezone = ""            # empty: this host's
# channels = ["terminal"]  # add "whatsapp" once paired (nanoclaw pair)
# max_concurrent = 3

[container]
# Found by install.sh on this host (nanoclaw doctor --detect-runtime):
$(cat "$found/container.toml")
EOF
    rm -rf "$found"
    chgrp "$USER_NAME" "$CONF/config.toml"
    chmod 0640 "$CONF/config.toml"
    echo "wrote $CONF/config.toml"
fi

if [ "$IMAGE" -eq 1 ]; then
    step "agent image (as $USER_NAME; the first build downloads ~180 MB of wheels)"
    (cd / && as_user "$PREFIX/bin/nanoclaw" image build)
fi

if [ "$HAVE_SYSTEMD" -eq 1 ]; then
    step "systemd units"
    for u in $(units); do
        sed "s#/opt/nanoclaw#$PREFIX#g" "$SRC/units/$u" > "$UNIT_DIR/$u.tmp"
        mv "$UNIT_DIR/$u.tmp" "$UNIT_DIR/$u"
    done
    systemctl daemon-reload
    systemctl enable nanoclaw.target $(units | grep -v '@' | grep -v '\.target$') >/dev/null
else
    echo "systemd is not PID 1 here: units not installed (tasks use the $USER_NAME crontab); run: nanoclaw run-all"
fi

step "main group"
if (cd / && as_user "$PREFIX/bin/nanoclaw" groups list) | grep -Eq ' main (every message|trigger=)'; then
    echo "present"
else
    (cd / && as_user "$PREFIX/bin/nanoclaw" groups add main --main)
fi

if [ "$START" -eq 1 ] && [ "$HAVE_SYSTEMD" -eq 1 ]; then
    step "starting nanoclaw.target"
    systemctl restart nanoclaw.target
    for _ in $(seq 60); do
        systemctl is-active --quiet nanoclaw-channel nanoclaw-queue nanoclaw-runner nanoclaw-ipc \
            nanoclaw-router nanoclaw-proxy nanoclaw-scheduler && break
        sleep 0.5
    done
fi

step "nanoclaw doctor"
"$PREFIX/bin/nanoclaw" doctor || true
cat <<EOF

Next:
  1. put your Anthropic key in $CONF/credentials/anthropic-credential, then: systemctl restart nanoclaw-proxy
  2. talk to it:   nanoclaw chat
  3. WhatsApp:     nanoclaw pair   (see the README)
Logs: journalctl -u 'nanoclaw-*' -f        Status: nanoclaw status
EOF
