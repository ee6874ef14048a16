# Shared settings of the control-plane build scripts (sourced by build.sh and gen-gomod.sh).
#
# The pinned versions live here and nowhere else; tests/e2e/harness.py reads the two *_VERSION
# lines to find the binaries. Bumping a version: edit it here, run gen-gomod.sh, commit the
# regenerated go.mod/go.sum files.
K8S_VERSION=v1.36.3
ETCD_VERSION=v3.6.16
# commit time of k8s.io/kubernetes@K8S_VERSION on the module proxy (<proxy>/k8s.io/kubernetes/@v/<v>.info);
# used as the buildDate ldflag so the binaries are reproducible
K8S_BUILD_DATE=2026-07-22T18:07:38Z

# Everything built or downloaded lives outside the repository, keyed by version.
HAMI_CACHE_DIR=${HAMI_CACHE_DIR:-$HOME/.cache/hami-core-fw}
K8S_BIN_DIR=$HAMI_CACHE_DIR/k8s-$K8S_VERSION
ETCD_BIN_DIR=$HAMI_CACHE_DIR/etcd-$ETCD_VERSION

export GOMODCACHE=${HAMI_GOMODCACHE:-$HAMI_CACHE_DIR/go/mod}
export GOCACHE=${HAMI_GOCACHE:-$HAMI_CACHE_DIR/go/build}
# -modcacherw: the module cache stays deletable with rm -rf; -buildvcs=false: the wrapper modules
# sit inside this git repository, whose state must not leak into the binaries
export GOFLAGS="-modcacherw -buildvcs=false"
# never fetch another toolchain: etcd's go.mod suggests a newer patch release, 1.26.0 is required
export GOTOOLCHAIN=local
export CGO_ENABLED=0
