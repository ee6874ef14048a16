"""NvidiaVendor: HAMi's names and keys, registration golden strings, scores, env, node config."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hami_nvidia import settings
from hami_nvidia import vendor as nv
from nvml_standin import UUID_A, UUID_B

from hami_core_fw import codec, config, errors, models
from hami_core_fw import vendor as hv

# hami-compat.md 3.2: what HAMi v2.8+ NVIDIA plugins write
GOLDEN_REGISTRATION = (
    '[{"id":"GPU-0fc3eda5-e98b-a25b-5b0d-cf5c855d1448","count":10,"devmem":32768,"devcore":100,'
    '"type":"NVIDIA-Tesla V100-PCIE-32GB","mode":"hami-core","health":true},'
    '{"id":"GPU-00552014-5c87-89ac-b1a6-7b53aa24b0ec","index":1,"count":10,"devmem":32768,'
    '"devcore":100,"type":"NVIDIA-Tesla V100-PCIE-32GB","numa":1,"mode":"hami-core","health":true}]'
)


def test_names_and_keys() -> None:
    v = nv.NvidiaVendor()
    assert (v.vendor_id, v.common_word) == ("nvidia", "NVIDIA")
    assert v.resources.all() == (
        "nvidia.com/gpu",
        "nvidia.com/gpumem",
        "nvidia.com/gpumem-percentage",
        "nvidia.com/gpucores",
        "nvidia.com/priority",
    )
    assert v.keys.register == "hami.io/node-nvidia-register"
    assert v.keys.to_allocate == "hami.io/vgpu-devices-to-allocate"
    assert v.keys.allocated == "hami.io/vgpu-devices-allocated"
    assert v.keys.handshake == "hami.io/node-handshake"
    assert v.keys.lock == "hami.io/mutex.lock"
    assert (v.keys.use_uuid, v.keys.nouse_uuid) == (
        "nvidia.com/use-gpuuuid",
        "nvidia.com/nouse-gpuuuid",
    )
    assert (v.keys.use_type, v.keys.nouse_type) == (
        "nvidia.com/use-gputype",
        "nvidia.com/nouse-gputype",
    )
    assert (v.keys.numa_bind, v.keys.vgpu_mode) == ("nvidia.com/numa-bind", "nvidia.com/vgpu-mode")
    assert v.device_plugin_spec().socket_name == "nvidia-gpu.sock"


def test_registration_golden_string() -> None:
    v = nv.NvidiaVendor()
    devices = (
        models.DeviceInfo(UUID_A, 10, 32768, 100, "NVIDIA-Tesla V100-PCIE-32GB", mode="hami-core"),
        models.DeviceInfo(
            UUID_B, 10, 32768, 100, "NVIDIA-Tesla V100-PCIE-32GB", index=1, numa=1, mode="hami-core"
        ),
    )
    assert v.encode_registration(devices) == {"hami.io/node-nvidia-register": GOLDEN_REGISTRATION}
    parsed = v.parse_node(
        models.NodeView("n", annotations={"hami.io/node-nvidia-register": GOLDEN_REGISTRATION})
    )
    assert [d.id for d in parsed] == [UUID_A, UUID_B]
    assert {d.vendor for d in parsed} == {"NVIDIA"}


def test_topology_scores_read_and_written() -> None:
    env = settings.NvidiaSettings(enable_topology_score=True)
    v = nv.NvidiaVendor(env=env)
    devices = (
        models.DeviceInfo(UUID_A, 10, 100, 100, "NVIDIA-x", links={UUID_B: 120}),
        models.DeviceInfo(UUID_B, 10, 100, 100, "NVIDIA-x", index=1, links={UUID_A: 120}),
    )
    ann = v.encode_registration(devices)
    assert json.loads(ann[nv.SCORE_KEY]) == [
        {"uuid": UUID_A, "score": {UUID_B: 120}},
        {"uuid": UUID_B, "score": {UUID_A: 120}},
    ]
    parsed = v.parse_node(models.NodeView("n", annotations=ann))
    assert parsed[0].links == {UUID_B: 120}
    # a score annotation that does not decode fails the whole registration read (3.2)
    broken = {**ann, nv.SCORE_KEY: "{not json"}
    with pytest.raises(errors.CodecError):
        v.parse_node(models.NodeView("n", annotations=broken))
    # without topology scoring and without links nothing extra is written
    assert nv.SCORE_KEY not in nv.NvidiaVendor().encode_registration(
        [models.DeviceInfo(UUID_A, 10, 100, 100, "NVIDIA-x")]
    )


def _pod(env: dict[str, str] | None = None) -> models.PodView:
    return models.PodView(
        "ns",
        "p",
        uid="uid-1",
        containers=(models.ContainerView("c", limits={"nvidia.com/gpu": "1"}, env=env or {}),),
    )


def test_container_runtime_env_per_config() -> None:
    cfg = config.NvidiaConfig(
        device_memory_scaling=2.0, lib_cuda_log_level=3, disable_core_limit=True
    )
    v = nv.NvidiaVendor(cfg)
    pod = _pod()
    devs = (models.ContainerDevice(UUID_A, "NVIDIA", 3000, 30),)
    rt = v.container_runtime(devs, pod.containers[0], pod, hv.AllocateContext("n", cache_file="x"))
    assert rt.envs["NVIDIA_VISIBLE_DEVICES"] == UUID_A
    assert rt.envs["CUDA_DEVICE_MEMORY_LIMIT_0"] == "3000m"
    assert rt.envs["CUDA_DEVICE_SM_LIMIT"] == "30"
    assert rt.envs["CUDA_OVERSUBSCRIBE"] == "true"
    assert rt.envs["LIBCUDA_LOG_LEVEL"] == "3"
    assert rt.envs["GPU_CORE_UTILIZATION_POLICY"] == "disable"
    assert rt.envs["CUDA_DEVICE_MEMORY_SHARED_CACHE"] == "/usr/local/vgpu/x.cache"
    plain = nv.NvidiaVendor().container_runtime(
        devs, pod.containers[0], pod, hv.AllocateContext("n")
    )
    assert "CUDA_OVERSUBSCRIBE" not in plain.envs
    assert "GPU_CORE_UTILIZATION_POLICY" not in plain.envs


def test_cuda_disable_control_drops_the_preload_mount() -> None:
    v = nv.NvidiaVendor()
    devs = (models.ContainerDevice(UUID_A, "NVIDIA", 1000, 0),)
    on = _pod()
    off = _pod({"CUDA_DISABLE_CONTROL": "true"})
    ctx = hv.AllocateContext("n", hook_path="/opt/hook")
    with_preload = v.container_runtime(devs, on.containers[0], on, ctx)
    without = v.container_runtime(devs, off.containers[0], off, ctx)
    assert ("/etc/ld.so.preload", "/opt/hook/vgpu/ld.so.preload", True) in [
        (m.container_path, m.host_path, m.read_only) for m in with_preload.mounts
    ]
    assert all(m.container_path != "/etc/ld.so.preload" for m in without.mounts)
    assert ("/opt/hook/vgpu", "/opt/hook/vgpu/containers/uid-1_c") in [
        (m.container_path, m.host_path) for m in without.mounts
    ]


def test_mig_mode_is_refused_at_allocate() -> None:
    v = nv.NvidiaVendor(node=settings.NodeSettings(mode="mig"))
    pod = _pod()
    with pytest.raises(errors.PermanentError, match="mig"):
        v.container_runtime(
            (models.ContainerDevice(UUID_A, "NVIDIA", 1, 0),),
            pod.containers[0],
            pod,
            hv.AllocateContext("n"),
        )


def test_node_config_merge(tmp_path: Path) -> None:
    path = tmp_path / "config.json"
    path.write_text(
        json.dumps(
            {
                "nodeconfig": [
                    {
                        "name": "node-1",
                        "operatingmode": "mps",
                        "devicememoryscaling": 1.5,
                        "devicesplitcount": 4,
                        "libcudaloglevel": "2",
                        "enablenumatopology": True,
                        "filterdevices": {"uuid": [UUID_A], "index": [3]},
                        "enablegetpreferredallocation": True,
                    }
                ]
            }
        )
    )
    env = settings.NvidiaSettings(node_config_file=str(path))
    base = nv.NvidiaVendor(config.NvidiaConfig(device_split_count=7), env=env)
    mine = base.for_node("node-1")
    assert mine.node.mode == "mps"
    assert mine.node.split_count == 4
    assert mine.node.memory_scaling == 1.5
    assert mine.node.log_level == 2
    assert mine.node.filter_uuids == frozenset({UUID_A})
    assert mine.node.filter_indexes == frozenset({3})
    spec = mine.device_plugin_spec()
    assert (spec.numa_topology, spec.preferred_allocation) == (True, True)
    assert mine.runtime_env()["CUDA_OVERSUBSCRIBE"] == "true"
    other = base.for_node("node-2")
    assert (other.node.split_count, other.node.mode) == (7, "hami-core")
    missing = nv.NvidiaVendor(env=settings.NvidiaSettings(node_config_file=str(tmp_path / "no")))
    assert missing.for_node("node-1").node == settings.effective(config.NvidiaConfig())


def test_health_policy_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DP_DISABLE_HEALTHCHECKS", "79, 94")
    monkeypatch.setenv("DP_ENABLE_HEALTHCHECKS", "13")
    policy = settings.health_policy(settings.NvidiaSettings())
    assert policy.enabled
    assert policy.ignored_xids == frozenset({31, 43, 45, 68, 109, 79, 94})
    monkeypatch.setenv("DP_DISABLE_HEALTHCHECKS", "xids")
    assert not settings.health_policy(settings.NvidiaSettings()).enabled
    monkeypatch.setenv("DP_DISABLE_HEALTHCHECKS", "nonsense")
    with pytest.raises(errors.ConfigError, match="nonsense"):
        settings.health_policy(settings.NvidiaSettings())


def test_admission_defaults_are_hamis() -> None:
    v = nv.NvidiaVendor()
    container: dict[str, object] = {"name": "c", "resources": {"limits": {"nvidia.com/gpu": "1"}}}
    assert v.mutate_container(container, {"spec": {}})
    assert container["resources"] == {
        "limits": {"nvidia.com/gpu": "1", "nvidia.com/gpucores": "100"}
    }
    req = v.request_for(models.ContainerView.from_manifest(container))
    assert req == models.DeviceRequest("NVIDIA", 1, 0, 100, 100)


def test_allocation_string_golden() -> None:
    v = nv.NvidiaVendor()
    value = "GPU-a,NVIDIA,3000,30:GPU-b,NVIDIA,3000,30:;"
    entries = v.decode_allocation({"hami.io/vgpu-devices-allocated": value})
    assert entries is not None
    assert v.encode_allocation(entries) == {
        "hami.io/vgpu-devices-allocated": value,
        "hami.io/vgpu-devices-to-allocate": value,
    }
    assert codec.encode_pod_devices(entries) == value
