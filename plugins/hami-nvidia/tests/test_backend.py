"""NvidiaBackend through the REAL nvidia-ml-py and the stand-in libnvidia-ml.so.1."""

from __future__ import annotations

from pathlib import Path

from hami_nvidia import backend
from nvml_standin import UUID_A, UUID_B, UUID_C, run_probe


def test_discovery_rules(gpu_table: Path, sysfs: Path) -> None:
    out = run_probe(
        str(gpu_table),
        {
            "node": {"split_count": 4, "memory_scaling": 1.5, "core_scaling": 2.0},
            "sysfs": str(sysfs),
            "table": str(gpu_table),
        },
    )
    devices = {d["id"]: d for d in out["devices"]}  # type: ignore[union-attr]
    assert list(devices) == [UUID_A, UUID_B, UUID_C]
    a, b, c = devices[UUID_A], devices[UUID_B], devices[UUID_C]
    # NVIDIA- prefix rule
    assert a["type"] == "NVIDIA-Tesla V100-PCIE-32GB"
    assert b["type"] == "NVIDIA A100-SXM4-80GB"
    # memory x scaling, cores x scaling, split count, index, mode
    assert (a["devmem"], b["devmem"], c["devmem"]) == (49152, 122880, 23040)
    assert {d["devcore"] for d in devices.values()} == {200}
    assert {d["count"] for d in devices.values()} == {4}
    assert [d["index"] for d in devices.values()] == [0, 1, 2]
    assert {d["mode"] for d in devices.values()} == {"hami-core"}
    # NUMA from sysfs; negative or missing -> 0
    assert (a["numa"], b["numa"], c["numa"]) == (1, 0, 0)
    assert all(d["health"] for d in devices.values())
    assert out["driver"] == "590.48.01"


def test_filterdevices_by_uuid_and_index(gpu_table: Path) -> None:
    out = run_probe(
        str(gpu_table),
        {"node": {"filter_uuids": [UUID_A], "filter_indexes": [2]}, "table": str(gpu_table)},
    )
    assert [d["id"] for d in out["devices"]] == [UUID_B]  # type: ignore[union-attr]


def test_critical_xid_makes_gpu_unhealthy_ignored_xids_do_not(gpu_table: Path) -> None:
    out = run_probe(
        str(gpu_table),
        {"table": str(gpu_table), "xids": [[UUID_A, 13], [UUID_B, 43], [UUID_B, 79]]},
    )
    assert out["events"] == [{}, {}, {UUID_B: False}]
    health = {d["id"]: d["health"] for d in out["after"]}  # type: ignore[union-attr]
    assert health == {UUID_A: True, UUID_B: False, UUID_C: True}


def test_dp_enable_healthchecks_turns_an_ignored_xid_into_a_fault(gpu_table: Path) -> None:
    out = run_probe(
        str(gpu_table),
        {"table": str(gpu_table), "xids": [[UUID_A, 13]], "health": {"enable": "13"}},
    )
    assert out["events"] == [{UUID_A: False}]


def test_dp_disable_healthchecks_all(gpu_table: Path) -> None:
    out = run_probe(
        str(gpu_table),
        {
            "table": str(gpu_table),
            "xids": [[UUID_A, 79]],
            "health": {"disable": "all"},
            "poll_timeout": 0.05,
        },
    )
    assert out["events"] == [{}]
    assert all(d["health"] for d in out["after"])  # type: ignore[union-attr]


def test_preconfigured_memory_is_not_needed_when_nvml_answers(gpu_table: Path) -> None:
    out = run_probe(
        str(gpu_table), {"node": {"preconfigured_memory": 1234}, "table": str(gpu_table)}
    )
    assert [d["devmem"] for d in out["devices"]] == [32768, 81920, 15360]  # type: ignore[union-attr]


def test_samples(gpu_table: Path) -> None:
    out = run_probe(str(gpu_table), {"table": str(gpu_table)})
    samples = out["samples"]
    assert [s["memory_total_bytes"] for s in samples] == [  # type: ignore[union-attr]
        32768 << 20,
        81920 << 20,
        15360 << 20,
    ]


def test_pair_score_and_bus_ids(tmp_path: Path) -> None:
    # P2P levels (hami-compat.md 9.1) plus 100 per NVLink; asymmetric links score 0
    assert backend.pair_score(50, 0, 0) == 10
    assert backend.pair_score(40, 0, 0) == 20
    assert backend.pair_score(30, 0, 0) == 30
    assert backend.pair_score(20, 0, 0) == 40
    assert backend.pair_score(10, 0, 0) == 50
    assert backend.pair_score(0, 0, 0) == 60
    assert backend.pair_score(50, 4, 4) == 410
    assert backend.pair_score(50, 4, 3) == 0
    assert backend.pair_score(None, 0, 0) == 0
    assert backend.sysfs_bus_id("00000000:3B:00.0") == "0000:3b:00.0"
    d = tmp_path / "bus/pci/devices/0000:3b:00.0"
    d.mkdir(parents=True)
    (d / "numa_node").write_text("garbage")
    assert backend.read_numa(tmp_path, "00000000:3B:00.0") == 0
    assert backend.model_type("Tesla T4") == "NVIDIA-Tesla T4"
    assert backend.model_type("NVIDIA H100") == "NVIDIA H100"
