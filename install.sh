#!/usr/bin/env bash
# Install (or update) nanoclaw as a systemd service on Debian/Ubuntu, and start it.
#
#   sudo ./install.sh                 install, build the agent image (and the voice notes'
#                                     transcription image), start nanoclaw.target
#   sudo ./install.sh --no-start      install everything but do not start it
#   sudo ./install.sh --no-image      skip building the images (set [container] image yourself)
#   sudo ./install.sh --prefix DIR    install the program under DIR (default /opt/nanoclaw)
#   sudo ./install.sh --images DIR    first load every image archive DIR/*.tar (podman save)
#                                     into the service user's storage (offline hosts)
#   sudo ./install.sh --no-apt        never call apt-get; fail if a package is missing
#   sudo ./install.sh --uninstall     stop and remove the units and the program; keep data and config
#   sudo ./install.sh --uninstall --purge   ... and remove data, config and the nanoclaw user too
#
# Safe to run again: every step checks what is already there and keeps what works
# (your credential, the detected container options, an agent image that is current).
# Over an existing install it is the upgrade (README: Upgrading): it stops nanoclaw (the
# daemons finish what they are doing), backs it up, installs, migrates the database,
# starts it again and runs doctor; a failed step says how to go back.
set -euo pipefail

PREFIX=/opt/nanoclaw
START=1 IMAGE=1 UNINSTALL=0 PURGE=0 APT=1 IMAGES=
SRC=$(cd "$(dirname "$0")" && pwd)
USER_NAME=nanoclaw
STATE=/var/lib/nanoclaw
CONF=/etc/nanoclaw
RUN=/run/nanoclaw
UNIT_DIR=/etc/systemd/system
CREDENTIAL=$CONF/credentials/anthropic-credential
VOICE_CREDENTIAL=$CONF/credentials/voice-api-credential

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
        -h|--help) sed -n '2,19p' "$0"; exit 0 ;;
        *) echo "install.sh: unknown option $1 (see --help)" >&2; exit 2 ;;
    esac
    shift
done

# -- how each step reports --------------------------------------------------------
STEP="" HINT=""
# An upgrade (an install already there): what it was, the backup made, whether the database
# was migrated yet, so that a failure can say how to go back.
UPGRADE=0 PREV="" NEW="" BACKUP="" MIGRATED=0
SAID=$(mktemp)  # what a step printed, read back (the backup's name, whether it migrated)
trap 'rm -f "$SAID"' EXIT
step() {  # step NAME HINT: what we do now, and what usually went wrong when it fails
    STEP=$1 HINT=$2
    printf '\n==> %s\n' "$STEP"
}
on_error() {
    local rc=$?
    {
        echo
        echo "install.sh: FAILED at step: $STEP (exit $rc, line $1)"
        [ -n "$HINT" ] && echo "  likely cause: $HINT"
        echo "  fix that, then run the same command again: install.sh is safe to re-run and"
        echo "  keeps every step that already worked."
        if [ "$UPGRADE" -eq 1 ]; then
            echo "  nanoclaw is stopped; the messages that were waiting are kept (its database and"
            echo "  spools) and are answered once it runs again."
            [ -n "$BACKUP" ] && echo "  the backup made before this upgrade: $BACKUP"
            echo "  to go back to the version you had${PREV:+ (commit $PREV)} instead:"
            if [ "$MIGRATED" -eq 1 ]; then
                echo "    sudo nanoclaw restore $BACKUP      # the database was migrated: put it back first"
            else
                echo "    (the database was not changed)"
            fi
            echo "    cd $SRC && git checkout ${PREV:-<the commit you had>} && sudo ./install.sh"
        fi
    } >&2
    exit "$rc"
}
trap 'on_error $LINENO' ERR
die() { echo "install.sh: $*" >&2; exit 1; }
[ "$(id -u)" -eq 0 ] || die "run as root (sudo ./install.sh)"
HAVE_SYSTEMD=0
[ -d /run/systemd/system ] && HAVE_SYSTEMD=1
# Everything the service user runs starts in / (a checkout under /root is not theirs to enter).
# Podman's '"/" is not a shared mount' warning says nothing about nanoclaw: it is left out, and so
# is Podman 5's about cgroups v1 (nanoclaw doctor names the cgroup version).
USER_ENV="HOME=$STATE/home XDG_RUNTIME_DIR=$RUN/xdg PODMAN_IGNORE_CGROUPSV1_WARNING=1"
as_user() {
    (cd / && runuser -u "$USER_NAME" -- env $USER_ENV "$@") 2> >(grep -v 'is not a shared mount' >&2)
}
nanoclaw() { (cd / && "$PREFIX/bin/nanoclaw" "$@"); }
# git on the checkout, which may be another user's (safe.directory), never writing to it
# (GIT_OPTIONAL_LOCKS=0: no index refresh written as root)
git_src() { GIT_OPTIONAL_LOCKS=0 git -c safe.directory="$SRC" -C "$SRC" "$@"; }
# Which units there are, which are enabled, which shared drop-ins go beside which, which run all
# the time: the one registry, nanoclaw/registry.py (standard library only), read with the system
# python3 from this checkout, since the program's venv is not there yet (or is being removed).
registry() { (cd / && PYTHONPATH="$SRC" python3 -B -m nanoclaw.registry "$@"); }

