#!/usr/bin/env bash
# Property-based API testing with schemathesis (https://schemathesis.io) against the daemon's own
# OpenAPI document: every operation gets generated valid and invalid requests (examples, coverage and
# fuzzing phases; no stateful phase) and every response must
#   - not be a server error (not_a_server_error),
#   - have a status the document lists for that operation (status_code_conformance),
#   - have the documented content type (content_type_conformance),
#   - match the documented schema (response_schema_conformance).
# Fails on any finding.
#
#   scripts/schemathesis.sh                 # builds the debug binary, ~1-2 minutes
#   VANE_BIN=target/release/vane MAX_EXAMPLES=200 scripts/schemathesis.sh
#
# Needs python3; installs schemathesis into .venv-schemathesis (pip) when `schemathesis` is missing.
set -euo pipefail
cd "$(dirname "$0")/.."

MAX_EXAMPLES=${MAX_EXAMPLES:-30}
CHECKS=${CHECKS:-not_a_server_error,status_code_conformance,content_type_conformance,response_schema_conformance,ignored_auth}

st=$(command -v schemathesis || true)
if [ -z "$st" ]; then
  venv=.venv-schemathesis
  if [ ! -x "$venv/bin/schemathesis" ]; then
    echo "installing schemathesis into $venv ..."
    python3 -m venv "$venv"
    "$venv/bin/pip" install --quiet --disable-pip-version-check 'schemathesis>=4,<5'
  fi
  st="$PWD/$venv/bin/schemathesis"
fi

. scripts/lib/daemon.sh
vane_prepare debug
# Long steps: generated rollouts stay active, so control calls meet every phase rule (200 or 409).
cat >"$tmp/policies/canary-default.yaml" <<'EOF'
name: canary-default
strategy: canary
steps: [5, 25, 50, 100]
interval: 1h
threshold: 5
progressDeadline: 10h
gates:
  - at: 25
    approval: manual
    timeout: 10h
EOF
cat >"$tmp/policies/blue-green.yaml" <<'EOF'
name: blue-green
strategy: blue-green
interval: 1h
threshold: 2
postFlip: 1h
progressDeadline: 10h
EOF

export ST_OPERATOR_TOKEN="st-operator-$(head -c 12 /dev/urandom | od -An -tx1 | tr -d ' \n')"
export VANE_SERVER_TOKENS='[{ name = "schemathesis", token_env = "ST_OPERATOR_TOKEN", role = "operator" }]'
export VANE_SLACK_SIGNING_SECRET="schemathesis-signing-secret" VANE_PROMETHEUS_URL="http://127.0.0.1:9"
export VANE_ROUTERS_EXEC='{ noop = { command = ["true"] } }'
vane_start

# A few real rollouts, so that generated ids sometimes exist and lists are not empty.
for svc in cart search checkout; do
  curl -sf -o /dev/null -X POST "$url/api/v1/rollouts" -H "Authorization: Bearer $ST_OPERATOR_TOKEN" \
    -H 'Content-Type: application/json' \
    -d "{\"service\":\"$svc\",\"namespace\":\"shop\",\"version\":\"v2\",\"stableVersion\":\"v1\",\"policy\":\"canary-default\",\"router\":{\"kind\":\"exec\",\"profile\":\"noop\"}}"
done

status=0
# From the temp dir: schemathesis keeps a cache of failing cases in ./.schemathesis.
(cd "$tmp" && "$st" run "$url/api/v1/openapi.json" \
  --checks "$CHECKS" \
  --header "Authorization: Bearer $ST_OPERATOR_TOKEN" \
  --phases examples,coverage,fuzzing \
  --max-examples "$MAX_EXAMPLES" \
  --seed "${SEED:-42}" \
  --workers 2 \
  --request-timeout 20 \
  --suppress-health-check all \
  --warnings off) || status=$?

if ! kill -0 "$pid" 2>/dev/null; then
  echo "schemathesis: the daemon died" >&2
  cat "$tmp/daemon.log" >&2
  exit 1
fi
if grep -q "panicked" "$tmp/daemon.log"; then
  echo "schemathesis: the daemon panicked" >&2
  grep -A5 "panicked" "$tmp/daemon.log" >&2
  exit 1
fi
exit "$status"
