"""Golden, property and error tests of every HAMi wire format (hami-compat.md section 3)."""

from __future__ import annotations

import contextlib
import datetime as dt

import pytest
from hypothesis import given
from hypothesis import strategies as st

from hami_core_fw import codec, errors, models

REG_KEY = "hami.io/node-nvidia-register"
TO_ALLOC = "hami.io/vgpu-devices-to-allocate"

# --- golden strings, verbatim from hami-compat.md -----------------------------------------------

V100_JSON = (
    '[{"id":"GPU-0fc3eda5-e98b-a25b-5b0d-cf5c855d1448","count":10,"devmem":32768,"devcore":100,'
    '"type":"NVIDIA-Tesla V100-PCIE-32GB","mode":"hami-core","health":true},'
    '{"id":"GPU-00552014-5c87-89ac-b1a6-7b53aa24b0ec","index":1,"count":10,"devmem":32768,'
    '"devcore":100,"type":"NVIDIA-Tesla V100-PCIE-32GB","numa":1,"mode":"hami-core","health":true}]'
)
MOCK_JSON = (
    '[{"id":"GPU-MOCK-0","count":10,"devmem":81920,"devcore":100,"type":"NVIDIA-A100-SXM4-80GB",'
    '"health":true,"numa":0,"mode":"hami-core"}]'
)
DCU_CSV = (
    "DCU-MOCK-0,2,16384,100,Z100L,0,true,0,hami-core:"
    "DCU-MOCK-1,2,16384,100,Z100L,1,true,1,hami-core:"
)
T4_CSV7 = "GPU-a02b30b8-5b20-131c-0e47-6bc99948e264,10,15360,100,NVIDIA-Tesla T4,0,true:"


def test_registration_json_golden_decode() -> None:
    devs = codec.decode_registration(REG_KEY, V100_JSON, vendor="NVIDIA")
    assert devs == (
        models.DeviceInfo(
            id="GPU-0fc3eda5-e98b-a25b-5b0d-cf5c855d1448",
            count=10,
            devmem=32768,
            devcore=100,
            type="NVIDIA-Tesla V100-PCIE-32GB",
            mode="hami-core",
            health=True,
            vendor="NVIDIA",
        ),
        models.DeviceInfo(
            id="GPU-00552014-5c87-89ac-b1a6-7b53aa24b0ec",
            index=1,
            count=10,
            devmem=32768,
            devcore=100,
            type="NVIDIA-Tesla V100-PCIE-32GB",
            numa=1,
            mode="hami-core",
            health=True,
            vendor="NVIDIA",
        ),
    )


def test_registration_json_golden_encode_is_byte_exact() -> None:
    devs = codec.decode_registration(REG_KEY, V100_JSON)
    assert codec.encode_registration_json(devs) == V100_JSON


def test_registration_mock_plugin_shape() -> None:
    (dev,) = codec.decode_registration(REG_KEY, MOCK_JSON)
    assert (dev.id, dev.devmem, dev.type, dev.health, dev.numa) == (
        "GPU-MOCK-0",
        81920,
        "NVIDIA-A100-SXM4-80GB",
        True,
        0,
    )


def test_registration_json_go_rules() -> None:
    """Keys match case-insensitively, unknown keys are ignored, absent health means unhealthy."""
    value = '[{"ID":"GPU-a","Count":4,"Devmem":100,"Devcore":100,"Type":"T","extra":{"x":1}}]\n'
    (dev,) = codec.decode_registration(REG_KEY, value)
    assert (dev.id, dev.count, dev.devmem, dev.health, dev.index, dev.numa) == (
        "GPU-a",
        4,
        100,
        False,
        0,
        0,
    )