if [ "$UNINSTALL" -eq 1 ]; then
    step "stopping and removing nanoclaw" "systemctl could not stop a unit; see: systemctl status 'nanoclaw*'"
    if [ "$HAVE_SYSTEMD" -eq 1 ]; then
        systemctl disable --now nanoclaw.target 2>/dev/null || true
        unit_files=$(registry units)
        for u in $unit_files $(cd "$UNIT_DIR" && ls nanoclaw-task-*.timer 2>/dev/null); do
            systemctl disable --now "$u" 2>/dev/null || true
            rm -f "$UNIT_DIR/$u"
            rm -rf "${UNIT_DIR:?}/$u.d"
        done
        systemctl daemon-reload
    fi
    rm -rf "$PREFIX" /usr/local/bin/nanoclaw
    if [ "$PURGE" -eq 1 ]; then
        step "purging data, configuration and the $USER_NAME user" "a process of $USER_NAME is still running"
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

step "prerequisites" "apt-get could not install packages: check the network and that 'apt-get update' works"
need=()
for p in podman uidmap runc slirp4netns fuse-overlayfs catatonit python3 python3-venv debootstrap; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || need+=("$p")
done
# neonize needs the libmagic library; its package is libmagic1 on Debian 12, libmagic1t64 on 13.
if ! ldconfig -p | grep -q 'libmagic\.so\.1 '; then
    if apt-cache show libmagic1t64 >/dev/null 2>&1; then need+=(libmagic1t64); else need+=(libmagic1); fi
fi
# neonize needs ffmpeg and ffprobe for voice notes and other media. Installed whatever the
# configuration says: WhatsApp is usually enabled after installing, without running this again.
command -v ffmpeg >/dev/null && command -v ffprobe >/dev/null || need+=(ffmpeg)
if [ "${#need[@]}" -gt 0 ]; then
    [ "$APT" -eq 1 ] || die "missing packages: ${need[*]} (--no-apt given: install them, then re-run)"
    echo "installing ${need[*]}"
    DEBIAN_FRONTEND=noninteractive apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
else
    echo "all present"
fi

step "service user $USER_NAME" "useradd failed, or /etc/subuid is not writable"
if ! getent passwd "$USER_NAME" >/dev/null; then
    useradd --system --user-group --home-dir "$STATE/home" --shell /usr/sbin/nologin \
        --comment "nanoclaw assistant" "$USER_NAME"
    echo "created"
fi
install -d -o "$USER_NAME" -g "$USER_NAME" -m 0750 "$STATE" "$STATE/home" "$STATE/timers" "$STATE/voice"
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

if [ -e "$STATE/nanoclaw.db" ]; then
    UPGRADE=1
    NEW=$(git_src rev-parse --short=12 HEAD 2>/dev/null || echo "")
    # what is installed says which commit it was; an install older than that file: git's
    # own record of the checkout before this one
    PREV=$(cat "$PREFIX/share/nanoclaw-commit" 2>/dev/null || git_src rev-parse --short=12 'HEAD@{1}' 2>/dev/null || echo "")
    PREV=${PREV%-dirty}
    if [ -n "$PREV" ] && [ "$PREV" = "$NEW" ]; then
        what="to install it again"
    else
        what="for the upgrade${PREV:+ from $PREV}${NEW:+ to $NEW}"
    fi
    step "stopping nanoclaw $what (the daemons finish what they are doing)" \
        "a unit did not stop; see: systemctl status 'nanoclaw*'"
    if [ "$HAVE_SYSTEMD" -eq 1 ] && [ -e "$UNIT_DIR/nanoclaw.target" ]; then
        systemctl stop nanoclaw.target  # its units are PartOf= it: they stop first, and drain
        services=$(cd "$UNIT_DIR" && ls nanoclaw*.service | grep -v @)
        for _ in $(seq 120); do
            systemctl is-active --quiet $services || break  # true while any one is active
            sleep 0.5
        done
        if systemctl is-active --quiet $services; then
            systemctl is-active $services | paste -d' ' <(echo "$services" | tr ' ' '\n') - >&2
            false
        fi
        # The service user's rootless Podman kept its user namespace in a pause process of the
        # unit just stopped: without a reset every podman call below fails ("invalid internal
        # status"), as nanoclaw-podman.service's own ExecStartPre knows.
        as_user podman system migrate >/dev/null 2>&1 || true
        echo "stopped"
    elif [ -x "$PREFIX/bin/nanoclaw" ] && nanoclaw ping 2>/dev/null | grep -q ' up '; then
        die "nanoclaw runs here without systemd (nanoclaw run-all): stop it, then run install.sh again"
    else
        echo "not running"
    fi
