#!/usr/bin/env bash
# Creates (once) the Python environment with PyTorch that libtorch is linked from, plus
# transformers for the checkpoint-compatibility test and the PyTorch baseline benchmark.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=env.sh
source "$here/env.sh"

if [ -f "$PY_ENV/.complete" ]; then
  exit 0
fi
echo "==> creating the PyTorch $TORCH_VERSION environment in $PY_ENV (once; about 5 GB)"
rm -rf "$PY_ENV"
mkdir -p "$NEUROSHARD_CACHE"
python3 -m venv "$PY_ENV"
"$PY_ENV/bin/pip" install --quiet --disable-pip-version-check --no-input \
  "torch==$TORCH_VERSION" \
  "transformers==$TRANSFORMERS_VERSION" \
  "safetensors==$SAFETENSORS_VERSION" \
  "numpy==$NUMPY_VERSION"
touch "$PY_ENV/.complete"
echo "==> PyTorch environment ready"
