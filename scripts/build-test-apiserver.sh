#!/usr/bin/env bash
# Builds the test Kubernetes API server (`crdserver`: Kubernetes' apiextensions-apiserver with the
# wrapper in tests/k8s-server/src) from Debian's Go source packages, and caches it.
#
#   scripts/build-test-apiserver.sh          build unless cached; print the binary's path
#   scripts/build-test-apiserver.sh --path   only print where the cached binary is (or would be)
#
# First build (measured twice): 8 to 9 minutes of CPU time (user+sys), i.e. minutes of wall time on
# 2 free cores and much longer on a busy machine; a 277 MB download and up to 5.3 GB in a temporary
# directory ($TMPDIR: packages, unpacked sources, Go's build cache), removed afterwards. Needs apt-get, dpkg-deb and debian-archive-keyring (any
# Debian or Ubuntu system); it uses a private apt state directory, so nothing in /etc changes and no
# root is needed. The cache is keyed by a hash of the wrapper source, packages.txt and this script's code:
# ${XDG_CACHE_HOME:-~/.cache}/vane/crdserver-<hash>/crdserver.
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
src=$repo/tests/k8s-server
self=$repo/scripts/build-test-apiserver.sh

# (The script's comments are not part of the key: editing them keeps the cache.)
hash=$(cat "$src"/src/*.go "$src/packages.txt" <(grep -v '^[[:space:]]*#' "$self") | sha256sum | cut -c1-16)
dir=${XDG_CACHE_HOME:-$HOME/.cache}/vane/crdserver-$hash
bin=$dir/crdserver

case "${1:-}" in
  --path) echo "$bin"; exit 0 ;;
  "") ;;
  *) echo "usage: $0 [--path]" >&2; exit 2 ;;
esac
if [ -x "$bin" ]; then
  echo "$bin"
  exit 0
fi

keyring=/usr/share/keyrings/debian-archive-keyring.gpg
for tool in apt-get dpkg-deb sha256sum; do
  command -v "$tool" >/dev/null || { echo "$0: needs $tool (a Debian or Ubuntu system)" >&2; exit 1; }
done
[ -r "$keyring" ] || { echo "$0: needs $keyring: apt-get install debian-archive-keyring" >&2; exit 1; }

echo "building the test Kubernetes API server (first time only: 8 min of CPU, 277 MB download)" >&2
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
mkdir -p "$work/parts" "$work/lists/partial" "$work/cache/archives/partial" "$work/dl" "$work/root"
cat > "$work/parts/debian.sources" <<SRC
Types: deb
URIs: http://deb.debian.org/debian
Suites: trixie sid
Components: main
Signed-By: $keyring
SRC
apt_opts=(-o Dir::Etc::SourceList=/dev/null -o Dir::Etc::SourceParts="$work/parts"
          -o Dir::State::Lists="$work/lists" -o Dir::Cache="$work/cache" -o Debug::NoLocking=true)
# As root, apt drops to the _apt user to download, which cannot write into our private directories.
[ "$(id -u)" != 0 ] || apt_opts+=(-o APT::Sandbox::User=root)
# apt's output goes to stderr: stdout is only the binary's path.
apt-get "${apt_opts[@]}" update -qq >&2
mapfile -t packages < <(grep -v -e '^#' -e '^[[:space:]]*$' "$src/packages.txt")
if ! (cd "$work/dl" && apt-get "${apt_opts[@]}" download "${packages[@]}") >&2; then
  echo "$0: could not download the packages pinned in tests/k8s-server/packages.txt (apt says which above)." >&2
  echo "Debian's unstable suite moves: set the line of a package that is gone to a version that" >&2
  echo "'apt-cache madison PACKAGE' lists for trixie or sid." >&2
  exit 1
fi
for deb in "$work"/dl/*.deb; do dpkg-deb -x "$deb" "$work/root"; done

gopath=$work/root/usr/share/gocode
# Allow CRD groups without a dot (apps, autoscaling), so apps/v1 Deployment can be served as a CRD.
v=$gopath/src/k8s.io/apiextensions-apiserver/pkg/apis/apiextensions/validation/validation.go
chmod u+w "$v"
sed -i 's/} else if len(strings.Split(spec.Group, ".")) < 2 {/} else if os.Getenv("CRDSERVER_STRICT_GROUPS") != "" \&\& len(strings.Split(spec.Group, ".")) < 2 {/' "$v"
grep -q CRDSERVER_STRICT_GROUPS "$v" || { echo "$0: could not patch $v (apiextensions-apiserver changed?)" >&2; exit 1; }
grep -q '^\s*"os"$' "$v" || sed -i '0,/^import (/s//import (\n\t"os"/' "$v"
mkdir -p "$gopath/src/vanetest/crdserver"
cp "$src"/src/*.go "$gopath/src/vanetest/crdserver/"

goroot=$(echo "$work"/root/usr/lib/go-1.*)   # the one Go toolchain packages.txt pins
[ -x "$goroot/bin/go" ] || { echo "$0: no Go toolchain unpacked at $goroot" >&2; exit 1; }
mkdir -p "$work/gotmp"
export GOROOT=$goroot GOPATH=$gopath GO111MODULE=off GOPROXY=off \
       GOTOOLCHAIN=local CGO_ENABLED=0 GOFLAGS='' GOCACHE=$work/gocache GOTMPDIR=$work/gotmp
mkdir -p "$dir"
"$GOROOT/bin/go" build -p "$(nproc)" -trimpath -ldflags "-s -w" -o "$work/crdserver" vanetest/crdserver
# Into the cache only once complete, so an interrupted build never leaves a broken binary there.
mv "$work/crdserver" "$bin.tmp.$$" && mv "$bin.tmp.$$" "$bin"
echo "built $bin" >&2
echo "$bin"