def test_registration_mig_profiles_round_trip() -> None:
    profile = (
        '{"name":"1g.10gb","memoryMB":9728,"core":15,"sliceCount":1,'
        '"placements":[{"start":6,"size":1}]}'
    )
    value = (
        '[{"id":"GPU-m","count":7,"devmem":81920,"devcore":100,"type":"NVIDIA-A100","mode":"mig",'
        f'"migProfiles":[{profile}],"health":true}}]'
    )
    devs = codec.decode_registration(REG_KEY, value)
    assert devs[0].mig_profiles == (
        models.MigProfile("1g.10gb", 9728, 15, 1, (models.Placement(6, 1),)),
    )
    assert codec.encode_registration_json(devs) == value


def test_registration_csv_golden() -> None:
    devs = codec.decode_registration("hami.io/node-dcu-register", DCU_CSV, vendor="DCU")
    assert [(d.id, d.count, d.devmem, d.type, d.numa, d.index, d.mode) for d in devs] == [
        ("DCU-MOCK-0", 2, 16384, "Z100L", 0, 0, "hami-core"),
        ("DCU-MOCK-1", 2, 16384, "Z100L", 1, 1, "hami-core"),
    ]
    assert codec.encode_registration_csv(devs) == DCU_CSV


def test_registration_csv_seven_fields() -> None:
    (dev,) = codec.decode_registration(REG_KEY, T4_CSV7)
    assert (dev.type, dev.index, dev.mode, dev.health) == ("NVIDIA-Tesla T4", 0, "hami-core", True)
    assert codec.encode_registration_csv([dev]) == (
        "GPU-a02b30b8-5b20-131c-0e47-6bc99948e264,10,15360,100,NVIDIA-Tesla T4,0,true,0,hami-core:"
    )


@pytest.mark.parametrize(
    ("value", "part", "problem"),
    [
        ("[]", "[]", "no device found"),
        ('[{"id":"a",', "", "invalid JSON"),
        ('{"id":"a"}', '{"id"', "no ',' separated fields"),  # not '[': read as legacy CSV
        ('[{"id":"a","count":"ten"}]', '"ten"', "count is not a number"),
        ('[{"id":"a","health":"yes"}]', "", "health is not a boolean"),
        ("", "", "no ':' device separator"),
        ("::", "::", "no device found"),
        ("GPU-a:", "GPU-a", "no ',' separated fields"),
        ("GPU-a,1,2:", "GPU-a,1,2", "3 fields, expected 7 or 9"),
        ("GPU-a,x,1,100,T,0,true:", "x", "count is not an integer"),
        ("GPU-a,1,1,100,T,0,maybe:", "maybe", "health is not a boolean"),
        ("GPU-a,1,1,100,T,0,true,-1,m:", "-1", "index is negative"),
        ("GPU-a,1,99999999999,100,T,0,true:", "99999999999", "does not fit in 32 bits"),
    ],
)
def test_registration_errors_name_key_and_part(value: str, part: str, problem: str) -> None:
    with pytest.raises(errors.CodecError) as info:
        codec.decode_registration(REG_KEY, value)
    message = str(info.value)
    assert REG_KEY in message
    assert problem in message
    assert part in message


# --- pod device strings -----------------------------------------------------------------------

A = models.ContainerDevice("GPU-a", "NVIDIA", 3000, 30)
B = models.ContainerDevice("GPU-b", "NVIDIA", 3000, 30)
X1 = models.ContainerDevice("GPU-x", "NVIDIA", 3000, 0)
X2 = models.ContainerDevice("GPU-x", "NVIDIA", 5000, 0)
X3 = models.ContainerDevice("GPU-x", "NVIDIA", 1000, 0)


@pytest.mark.parametrize(
    ("value", "entries"),
    [
        (
            "GPU-0fc3eda5-e98b-a25b-5b0d-cf5c855d1448,NVIDIA,3000,30:;",
            (
                (
                    models.ContainerDevice(
                        "GPU-0fc3eda5-e98b-a25b-5b0d-cf5c855d1448", "NVIDIA", 3000, 30
                    ),
                ),
            ),
        ),
        ("GPU-a,NVIDIA,3000,30:GPU-b,NVIDIA,3000,30:;", ((A, B),)),
        ("GPU-x,NVIDIA,3000,0:;GPU-x,NVIDIA,5000,0:;", ((X1,), (X2,))),
        (";GPU-x,NVIDIA,1000,0:;", ((), (X3,))),
        (";;", ((), ())),
    ],
)
def test_pod_devices_golden(value: str, entries: models.PodSingleDevices) -> None:
    assert codec.decode_pod_devices(TO_ALLOC, value) == entries
    assert codec.encode_pod_devices(entries) == value


