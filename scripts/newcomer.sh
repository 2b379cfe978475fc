#!/usr/bin/env bash
# What a newcomer does, checked: clone this checkout's HEAD into a temporary directory with nothing
# beside it, build, and follow README's walkthrough command by command. Fails on any non-zero exit,
# any panic, or any relative link in README.md or docs/ that does not exist in the clone.
#
# The walkthrough's commands are not copied here: they are read from README.md, from the fenced
# blocks after `<!-- walkthrough: daemon -->` (run in the background: it ends by starting the daemon)
# and `<!-- walkthrough: client -->` (run once the daemon answers). They run as written, with three
# changes so that runs never collide: /tmp/ becomes a private directory, port 8080 a free port, and
# `cargo run [-q] --release --` the binary just built (a debug build: the same code, built faster).
# `curl` fails on an HTTP error status here, so a refused request fails the walkthrough too.
#
# The build reuses this checkout's target directory (dependencies are shared; only vane compiles).
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
head=$(git -C "$repo" rev-parse HEAD)
target=${CARGO_TARGET_DIR:-$repo/target}
start=$(date +%s)

work=$(mktemp -d)
daemon=""
cleanup() {
  if [ -n "$daemon" ]; then
    kill -- "-$daemon" 2>/dev/null || kill "$daemon" 2>/dev/null || true
    wait "$daemon" 2>/dev/null || true
  fi
  rm -rf "$work"
}
trap cleanup EXIT
fail() { echo "newcomer: FAIL: $*" >&2; exit 1; }

# 1. A fresh clone, with no sibling directories (nothing from outside the repository to lean on).
clone=$work/vane
git clone -q --no-checkout "$repo" "$clone"
git -C "$clone" checkout -q --detach "$head"
[ "$(ls -A "$work")" = vane ] || fail "the clone has company in $work"

# 2. Links: every relative `](path)` of README.md and docs/ exists in the clone.
broken=0
while IFS= read -r md; do
  while IFS= read -r target_path; do
    path=${target_path%%#*}
    case "$path" in "" | *://* | mailto:*) continue ;; esac
    if [ ! -e "$(dirname "$clone/$md")/$path" ]; then
      echo "newcomer: $md links to $target_path, which the clone does not have" >&2
      broken=1
    fi
  done < <(grep -o '](\([^)]*\))' "$clone/$md" | sed 's/^](\(.*\))$/\1/')
done < <(cd "$clone" && { echo README.md; find docs -name '*.md'; } | sort)
[ "$broken" = 0 ] || fail "broken links"

# 3. Build.
(cd "$clone" && CARGO_TARGET_DIR=$target cargo build -q --bin vane) || fail "cargo build"
bin=$target/debug/vane
built=$(date +%s)
# The Kubernetes suites' API server: with nothing beside the clone, tests look in the build script's
# cache (building it takes minutes, so it is not built here; scripts/test.sh does).
apiserver=$(bash "$clone/scripts/build-test-apiserver.sh" --path) || fail "scripts/build-test-apiserver.sh --path"
case "$apiserver" in */vane/crdserver-*/crdserver) ;; *) fail "build-test-apiserver.sh --path printed '$apiserver'" ;; esac

# 4. The walkthrough, as README.md has it.
block() { # the fenced block after the marker line `<!-- walkthrough: $1 -->`
  awk -v m="<!-- walkthrough: $1 " '
    index($0, m) == 1 { armed = 1; next }
    armed && /^```/ { if (inside) exit; inside = 1; next }
    inside { print }' "$clone/README.md"
}
port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
tmp=$work/tmp
mkdir -p "$tmp"
adapt() {
  sed -e "s|/tmp/|$tmp/|g" -e "s|:8080|:$port|g" \
      -e "s|cargo run -q --release --|$bin|g" -e "s|cargo run --release --|$bin|g"
}
preamble=$(cat <<SH
set -euo pipefail
shopt -s expand_aliases
curl() { command curl --silent --show-error --fail-with-body "\$@"; }
export VANE_SERVER_LISTEN=127.0.0.1:$port VANE_URL=http://127.0.0.1:$port
SH
)
for part in daemon client; do
  text=$(block "$part")
  [ -n "$text" ] || fail "README.md has no fenced block after <!-- walkthrough: $part -->"
  printf '%s\n%s\n' "$preamble" "$(printf '%s\n' "$text" | adapt)" > "$work/$part.sh"
done

cd "$clone"
setsid bash "$work/daemon.sh" > "$work/daemon.log" 2>&1 &
daemon=$!
for _ in $(seq 300); do
  curl -sf "http://127.0.0.1:$port/health/ready" >/dev/null && break
  kill -0 "$daemon" 2>/dev/null || { cat "$work/daemon.log" >&2; fail "the daemon block exited"; }
  sleep 0.1
done
curl -sf "http://127.0.0.1:$port/health/ready" >/dev/null || { cat "$work/daemon.log" >&2; fail "daemon not ready in 30 s"; }

status=0
timeout 120 bash -x "$work/client.sh" > "$work/client.log" 2>&1 || status=$?
cat "$work/client.log"
if [ "$status" != 0 ]; then
  echo "--- daemon log" >&2; cat "$work/daemon.log" >&2
  fail "the walkthrough's client block exited $status (the last command above)"
fi
if grep -n -e 'panicked at' -e 'RUST_BACKTRACE' -e 'stack backtrace:' "$work/client.log" "$work/daemon.log" >&2; then
  fail "panic in the output"
fi
kill -0 "$daemon" 2>/dev/null || { cat "$work/daemon.log" >&2; fail "the daemon died during the walkthrough"; }
echo "newcomer: OK (clone and build $((built - start)) s, walkthrough $(($(date +%s) - built)) s)"
