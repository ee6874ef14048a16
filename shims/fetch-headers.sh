#!/bin/sh
# Fetch the CUDA driver and NVML headers from NVIDIA's PyPI wheels into a per-version cache
# outside the repository, so that a machine with only a C compiler and pip can build the shims.
# Prints the include directory. Reused when present; the headers are never committed.
#
# Usage: fetch-headers.sh <cuda-runtime-version> <nvml-dev-version>
set -eu
cuda_ver=$1
nvml_ver=$2
if [ -n "${HAMI_CUDA_HEADERS:-}" ]; then
    echo "$HAMI_CUDA_HEADERS"
    exit 0
fi
cache=${XDG_CACHE_HOME:-$HOME/.cache}/hami-core-fw/cuda-headers-$cuda_ver-nvml-$nvml_ver
if [ -f "$cache/cuda.h" ] && [ -f "$cache/cudaTypedefs.h" ] && [ -f "$cache/nvml.h" ]; then
    echo "$cache"
    exit 0
fi
python=${PYTHON:-python3}
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
"$python" -m pip download --quiet --disable-pip-version-check --no-deps --only-binary=:all: \
    --platform manylinux2014_x86_64 --platform manylinux_2_17_x86_64 \
    --platform manylinux2014_aarch64 --platform manylinux_2_17_aarch64 \
    -d "$tmp" "nvidia-cuda-runtime==$cuda_ver" "nvidia-nvml-dev==$nvml_ver" >&2
mkdir -p "$cache.partial"
"$python" - "$tmp" "$cache.partial" <<'PY'
import pathlib, sys, zipfile
src, dst = pathlib.Path(sys.argv[1]), pathlib.Path(sys.argv[2])
wanted = {"cuda.h", "cudaTypedefs.h", "nvml.h"}
for whl in sorted(src.glob("*.whl")):
    with zipfile.ZipFile(whl) as zf:
        for name in zf.namelist():
            base = name.rsplit("/", 1)[-1]
            if base in wanted and "/include/" in name:
                (dst / base).write_bytes(zf.read(name))
                wanted.discard(base)
if wanted:
    sys.exit(f"headers missing from the wheels: {sorted(wanted)}")
PY
rm -rf "$cache"
mv "$cache.partial" "$cache"
echo "$cache"
