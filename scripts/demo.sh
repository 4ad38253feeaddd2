#!/usr/bin/env bash
# The onboarding demo: start a workflow, crash the host in the middle of it,
# resume it, and show that no side effect ran twice.
#
#   ./scripts/demo.sh              the Rust workflow (workflows/onboarding)
#   ./scripts/demo.sh typescript   the same workflow in TypeScript (workflows/onboarding-js)
#   ./scripts/demo.sh python       the same workflow in Python (workflows/onboarding-py)
set -euo pipefail
cd "$(dirname "$0")/.."

language=${1:-rust}
case "$language" in
    rust | typescript | python) ;;
    *) echo "usage: $0 [rust|typescript|python]" >&2; exit 2 ;;
esac

rustup target add wasm32-wasip2 >/dev/null
# With the tests' package too: their shared dependencies then get the same
# features as in ./scripts/test.sh, which reuses this build of the host
# (and it builds mock-http, the TypeScript example's services).
cargo build --release -p durable-host -p durable-tests

host=target/release/durable-host
demo=target/demo
rm -rf "$demo" && mkdir -p "$demo/services"
say() { printf '\n\033[1m== %s\033[0m\n' "$*"; }

# Rust and Python: each call leaves one file in the service's directory.
calls() { ls "$demo/services/$1" 2>/dev/null | grep -c '\.json$' || true; }
grants=(--dir "$demo/services::/services")
services_url=
if [ "$language" = rust ]; then
    cargo build --release --target wasm32-wasip2 -p onboarding
    wasm=target/wasm32-wasip2/release/onboarding.wasm
elif [ "$language" = python ]; then
    # The SDK in a virtualenv of its own (the tests' one), which brings componentize-py.
    venv=target/py-guests/venv
    [ -x "$venv/bin/python" ] || python3 -m venv "$venv"
    "$venv/bin/pip" install --quiet --disable-pip-version-check ./guest-sdk-py
    wasm=$demo/onboarding-py.wasm
    (cd workflows/onboarding-py && PYTHONDONTWRITEBYTECODE=1 "../../$venv/bin/durable-build" onboarding.py -o "../../$wasm")
else
    (cd workflows/onboarding-js && npm ci --no-audit --no-fund --loglevel=error && npm run --silent build)
    wasm=workflows/onboarding-js/onboarding.wasm
    # The TypeScript workflow's services are HTTP services: mock-http, on a
    # free port, which prints each call it receives.
    target/release/mock-http 127.0.0.1:0 > "$demo/mock-http.log" &
    mock_http=$!
    trap 'kill "$mock_http" 2>/dev/null || true' EXIT
    until grep -q listening "$demo/mock-http.log"; do
        kill -0 "$mock_http" 2>/dev/null || { echo "mock-http did not start: $(cat "$demo/mock-http.log")" >&2; exit 1; }
        sleep 0.1
    done
    services_url=$(sed -n 's/.*listening on //p' "$demo/mock-http.log")
    grants=(--allow-http "${services_url#http://}")
    # A call counts once per idempotency key: a repeat gets the first answer.
    calls() { grep -c "^POST /$1/.*(new)" "$demo/mock-http.log" || true; }
fi

run() { "$host" run "$wasm" --workflow-id emp-001 --db "$demo/durable.db" "${grants[@]}" "$@"; }
ledgers() { for s in hr it iam mail; do printf '    %-10s %s call(s)\n' "$s" "$(calls "$s")"; done; }

say "1. Start onboarding for emp-001; the host crashes just before send_welcome_email runs"
set +e
run --input '{"id": "emp-001", "name": "Ada Lovelace", "email": "ada@example.com", "role": "engineer", "service_latency_ms": 150'"${services_url:+, \"services_url\": \"$services_url\"}"'}' \
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
for s in hr it iam mail; do
    [ "$(calls "$s")" -eq 1 ] || { echo "expected exactly one call of $s" >&2; exit 1; }
done
echo
echo "Ask for the stored result as JSON: $host run $wasm --workflow-id emp-001 --db $demo/durable.db --json"
