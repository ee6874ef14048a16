"""File compatibility with HAMi (shim-contract.md 5.3, 13 item 15).

* A region file written by our shim is decoded by our reader and by an independent reader that
  applies HAMi's monitor rules (written here from the contract's layout tables, with literal
  offsets, sharing no code with ``hami_core_fw.monitor.region``): both give identical values.
* A HAMi-core-format file (v1 layout, ``minor_version`` 2, no extension, built from the layout
  tables) is read by our reader; our shim leaves such a file untouched.
"""

from __future__ import annotations

import struct

import pytest

from hami_core_fw.monitor import region

pytestmark = pytest.mark.shim

MIB = 1 << 20
UUID0 = "GPU-11111111-2222-3333-4444-555555555555"
UUID1 = "GPU-66666666-7777-8888-9999-000000000000"


def hami_monitor_read(data: bytes) -> dict[str, object]:
    """HAMi's monitor rules (contract 5.3), v1 only: requires the magic, selects v1 when
    ``major_version == 1`` and the size is at least 2,008,952 bytes; per device ``i <
    min(device_num, 16)`` with a non-empty UUID (labelled by its first 40 characters), sums over
    the slots ``0 .. proc_num - 1`` (clamped to 0..1024) whose status is not 0."""
    size = len(data)
    magic, major = struct.unpack_from("<iI", data, 0)
    assert magic == 19920718
    assert major == 1 and size >= 2_008_952
    (device_num,) = struct.unpack_from("<Q", data, 56)
    proc_num, switch, recent, priority = struct.unpack_from("<iiii", data, 2_008_896)
    (last_kernel,) = struct.unpack_from("<Q", data, 2_008_912)
    proc_num = min(max(proc_num, 0), 1024)
    devices = {}
    for i in range(min(device_num, 16)):
        raw = data[64 + 96 * i : 64 + 96 * (i + 1)]
        uuid = raw.split(b"\0", 1)[0].decode()[:40]
        if not uuid:
            continue
        sums = {"total": 0, "context": 0, "module": 0, "data": 0, "sm_util": 0}
        for p in range(proc_num):
            base = 1856 + 1960 * p
            (status,) = struct.unpack_from("<i", data, base + 1928)
            if status == 0:
                continue
            ctx, mod, dat, _off, total = struct.unpack_from("<5Q", data, base + 8 + 64 * i)
            (sm,) = struct.unpack_from("<Q", data, base + 1160 + 48 * i + 16)
            sums["total"] += total
            sums["context"] += ctx
            sums["module"] += mod
            sums["data"] += dat
            sums["sm_util"] += sm
        (limit,) = struct.unpack_from("<Q", data, 1600 + 8 * i)
        (sm_limit,) = struct.unpack_from("<Q", data, 1728 + 8 * i)
        devices[uuid] = {**sums, "limit": limit, "sm_limit": sm_limit}
    return {
        "devices": devices,
        "utilization_switch": switch,
        "recent_kernel": recent,
        "priority": priority,
        "last_kernel_time": last_kernel,
    }


def our_reader_view(r: region.Region) -> dict[str, object]:
    devices = {}
    for i in r.devices():
        u = r.usage(i)
        devices[r.uuids[i][:40]] = {
            "total": u.total,
            "context": u.context_size,
            "module": u.module_size,
            "data": u.data_size,
            "sm_util": r.sm_util(i),
            "limit": r.limits[i],
            "sm_limit": r.sm_limits[i],
        }
    return {
        "devices": devices,
        "utilization_switch": r.utilization_switch,
        "recent_kernel": r.recent_kernel,
        "priority": r.priority,
        "last_kernel_time": r.last_kernel_time,
    }


def test_our_file_decodes_identically_under_hami_monitor_rules(shim):
    conf = shim.tmp / "gpus.conf"
    conf.write_text("context_mib = 64\nthread_ns = 21093.75\n" + conf.read_text())
    env = {
        "CUDA_DEVICE_MEMORY_LIMIT_0": "1g",
        "CUDA_DEVICE_MEMORY_LIMIT_1": "200m",
        "CUDA_DEVICE_SM_LIMIT": "50",
        "CUDA_TASK_PRIORITY": "3",
    }
    # slot 0: contexts and data on both devices; slot 1: exits (status 0 below proc_num);
    # slot 2: a throttled launch loop, whose NVML utilisation lands in its sm_util
    # the stand-in NVML sees only its own process's launches: only the launcher drives the
    # controller (the others opt out of throttling), so the utilisation it writes is its own
    quiet = {**env, "GPU_CORE_UTILIZATION_POLICY": "disable"}
    holder = shim.start("contexts", str(100 * MIB), **quiet)
    leaver = shim.start("paths", "alloc", str(10 * MIB), "1", **quiet)
    launcher = None
    try:
        holder.until("primary")
        holder.resume()
        holder.until("created")
        leaver.until("allocated")
        launcher = shim.start("util", "0.5", "0.5", "kernel", **env)
        launcher.until("measured", timeout=60)
        assert leaver.finish().rc == 0
        data = shim.cache.read_bytes()
    finally:
        if launcher is not None:
            launcher.finish()
        holder.finish()
    ours = region.decode(data)
    assert ours.written_by_us and ours.minor_version >= 100 and ours.major_version == 1
    statuses = [s.status for s in ours.slots]
    assert statuses.count(0) == 1 and len(statuses) == 3  # a freed slot inside proc_num
    hami = hami_monitor_read(data)
    assert our_reader_view(ours) == hami
    # and the file is not trivially empty: both devices carry usage, device 0 utilisation
    devices = hami["devices"]
    assert isinstance(devices, dict)
    assert set(devices) == {UUID0, UUID1}
    assert devices[UUID0]["context"] == 64 * MIB + 2 * 64 * MIB + 64 * MIB  # + the launcher's
    assert devices[UUID0]["data"] == 100 * MIB
    assert devices[UUID1]["total"] == 128 * MIB
    assert devices[UUID0]["limit"] == 1 << 30
    assert devices[UUID0]["sm_limit"] == 50
    assert devices[UUID0]["sm_util"] > 0
    assert hami["priority"] == 3


