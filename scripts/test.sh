#!/usr/bin/env bash
# Runs every test: unit tests of the host, then the integration tests, which
# build the real durable-host binary and the guest components and drive them
# (crashes and kills included). Does its own set-up on a fresh machine.
set -euo pipefail
cd "$(dirname "$0")/.."

rustup target add wasm32-wasip2
# The web console's tests drive Debian's Chromium through chromedriver.
if ! command -v chromium >/dev/null || ! command -v chromedriver >/dev/null; then
    echo "test.sh: installing chromium and chromium-driver for the console's browser tests" >&2
    sudo=$([ "$(id -u)" = 0 ] || echo sudo)
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq chromium chromium-driver >/dev/null
fi
cargo fmt --all -- --check
cargo test --release "$@"
# The guest SDK's own unit tests (its HTTP client), natively.
cargo test --release -p durable-sdk --features http --lib
