"""The monitor's families (hami-compat.md 10.2): exact names, labels and values from regions."""

from __future__ import annotations

import logging
import platform

import pytest
from monitor_regions import Proc, fake_proc, v0, v1
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.parser import text_string_to_metric_families

import hami_core_fw
from hami_core_fw import config, models, plugins
from hami_core_fw.builtin import fake
from hami_core_fw.monitor import collector, region

UUID0 = "GPU-11111111-2222-3333-4444-555555555555"
UUID1 = "GPU-66666666-7777-8888-9999-000000000000"
MIB = 1 << 20
NOW = 1_800_000_000.0
BUILD = collector.BuildInfo("1.2.3", "abc", "2026-01-01", "3.11.9", "CPython", "linux/x86_64")

HAMI_FAMILIES = {
    "hami_host_gpu_memory_used_bytes",
    "hami_host_gpu_utilization_ratio",
    "hami_host_gpu_memory_controller_utilization_ratio",
    "hami_vgpu_memory_used_bytes",
    "hami_vgpu_memory_limit_bytes",
    "hami_container_device_memory_bytes",
    "hami_container_device_utilization_ratio",
    "hami_container_last_kernel_elapsed_seconds",
    "hami_vgpu_memory_context_bytes",
    "hami_vgpu_memory_module_bytes",
    "hami_vgpu_memory_buffer_bytes",
    "hami_build_info",
}
LEGACY_FAMILIES = {
    "HostGPUMemoryUsage",
    "HostCoreUtilization",
    "vGPU_device_memory_usage_in_bytes",
    "vGPU_device_memory_limit_in_bytes",
    "Device_memory_desc_of_container",
    "Device_utilization_desc_of_container",
    "Device_last_kernel_of_container",
}


def scrape(col) -> dict[str, list[tuple[dict[str, str], float]]]:
    """Expose through a private registry and parse the text back, as Prometheus would."""
    reg = CollectorRegistry()
    reg.register(col)
    text = generate_latest(reg).decode()
    out: dict[str, list[tuple[dict[str, str], float]]] = {}
    for fam in text_string_to_metric_families(text):
        out.setdefault(fam.name, [])
        out[fam.name] += [(dict(s.labels), s.value) for s in fam.samples]
    return out


def two_gpu_region(**kw) -> region.Region:
    procs = [
        Proc(10, 1010, used={0: (5 * MIB, 2 * MIB, 100 * MIB, 107 * MIB)}, sm_util={0: 30}),
        Proc(
            11, 1011, used={0: (5 * MIB, 0, 20 * MIB, 25 * MIB), 1: (0, 0, 7, 7)}, sm_util={0: 15}
        ),
        Proc(12, 1012, status=0, used={0: (0, 0, 999, 999)}),  # exited: never counted
    ]
    args = {
        "uuids": [UUID0, UUID1],
        "limits": [1 << 30, 2 << 30],
        "procs": procs,
        "last_kernel_time": int(NOW) - 42,
        **kw,
    }
    return region.decode(v1(**args))


def snapshot(*containers, devices=()) -> collector.Snapshot:
    return collector.Snapshot("node-a", tuple(devices), tuple(containers), NOW)


def usage(r, *, namespace="ns", pod="p", container="main"):
    return collector.ContainerUsage(namespace, pod, container, r)


def keep_all(r):
    return r


def test_container_families_have_hami_names_labels_and_sums():
    col = collector.MonitorCollector(
        lambda: snapshot(usage(two_gpu_region())), build=BUILD, exclude=keep_all
    )
    got = scrape(col)
    assert set(got) == HAMI_FAMILIES
    labels0 = {
        "namespace": "ns",
        "pod": "p",
        "container": "main",
        "vdevice_index": "0",
        "device_uuid": UUID0,
        "zone": "vGPU",
    }
    labels1 = {**labels0, "vdevice_index": "1", "device_uuid": UUID1}
    expected = {
        "hami_vgpu_memory_used_bytes": [(labels0, 132 * MIB), (labels1, 7)],
        "hami_container_device_memory_bytes": [(labels0, 132 * MIB), (labels1, 7)],
        "hami_vgpu_memory_limit_bytes": [(labels0, 1 << 30), (labels1, 2 << 30)],
        "hami_container_device_utilization_ratio": [(labels0, 45), (labels1, 0)],
        "hami_vgpu_memory_context_bytes": [(labels0, 10 * MIB), (labels1, 0)],
        "hami_vgpu_memory_module_bytes": [(labels0, 2 * MIB), (labels1, 0)],
        "hami_vgpu_memory_buffer_bytes": [(labels0, 120 * MIB), (labels1, 7)],
        "hami_container_last_kernel_elapsed_seconds": [(labels0, 42), (labels1, 42)],
    }
    for name, samples in expected.items():
        assert got[name] == samples, name
    assert got["hami_build_info"] == [
        (
            {
                "version": "1.2.3",
                "revision": "abc",
                "build_date": "2026-01-01",
                "python_version": "3.11.9",
                "compiler": "CPython",
                "platform": "linux/x86_64",
                "zone": "vGPU",
            },
            1.0,
        )
    ]