fi

step "program in $PREFIX" "pip could not reach PyPI (network, or a proxy/CA pip does not trust)"
[ -x "$PREFIX/bin/python" ] || python3 -m venv "$PREFIX"
# --use-pep517: sdnotify ships only a setup.py; without it pip warns about a legacy install.
"$PREFIX/bin/pip" install -q --disable-pip-version-check --use-pep517 --upgrade "$SRC"
install -d "$PREFIX/share"
rm -rf "$PREFIX/share/groups" "$PREFIX/share/container"
cp -r "$SRC/groups" "$SRC/container" "$PREFIX/share/"
ln -sf "$PREFIX/bin/nanoclaw" /usr/local/bin/nanoclaw
# which commit this is, for `nanoclaw --version` (an installed venv has no .git to ask)
COMMIT=$(git_src rev-parse --short=12 HEAD 2>/dev/null || echo unknown)
if [ "$COMMIT" != unknown ] && [ -n "$(git_src status --porcelain --untracked-files=no 2>/dev/null)" ]; then
    COMMIT="$COMMIT-dirty"
fi
echo "$COMMIT" > "$PREFIX/share/nanoclaw-commit"
"$PREFIX/bin/nanoclaw" --version

if [ "$UPGRADE" -eq 1 ]; then
    step "backing up before the upgrade" "the backup could not be written: is the disk full? (df $STATE)"
    as_user "$PREFIX/bin/nanoclaw" backup --kind pre-upgrade | tee "$SAID"
    BACKUP=$(sed -n 's/^backed up to \(.*\.tar\.gz\) (.*/\1/p' "$SAID" | head -1)
fi

step "configuration in $CONF" "$CONF is not writable"
install -d -o root -g "$USER_NAME" -m 0750 "$CONF"
if [ ! -d "$CONF/credentials" ]; then
    # Made once; `nanoclaw credential set` may later open it (0711) where systemd cannot hand
    # the credential over, and a re-run must not undo that.
    install -d -o root -g root -m 0700 "$CONF/credentials"
fi
if [ ! -e "$CREDENTIAL" ]; then
    (umask 077 && printf '%s\n' "# Set it with: sudo nanoclaw credential set" > "$CREDENTIAL")
    echo "created an empty credential file: $CREDENTIAL (sudo nanoclaw credential set fills it)"
fi
if [ ! -e "$VOICE_CREDENTIAL" ]; then
    # Empty unless the owner chooses the voice API: the proxy's unit loads it (LoadCredential=
    # refuses a missing file), and an empty one is no credential.
    (umask 077 && printf '%s\n' "# Only for [voice] engine = \"api\". Set it with: sudo nanoclaw credential set --voice" \
        > "$VOICE_CREDENTIAL")
fi
if [ ! -e "$CONF/config.toml" ]; then
    cat > "$CONF/config.toml" <<'EOF'
# nanoclaw configuration. Unknown keys are errors; see the README for every setting.
# Container options this host needs are detected into detected.toml (next to this
# file); anything set here under [container] overrides them.
# assistant_name = "Andy"
# default_trigger = "@Andy"
# timezone = ""            # empty: this host's
# channels = ["terminal"]  # add "whatsapp" once paired (nanoclaw pair)
# max_concurrent = 3
EOF
    chgrp "$USER_NAME" "$CONF/config.toml"
    chmod 0640 "$CONF/config.toml"
    echo "wrote $CONF/config.toml"
fi

step "podman storage for $USER_NAME" "podman cannot set up the service user's image store; see: nanoclaw doctor"
nanoclaw doctor --storage

