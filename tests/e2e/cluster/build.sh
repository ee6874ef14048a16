#!/usr/bin/env bash
# Builds the real control-plane binaries used by tests/e2e: kube-apiserver and kube-scheduler from
# k8s.io/kubernetes (wrapper module k8s/) and etcd from go.etcd.io/etcd/server/v3 (wrapper module
# etcd/), all from the Go module proxy, into a cache outside the repository keyed by version:
#
#   ${HAMI_CACHE_DIR:-$HOME/.cache/hami-core-fw}/k8s-<v>/{kube-apiserver,kube-scheduler}
#   ${HAMI_CACHE_DIR:-$HOME/.cache/hami-core-fw}/etcd-<v>/etcd
#
# Idempotent: a binary is rebuilt only when its stamp file (written after a successful build, so a
# killed build is redone) is missing or records different inputs (go.mod, go.sum, ldflags, Go
# version). The Go module and build caches live under the same cache directory. Prints how long
# each step took. Measured on 2 cores (cold: empty cache dir, downloads included): etcd 41-47 s,
# kube-apiserver 163-173 s, kube-scheduler 14-18 s after it, about 4 min in all, 3.5 GB of cache;
# stamps removed but Go caches warm: 8 s; everything cached: 0.05 s.
#
# Environment: HAMI_CACHE_DIR, HAMI_GOMODCACHE, HAMI_GOCACHE (see env.sh), HAMI_GO_PARALLEL (-p, default 2).
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=env.sh
. "$here/env.sh"

parallel=${HAMI_GO_PARALLEL:-2}
mkdir -p "$HAMI_CACHE_DIR" "$K8S_BIN_DIR" "$ETCD_BIN_DIR"

log() { echo "[build.sh] $*"; }
now() { date +%s.%N; }
elapsed() { awk -v a="$1" -v b="$(now)" 'BEGIN {printf "%.1f", b - a}'; }

# One build at a time per cache directory (the pytest fixture and tox may both call this script).
exec 9>"$HAMI_CACHE_DIR/.build.lock"
if ! flock -n 9; then
    log "another build holds $HAMI_CACHE_DIR/.build.lock; waiting"
    flock 9
fi

# The committed wrapper modules must match env.sh (else run gen-gomod.sh).
grep -q "k8s.io/kubernetes $K8S_VERSION\b" "$here/k8s/go.mod" \
    || { log "k8s/go.mod does not require k8s.io/kubernetes $K8S_VERSION; run gen-gomod.sh" >&2; exit 1; }
grep -q "go.etcd.io/etcd/server/v3 $ETCD_VERSION\b" "$here/etcd/go.mod" \
    || { log "etcd/go.mod does not require etcd server $ETCD_VERSION; run gen-gomod.sh" >&2; exit 1; }

k8s_minor=${K8S_VERSION#v1.}
k8s_minor=${k8s_minor%%.*}
k8s_ldflags="-s -w \
 -X k8s.io/component-base/version.gitVersion=$K8S_VERSION \
 -X k8s.io/component-base/version.gitMajor=1 \
 -X k8s.io/component-base/version.gitMinor=$k8s_minor \
 -X k8s.io/component-base/version.gitTreeState=clean \
 -X k8s.io/component-base/version.buildDate=$K8S_BUILD_DATE"
etcd_ldflags="-s -w"
go_version=$(go env GOVERSION)

# build <module dir> <package> <output file> <ldflags>
build() {
    local moddir=$1 pkg=$2 out=$3 ldflags=$4 stamp key start tmp
    stamp="$(dirname "$out")/.$(basename "$out").stamp"
    key=$(cat "$moddir/go.mod" "$moddir/go.sum" <(echo "$pkg|$ldflags|$go_version|$CGO_ENABLED") \
        | sha256sum | cut -d' ' -f1)
    if [[ -x "$out" && -f "$stamp" && "$(cat "$stamp")" == "$key" ]]; then
        log "$(basename "$out"): cached at $out"
        return
    fi
    rm -f "$stamp" "$out".tmp.*  # leftovers of a killed build (we hold the lock)
    start=$(now)
    log "$(basename "$out"): downloading modules"
    (cd "$moddir" && go mod download)
    log "$(basename "$out"): modules ready in $(elapsed "$start")s; building $pkg (-p $parallel)"
    start=$(now)
    tmp="$out.tmp.$$"
    (cd "$moddir" && go build -p "$parallel" -trimpath -ldflags "$ldflags" -o "$tmp" "$pkg")
    mv -f "$tmp" "$out"
    echo "$key" >"$stamp"
    log "$(basename "$out"): built in $(elapsed "$start")s -> $out"
}

trap 'rm -f "$ETCD_BIN_DIR"/*.tmp.$$ "$K8S_BIN_DIR"/*.tmp.$$' EXIT
trap 'exit 130' INT
trap 'exit 143' TERM
total=$(now)
build "$here/etcd" go.etcd.io/etcd/server/v3 "$ETCD_BIN_DIR/etcd" "$etcd_ldflags"
build "$here/k8s" k8s.io/kubernetes/cmd/kube-apiserver "$K8S_BIN_DIR/kube-apiserver" "$k8s_ldflags"
build "$here/k8s" k8s.io/kubernetes/cmd/kube-scheduler "$K8S_BIN_DIR/kube-scheduler" "$k8s_ldflags"
log "all binaries ready in $(elapsed "$total")s (cache: $HAMI_CACHE_DIR)"