def test_pod_devices_decoder_tolerances() -> None:
    # a lone device without ';' is one entry; extra fields are ignored; pieces without ',' skipped
    assert codec.decode_pod_devices(TO_ALLOC, "GPU-a,NVIDIA,3000,30") == ((A,),)
    assert codec.decode_pod_devices(TO_ALLOC, "GPU-a,NVIDIA,3000,30,extra:junk:;") == ((A,),)
    # the empty string is one empty entry (a key present with "")
    assert codec.decode_pod_devices(TO_ALLOC, "") == ((),)
    # legacy MIG suffix is tolerated on read and stripped for UUID matching
    legacy = codec.decode_pod_devices(TO_ALLOC, "GPU-x[2-0],NVIDIA,20480,42:;")
    assert legacy == ((models.ContainerDevice("GPU-x", "NVIDIA", 20480, 42),),)


@pytest.mark.parametrize(
    ("value", "part"),
    [
        ("GPU-a,NVIDIA,3000:;", "GPU-a,NVIDIA,3000"),
        ("GPU-a,NVIDIA,,30:;", ""),
        ("GPU-a,NVIDIA,3000,lots:;", "lots"),
        ("GPU-a,NVIDIA,4294967296,0:;", "4294967296"),
        ("GPU-x[2,NVIDIA,1,1:;", "GPU-x[2"),
        ("GPU-x[a-b],NVIDIA,1,1:;", "GPU-x[a-b]"),
    ],
)
def test_pod_devices_errors(value: str, part: str) -> None:
    with pytest.raises(errors.CodecError) as info:
        codec.decode_pod_devices(TO_ALLOC, value)
    assert TO_ALLOC in str(info.value)
    assert repr(part) in str(info.value)


_uuid = st.text(alphabet="ABCDEFabcdef0123456789-", min_size=1, max_size=20).map(
    lambda s: "GPU-" + s
)
_device = st.builds(
    models.ContainerDevice,
    uuid=_uuid,
    type=st.sampled_from(["NVIDIA", "FAKE", "MLU", "Ascend910B3"]),
    usedmem=st.integers(0, 2**31 - 1),
    usedcores=st.integers(0, 100),
)
_entries = st.lists(st.lists(_device, max_size=4).map(tuple), min_size=1, max_size=6).map(tuple)


@given(_entries)
def test_pod_devices_round_trip(entries: models.PodSingleDevices) -> None:
    assert codec.decode_pod_devices(TO_ALLOC, codec.encode_pod_devices(entries)) == entries


_info = st.builds(
    models.DeviceInfo,
    id=_uuid,
    count=st.integers(0, 100),
    devmem=st.integers(0, 2**31 - 1),
    devcore=st.integers(0, 400),
    type=st.text(alphabet="ABCXYZ-0123 ", min_size=1, max_size=20),
    index=st.integers(0, 16),
    numa=st.integers(0, 8),
    mode=st.sampled_from(["hami-core", "mig", "mps"]),
    health=st.booleans(),
)


@given(st.lists(_info, min_size=1, max_size=8))
def test_registration_json_round_trip(devices: list[models.DeviceInfo]) -> None:
    assert codec.decode_registration(REG_KEY, codec.encode_registration_json(devices)) == tuple(
        devices
    )


@given(st.lists(_info, min_size=1, max_size=8))
def test_registration_csv_round_trip(devices: list[models.DeviceInfo]) -> None:
    assert codec.decode_registration(REG_KEY, codec.encode_registration_csv(devices)) == tuple(
        devices
    )


