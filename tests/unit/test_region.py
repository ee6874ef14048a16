"""Decoding of shared-region files (HAMi v1/v0 layouts and our extension) from synthetic bytes."""

from __future__ import annotations

import struct

import pytest

from hami_core_fw.monitor import region

UUID = "GPU-11111111-2222-3333-4444-555555555555"


def v1_file(minor: int = 100, size: int = region.EXT_OFFSET + 2176 + 16 * 1024) -> bytearray:
    buf = bytearray(size)
    struct.pack_into("<iIIi", buf, 0, region.MAGIC, 1, minor, 0)
    struct.pack_into("<Q", buf, 56, 2)
    buf[64 : 64 + len(UUID)] = UUID.encode()
    buf[160 : 160 + 4] = b"GPU-"
    struct.pack_into("<2Q", buf, 1600, 1 << 30, 2 << 30)
    struct.pack_into("<2Q", buf, 1728, 50, 0)
    struct.pack_into("<iiii", buf, 2_008_896, 3, 1, 2, 7)
    struct.pack_into("<Q", buf, 2_008_912, 1_700_000_000)
    return buf


def put_slot(
    buf: bytearray, i: int, pid: int, status: int, dev: int, data: int, ctx: int = 0
) -> None:
    base = 1856 + i * 1960
    struct.pack_into("<ii", buf, base, pid, pid + 1000)
    struct.pack_into("<5Q", buf, base + 8 + dev * 64, ctx, 0, data, 0, ctx + data)
    struct.pack_into("<Q", buf, base + 1160 + dev * 48 + 16, 30)
    struct.pack_into("<i", buf, base + 1928, status)


def test_v1_fields_and_monitor_sums():
    buf = v1_file()
    put_slot(buf, 0, 10, 1, 0, 100, ctx=5)
    put_slot(buf, 1, 11, 0, 0, 999)  # exited: skipped
    put_slot(buf, 2, 12, 1, 0, 20)
    put_slot(buf, 3, 13, 1, 0, 4000)  # beyond proc_num: never read
    r = region.decode(buf)
    assert (r.layout, r.major_version, r.minor_version) == ("v1", 1, 100)
    assert r.written_by_us
    assert r.uuids[0] == UUID
    assert r.limits[:2] == (1 << 30, 2 << 30)
    assert r.sm_limits[0] == 50
    assert (r.proc_num, r.utilization_switch, r.recent_kernel, r.priority) == (3, 1, 2, 7)
    assert r.last_kernel_time == 1_700_000_000
    assert [s.pid for s in r.live_slots()] == [10, 12]
    assert r.usage(0) == region.DeviceUsage(5, 0, 120, 125)
    assert r.sm_util(0) == 60
    assert r.slots[0].hostpid == 1010
    assert r.devices() == (0, 1)


def test_extension_is_decoded_for_our_files_only():
    buf = v1_file()
    struct.pack_into("<IIQ", buf, region.EXT_OFFSET, region.EXT_MAGIC, 1, 18560)
    off = region.EXT_OFFSET + 128 + 128
    struct.pack_into("<QqQdQI", buf, off + 64, 123, -5, 9, 0.5, 2500, 1)
    struct.pack_into("<Q", buf, region.EXT_OFFSET + 2176 + 16 * 2, 4242)
    ext = region.decode(buf).extension
    assert ext is not None
    assert ext.version == 1
    assert ext.devices[1] == region.DeviceExtension(123, -5, 9, 0.5, 2500, 1)
    assert ext.slot_start_times[2] == 4242
    hami_core = v1_file(minor=2, size=region.V1_SIZE + 1)
    assert region.decode(hami_core).extension is None
    assert not region.decode(hami_core).written_by_us


def test_missing_extension_magic_gives_none():
    assert region.decode(v1_file()).extension is None


def test_proc_num_is_clamped():
    buf = v1_file(size=region.V1_SIZE)
    struct.pack_into("<i", buf, 2_008_896, 5000)
    assert len(region.decode(buf).slots) == region.MAX_PROCS
    struct.pack_into("<i", buf, 2_008_896, -3)
    assert region.decode(buf).slots == ()


