#!/usr/bin/env bash
# Creates (once) the Python environment with PyTorch that libtorch is linked from, plus
# transformers for the checkpoint-compatibility test and the PyTorch baseline benchmark, and the
# OpenAI client for the gateway's compatibility test.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=env.sh
source "$here/env.sh"

# Small client libraries go into the environment in their own step, marked per version, so
# adding or bumping one never rebuilds the environment or downloads PyTorch again.
install_clients() {
  local marker="$PY_ENV/.openai-$OPENAI_VERSION"
  if [ -f "$marker" ]; then
    return 0
  fi
  echo "==> installing openai $OPENAI_VERSION into $PY_ENV"
  "$PY_ENV/bin/pip" install --quiet --disable-pip-version-check --no-input "openai==$OPENAI_VERSION"
  touch "$marker"
}

# One installer at a time: two cargo runs started together (or a test run and `make up`) must
# not both create the environment, one deleting what the other is installing.
mkdir -p "$NEUROSHARD_CACHE"
exec 9>"$NEUROSHARD_CACHE/.setup-python.lock"
flock 9

if [ -f "$PY_ENV/.complete" ]; then
  install_clients
  exit 0
fi
echo "==> creating the PyTorch $TORCH_VERSION environment in $PY_ENV (once; about 5 GB)"
rm -rf "$PY_ENV"
mkdir -p "$NEUROSHARD_CACHE"
if ! python3 -m venv "$PY_ENV" >/dev/null 2>&1; then
  # Debian's python3 ships venv and pip separately.
  if command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
    echo "==> installing python3-venv and python3-pip with apt-get"
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-venv python3-pip >/dev/null
    rm -rf "$PY_ENV"
    python3 -m venv "$PY_ENV"
  else
    echo "error: python3 cannot create a virtual environment; install python3-venv" >&2
    exit 1
  fi
fi
"$PY_ENV/bin/pip" install --quiet --disable-pip-version-check --no-input \
  "torch==$TORCH_VERSION" \
  "transformers==$TRANSFORMERS_VERSION" \
  "safetensors==$SAFETENSORS_VERSION" \
  "numpy==$NUMPY_VERSION"
touch "$PY_ENV/.complete"
install_clients
echo "==> PyTorch environment ready"