@given(st.text(max_size=60))
def test_decoders_never_raise_anything_but_codec_error(value: str) -> None:
    for decode in (
        codec.decode_registration,
        codec.decode_pod_devices,
        codec.decode_node_lock,
        codec.decode_mig_allocations,
        codec.decode_scoring_weights,
    ):
        with contextlib.suppress(errors.CodecError):
            decode(REG_KEY, value)


# --- MIG allocations ----------------------------------------------------------------------------

MIG_JSON = (
    '[{"containerIndex":0,"deviceIndex":0,"gpuUUID":"GPU-x","profile":"1g.10gb",'
    '"placement":{"start":6,"size":1},"migUUID":"MIG-1","gpuInstanceID":13,"computeInstanceID":0}]'
)


def test_mig_allocations_golden() -> None:
    (alloc,) = codec.decode_mig_allocations("hami.io/vgpu-mig-allocations", MIG_JSON)
    assert alloc == codec.MigAllocation(
        0, 0, "GPU-x", "1g.10gb", models.Placement(6, 1), "MIG-1", 13, 0
    )
    assert codec.encode_mig_allocations([alloc]) == MIG_JSON
    scheduled = codec.MigAllocation(1, 0, "GPU-y", "3g.40gb", models.Placement(0, 4))
    assert codec.encode_mig_allocations([scheduled]) == (
        '[{"containerIndex":1,"deviceIndex":0,"gpuUUID":"GPU-y","profile":"3g.40gb",'
        '"placement":{"start":0,"size":4}}]'
    )


@pytest.mark.parametrize(
    ("value", "problem"),
    [
        (
            '[{"containerIndex":-1,"deviceIndex":0,"gpuUUID":"g","profile":"p","placement":{"start":0,"size":1}}]',
            "negative",
        ),
        (
            '[{"containerIndex":0,"deviceIndex":0,"gpuUUID":"","profile":"p","placement":{"start":0,"size":1}}]',
            "non-empty",
        ),
        (
            '[{"containerIndex":0,"deviceIndex":0,"gpuUUID":"g","profile":"p","placement":{"start":0,"size":0}}]',
            "size must be > 0",
        ),
        (
            '[{"containerIndex":0,"deviceIndex":0,"gpuUUID":"g","profile":"p","placement":{"start":0,"size":1},"migUUID":"m"}]',
            "all-or-nothing",
        ),
        (
            '[{"containerIndex":0,"deviceIndex":0,"gpuUUID":"g","profile":"p","placement":{"start":0,"size":1}},'
            '{"containerIndex":0,"deviceIndex":0,"gpuUUID":"g","profile":"p","placement":{"start":1,"size":1}}]',
            "duplicate",
        ),
    ],
)
def test_mig_allocation_validation(value: str, problem: str) -> None:
    with pytest.raises(errors.CodecError, match=problem):
        codec.decode_mig_allocations("hami.io/vgpu-mig-allocations", value)


# --- node lock ----------------------------------------------------------------------------------

LOCK_KEY = "hami.io/mutex.lock"


def test_node_lock_golden() -> None:
    value = "2025-10-20T03:07:02Z,jingyu-test,gputest-6c77bb77f8-gvtzc"
    lock = codec.decode_node_lock(LOCK_KEY, value)
    assert lock == codec.NodeLock(
        dt.datetime(2025, 10, 20, 3, 7, 2, tzinfo=dt.UTC), "jingyu-test", "gputest-6c77bb77f8-gvtzc"
    )
    assert codec.encode_node_lock(lock) == value
    legacy = codec.decode_node_lock(LOCK_KEY, "2025-10-20T03:07:02Z")
    assert legacy.legacy
    assert codec.encode_node_lock(legacy) == "2025-10-20T03:07:02Z"
    # other offsets and fractions are RFC 3339 too
    assert codec.decode_node_lock(LOCK_KEY, "2025-10-20T11:07:02.5+08:00,a,b").time == dt.datetime(
        2025, 10, 20, 3, 7, 2, 500000, tzinfo=dt.UTC
    )


