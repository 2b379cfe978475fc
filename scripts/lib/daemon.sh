# Sourced by scripts that run a throwaway vane daemon on loopback (load-test.sh, schemathesis.sh).
#
#   vane_prepare debug|release   VANE_BIN (built unless set), $tmp (removed on exit), $port, $url
#   vane_start                   starts "$VANE_BIN serve" with the store and policies under $tmp and
#                                the caller's VANE_* variables; waits for /health/ready; sets $pid

vane_prepare() {
  if [ -z "${VANE_BIN:-}" ]; then
    if [ "$1" = release ]; then
      cargo build --release --quiet --bin vane
      VANE_BIN=target/release/vane
    else
      cargo build --quiet --bin vane
      VANE_BIN=target/debug/vane
    fi
  fi
  tmp=$(mktemp -d)
  pid=""
  trap vane_cleanup EXIT
  port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
  url="http://127.0.0.1:$port"
  mkdir -p "$tmp/policies"
}

vane_cleanup() {
  [ -z "$pid" ] || kill "$pid" 2>/dev/null || true
  [ -z "$pid" ] || wait "$pid" 2>/dev/null || true
  rm -rf "$tmp"
}

vane_start() {
  VANE_SERVER_LISTEN="127.0.0.1:$port" VANE_STORE_PATH="$tmp/data" VANE_POLICIES_DIR="$tmp/policies" \
    RUST_LOG=warn "$VANE_BIN" serve >"$tmp/daemon.log" 2>&1 &
  pid=$!
  for _ in $(seq 200); do
    curl -sf "$url/health/ready" >/dev/null 2>&1 && return 0
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.05
  done
  echo "daemon not ready" >&2
  cat "$tmp/daemon.log" >&2
  exit 1
}