# --------------------------------------------------------------- HAMi-core's own file format

HAMI_CORE_SIZE = 2_008_953  # sizeof(struct) + 1: HAMi-core extends the file by one byte


def hami_core_file() -> bytearray:
    """A file as HAMi-core (major 1, minor 2) writes it, from the v1 layout tables (5.2)."""
    buf = bytearray(HAMI_CORE_SIZE)
    struct.pack_into("<iIIi", buf, 0, 19920718, 1, 2, 1)  # flag, major, minor, sm_init_flag
    struct.pack_into("<Q", buf, 16, 4321)  # owner_pid (writer-private)
    buf[24:56] = bytes(range(1, 33))  # sem_t bytes (writer-private)
    struct.pack_into("<Q", buf, 56, 2)
    for i, uuid in enumerate((UUID0, UUID1)):
        buf[64 + 96 * i : 64 + 96 * i + len(uuid)] = uuid.encode()
    struct.pack_into("<2Q", buf, 1600, 2 << 30, 0)
    struct.pack_into("<2Q", buf, 1728, 30, 0)
    slots = [  # pid, hostpid, status, {device: (context, module, data)}, sm_util on device 0
        (101, 5101, 1, {0: (300 * MIB, 0, 1 * MIB), 1: (300 * MIB, 0, 7 * MIB)}, 20),
        (102, 5102, 0, {0: (300 * MIB, 0, 50 * MIB)}, 90),  # exited: not counted
        (103, 5103, 2, {0: (300 * MIB, 0, 2 * MIB)}, 10),  # suspended: counted
    ]
    for n, (pid, hostpid, status, used, sm) in enumerate(slots):
        base = 1856 + 1960 * n
        struct.pack_into("<ii", buf, base, pid, hostpid)
        for d, (ctx, mod, dat) in used.items():
            struct.pack_into("<5Q", buf, base + 8 + 64 * d, ctx, mod, dat, 0, ctx + mod + dat)
        struct.pack_into("<Q", buf, base + 1160 + 16, sm)
        struct.pack_into("<i", buf, base + 1928, status)
    struct.pack_into("<iiii", buf, 2_008_896, 3, 1, 2, 1)
    struct.pack_into("<Q", buf, 2_008_912, 1_750_000_000)
    return buf


def test_hami_core_file_is_read_by_our_reader():
    data = bytes(hami_core_file())
    r = region.decode(data)
    assert (r.layout, r.major_version, r.minor_version) == ("v1", 1, 2)
    assert not r.written_by_us
    assert r.extension is None
    assert r.uuids[:2] == (UUID0, UUID1)
    assert r.limits[:2] == (2 << 30, 0)
    assert r.sm_limits[0] == 30
    assert [s.pid for s in r.live_slots()] == [101, 103]
    assert [s.hostpid for s in r.live_slots()] == [5101, 5103]
    assert r.usage(0) == region.DeviceUsage(600 * MIB, 0, 3 * MIB, 603 * MIB)
    assert r.usage(1) == region.DeviceUsage(300 * MIB, 0, 7 * MIB, 307 * MIB)
    assert r.sm_util(0) == 30
    assert (r.utilization_switch, r.recent_kernel, r.priority) == (1, 2, 1)
    assert r.last_kernel_time == 1_750_000_000
    assert our_reader_view(r) == hami_monitor_read(data)


def test_our_shim_leaves_a_hami_core_file_alone(shim):
    original = bytes(hami_core_file())
    shim.cache.write_bytes(original)
    res = shim.run("paths", "alloc", str(30 * MIB), "5", CUDA_DEVICE_MEMORY_LIMIT="100m")
    assert res.rc == 0, res.stderr
    assert res.int("allocated") == 3  # the limit still holds, in this process
    assert shim.cache.read_bytes() == original
    errors = [ln for ln in res.stderr.splitlines() if "another implementation" in ln]
    assert len(errors) == 1, res.stderr
