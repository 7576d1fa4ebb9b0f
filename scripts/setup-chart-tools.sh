#!/usr/bin/env bash
# Creates (once) the Python environment scripts/chart-check.py and scripts/kube_play/run.py
# run in: the Helm v4 SDK as a Python wheel (lint and render, no helm binary),
# kubernetes-validate (offline schemas), and gRPC's health client (the kube-play test asks
# each container's health port).
# The environment lives in the cache outside the clone, keyed by the pinned versions, so a
# version bump makes a new one and a fresh clone reuses an existing one.
# Prints the environment's path on its last line of stdout.
set -euo pipefail

HELM_SDK_VERSION="0.2.2"
KUBERNETES_VALIDATE_VERSION="1.34.1"
PYYAML_VERSION="6.0.2"
JSONSCHEMA_VERSION="4.23.0"
GRPCIO_VERSION="1.85.1"

# shellcheck source=env.sh
source "$(dirname "${BASH_SOURCE[0]}")/env.sh"
cache="$NEUROSHARD_CACHE"
env_dir="$cache/chart-tools-helm-$HELM_SDK_VERSION-kv-$KUBERNETES_VALIDATE_VERSION-grpc-$GRPCIO_VERSION"

mkdir -p "$cache"
# One installer at a time: two checks started together must not build the same environment.
exec 9>"$cache/.setup-chart-tools.lock"
flock 9

if [ ! -f "$env_dir/.complete" ]; then
  echo "==> creating the chart tools environment in $env_dir (once)" >&2
  rm -rf "$env_dir"
  python3 -m venv "$env_dir" >&2
  "$env_dir/bin/pip" install --quiet --disable-pip-version-check --no-input \
    "helm-python-sdk==$HELM_SDK_VERSION" \
    "kubernetes-validate==$KUBERNETES_VALIDATE_VERSION" \
    "PyYAML==$PYYAML_VERSION" \
    "jsonschema==$JSONSCHEMA_VERSION" \
    "grpcio==$GRPCIO_VERSION" \
    "grpcio-health-checking==$GRPCIO_VERSION" >&2
  touch "$env_dir/.complete"
fi
echo "$env_dir"
