#!/usr/bin/env bash
# The onboarding demo: start a workflow, crash the host in the middle of it,
# resume it, and show that no side effect ran twice.
set -euo pipefail
cd "$(dirname "$0")/.."

rustup target add wasm32-wasip2 >/dev/null
# With the tests' package too: their shared dependencies then get the same
# features as in ./scripts/test.sh, which reuses this build of the host.
cargo build --release -p durable-host -p durable-tests
cargo build --release --target wasm32-wasip2 -p onboarding

host=target/release/durable-host
wasm=target/wasm32-wasip2/release/onboarding.wasm
demo=target/demo
rm -rf "$demo" && mkdir -p "$demo/services"
run() { "$host" run "$wasm" --workflow-id emp-001 --db "$demo/durable.db" --dir "$demo/services::/services" "$@"; }
ledgers() { for d in "$demo"/services/*/; do printf '    %-10s %s call(s)\n' "$(basename "$d")" "$(ls "$d" | grep -c '\.json$')"; done; }
say() { printf '\n\033[1m== %s\033[0m\n' "$*"; }

say "1. Start onboarding for emp-001; the host crashes just before send_welcome_email runs"
set +e
run --input '{"id": "emp-001", "name": "Ada Lovelace", "email": "ada@example.com", "role": "engineer", "service_latency_ms": 150}' \
    --crash send_welcome_email:before
code=$?
set -e
[ "$code" -eq 3 ] || { echo "expected the simulated crash (exit 3), got exit $code" >&2; exit 1; }
echo "  (exit $code: simulated crash) mock services called so far:"
ledgers

say "2. Run emp-001 again: finished steps are replayed from $demo/durable.db, the rest executes"
run

say "3. And once more: the workflow is finished, nothing runs"
run
echo "  mock services, each called exactly once:"
ledgers
for d in "$demo"/services/*/; do
    [ "$(ls "$d" | grep -c '\.json$')" -eq 1 ] || { echo "expected exactly one call of $(basename "$d")" >&2; exit 1; }
done
echo
echo "Ask for the stored result as JSON: $host run $wasm --workflow-id emp-001 --db $demo/durable.db --json"
