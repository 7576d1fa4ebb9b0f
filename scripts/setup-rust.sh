#!/usr/bin/env bash
# Checks for the Rust toolchain (rustup with the version pinned in rust-toolchain.toml).
# It cannot be installed from the package registries this project may use, so a machine
# without it gets a clear message instead of a half-finished set-up.
set -euo pipefail
export PATH="$HOME/.cargo/bin:$PATH"
if ! command -v cargo >/dev/null 2>&1; then
  echo "error: no Rust toolchain found; install rustup and Rust 1.95 (see rust-toolchain.toml)" >&2
  exit 1
fi
