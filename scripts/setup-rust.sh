#!/usr/bin/env bash
# Makes sure a Rust toolchain is on the machine (rustup, pinned by rust-toolchain.toml).
set -euo pipefail
export PATH="$HOME/.cargo/bin:$PATH"
if command -v cargo >/dev/null 2>&1; then
  exit 0
fi
echo "==> no Rust toolchain found; install rustup from your distribution, then re-run" >&2
if command -v apt-get >/dev/null 2>&1; then
  apt-get update -qq && apt-get install -y -qq rustup >/dev/null
  rustup default stable
else
  exit 1
fi
