"""Models: usage collapsing (hami-compat.md 2.3), quantities and manifest views."""

from __future__ import annotations

import pytest

from hami_core_fw import models

X = "GPU-x"


def dev(mem: int, cores: int, uuid: str = X) -> models.ContainerDevice:
    return models.ContainerDevice(uuid, "NVIDIA", mem, cores)


def test_collapse_init_peak_versus_app_sum() -> None:
    entries = [(dev(8000, 50),), (dev(2000, 10),), (dev(3000, 20),), (dev(1000, 5),)]
    (c,) = models.collapse_usage(entries, n_init=2, vendor="NVIDIA")
    # init peak = 8000/50 (one slot); app sum = 4000/25 over two slots -> max per field
    assert (c.usedmem, c.usedcores, c.slots) == (8000, 50, 2)


def test_collapse_app_only_drops_init_containers() -> None:
    entries = [(dev(8000, 50),), (dev(3000, 20),), (dev(1000, 5), dev(500, 1, "GPU-y"))]
    collapsed = models.collapse_usage(entries, n_init=1, vendor="NVIDIA", app_only=True)
    assert [(c.uuid, c.usedmem, c.usedcores, c.slots) for c in collapsed] == [
        ("GPU-x", 4000, 25, 2),
        ("GPU-y", 500, 1, 1),
    ]


def test_collapse_empty_entries_and_sorting() -> None:
    entries = [(), (dev(1, 1, "GPU-b"),), (), (dev(2, 2, "GPU-a"),)]
    assert [c.uuid for c in models.collapse_usage(entries, 0, "NVIDIA")] == ["GPU-a", "GPU-b"]
    assert models.collapse_usage([(), ()], 1, "NVIDIA") == ()


@pytest.mark.parametrize(
    ("raw", "value"),
    [
        ("3000", 3000),
        (7, 7),
        ("+5", 5),
        (" 12 ", 12),
        ("3k", 3000),
        ("1e3", 1000),
        ("2M", 2000000),
        ("1.5k", 1500),
        ("0", 0),
    ],
)
def test_int_quantity_accepts(raw: object, value: int) -> None:
    assert models.int_quantity(raw, what="x") == value


@pytest.mark.parametrize("raw", ["1Gi", "512Mi", "1.5", "-1", -1, "", "500m", "3 k", "1x", True])
def test_int_quantity_rejects_with_the_value(raw: object) -> None:
    with pytest.raises(ValueError, match="container 'c' resource 'nvidia.com/gpumem'"):
        models.int_quantity(raw, what="container 'c' resource 'nvidia.com/gpumem'")


def test_pod_view_from_manifest() -> None:
    pod = models.PodView.from_manifest(
        {
            "metadata": {"name": "p", "namespace": "ns", "uid": "u", "annotations": {"a": "b"}},
            "spec": {
                "schedulerName": "hami-scheduler",
                "initContainers": [{"name": "i", "resources": {"limits": {"nvidia.com/gpu": 1}}}],
                "containers": [
                    {
                        "name": "c",
                        "resources": {"requests": {"nvidia.com/gpumem": "3000"}},
                        "env": [{"name": "CUDA_DISABLE_CONTROL", "value": "true"}],
                        "securityContext": {"privileged": True},
                    }
                ],
            },
            "status": {
                "initContainerStatuses": [{"name": "i", "state": {"terminated": {"exitCode": 0}}}]
            },
        }
    )
    assert pod.key == "ns/p"
    assert [c.name for c in pod.all_containers] == ["i", "c"]
    assert pod.init_containers[0].resource("nvidia.com/gpu") == "1"
    assert pod.containers[0].resource("nvidia.com/gpumem") == "3000"
    assert pod.containers[0].privileged
    assert pod.containers[0].env["CUDA_DISABLE_CONTROL"] == "true"
    assert pod.init_finished


def test_device_usage_add_remove_never_negative() -> None:
    info = models.DeviceInfo(id=X, count=2, devmem=100, devcore=100, type="T")
    usage = models.DeviceUsage.from_info(info)
    usage.add(dev(40, 30))
    assert (usage.used, usage.usedmem, usage.usedcores) == (1, 40, 30)
    usage.remove(dev(40, 30))
    usage.remove(dev(40, 30))
    assert (usage.used, usage.usedmem, usage.usedcores) == (0, 0, 0)
