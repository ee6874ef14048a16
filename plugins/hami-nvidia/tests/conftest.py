"""Fixtures of the hami-nvidia tests: a stand-in NVML device table and a fake sysfs tree."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from nvml_standin import standin_dir

UUID_A = "GPU-0fc3eda5-e98b-a25b-5b0d-cf5c855d1448"
UUID_B = "GPU-00552014-5c87-89ac-b1a6-7b53aa24b0ec"
UUID_C = "GPU-a02b30b8-5b20-131c-0e47-6bc99948e264"

TABLE = f"""
device {UUID_A} name="Tesla V100-PCIE-32GB" memory_mib=32768 pci=0000:3b:00.0
device {UUID_B} name="NVIDIA A100-SXM4-80GB" memory_mib=81920 pci=0000:86:00.0
device {UUID_C} name="Tesla T4" memory_mib=15360 pci=0000:d8:00.0
"""


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
