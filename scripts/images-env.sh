# Names shared by scripts/images.sh and the tests that run the images; sourced, never run.
# Needs env.sh (TORCH_VERSION) sourced first.
export CONTAINERS_CONF="${CONTAINERS_CONF:-$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)/deploy/images/containers.conf}"
WORKSPACE_VERSION="$(sed -n 's/^version = "\(.*\)"$/\1/p' "$(dirname "${BASH_SOURCE[0]}")/../Cargo.toml" | head -n 1)"
IMAGE_PREFIX="${IMAGE_PREFIX:-localhost/neuroshard}"
IMAGE_TAG="${IMAGE_TAG:-$WORKSPACE_VERSION}"
REVISION="$(git -C "$(dirname "${BASH_SOURCE[0]}")" rev-parse --short HEAD 2>/dev/null || echo unknown)"
DEBIAN_SUITE="bookworm"
DEBIAN_MIRROR="${DEBIAN_MIRROR:-http://deb.debian.org/debian}"
ROOTFS_IMAGE="localhost/neuroshard/debian:$DEBIAN_SUITE-minbase"
BASE_IMAGE="$IMAGE_PREFIX/base:$IMAGE_TAG"
LIBTORCH_IMAGE="$IMAGE_PREFIX/libtorch:$TORCH_VERSION"
POSTGRES_IMAGE="$IMAGE_PREFIX/postgres:15"
SERVICES=(layer-registry shard-worker diloco-aggregator ledger swarm-gateway neuroshard-operator)
