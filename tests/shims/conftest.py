"""Fixtures driving the shim's C test programs against the stand-in driver.

The build directory comes from ``HAMI_SHIM_BUILD`` (tox sets it; relative paths are taken from the
repository root), default ``build/shims``. A sanitizer build records its runtime in
``build-info``; it is preloaded ahead of the shim.
"""

from __future__ import annotations

import os
import select
import subprocess
import tempfile
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from hami_core_fw.monitor import region

ROOT = Path(__file__).resolve().parents[2]

# Variables a developer's shell may carry that would change what the programs do.
_SCRUB = (
    "CUDA_DEVICE_MEMORY_SHARED_CACHE",
    "CUDA_DISABLE_CONTROL",
    "CUDA_VISIBLE_DEVICES",
    "NVIDIA_VISIBLE_DEVICES",
    "GPU_CORE_UTILIZATION_POLICY",
    "LIBCUDA_LOG_LEVEL",
    "CUDA_TASK_PRIORITY",
    "HAMI_FAKE_GPU_CONFIG",
    "LD_PRELOAD",
)

TWO_DEVICES = (
    'device GPU-11111111-2222-3333-4444-555555555555 name="NVIDIA A100-SXM4-80GB" '
    "memory_mib=81920 sms=108 threads_per_sm=2048 pci=0000:07:00.0\n"
    'device GPU-66666666-7777-8888-9999-000000000000 name="NVIDIA A100-SXM4-80GB" '
    "memory_mib=81920 sms=108 threads_per_sm=2048 pci=0000:0f:00.0\n"
)


def build_dir() -> Path:
    raw = os.environ.get("HAMI_SHIM_BUILD", "build/shims")
    path = Path(raw)
    return path if path.is_absolute() else ROOT / path


def build_info(build: Path) -> dict[str, str]:
    info: dict[str, str] = {}
    for line in (build / "build-info").read_text().splitlines():
        key, _, value = line.partition("=")
        info[key] = value
    return info


@dataclass
class Result:
    rc: int
    stdout: str
    stderr: str
    values: dict[str, str] = field(default_factory=dict)

    def int(self, key: str) -> int:
        return int(self.values[key])


def parse(stdout: str) -> dict[str, str]:
    out: dict[str, str] = {}
    for line in stdout.splitlines():
        key, sep, value = line.partition("=")
        if sep:
            out[key] = value
    return out


class Proc:
    """A running test program that stops at `hold=<tag>` lines until told to continue."""

    def __init__(self, argv: list[str], env: Mapping[str, str]) -> None:
        # stderr goes to a file: a program logging many refusals must never block on a full pipe
        self.err = tempfile.TemporaryFile()  # noqa: SIM115 - closed in finish()
        self.p = subprocess.Popen(
            argv,
            env=dict(env),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self.err,
            bufsize=0,
        )
        self.lines: list[str] = []
        self._partial = b""

    def until(self, tag: str, timeout: float = 120) -> dict[str, str]:
        assert self.p.stdout is not None
        deadline = time.monotonic() + timeout
        fd = self.p.stdout.fileno()
        while True:
            while b"\n" in self._partial:
                raw, self._partial = self._partial.split(b"\n", 1)
                line = raw.decode()
                self.lines.append(line)
                if line.strip() == f"hold={tag}":
                    return parse("\n".join(self.lines))
            ready, _, _ = select.select([fd], [], [], max(0.0, deadline - time.monotonic()))
            if not ready:
                self.kill()
                raise AssertionError(
                    f"no hold={tag} within {timeout}s; output so far: {self.lines}"
                )
            chunk = os.read(fd, 65536)
            if not chunk:
                self.p.wait()
                self.err.seek(0)
                err = self.err.read().decode(errors="replace")
                raise AssertionError(f"exited before hold={tag}: {self.lines} stderr={err}")
            self._partial += chunk

    def resume(self) -> None:
        assert self.p.stdin is not None
        self.p.stdin.write(b"\n")

    def finish(self, timeout: float = 120) -> Result:
        out, _ = self.p.communicate(input=b"\n\n\n", timeout=timeout)
        self.err.seek(0)
        err = self.err.read().decode(errors="replace")
        self.err.close()
        stdout = "\n".join([*self.lines, (self._partial + out).decode()])
        return Result(self.p.returncode, stdout, err, parse(stdout))

    def kill(self) -> None:
        if self.p.poll() is None:
            self.p.kill()
        self.p.wait()


