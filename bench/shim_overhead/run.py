"""Shim overhead benchmark (issue 5, item 7): ns added per call over the no-op stand-in driver.

Builds the shim (``make -C shims``) and ``bench.c``, runs the benchmark once calling the stand-in
driver directly and once with the shim preloaded (memory limit set, no compute limit, so nothing
throttles), and prints the median ns per call of each, the difference and the ratio. Figures
depend on the machine; nothing here asserts them.

    python bench/shim_overhead/run.py
    BENCH_SINGLE_THREAD=1 python bench/shim_overhead/run.py   # no helper thread in the program
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
BUILD = ROOT / "build" / "shims"

# a no-op device: addresses without host memory behind them
FAKE_GPU = "backing = none; device GPU-8f3a89c6-0000-4000-8000-00000000be0c memory_mib=81920"

# HAMi-core's figures measured the same way (issue 5) and the targets
REFERENCE = {
    "launch": (48.0, 10.0),
    "alloc_free_0_live": (850.0, 150.0),
    "alloc_free_1000_live": (4200.0, 150.0),
    "mem_get_info": (740.0, 25.0),
}


def run(exe: Path, env: dict[str, str]) -> dict[str, float]:
    out = subprocess.run([str(exe)], env=env, capture_output=True, text=True, check=True).stdout
    return {k: float(v) for k, v in (line.split() for line in out.splitlines())}


def main() -> int:
    subprocess.run(["make", "-C", str(ROOT / "shims"), "-j2"], check=True, capture_output=True)
    hdr = subprocess.run(
        ["make", "-s", "-C", str(ROOT / "shims"), "headers"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()
    tmp = Path(tempfile.mkdtemp(prefix="hami-bench-"))
    exe = tmp / "bench"
    subprocess.run(
        [
            os.environ.get("CC", "gcc"),
            "-std=c11",
            "-O2",
            "-D_GNU_SOURCE",
            "-D__CUDA_API_VERSION_INTERNAL",
            "-isystem",
            hdr,
            "-o",
            str(exe),
            str(Path(__file__).with_name("bench.c")),
            f"-L{BUILD / 'testing'}",
            f"-Wl,-rpath,{BUILD / 'testing'}",
            "-lcuda",
            "-lpthread",
        ],
        check=True,
    )
    base = {
        k: v for k, v in os.environ.items() if not k.startswith(("CUDA_", "LD_PRELOAD", "GPU_CORE"))
    }
    base.update(
        HAMI_FAKE_GPU_CONFIG=FAKE_GPU,
        CUDA_DEVICE_MEMORY_SHARED_CACHE=str(tmp / "bench.cache"),
        LD_LIBRARY_PATH=str(BUILD / "testing"),
    )
    shim_env = {
        **base,
        "LD_PRELOAD": str(BUILD / "libhami-cuda.so"),
        "CUDA_DEVICE_MEMORY_LIMIT": "64g",
    }
    # interleaved rounds, median per case: other load on the machine hits both sides alike
    rounds = int(os.environ.get("BENCH_ROUNDS", "5"))
    directs, shims = [], []
    for _ in range(rounds):
        directs.append(run(exe, base))
        shims.append(run(exe, shim_env))
    direct = {k: statistics.median(r[k] for r in directs) for k in directs[0]}
    shim = {k: statistics.median(r[k] for r in shims) for k in shims[0]}
    load = os.getloadavg()[0]
    single = os.environ.get("BENCH_SINGLE_THREAD")
    threads = "single-threaded" if single else "an idle helper thread"
    print(
        f"median of {rounds} interleaved rounds (each a median of 7 runs); load {load:.1f}; "
        f"benchmark process with {threads} (bench.c)"
    )
    print(
        f"{'case':<22}{'direct ns':>11}{'shim ns':>10}{'added ns':>10}{'ratio':>8}"
        f"{'target':>9}{'HAMi-core':>11}{'vs HAMi':>9}"
    )
    for case, (hami, target) in REFERENCE.items():
        d, s = direct[case], shim[case]
        added = s - d
        print(
            f"{case:<22}{d:>11.1f}{s:>10.1f}{added:>10.1f}{s / d:>8.2f}"
            f"{target:>9.0f}{hami:>11.0f}{hami / max(added, 0.1):>8.1f}x"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
