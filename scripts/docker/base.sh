#!/usr/bin/env bash
# Build the Dockerfile's default base image locally from Debian packages, for machines
# that cannot pull from Docker Hub: debootstrap a minimal bookworm with Python 3.11, pip,
# venv and CA certificates, then `docker import` it. Idempotent: nothing is done when the
# image already exists (FORCE=1 rebuilds it). Needs root (debootstrap) and a Docker engine.
#
#   scripts/docker/base.sh            # -> imagejobs-base:bookworm (BASE_IMAGE to rename)
#   MIRROR=http://deb.debian.org/debian scripts/docker/base.sh
#
# MIRROR defaults to the mirror apt on this machine uses (its sources for bookworm), so
# the packages come from where the machine is allowed to fetch them.
set -euo pipefail

BASE_IMAGE="${BASE_IMAGE:-imagejobs-base:bookworm}"
SUITE="${SUITE:-bookworm}"
PACKAGES="python3,python3-venv,python3-pip,ca-certificates"

if [[ "${FORCE:-0}" != 1 ]] && docker image inspect "$BASE_IMAGE" >/dev/null 2>&1; then
  echo "base.sh: $BASE_IMAGE exists; nothing to do (FORCE=1 rebuilds it)"
  exit 0
fi

# The first Debian mirror apt is configured with (deb822 .sources or one-line .list).
apt_mirror() {
  local uri
  uri=$(grep -hs -m1 -E '^URIs:.*/debian/?$' /etc/apt/sources.list.d/*.sources | awk '{print $2}' || true)
  if [[ -z "$uri" ]]; then
    uri=$(grep -hs -m1 -E '^deb +(\[[^]]*\] +)?https?://[^ ]*/debian/? ' \
      /etc/apt/sources.list /etc/apt/sources.list.d/*.list | sed -E 's/^deb +(\[[^]]*\] +)?//' | awk '{print $1}' || true)
  fi
  echo "${uri:-http://deb.debian.org/debian}"
}
MIRROR="${MIRROR:-$(apt_mirror)}"

command -v debootstrap >/dev/null || apt-get install -y --no-install-recommends debootstrap
[[ $(id -u) == 0 ]] || { echo "base.sh: debootstrap needs root" >&2; exit 1; }

ROOTFS=$(mktemp -d /tmp/imagejobs-base.XXXXXX)
trap 'rm -rf "$ROOTFS"' EXIT
echo "base.sh: debootstrap $SUITE from $MIRROR into $ROOTFS"
started=$SECONDS
debootstrap --variant=minbase --include="$PACKAGES" "$SUITE" "$ROOTFS" "$MIRROR" >"$ROOTFS.log" 2>&1 \
  || { tail -20 "$ROOTFS.log" >&2; rm -f "$ROOTFS.log"; exit 1; }
rm -f "$ROOTFS.log"
# what an image does not need: downloaded .debs and package lists (apt-get update
# brings them back), docs and man pages
rm -rf "$ROOTFS"/var/cache/apt/archives/*.deb "$ROOTFS"/var/lib/apt/lists/* \
  "$ROOTFS"/usr/share/doc/* "$ROOTFS"/usr/share/man/*
echo "base.sh: debootstrap took $((SECONDS - started)) s"

tar -C "$ROOTFS" --numeric-owner -c . | docker import \
  --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
  --change 'ENV LANG=C.UTF-8' \
  --change 'CMD ["/bin/bash"]' \
  --message "debootstrap --variant=minbase $SUITE ($PACKAGES) from $MIRROR" \
  - "$BASE_IMAGE" >/dev/null
echo "base.sh: $BASE_IMAGE built in $((SECONDS - started)) s:" \
  "$(docker run --rm "$BASE_IMAGE" python3 --version)"
