#!/usr/bin/env bash
# Build the offline base image for agent containers: a minimal Debian rootfs made
# with debootstrap and imported into Podman: Python, CA certificates, time zones,
# and git and curl for what agents do on the owner's folders and the web. The
# default name carries a revision (bookworm-2): bump it when this list changes,
# so existing hosts make the new image instead of keeping the old one. Used where no image registry is
# reachable; on a connected host `nanoclaw image build` can start FROM a public
# image instead.
#   usage: container/build-base.sh [IMAGE] [SUITE] [MIRROR]
#   PODMAN="runuser -u nanoclaw -- podman" imports into another user's storage.
set -euo pipefail
PODMAN=${PODMAN:-podman}
image=${1:-localhost/nanoclaw-base:bookworm-2}
suite=${2:-bookworm}
mirror=${3:-http://deb.debian.org/debian}
if $PODMAN image exists "$image"; then
    echo "base image $image already present"
    exit 0
fi
command -v debootstrap >/dev/null || { echo "debootstrap is missing: apt-get install debootstrap" >&2; exit 1; }
rootfs=$(mktemp -d /var/tmp/nanoclaw-rootfs.XXXXXX)
chmod 0755 "$rootfs"  # it becomes the image's /: mktemp's 0700 would lock out non-root users
trap 'rm -rf "$rootfs" "$rootfs.log"' EXIT
for attempt in 1 2 3; do  # a mirror fails now and then: try again before giving up
    echo "debootstrap $suite into $rootfs (about a minute; attempt $attempt of 3)..."
    if debootstrap --variant=minbase --include=python3,python3-venv,ca-certificates,tzdata,git,curl \
            "$suite" "$rootfs" "$mirror" >"$rootfs.log" 2>&1; then
        break
    fi
    if [ "$attempt" -eq 3 ]; then
        echo "debootstrap of $suite from $mirror failed three times; its last lines:" >&2
        tail -20 "$rootfs.log" >&2
        exit 1
    fi
    echo "debootstrap failed: $(tail -1 "$rootfs.log"); retrying in $((attempt * 10)) s" >&2
    rm -rf "${rootfs:?}"/*
    sleep $((attempt * 10))
done
rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/lib/apt/lists/*
tar -C "$rootfs" -c . | $PODMAN import -q - "$image" >/dev/null
echo "imported $image"
