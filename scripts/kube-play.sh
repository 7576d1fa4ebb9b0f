#!/usr/bin/env bash
# make kube-play: the chart's control plane and two operator-made CPU nodes as containers of
# this machine's images, under `podman kube play`, driven as a user would (see
# scripts/kube_play/run.py). Builds the images first when any is missing.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
if [ "$#" -gt 0 ]; then
  echo "usage: scripts/kube-play.sh (make kube-play); it takes no arguments: IMAGE_PREFIX and IMAGE_TAG come from the environment (got: $*)" >&2
  exit 2
fi
# shellcheck source=env.sh
source scripts/env.sh
# shellcheck source=images-env.sh
source scripts/images-env.sh
scripts/setup-containers.sh
for image in "${SERVICES[@]/#/$IMAGE_PREFIX/}"; do
  if ! podman image exists "$image:$IMAGE_TAG"; then
    echo "==> $image:$IMAGE_TAG is missing: make images" >&2
    scripts/images.sh
    break
  fi
done
tools="$(scripts/setup-chart-tools.sh | tail -n 1)"
# The tokenizer the gateway serves with is trained from the default corpus.
NEUROSHARD_CORPUS="$(scripts/fetch-corpus.sh)"
export NEUROSHARD_CORPUS
[ -x target/release/neuroshard ] || scripts/cargo.sh build --release -p neuroshard-cli --bins
exec "$tools/bin/python" scripts/kube_play/run.py --image-prefix "$IMAGE_PREFIX" --tag "$IMAGE_TAG"
