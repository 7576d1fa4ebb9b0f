#!/usr/bin/env bash
# Makes sure podman, buildah, runc, mmdebstrap and iptables (netavark needs it) are
# installed (Debian's packages, once per machine): `make images` builds NeuroShard's images
# with them, offline, from Debian packages and the binaries cargo built here.
set -euo pipefail
missing=()
for tool in podman buildah runc mmdebstrap iptables; do
  command -v "$tool" >/dev/null 2>&1 || missing+=("$tool")
done
[ "${#missing[@]}" = 0 ] && exit 0
if command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
  echo "==> installing ${missing[*]} with apt-get"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq podman buildah runc mmdebstrap \
    netavark aardvark-dns iptables >/dev/null
else
  echo "error: ${missing[*]} not found; install Debian's podman, buildah, runc and mmdebstrap" >&2
  exit 1
fi
