"""Fixtures of the hami-nvidia tests: a stand-in NVML device table and a fake sysfs tree."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from nvml_standin import TABLE, standin_dir


@pytest.fixture(scope="session")
def nvml_dir() -> Path:
    """Directory of the stand-in libnvidia-ml.so.1 (built by make -C shims when missing)."""
    return standin_dir()


@pytest.fixture
def gpu_table(tmp_path: Path, nvml_dir: Path) -> Path:
    """A device table file of three GPUs (two models with and one without the NVIDIA prefix)."""
    path = tmp_path / "gpus.cfg"
    path.write_text(TABLE)
    return path


@pytest.fixture
def sysfs(tmp_path: Path) -> Path:
    """A fake sysfs tree: GPU A on NUMA node 1, GPU B on node -1 (unknown), GPU C absent."""
    root = tmp_path / "sys"
    for bus, numa in (("0000:3b:00.0", "1"), ("0000:86:00.0", "-1")):
        d = root / "bus/pci/devices" / bus
        d.mkdir(parents=True)
        (d / "numa_node").write_text(numa + "\n")
    return root