def test_host_families_from_device_samples():
    cfg = config.FakeConfig(
        devices=(config.FakeDevice(uuid="fake-{node}-0", type="FAKE-GPU-16G", memory=16384),)
    )
    samples = (
        *fake.FakeBackend(cfg, "node-a").sample(),
        models.DeviceSample(UUID1, 1, "NVIDIA-A100", 3 * MIB, 80 * 1024 * MIB, 57.0, 12.0),
    )
    got = scrape(collector.MonitorCollector(lambda: snapshot(devices=samples), exclude=keep_all))
    fake0 = {"device_index": "0", "device_uuid": "fake-node-a-0", "device_type": "FAKE-GPU-16G"}
    nv1 = {"device_index": "1", "device_uuid": UUID1, "device_type": "NVIDIA-A100"}
    zone = {"zone": "vGPU"}
    node = {"node": "node-a"}
    assert got["hami_host_gpu_memory_used_bytes"] == [
        ({**node, **fake0, **zone}, 0.0),
        ({**node, **nv1, **zone}, 3 * MIB),
    ]
    assert got["hami_host_gpu_utilization_ratio"] == [
        ({**node, **fake0, **zone}, 0.0),
        ({**node, **nv1, **zone}, 57.0),
    ]
    # HAMi's memory controller family has no node label
    assert got["hami_host_gpu_memory_controller_utilization_ratio"] == [
        ({**fake0, **zone}, 0.0),
        ({**nv1, **zone}, 12.0),
    ]
    assert got["hami_vgpu_memory_used_bytes"] == []


def test_uuid_label_is_the_first_40_characters():
    long_uuid = "MIG-GPU-11111111-2222-3333-4444-555555555555/1/0-extra"
    r = region.decode(v1(uuids=[long_uuid], procs=[Proc(1, 1, used={0: (0, 0, 5, 5)})]))
    got = scrape(collector.MonitorCollector(lambda: snapshot(usage(r)), exclude=keep_all))
    ((labels, value),) = got["hami_vgpu_memory_used_bytes"]
    assert labels["device_uuid"] == long_uuid[:40]
    assert value == 5


def test_positions_without_uuid_or_beyond_device_num_are_not_reported():
    data = v1(uuids=[UUID0, "", UUID1], device_num=2, procs=[Proc(1, 1)])
    got = scrape(
        collector.MonitorCollector(lambda: snapshot(usage(region.decode(data))), exclude=keep_all)
    )
    assert [s[0]["vdevice_index"] for s in got["hami_vgpu_memory_limit_bytes"]] == ["0"]


def test_last_kernel_only_when_set_and_never_negative():
    never = region.decode(v1(uuids=[UUID0], last_kernel_time=0))
    future = region.decode(v1(uuids=[UUID1], last_kernel_time=int(NOW) + 100))
    got = scrape(
        collector.MonitorCollector(
            lambda: snapshot(usage(never, pod="a"), usage(future, pod="b")), exclude=keep_all
        )
    )
    assert [(s[0]["pod"], s[1]) for s in got["hami_container_last_kernel_elapsed_seconds"]] == [
        ("b", 0.0)
    ]


def test_hami_core_and_v0_files_are_reported():
    core = region.decode(
        v1(uuids=[UUID0], limits=[MIB], procs=[Proc(1, 0, used={0: (1, 0, 2, 3)})], minor=2)
    )
    old = region.decode(
        v0(uuids=[UUID1], limits=[2 * MIB], procs=[Proc(1, 0, used={0: (0, 0, 9, 9)})])
    )
    assert (core.layout, core.minor_version, old.layout) == ("v1", 2, "v0")
    got = scrape(
        collector.MonitorCollector(
            lambda: snapshot(usage(core, pod="core"), usage(old, pod="old")), exclude=keep_all
        )
    )
    assert [(s[0]["pod"], s[1]) for s in got["hami_vgpu_memory_used_bytes"]] == [
        ("core", 3),
        ("old", 9),
    ]
    assert [(s[0]["pod"], s[1]) for s in got["hami_vgpu_memory_limit_bytes"]] == [
        ("core", MIB),
        ("old", 2 * MIB),
    ]
    # v0 has no last_kernel_time; HAMi-core's file here has none set either
    assert got["hami_container_last_kernel_elapsed_seconds"] == []


def test_slots_of_dead_processes_are_excluded(tmp_path):
    proc = tmp_path / "proc"
    fake_proc(proc, 1010, start_time=777)
    fake_proc(proc, 1011, start_time=999)  # the PID now names another process
    fake_proc(proc, 1013, state="Z")  # a zombie
    procs = [
        Proc(10, 1010, used={0: (0, 0, 100, 100)}, sm_util={0: 20}, start_time=777),
        Proc(11, 1011, used={0: (0, 0, 200, 200)}, sm_util={0: 30}, start_time=555),
        Proc(12, 1012, used={0: (0, 0, 400, 400)}, sm_util={0: 40}),  # gone
        Proc(13, 1013, used={0: (0, 0, 800, 800)}),
        Proc(14, 0, used={0: (0, 0, 1600, 1600)}),  # host PID not known yet: kept
    ]
    r = region.decode(v1(uuids=[UUID0], procs=procs, minor=100))
    col = collector.MonitorCollector(
        lambda: snapshot(usage(r)), exclude=collector.exclude_dead_by_host_pid(proc)
    )
    got = scrape(col)
    assert got["hami_vgpu_memory_used_bytes"][0][1] == 1700
    assert got["hami_container_device_utilization_ratio"][0][1] == 20


