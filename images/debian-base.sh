#!/usr/bin/env bash
# Make the base image localhost/debian:bookworm-slim with no registry: debootstrap a minimal
# Debian bookworm (from the Debian mirror) and commit it with buildah. For machines that reach
# Debian's packages but no container registry; elsewhere the Dockerfiles' default base
# (docker.io/library/debian:bookworm-slim) is the same system. Needs root, debootstrap, buildah.
#
#   images/debian-base.sh && BASE=localhost/debian:bookworm-slim make images
set -euo pipefail
image=${1:-localhost/debian:bookworm-slim}
buildah=(buildah --storage-driver "${STORAGE_DRIVER:-vfs}")
if "${buildah[@]}" inspect --type image "$image" >/dev/null 2>&1; then
  echo "$image: present"
  exit 0
fi
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
mirror=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
debootstrap --variant=minbase bookworm "$work/rootfs" "$mirror" >"$work/debootstrap.log" 2>&1 \
  || { tail -n 20 "$work/debootstrap.log" >&2; exit 1; }
# The same package sources as the official image: the release, its updates and security fixes.
cat >"$work/rootfs/etc/apt/sources.list" <<SOURCES
deb $mirror bookworm main
deb $mirror bookworm-updates main
deb http://deb.debian.org/debian-security bookworm-security main
SOURCES
rm -rf "$work"/rootfs/var/cache/apt/archives/*.deb "$work"/rootfs/var/lib/apt/lists/*
tar -C "$work/rootfs" -cf "$work/rootfs.tar" .
c=$("${buildah[@]}" from scratch)
"${buildah[@]}" add "$c" "$work/rootfs.tar" / >/dev/null
"${buildah[@]}" config --cmd /bin/bash --env PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin "$c"
"${buildah[@]}" commit -q "$c" "$image" >/dev/null
"${buildah[@]}" rm "$c" >/dev/null
echo "$image: made"
