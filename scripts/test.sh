#!/usr/bin/env bash
# Run every test: unit, property, API, driver, crash, real Prometheus / NGINX / Kubernetes API server,
# plus the deployment manifests and dashboards, schemathesis against the API's OpenAPI document, and a
# fresh clone following the README (scripts/newcomer.sh).
# Installs the Debian packages the tests need when missing.
set -euo pipefail
cd "$(dirname "$0")/.."

missing=()
command -v prometheus >/dev/null || missing+=(prometheus)
command -v nginx >/dev/null || [ -x /usr/sbin/nginx ] || missing+=(nginx)
command -v etcd >/dev/null || missing+=(etcd-server)
# etcd-client compiles the etcd v3 protobufs at build time (protoc and the well-known types)
command -v protoc >/dev/null || missing+=(protobuf-compiler)
[ -f /usr/include/google/protobuf/descriptor.proto ] || missing+=(libprotobuf-dev)
command -v xz >/dev/null || missing+=(xz-utils)
command -v curl >/dev/null || missing+=(curl)
# scripts/schemathesis.sh installs schemathesis into a venv unless it is on PATH.
command -v schemathesis >/dev/null || python3 -c 'import venv, ensurepip' 2>/dev/null || missing+=(python3-venv)
if [ ${#missing[@]} -gt 0 ]; then
  echo "installing test dependencies: ${missing[*]}"
  sudo=""; [ "$(id -u)" -eq 0 ] || sudo="sudo"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi
export PATH="$PATH:/usr/sbin"

# The Kubernetes suites' API server: built from Debian's Go source packages and cached the first time
# (8 minutes of CPU time, a 277 MB download), unless a ready-made one is at hand (tests/support/k8s.rs
# has the same order; VANE_TEST_NO_SHORTCUT=1 ignores ../shared).
if [ -z "${VANE_TEST_APISERVER:-}" ] && { [ -n "${VANE_TEST_NO_SHORTCUT:-}" ] || [ ! -f ../shared/k8s-test/crdserver.xz ]; }; then
  scripts/build-test-apiserver.sh >/dev/null
fi

cargo test --all-targets --no-fail-fast
bash scripts/validate-deploy.sh
bash scripts/schemathesis.sh
bash scripts/newcomer.sh
