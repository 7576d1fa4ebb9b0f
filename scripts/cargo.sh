#!/usr/bin/env bash
# Runs cargo against the cached PyTorch environment: torch-sys links the libtorch that ships
# inside that torch wheel (LIBTORCH_USE_PYTORCH), found through the venv's python on PATH.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=env.sh
source "$here/env.sh"
"$here/setup-rust.sh"
"$here/setup-python.sh"
export PATH="$PY_ENV/bin:$HOME/.cargo/bin:$PATH"
export LIBTORCH_USE_PYTORCH=1
export NEUROSHARD_PYTHON="$PY_ENV/bin/python"
# The default corpus, for the acceptance test that trains on it (cached after the first fetch).
NEUROSHARD_CORPUS="$("$here/fetch-corpus.sh")"
export NEUROSHARD_CORPUS
exec cargo "$@"