step "container images for $USER_NAME" "debootstrap could not fetch from the Debian mirror (network?), or podman cannot import"
if [ -n "$IMAGES" ]; then
    for tar in "$IMAGES"/*.tar; do
        [ -e "$tar" ] || continue
        echo "loading $tar"
        as_user podman load -q -i "$tar" >/dev/null
    done
fi
base=$(cd / && NANOCLAW_CONFIG_DIR="$CONF" "$PREFIX/bin/python" -c \
    'from nanoclaw.core import config_file; print(config_file.get().container.base_image)')
if as_user podman image exists "$base"; then
    echo "base image $base present"
else
    # No registry needed: a debootstrap rootfs (made as root) imported as the service user.
    PODMAN="runuser -u $USER_NAME -- env $USER_ENV podman" \
        bash -c "cd / && '$SRC/container/build-base.sh' '$base'" 2> >(grep -v 'is not a shared mount' >&2)
fi

step "container options for this host" "no combination of runtime, ulimits and cgroup options runs a container; the lines above say why"
if [ -e "$CONF/detected.toml" ] && nanoclaw doctor --check-runtime >/dev/null 2>&1; then
    echo "the detected options in $CONF/detected.toml still work"
else
    echo "trying container options as $USER_NAME (nanoclaw doctor --redetect)..."
    nanoclaw doctor --redetect
fi

if [ "$IMAGE" -eq 1 ]; then
    step "agent image and, with [voice] on, the transcription image (as $USER_NAME; the first build downloads ~180 MB of wheels, ~200 MB more for voice)" \
        "the wheel download (network) or the podman build failed, or the disk is full"
    as_user "$PREFIX/bin/nanoclaw" image build
fi

if [ "$HAVE_SYSTEMD" -eq 1 ]; then
    step "systemd units" "a unit file did not load; see: systemd-analyze verify $UNIT_DIR/nanoclaw-*.service"
    unit_files=$(registry units)
    enabled=$(registry enabled)
    for u in $unit_files; do
        sed "s#/opt/nanoclaw#$PREFIX#g" "$SRC/units/$u" > "$UNIT_DIR/$u.tmp"
        mv "$UNIT_DIR/$u.tmp" "$UNIT_DIR/$u"
    done
    dropins=$(registry dropins)  # what units share: one source file each, a drop-in beside each unit
    while read -r u source name; do
        install -d "$UNIT_DIR/$u.d"
        install -m 0644 "$SRC/units/$source" "$UNIT_DIR/$u.d/$name"
    done <<< "$dropins"
    for d in "$SRC"/units/*.service.d; do  # a unit's own drop-ins, after the shared one
        install -d "$UNIT_DIR/$(basename "$d")"
        install -m 0644 "$d"/*.conf "$UNIT_DIR/$(basename "$d")/"
    done
    systemctl daemon-reload
    systemctl enable $enabled >/dev/null
else
    echo "systemd is not PID 1 here: units not installed (tasks use the $USER_NAME crontab); run: nanoclaw run-all"
fi

step "database schema" "a migration step failed (the line above says which); the database was left as it was"
as_user "$PREFIX/bin/nanoclaw" migrate --no-backup | tee "$SAID"  # each step shown as it runs
if grep -q '^migrated ' "$SAID"; then MIGRATED=1; fi

step "main group" "the database in $STATE is not writable by $USER_NAME"
if as_user "$PREFIX/bin/nanoclaw" groups list | grep -Eq ' main (every message|trigger=)'; then
    echo "present"
else
    as_user "$PREFIX/bin/nanoclaw" groups add main --main
fi

if [ "$START" -eq 1 ] && [ "$HAVE_SYSTEMD" -eq 1 ]; then
    step "starting nanoclaw.target" "a daemon did not start; see: journalctl -u 'nanoclaw-*' -n 50"
    systemctl restart nanoclaw.target
    daemons=$(registry running)  # every daemon, and Podman's API
    for _ in $(seq 180); do
        all=1
        for u in $daemons; do systemctl is-active --quiet "$u" || all=0; done
        [ "$all" -eq 1 ] && break
        sleep 0.5
    done
    for u in $daemons; do
        systemctl is-active --quiet "$u" || { echo "$u is $(systemctl is-active "$u")" >&2; false; }
    done
    echo "all running"
fi

trap - ERR
step "nanoclaw doctor" ""
nanoclaw doctor || true
cat <<EOF

Next:
  1. your Anthropic API key or OAuth token:   sudo nanoclaw credential set
  2. talk to it:   nanoclaw chat
  3. WhatsApp:     nanoclaw pair   (see the README)
Logs: journalctl -u 'nanoclaw-*' -f        Status: nanoclaw status
EOF
