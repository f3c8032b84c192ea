#!/usr/bin/env bash
# Builds the Go test programs of test/go offline, in GOPATH mode, from Debian's Go sources
# (golang-go, golang-github-containerd-containerd-dev in /usr/share/gocode): nothing is fetched.
#   native-snapshotter         containerd's native snapshotter served over the snapshots gRPC API
#   snapshotter-suite.test     containerd's snapshotter test suite against an external process
# The binaries are cached under $THINPOOL_GO_CACHE (default ${XDG_CACHE_HOME:-~/.cache}/thinpool/go)
# in a directory named after a hash of the Go sources, this script, the Go version and the
# containerd package version, so they are rebuilt exactly when one of those changes. Concurrent
# runs wait for each other (flock). Prints NAME=PATH lines for the built programs.
# Usage: test/go/build.sh   (exit 3 when go or the containerd sources are missing)
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
gocode=${THINPOOL_GOCODE:-/usr/share/gocode}
if ! command -v go > /dev/null 2>&1; then
  echo "build.sh: go is missing (Debian package golang-go)" >&2
  exit 3
fi
if [ ! -d "$gocode/src/github.com/containerd/containerd/snapshots/testsuite" ]; then
  echo "build.sh: containerd's Go sources are missing in $gocode (Debian package golang-github-containerd-containerd-dev)" >&2
  exit 3
fi
base=${XDG_CACHE_HOME:-${HOME:-/tmp}/.cache}
cache=${THINPOOL_GO_CACHE:-$base/thinpool/go}
mkdir -p "$cache"
exec 9> "$cache/lock"
flock 9

hash=$(
  {
    go version
    dpkg-query -W -f='${Version}\n' golang-github-containerd-containerd-dev 2> /dev/null || echo unknown
    cd "$here" && find . -type f \( -name '*.go' -o -name build.sh \) -print0 | sort -z | xargs -0 sha256sum
  } | sha256sum | cut -c1-16
)
out="$cache/bin-$hash"
if [ ! -x "$out/native-snapshotter" ] || [ ! -x "$out/snapshotter-suite.test" ]; then
  tmp="$cache/tmp-$hash.$$"
  rm -rf "$tmp"
  mkdir -p "$tmp"
  export GO111MODULE=off GOPATH="$gocode" GOCACHE="$cache/gocache" GOPROXY=off GOFLAGS= CGO_ENABLED=0
  start=$(date +%s)
  (cd "$here/native-snapshotter" && go build -o "$tmp/native-snapshotter" .) >&2
  (cd "$here/snapshotter-suite" && go test -c -o "$tmp/snapshotter-suite.test" .) >&2
  echo "build.sh: built in $(($(date +%s) - start)) s into $out" >&2
  rm -rf "$out"
  mv "$tmp" "$out"
  # Older builds are of no further use.
  for old in "$cache"/bin-* "$cache"/tmp-*; do
    [ "$old" = "$out" ] || rm -rf "$old"
  done
fi
echo "native-snapshotter=$out/native-snapshotter"
echo "snapshotter-suite=$out/snapshotter-suite.test"
