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
[ $# -eq 0 ] || exit 0

# The backend matrix: the integration suites run again on PostgreSQL, each
# test in a schema of its own; their tests about the SQLite file itself (its
# locks, pages, permissions, a full disk) return early there. Not in it:
# console, contracts and js_guest, about the browser and guest builds rather
# than storage. CI always runs them (and fails without PostgreSQL); elsewhere
# they are skipped, loudly, when no PostgreSQL answers.
pg_url=${DURABLE_TEST_POSTGRES_URL:-postgres://root@127.0.0.1:5432/test}
postgres_suites=(onboarding operations replay http signals children schedules serve
    api cli errors ownership parallel verify torture serve_torture hardening js_sdk python_sdk)
if [ -n "${CI:-}" ] || [ -n "${DURABLE_TEST_POSTGRES_URL:-}" ] \
    || { command -v pg_isready >/dev/null && pg_isready -q -d "$pg_url"; }; then
    echo "test.sh: the backend matrix: ${postgres_suites[*]} on PostgreSQL ($pg_url)" >&2
    DURABLE_TEST_BACKEND=postgres DURABLE_TEST_POSTGRES_URL=$pg_url \
        cargo test --release -p durable-host -p durable-tests "${postgres_suites[@]/#/--test=}"
else
    echo "test.sh: SKIPPED the PostgreSQL backend matrix: no PostgreSQL answers at $pg_url" >&2
    echo "test.sh: (set DURABLE_TEST_POSTGRES_URL to one; CI never skips it)" >&2
fi
