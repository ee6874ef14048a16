"""HAMi device ConfigMap and node configuration parsing (hami-compat.md 7)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from hami_core_fw import config, errors

HAMI_DEVICE_CONFIG = """
nvidia:
  resourceCountName: nvidia.com/gpu
  resourceMemoryName: nvidia.com/gpumem
  resourceMemoryPercentageName: nvidia.com/gpumem-percentage
  resourceCoreName: nvidia.com/gpucores
  resourcePriorityName: nvidia.com/priority
  overwriteEnv: false
  defaultMemory: 0
  defaultCores: 0
  defaultGPUNum: 1
  memoryFactor: 1
  deviceSplitCount: 10
  deviceMemoryScaling: 1
  deviceCoreScaling: 1
  preConfiguredDeviceMemory: 0
  enableNumaTopology: false
  libCudaLogLevel: 1
  gpuCorePolicy: default
  runtimeClassName: ""
  migProfileAllowlist:
    - models: ["A100", "H100"]
      profiles: ["1g.10gb", "3g.40gb"]
  knownMigGeometries:
    - models: ["A30"]
      allowedGeometries:
        - - {name: 1g.6gb, core: 25, memory: 6144, count: 4}
cambricon:
  resourceCountName: cambricon.com/vmlu
  resourceMemoryName: cambricon.com/mlu.smlu.vmemory
  resourceCoreName: cambricon.com/mlu.smlu.vcore
hygon:
  resourceCountName: hygon.com/dcunum
  resourceMemoryName: hygon.com/dcumem
  resourceCoreName: hygon.com/dcucores
  memoryFactor: 1
metax:
  resourceCountName: metax-tech.com/gpu
  resourceVCountName: metax-tech.com/sgpu
  resourceVMemoryName: metax-tech.com/vmemory
  resourceVCoreName: metax-tech.com/vcore
  sgpuTopologyAware: false
enflame:
  resourceNameGCU: enflame.com/gcu
  resourceNameDRSGCU: enflame.com/drs-gcu
  resourceNameGCUMemory: enflame.com/gcu-memory
  resourceNameGCUCore: enflame.com/gcu-core
mthreads:
  resourceCountName: mthreads.com/vgpu
  resourceMemoryName: mthreads.com/sgpu-memory
  resourceCoreName: mthreads.com/sgpu-core
iluvatars:
  - chipName: BI-V150
    commonWord: BI-V150
    resourceCountName: iluvatar.ai/BI-V150-vgpu
    resourceMemoryName: iluvatar.ai/BI-V150.vMem
    resourceCoreName: iluvatar.ai/BI-V150.vCore
kunlun:
  resourceCountName: kunlunxin.com/xpu
  resourceVCountName: kunlunxin.com/vxpu
  resourceVMemoryName: kunlunxin.com/vxpu-memory
awsneuron:
  resourceCountName: aws.amazon.com/neuron
  resourceCoreName: aws.amazon.com/neuroncore
amd:
  resourceCountName: amd.com/gpu
  resourceMemoryName: amd.com/gpumem
  resourceCoreName: amd.com/gpucores
vastai:
  resourceCountName: vastaitech.com/va
biren:
  resourceCountName: birentech.com/gpu
vnpus:
  - chipName: 910B3
    commonWord: Ascend910B3
    resourceName: huawei.com/Ascend910B3
    resourceMemoryName: huawei.com/Ascend910B3-memory
    memoryAllocatable: 65536
    memoryCapacity: 65536
    aiCore: 20
    aiCPU: 7
    templates:
      - {name: vir05_1c_16g, memory: 16384, aiCore: 5, aiCPU: 1}
"""


def test_full_hami_device_config(tmp_path: Path) -> None:
    path = tmp_path / "device-config.yaml"
    path.write_text(HAMI_DEVICE_CONFIG)
    cfg = config.load_device_config(path)
    assert cfg.nvidia.resource_count_name == "nvidia.com/gpu"
    assert cfg.nvidia.default_gpu_num == 1
    assert cfg.nvidia.mig_profile_allowlist[0].profiles == ("1g.10gb", "3g.40gb")
    assert cfg.nvidia.known_mig_geometries[0].allowed_geometries[0][0].count == 4
    assert cfg.iluvatars[0].common_word == "BI-V150"
    assert cfg.enflame.resource_name_drsgcu == "enflame.com/drs-gcu"
    assert cfg.vnpus.configs[0].templates[0].ai_cpu == 1
    assert cfg.hygon.memory_factor == 1


def test_configmap_data_section_is_unwrapped(tmp_path: Path) -> None:
    path = tmp_path / "cm.yaml"
    path.write_text("device-config.yaml: |\n  nvidia:\n    memoryFactor: 4\n")
    assert config.load_device_config(path).nvidia.memory_factor == 4


def test_all_problems_reported_at_once(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(
        "nvidia:\n  resourceCountNmae: x\n  deviceSplitCount: 0\n  gpuCorePolicy: sometimes\n"
        "hygon:\n  memoryFactor: lots\nunknownvendor: {}\n"
    )
    with pytest.raises(errors.ConfigError) as info:
        config.load_device_config(path)
    err = info.value
    assert len(err.problems) == 5
    text = str(err)
    assert str(path) in text
    assert "nvidia.resourceCountNmae: unknown key" in text
    assert "nvidia.deviceSplitCount" in text
    assert "nvidia.gpuCorePolicy" in text
    assert "hygon.memoryFactor" in text
    assert "unknownvendor: unknown key" in text


def test_unreadable_and_invalid_yaml(tmp_path: Path) -> None:
    with pytest.raises(errors.ConfigError, match="cannot read"):
        config.load_device_config(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("nvidia: [unclosed\n")
    with pytest.raises(errors.ConfigError, match="invalid YAML"):
        config.load_device_config(bad)


def test_node_config(tmp_path: Path) -> None:
    doc = {
        "nodeconfig": [
            {
                "name": "node-1",
                "operatingmode": "hami-core",
                "devicememoryscaling": 1,
                "devicesplitcount": 10,
                "devicecorescaling": 1,
                "preconfigureddevicememory": 0,
                "libcudaloglevel": "1",
                "enablenumatopology": False,
                "migstrategy": "none",
                "filterdevices": {"uuid": [], "index": [3]},
                "enablegetpreferredallocation": False,
            }
        ]
    }
    path = tmp_path / "config.json"
    path.write_text(json.dumps(doc))
    cfg = config.load_node_config(path)
    entry = cfg.for_node("node-1")
    assert entry is not None
    assert entry.filterdevices is not None
    assert entry.filterdevices.index == (3,)
    assert cfg.for_node("node-2") is None
    path.write_text(json.dumps({"nodeconfig": [{"name": "n", "operatingmode": "turbo", "x": 1}]}))
    with pytest.raises(errors.ConfigError) as info:
        config.load_node_config(path)
    assert len(info.value.problems) == 2


def test_settings_from_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HAMI_SCHEDULER__NODE_SCHEDULER_POLICY", "spread")
    monkeypatch.setenv("HAMI_DEVICEPLUGIN__HOOK_PATH", "/opt/hami")
    s = config.Settings()
    assert s.scheduler.node_scheduler_policy == "spread"
    assert s.deviceplugin.hook_path == "/opt/hami"
    assert s.device_config() == config.DeviceConfig()
