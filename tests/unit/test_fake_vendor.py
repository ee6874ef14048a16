"""The fake vendor: conformance suite, admission defaults, health and allocation answers."""

from __future__ import annotations

import datetime as dt

import pytest

from hami_core_fw import config, errors, models, vendor
from hami_core_fw.builtin import fake
from hami_core_fw.testing import VendorConformance


def fake_devices(n: int = 4) -> tuple[models.DeviceInfo, ...]:
    cfg = config.FakeConfig(
        devices=tuple(
            config.FakeDevice(uuid=f"FAKE-{{node}}-{i}", memory=16384 * (1 + i % 2), numa=i // 2)
            for i in range(n)
        )
    )
    return fake.FakeVendor(cfg).make_backend("n1").discover()


class TestFakeConformance(VendorConformance):
    @pytest.fixture
    def vendor(self) -> vendor.DeviceVendor:
        return fake.FakeVendor()

    @pytest.fixture
    def devices(self) -> tuple[models.DeviceInfo, ...]:
        return fake_devices()


def test_backend_substitutes_node_name_and_indexes() -> None:
    devs = fake_devices(3)
    assert [d.id for d in devs] == ["FAKE-n1-0", "FAKE-n1-1", "FAKE-n1-2"]
    assert [d.index for d in devs] == [0, 1, 2]
    assert [d.devmem for d in devs] == [16384, 32768, 16384]
    assert all(d.vendor == "FAKE" and d.mode == "hami-core" for d in devs)


def test_backend_health_injection() -> None:
    backend = fake.FakeVendor().make_backend("n1")
    assert backend.poll_health(0.01) == {}
    backend.inject_health("FAKE-n1-0", False)
    backend.inject_health("FAKE-n1-1", False)
    backend.inject_health("FAKE-n1-0", True)
    assert backend.poll_health(1.0) == {"FAKE-n1-0": True, "FAKE-n1-1": False}


def container(**limits: str) -> dict[str, object]:
    return {"name": "main", "resources": {"limits": dict(limits)}}


FV = fake.FakeVendor()
R = FV.resources


def test_admission_bare_count_becomes_exclusive() -> None:
    c = container(**{R.count: "1"})
    assert FV.mutate_container(c, {"spec": {}})
    assert c["resources"] == {"limits": {R.count: "1", R.cores: "100"}}


def test_admission_memory_keeps_the_card_shared() -> None:
    c = container(**{R.count: "1", R.memory: "3000"})
    assert FV.mutate_container(c, {"spec": {}})
    assert R.cores not in c["resources"]["limits"]  # type: ignore[index]


@pytest.mark.parametrize(("pct", "exclusive"), [("100", True), ("50", False)])
def test_admission_percentage_decides_exclusivity(pct: str, exclusive: bool) -> None:
    c = container(**{R.count: "1", R.memory_percentage: pct})
    FV.mutate_container(c, {"spec": {}})
    assert (R.cores in c["resources"]["limits"]) is exclusive  # type: ignore[index]


def test_admission_default_count_added_for_memory_only() -> None:
    c = container(**{R.memory: "2000"})
    assert FV.mutate_container(c, {"spec": {}})
    assert c["resources"]["limits"][R.count] == "1"  # type: ignore[index]


def test_admission_container_without_device_is_untouched() -> None:
    c = container(cpu="1")
    assert not FV.mutate_container(c, {"spec": {}})
    assert c == container(cpu="1")


@pytest.mark.parametrize(
    ("limits", "fragment"),
    [
        ({R.count: "1", R.memory: "1Gi"}, "'1Gi' has a binary unit suffix"),
        ({R.count: "1", R.cores: "150"}, "150 is outside the allowed range 0-100"),
        ({R.count: "1", R.memory_percentage: "101"}, "101 is outside the allowed range 0-100"),
        ({R.count: "1", R.memory: "-5"}, "'-5' is negative"),
        ({R.count: "1", R.memory: "99999999999"}, "too large"),
    ],
)
def test_admission_denies_bad_values_naming_container_and_resource(
    limits: dict[str, str], fragment: str
) -> None:
    with pytest.raises(errors.AdmissionDenied) as info:
        FV.mutate_container(container(**limits), {"spec": {}})
    assert info.value.code == 400
    assert "container 'main'" in info.value.message
    assert fragment in info.value.message


def test_health_without_handshake_follows_allocatable() -> None:
    now = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
    up = models.NodeView(name="n", allocatable={R.count: "10"})
    down = models.NodeView(name="n", allocatable={R.count: "0"})
    assert FV.check_health(up, now).healthy
    assert not FV.check_health(down, now).healthy


def test_handshake_protocol() -> None:
    v = fake.FakeVendor()
    v.keys = vendor.AnnotationKeys(
        register=v.keys.register,
        allocated=v.keys.allocated,
        handshake="hami.io/node-handshake-fake",
    )
    key = "hami.io/node-handshake-fake"
    now = dt.datetime(2026, 1, 1, 12, 0, 0, tzinfo=dt.UTC)
    fresh = v.check_health(models.NodeView(name="n", annotations={key: "Reported 2026"}), now)
    assert (fresh.healthy, fresh.update) == (True, True)
    assert fresh.annotations == {key: "Requesting_2026-01-01 12:00:00"}
    pending = models.NodeView(name="n", annotations={key: "Requesting_2026-01-01 11:59:30"})
    assert v.check_health(pending, now) == models.HealthVerdict(True, False)
    stale = models.NodeView(
        name="n", annotations={key: "Requesting_2026-01-01 11:58:00"}, allocatable={R.count: "0"}
    )
    verdict = v.check_health(stale, now)
    assert (verdict.healthy, verdict.annotations) == (False, {key: None})
    safety = models.NodeView(
        name="n", annotations={key: "Requesting_2026-01-01 11:58:00"}, allocatable={R.count: "4"}
    )
    assert v.check_health(safety, now).healthy


def test_container_runtime_paths_and_opt_out() -> None:
    pod = models.PodView(
        namespace="ns",
        name="p",
        uid="u-1",
        containers=(models.ContainerView(name="c", env={"CUDA_DISABLE_CONTROL": "true"}),),
    )
    devs = (models.ContainerDevice("FAKE-a", "FAKE", 3000, 30),)
    ctx = vendor.AllocateContext(node_name="n", hook_path="/usr/local", cache_file="abc")
    rt = FV.container_runtime(devs, pod.containers[0], pod, ctx)
    assert rt.envs["FAKE_VISIBLE_DEVICES"] == "FAKE-a"
    assert rt.envs["CUDA_DEVICE_MEMORY_LIMIT_0"] == "3000m"
    assert rt.envs["CUDA_DEVICE_MEMORY_SHARED_CACHE"] == "/usr/local/vgpu/abc.cache"
    mounts = {m.container_path: m for m in rt.mounts}
    assert mounts["/usr/local/vgpu"].host_path == "/usr/local/vgpu/containers/u-1_c"
    assert "/etc/ld.so.preload" not in mounts  # CUDA_DISABLE_CONTROL=true opts out
    with pytest.raises(errors.PermanentError):
        FV.container_runtime((), pod.containers[0], pod, ctx)
