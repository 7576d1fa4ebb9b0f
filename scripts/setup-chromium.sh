#!/usr/bin/env bash
# Makes sure headless Chromium (and its WebDriver) is installed: the dashboard tests load the page
# in it and take screenshots. Debian's packages; installed once per machine. Prints the path of
# the chromium binary, which is what the tests run; progress goes to stderr.
set -euo pipefail
if ! command -v chromium >/dev/null 2>&1 || ! command -v chromedriver >/dev/null 2>&1; then
  # Root (as in CI) installs directly; any other account needs sudo.
  if [ "$(id -u)" = 0 ]; then
    as_root=()
  elif command -v sudo >/dev/null 2>&1; then
    as_root=(sudo)
  else
    echo "error: chromium not found and not root; install Debian's chromium and chromium-driver" >&2
    exit 1
  fi
  if ! command -v apt-get >/dev/null 2>&1; then
    echo "error: chromium not found and no apt-get; install chromium and chromium-driver" >&2
    exit 1
  fi
  echo "==> installing Chromium with apt-get" >&2
  "${as_root[@]}" apt-get update -qq
  "${as_root[@]}" env DEBIAN_FRONTEND=noninteractive \
    apt-get install -y -qq chromium chromium-driver >/dev/null
fi
command -v chromium