@dataclass
class Shim:
    """Runs the test programs with or without the shim preloaded, sharing one region file."""

    build: Path
    tmp: Path
    preload: list[str]
    base_env: dict[str, str]

    @property
    def cache(self) -> Path:
        return self.tmp / "container.cache"

    def exe(self, name: str) -> str:
        return str(self.build / "snippets" / name)

    def env(self, shim: bool = True, **extra: str) -> dict[str, str]:
        env = dict(self.base_env)
        if shim:
            env["LD_PRELOAD"] = ":".join(self.preload)
        else:
            runtime = [p for p in self.preload if "libhami-cuda" not in p]
            if runtime:
                env["LD_PRELOAD"] = ":".join(runtime)
        env.update(extra)
        return env

    def run(
        self, name: str, *args: str, shim: bool = True, timeout: float = 300, **extra: str
    ) -> Result:
        p = subprocess.run(
            [self.exe(name), *args],
            env=self.env(shim, **extra),
            input="\n\n\n",
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
        return Result(p.returncode, p.stdout, p.stderr, parse(p.stdout))

    def start(self, name: str, *args: str, shim: bool = True, **extra: str) -> Proc:
        return Proc([self.exe(name), *args], self.env(shim, **extra))

    def region(self) -> region.Region:
        return region.read_file(self.cache)


@pytest.fixture(scope="session")
def shim_build() -> Path:
    build = build_dir()
    missing = [
        p
        for p in (
            "libhami-cuda.so",
            "testing/libcuda.so.1",
            "testing/libnvidia-ml.so.1",
            "build-info",
        )
        if not (build / p).exists()
    ]
    if missing:
        pytest.fail(f"shim build incomplete in {build} (missing {missing}); run `make -C shims`")
    return build


@pytest.fixture
def shim(shim_build: Path, tmp_path: Path) -> Shim:
    return make_shim(shim_build, tmp_path)


@pytest.fixture(scope="session")
def shim_factory(shim_build: Path) -> Callable[[Path], Shim]:
    """Makes a :class:`Shim` in a given directory (for fixtures wider than one test)."""
    return lambda tmp: make_shim(shim_build, tmp)


def make_shim(shim_build: Path, tmp_path: Path) -> Shim:
    """A :class:`Shim` whose region file and device table live in ``tmp_path``."""
    info = build_info(shim_build)
    preload = [info["sanitizer_runtime"]] if info.get("sanitizer_runtime") else []
    preload.append(str(shim_build / "libhami-cuda.so"))
    env = {
        k: v for k, v in os.environ.items() if k not in _SCRUB and not k.startswith("CUDA_DEVICE_")
    }
    env.update(
        LD_LIBRARY_PATH=str(shim_build / "testing"),
        CUDA_DEVICE_MEMORY_SHARED_CACHE=str(tmp_path / "container.cache"),
        HAMI_SHIM_MOUNTED_DIR=str(tmp_path / "no-mounted-dir"),
        HAMI_FAKE_GPU_CONFIG=str(tmp_path / "gpus.conf"),
        ASAN_OPTIONS="detect_leaks=0:abort_on_error=0:exitcode=66",
        UBSAN_OPTIONS="print_stacktrace=1:halt_on_error=1:exitcode=66",
        TSAN_OPTIONS="halt_on_error=1:exitcode=66:report_signal_unsafe=0:die_after_fork=0",
    )
    (tmp_path / "gpus.conf").write_text("driver_version = 13040\n" + TWO_DEVICES)
    return Shim(shim_build, tmp_path, preload, env)
