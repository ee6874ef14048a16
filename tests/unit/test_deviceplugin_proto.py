"""The device-plugin proto: committed gencode is fresh, and the wire facts match v1beta1."""

from __future__ import annotations

from pathlib import Path

import pytest

from hami_core_fw.deviceplugin.proto import api_pb2, generate

REPO = Path(__file__).resolve().parents[2]
PROTO_DIR = REPO / "hami_core_fw" / "deviceplugin" / "proto"


def test_committed_gencode_is_fresh(tmp_path: Path) -> None:
    pytest.importorskip("grpc_tools", reason="grpcio-tools is in the test extra")
    produced = generate.generate(tmp_path, import_root=REPO)
    assert [p.name for p in produced] == list(generate.GENERATED)
    for path in produced:
        committed, fresh = (PROTO_DIR / path.name).read_text(), path.read_text()
        assert committed == fresh, (
            f"{path.name} is stale: run python hami_core_fw/deviceplugin/proto/generate.py"
        )


def test_wire_facts() -> None:
    """Package, services, method paths, streaming shape and field numbers (k8s-protocols 2.2)."""
    fd = api_pb2.DESCRIPTOR
    assert fd.package == "v1beta1"
    reg = fd.services_by_name["Registration"]
    assert [m.name for m in reg.methods] == ["Register"]
    dp = fd.services_by_name["DevicePlugin"]
    methods = {m.name: m for m in dp.methods}
    assert set(methods) == {
        "GetDevicePluginOptions",
        "ListAndWatch",
        "GetPreferredAllocation",
        "Allocate",
        "PreStartContainer",
    }
    assert methods["ListAndWatch"].server_streaming
    assert not methods["Allocate"].server_streaming
    numbers = {
        "DevicePluginOptions": {"pre_start_required": 1, "get_preferred_allocation_available": 2},
        "RegisterRequest": {"version": 1, "endpoint": 2, "resource_name": 3, "options": 4},
        "ListAndWatchResponse": {"devices": 1},
        "TopologyInfo": {"nodes": 1},
        "NUMANode": {"ID": 1},
        "Device": {"ID": 1, "health": 2, "topology": 3},
        "PreStartContainerRequest": {"devices_ids": 1},
        "PreferredAllocationRequest": {"container_requests": 1},
        "ContainerPreferredAllocationRequest": {
            "available_deviceIDs": 1,
            "must_include_deviceIDs": 2,
            "allocation_size": 3,
        },
        "PreferredAllocationResponse": {"container_responses": 1},
        "ContainerPreferredAllocationResponse": {"deviceIDs": 1},
        "AllocateRequest": {"container_requests": 1},
        "ContainerAllocateRequest": {"devices_ids": 1},
        "CDIDevice": {"name": 1},
        "AllocateResponse": {"container_responses": 1},
        "ContainerAllocateResponse": {
            "envs": 1,
            "mounts": 2,
            "devices": 3,
            "annotations": 4,
            "cdi_devices": 5,
        },
        "Mount": {"container_path": 1, "host_path": 2, "read_only": 3},
        "DeviceSpec": {"container_path": 1, "host_path": 2, "permissions": 3},
    }
    for message, fields in numbers.items():
        desc = fd.message_types_by_name[message]
        assert {f.name: f.number for f in desc.fields} == fields, message
    assert fd.message_types_by_name["NUMANode"].fields_by_name["ID"].type == 3  # int64
    assert (
        fd.message_types_by_name["ContainerPreferredAllocationRequest"]
        .fields_by_name["allocation_size"]
        .type
        == 5
    )  # int32


def test_known_encoding() -> None:
    """A Device message encodes to the bytes any v1beta1 peer produces."""
    dev = api_pb2.Device(ID="GPU-a-0", health="Healthy")
    dev.topology.nodes.add(ID=1)
    assert dev.SerializeToString() == b"\n\x07GPU-a-0\x12\x07Healthy\x1a\x04\n\x02\x08\x01"
