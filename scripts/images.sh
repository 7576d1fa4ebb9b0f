#!/usr/bin/env bash
# make images: builds every NeuroShard image here, offline, with podman:
#   localhost/neuroshard/{layer-registry,shard-worker,diloco-aggregator,ledger,swarm-gateway,
#   neuroshard-operator,postgres}:<version>
# from a Debian bookworm minbase root filesystem (mmdebstrap, Debian packages; cached outside
# the clone) and the release binaries cargo builds here (debug info stripped). The libtorch
# layer (PyTorch's CUDA build, about 3 GB) is built once per torch version and shared by the
# two images linked against it.
#
# Environment: IMAGE_PREFIX (default localhost/neuroshard), IMAGE_TAG (default the workspace
# version), NEUROSHARD_SKIP_BUILD=1 to use the binaries already in target/release.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
if [ "$#" -gt 0 ]; then
  echo "usage: scripts/images.sh (make images); it takes no arguments: IMAGE_PREFIX, IMAGE_TAG and NEUROSHARD_SKIP_BUILD=1 come from the environment (got: $*)" >&2
  exit 2
fi
# shellcheck source=env.sh
source scripts/env.sh
# shellcheck source=images-env.sh
source scripts/images-env.sh
scripts/setup-containers.sh
say() { echo "==> $*" >&2; }
started=$SECONDS

if [ "${NEUROSHARD_SKIP_BUILD:-0}" != 1 ]; then
  say "cargo build --release --bins"
  scripts/cargo.sh build --release --workspace --bins
else
  # The Python environment is still needed: the libtorch layer is copied from it.
  scripts/setup-python.sh
fi

# --- the Debian root filesystem, made once from Debian packages -------------------------------
rootfs_tar="$NEUROSHARD_CACHE/images/debian-$DEBIAN_SUITE-minbase.tar"
if ! podman image exists "$ROOTFS_IMAGE"; then
  if [ ! -f "$rootfs_tar" ] || [ ! -s "$rootfs_tar" ]; then
    say "mmdebstrap --variant=minbase $DEBIAN_SUITE (Debian packages, about a minute)"
    rm -rf "$rootfs_tar" "$rootfs_tar.partial"
    mkdir -p "$(dirname "$rootfs_tar")"
    # --format=tar: mmdebstrap guesses the format from the name, and `.partial` reads as a
    # directory.
    mmdebstrap --quiet --variant=minbase --format=tar --include=ca-certificates "$DEBIAN_SUITE" \
      "$rootfs_tar.partial" "$DEBIAN_MIRROR"
    mv "$rootfs_tar.partial" "$rootfs_tar"
  fi
  say "podman import $ROOTFS_IMAGE"
  podman import --quiet "$rootfs_tar" "$ROOTFS_IMAGE" >/dev/null
fi

build() { # image containerfile context [build args…]
  local image="$1" file="$2" context="$3"
  shift 3
  say "podman build $image"
  podman build --quiet --layers --file "deploy/images/$file" \
    --build-arg "VERSION=$IMAGE_TAG" --build-arg "REVISION=$REVISION" "$@" \
    --tag "$image" "$context" >/dev/null
}

context="target/images"
rm -rf "$context/bin"
mkdir -p "$context/bin"
build "$BASE_IMAGE" base.Containerfile "$context" --build-arg "ROOTFS=$ROOTFS_IMAGE"

# --- libtorch, once per torch version ---------------------------------------------------------
if ! podman image exists "$LIBTORCH_IMAGE"; then
  site="$PY_ENV/lib/python3.11/site-packages"
  torch_context="$context/libtorch"
  rm -rf "$torch_context"
  mkdir -p "$torch_context/torch/lib" "$torch_context/nvidia"
  # The shared libraries only (no headers, static archives or Python bindings), hard-linked
  # where the cache shares the file system.
  (cd "$site/torch/lib" && find . -maxdepth 1 -name '*.so*' ! -name 'libtorch_python.so' -print0) |
    while IFS= read -r -d '' lib; do
      cp -al "$site/torch/lib/$lib" "$torch_context/torch/lib/" 2>/dev/null ||
        cp -a "$site/torch/lib/$lib" "$torch_context/torch/lib/"
    done
  (cd "$site/nvidia" && find . -path '*/lib/*' -name '*.so*' -print0) |
    while IFS= read -r -d '' lib; do
      mkdir -p "$torch_context/nvidia/$(dirname "$lib")"
      cp -al "$site/nvidia/$lib" "$torch_context/nvidia/$lib" 2>/dev/null ||
        cp -a "$site/nvidia/$lib" "$torch_context/nvidia/$lib"
    done
  say "podman build $LIBTORCH_IMAGE ($(du -sh "$torch_context" | cut -f1) of libraries)"
  podman build --quiet --file deploy/images/libtorch.Containerfile \
    --build-arg "BASE=$BASE_IMAGE" --tag "$LIBTORCH_IMAGE" "$torch_context" >/dev/null
  rm -rf "$torch_context"
fi

# --- the services -----------------------------------------------------------------------------
for binary in "${SERVICES[@]}"; do
  strip --strip-debug -o "$context/bin/$binary" "target/release/$binary"
done
for binary in "${SERVICES[@]}"; do
  case "$binary" in
    shard-worker | diloco-aggregator) base="$LIBTORCH_IMAGE" ;;
    *) base="$BASE_IMAGE" ;;
  esac
  build "$IMAGE_PREFIX/$binary:$IMAGE_TAG" "$binary.Containerfile" "$context" \
    --build-arg "BASE=$base"
done
cp deploy/images/postgres-entrypoint.sh "$context/"
build "$POSTGRES_IMAGE" postgres.Containerfile "$context" --build-arg "ROOTFS=$ROOTFS_IMAGE"

say "images built in $((SECONDS - started)) s:"
podman images --filter "reference=$IMAGE_PREFIX/*" --format '{{.Repository}}:{{.Tag}} {{.Size}}' | sort