@pytest.mark.parametrize(
    "value",
    [
        "",
        "yesterday",
        "2025-10-20T03:07:02Z,ns",
        "2025-10-20T03:07:02Z,a,b,c",
        "2025-10-20,ns,p",
        "2025-10-20 03:07:02,ns,p",
    ],
)
def test_node_lock_malformed(value: str) -> None:
    with pytest.raises(errors.CodecError, match="mutex.lock"):
        codec.decode_node_lock(LOCK_KEY, value)


def test_lock_ownership_is_a_suffix_test() -> None:
    assert codec.lock_owned_by("2025-10-20T03:07:02Z,ns,p", "ns", "p")
    assert not codec.lock_owned_by("2025-10-20T03:07:02Z,ns,p", "ns", "q")
    assert codec.lock_owned_by("2025-10-20T03:07:02Z", "anyone", "at-all")


# --- handshake ----------------------------------------------------------------------------------


def test_handshake_values() -> None:
    now = dt.datetime(2024, 1, 23, 4, 30, 4, tzinfo=dt.UTC)
    assert codec.encode_handshake_request(now) == "Requesting_2024-01-23 04:30:04"
    assert codec.decode_handshake("Requesting_2024-01-23 04:30:04") == codec.Handshake(
        "Requesting", now
    )
    assert codec.decode_handshake("Requesting_2024.01.23 04:30:04") == codec.Handshake(
        "Requesting", now
    )
    assert codec.decode_handshake("Requesting_garbage") == codec.Handshake("Requesting", None)
    assert codec.decode_handshake("Requesting") == codec.Handshake("Requesting", None)
    reported = "Reported 2024-01-23 04:30:04.434037031 +0000 UTC m=+1104711.77"
    assert codec.decode_handshake(reported).kind == "Reported"
    assert codec.decode_handshake("Reported_2024.01.23 04:30:04").kind == "Reported"
    assert codec.decode_handshake("Deleted_2024-01-23 04:30:04") == codec.Handshake("Deleted", now)
    assert codec.decode_handshake("Unknown").kind == ""


# --- reasons and weights -------------------------------------------------------------------------


def test_reason_strings() -> None:
    text = codec.format_reasons(
        {models.Reason.CARD_TYPE_MISMATCH: 3, models.Reason.CARD_INSUFFICIENT_MEMORY: 1}, 4
    )
    assert text == "1/4 CardInsufficientMemory, 3/4 CardTypeMismatch"
    assert codec.parse_reasons("n1", text) == {
        models.Reason.CARD_INSUFFICIENT_MEMORY: (1, 4),
        models.Reason.CARD_TYPE_MISMATCH: (3, 4),
    }
    with pytest.raises(errors.CodecError, match="unknown reason"):
        codec.parse_reasons("n1", "1/4 CardFellOver")


def test_scoring_weights() -> None:
    key = "hami.io/device-scoring-weights"
    assert codec.decode_scoring_weights(key, " memory = 2 , slot=0,core=1") == codec.ScoringWeights(
        0, 1, 2
    )
    for bad in [
        "",
        "slot=1,core=1",
        "slot=1,core=1,memory=x",
        "slot=1,slot=1,memory=1",
        "slot=1,core=1,gpu=1",
        "slot=0,core=0,memory=0",
        "slot=-1,core=1,memory=1",
        "slot,core,memory",
    ]:
        with pytest.raises(errors.CodecError):
            codec.decode_scoring_weights(key, bad)


def test_go_bool_and_json_escaping() -> None:
    assert [codec.go_bool(v) for v in ("1", "t", "True", "0", "F", "yes")] == [
        True,
        True,
        True,
        False,
        False,
        None,
    ]
    assert codec.go_json({"a": "<&>"}) == '{"a":"\\u003c\\u0026\\u003e"}'
