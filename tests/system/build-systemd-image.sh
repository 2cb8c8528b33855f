#!/usr/bin/env bash
# An image with systemd as PID 1 and (nested, rootless) podman, made offline
# from a debootstrap rootfs, for the system test. Cached by tag.
set -euo pipefail
image=${1:-localhost/nanoclaw-systemd:bookworm}
mirror=${2:-http://deb.debian.org/debian}
if podman image exists "$image"; then
    echo "$image present"; exit 0
fi
rootfs=$(mktemp -d /var/tmp/nanoclaw-systemd-rootfs.XXXXXX)
chmod 0755 "$rootfs"  # it becomes the image's /
trap 'rm -rf "$rootfs" "$rootfs.log"' EXIT
echo "debootstrap systemd rootfs into $rootfs (a minute or two)..."
debootstrap --variant=minbase \
    --include=systemd,systemd-sysv,dbus,python3,python3-venv,python3-pip,podman,uidmap,runc,fuse-overlayfs,slirp4netns,catatonit,containernetworking-plugins,iptables,ca-certificates,libmagic1,procps,cron \
    bookworm "$rootfs" "$mirror" >"$rootfs.log" 2>&1 || { tail -20 "$rootfs.log" >&2; exit 1; }
rm -rf "$rootfs"/var/cache/apt/archives/*.deb
# No getty or networking units fight over a container's console.
ln -sf /dev/null "$rootfs/etc/systemd/system/getty@tty1.service"
ln -sf /dev/null "$rootfs/etc/systemd/system/systemd-networkd-wait-online.service"
tar -C "$rootfs" -c . | podman import --change 'CMD ["/sbin/init"]' - "$image" >/dev/null
echo "imported $image"