def test_v0_layout():
    buf = bytearray(region.V0_SIZE)
    struct.pack_into("<i", buf, 0, region.MAGIC)
    struct.pack_into("<Q", buf, 48, 1)
    buf[56 : 56 + len(UUID)] = UUID.encode()
    struct.pack_into("<Q", buf, 1592, 1 << 30)
    struct.pack_into("<iiii", buf, 1_197_880, 1, 0, 2, 1)
    struct.pack_into("<ii", buf, 1848, 77, 0)
    struct.pack_into("<5Q", buf, 1848 + 8, 1, 2, 3, 0, 6)
    struct.pack_into("<i", buf, 1848 + 1160, 1)
    r = region.decode(buf)
    assert r.layout == "v0"
    assert r.uuids[0] == UUID
    assert r.limits[0] == 1 << 30
    assert r.usage(0) == region.DeviceUsage(1, 2, 3, 6)
    assert r.extension is None
    assert r.last_kernel_time == 0


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda b: b[: region.V0_SIZE - 1], "too small"),
        (lambda b: b"\0" * 4 + b[4:], "not initialised"),
        (lambda b: b[:4] + struct.pack("<I", 2) + b[8:], "major version"),
    ],
)
def test_rejected_files(mutate, message):
    with pytest.raises(region.RegionError, match=message):
        region.decode(mutate(bytes(v1_file(size=region.V1_SIZE))))


def test_read_file(tmp_path):
    path = tmp_path / "x.cache"
    path.write_bytes(bytes(v1_file(size=region.V1_SIZE)))
    assert region.read_file(path).uuids[0] == UUID


def fake_proc(root, pid: int, state: str, start: int, comm: str = "a (b) c") -> None:
    fields = [state, *["0"] * 18, str(start), "0", "0"]
    (root / str(pid)).mkdir(parents=True)
    (root / str(pid) / "stat").write_text(f"{pid} ({comm}) " + " ".join(fields) + "\n")


def test_process_alive_checks_existence_state_and_start_time(tmp_path):
    fake_proc(tmp_path, 10, "S", 555)
    fake_proc(tmp_path, 11, "Z", 556)
    assert region.process_alive(10, 555, tmp_path)
    assert region.process_alive(10, 0, tmp_path)  # start time not recorded: existence only
    assert not region.process_alive(10, 554, tmp_path)  # the PID was reused
    assert not region.process_alive(11, 556, tmp_path)  # zombie
    assert not region.process_alive(12, 0, tmp_path)  # gone
    assert not region.process_alive(0, 0, tmp_path)


def test_exclude_dead_frees_slots_of_dead_processes(tmp_path):
    buf = v1_file(size=region.EXT_OFFSET + 2176 + 16 * 1024)
    struct.pack_into("<IIQ", buf, region.EXT_OFFSET, region.EXT_MAGIC, 1, 18560)
    put_slot(buf, 0, 10, 1, 0, 100)  # alive
    put_slot(buf, 1, 11, 1, 0, 20)  # gone
    put_slot(buf, 2, 12, 1, 0, 3)  # PID reused by a process started later
    for i, start in enumerate((555, 556, 557)):
        struct.pack_into("<Q", buf, region.EXT_OFFSET + 2176 + 16 * i, start)
    fake_proc(tmp_path, 10, "R", 555)
    fake_proc(tmp_path, 12, "S", 999)
    r = region.decode(buf)
    assert r.usage(0).total == 123
    live = region.exclude_dead(r, tmp_path)
    assert [s.pid for s in live.live_slots()] == [10]
    assert live.usage(0).total == 100
    assert live.sm_util(0) == 30
    # host view: the host PIDs (pid + 1000) are checked instead
    fake_proc(tmp_path, 1011, "S", 556)
    host = region.exclude_dead(r, tmp_path, use_hostpid=True)
    assert [s.pid for s in host.live_slots()] == [11]