def test_legacy_names_only_when_asked():
    r = two_gpu_region()
    dev = models.DeviceSample(UUID0, 0, "NVIDIA-A100", 5, 10, 50.0, 1.0)
    plain = scrape(
        collector.MonitorCollector(lambda: snapshot(usage(r), devices=[dev]), exclude=keep_all)
    )
    assert not set(plain) & LEGACY_FAMILIES
    got = scrape(
        collector.MonitorCollector(
            lambda: snapshot(usage(r), devices=[dev]), legacy=True, exclude=keep_all
        )
    )
    assert set(got) == HAMI_FAMILIES | LEGACY_FAMILIES
    assert got["HostGPUMemoryUsage"] == [
        (
            {
                "nodeid": "node-a",
                "deviceidx": "0",
                "deviceuuid": UUID0,
                "devicetype": "NVIDIA-A100",
                "zone": "vGPU",
            },
            5.0,
        )
    ]
    old = {
        "podnamespace": "ns",
        "podname": "p",
        "ctrname": "main",
        "vdeviceid": "0",
        "deviceuuid": UUID0,
        "zone": "vGPU",
    }
    assert got["vGPU_device_memory_usage_in_bytes"][0] == (old, 132 * MIB)
    assert got["vGPU_device_memory_limit_in_bytes"][0] == (old, 1 << 30)
    assert got["Device_memory_desc_of_container"][0] == (
        {
            **old,
            "context": str(10 * MIB),
            "module": str(2 * MIB),
            "data": str(120 * MIB),
            "offset": "0",
        },
        132 * MIB,
    )
    assert got["Device_utilization_desc_of_container"][0] == (old, 45)
    assert got["Device_last_kernel_of_container"][0] == (old, 42)


def test_every_sample_carries_zone_vgpu():
    r = two_gpu_region()
    dev = models.DeviceSample(UUID0, 0, "T", 1, 2, 3.0)
    got = scrape(
        collector.MonitorCollector(
            lambda: snapshot(usage(r), devices=[dev]), legacy=True, exclude=keep_all
        )
    )
    samples = [s for fam in got.values() for s in fam]
    assert samples and all(labels.get("zone") == "vGPU" for labels, _ in samples)


def test_default_build_info_names_this_package_and_python():
    got = scrape(collector.MonitorCollector(snapshot, exclude=keep_all))
    ((labels, value),) = got["hami_build_info"]
    assert labels["version"] == hami_core_fw.__version__
    assert labels["python_version"] == platform.python_version()
    assert value == 1


class ExtraMetrics:
    @hami_core_fw.hookimpl
    def hami_monitor_collect(self):
        fam = GaugeMetricFamily("hami_test_extra", "from a plugin", labels=["k"])
        fam.add_metric(["v"], 7)
        return [fam]


class BrokenMetrics:
    @hami_core_fw.hookimpl
    def hami_monitor_collect(self):
        raise RuntimeError("boom")


def test_plugin_families_are_appended():
    host = plugins.make_plugin_manager(
        autoload=False, env={}, extra_plugins=[("x", ExtraMetrics())]
    )
    got = scrape(collector.MonitorCollector(snapshot, extra=host.monitor_collect, exclude=keep_all))
    assert got["hami_test_extra"] == [({"k": "v"}, 7.0)]


def test_a_failing_plugin_does_not_fail_the_scrape(caplog):
    host = plugins.make_plugin_manager(
        autoload=False, env={}, extra_plugins=[("broken", BrokenMetrics())]
    )
    r = two_gpu_region()
    col = collector.MonitorCollector(
        lambda: snapshot(usage(r)), extra=host.monitor_collect, exclude=keep_all
    )
    with caplog.at_level(logging.ERROR, logger="hami_core_fw.monitor.collector"):
        got = scrape(col)
    assert got["hami_vgpu_memory_used_bytes"][0][1] == 132 * MIB
    assert any("broken" in r.getMessage() for r in caplog.records)


@pytest.mark.parametrize("raw", [b"GPU-\xff\xfe-garbage", b"GPU-\x01-ctl"])
def test_undecodable_uuid_is_skipped_and_the_next_reported(raw):
    data = v1(uuids=["", UUID1], procs=[Proc(1, 1, used={1: (0, 0, 3, 3)})])
    data[64 : 64 + len(raw)] = raw
    r = region.decode(data)
    got = scrape(collector.MonitorCollector(lambda: snapshot(usage(r)), exclude=keep_all))
    assert [(s[0]["device_uuid"], s[1]) for s in got["hami_vgpu_memory_used_bytes"]] == [(UUID1, 3)]
