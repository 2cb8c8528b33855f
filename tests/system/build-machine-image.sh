#!/usr/bin/env bash
# A fresh Debian server as a container image, for the system test: systemd as
# PID 1 and nothing of nanoclaw's (no podman, no python3): install.sh must
# bring what it needs, as on a real machine. Made offline-capable with
# debootstrap from the Debian mirror; cached by tag.
#   usage: build-machine-image.sh SUITE IMAGE [MIRROR]     (SUITE: bookworm or trixie)
set -euo pipefail
suite=${1:?suite (bookworm, trixie)}
image=${2:?image tag}
mirror=${3:-http://deb.debian.org/debian}
if podman image exists "$image"; then
    echo "$image present"; exit 0
fi
rootfs=$(mktemp -d /var/tmp/nanoclaw-machine-rootfs.XXXXXX)
chmod 0755 "$rootfs"  # it becomes the image's /
trap 'rm -rf "$rootfs" "$rootfs.log"' EXIT
echo "debootstrap $suite into $rootfs (a minute or two)..."
for attempt in 1 2 3; do  # the mirror fails now and then
    if debootstrap --variant=minbase \
            --include=systemd,systemd-sysv,dbus,ca-certificates,git,sudo,procps,iproute2,cron \
            "$suite" "$rootfs" "$mirror" >"$rootfs.log" 2>&1; then
        break
    fi
    [ "$attempt" -eq 3 ] && { tail -20 "$rootfs.log" >&2; exit 1; }
    echo "debootstrap failed (attempt $attempt); retrying" >&2
    rm -rf "${rootfs:?}"/* && sleep $((attempt * 5))
done
rm -rf "$rootfs"/var/cache/apt/archives/*.deb
# No getty or network-wait units fight over a container's console.
ln -sf /dev/null "$rootfs/etc/systemd/system/getty@tty1.service"
ln -sf /dev/null "$rootfs/etc/systemd/system/systemd-networkd-wait-online.service"
# What a real server's udev does and a privileged container's /dev does not: /dev/fuse
# usable by everyone (rootless Podman's fuse-overlayfs needs it). Survives the machine's reboot.
echo 'z /dev/fuse 0666 - - -' > "$rootfs/etc/tmpfiles.d/nanoclaw-test-fuse.conf"
echo "nanoclaw-test-$suite" > "$rootfs/etc/hostname"
tar -C "$rootfs" -c . | podman import --change 'CMD ["/sbin/init"]' - "$image" >/dev/null
echo "imported $image"
