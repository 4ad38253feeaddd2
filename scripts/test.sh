#!/usr/bin/env bash
# Runs every test: unit tests of the host, then the integration tests, which
# build the real durable-host binary and the guest components and drive them
# (crashes and kills included). Does its own set-up on a fresh machine.
set -euo pipefail
cd "$(dirname "$0")/.."

rustup target add wasm32-wasip2
cargo fmt --all -- --check
cargo test --release "$@"
