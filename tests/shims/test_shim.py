"""The CUDA shim preloaded into real processes over the stand-in driver (shim-contract.md 12-13).

Each program runs with the shim preloaded and, where the comparison matters, without it: a refusal
the shim makes must be one the stand-in driver would not have made, and pass-through results must
equal the driver's. Accounting is read back from the region file through
``hami_core_fw.monitor.region``, the reader the node monitor uses.
"""

from __future__ import annotations

import os
import re
import signal
import stat
import subprocess
import time

import pytest

from hami_core_fw.monitor import region

pytestmark = pytest.mark.shim

MIB = 1 << 20
OOM = 2
NOT_INITIALIZED = 3
UUID0 = "GPU-11111111-2222-3333-4444-555555555555"
UUID1 = "GPU-66666666-7777-8888-9999-000000000000"


def assert_consistent(r: region.Region) -> None:
    """The container counter of every device equals the sum over live slots (to the byte)."""
    assert r.extension is not None
    for d in range(2):
        assert r.extension.devices[d].reserved == r.usage(d).total
        u = r.usage(d)
        assert u.total == u.data_size + u.context_size + u.module_size


# ------------------------------------------------------------------------------------- build


def test_exports_are_exactly_the_hook_list(shim_build):
    out = subprocess.run(
        ["nm", "-D", "--defined-only", str(shim_build / "libhami-cuda.so")],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    exported = sorted(line.split()[-1] for line in out.splitlines() if line.strip())
    hooks = sorted((shim_build / "hooks.txt").read_text().split())
    assert exported == hooks
    assert "dlsym" in exported
    assert "cuMemAlloc_v2" in exported
    assert not [s for s in exported if s.startswith("hami_")]


# ------------------------------------------------------------------------- allocation paths

# (path, size, count, successes under a 100 MiB limit, charged bytes after those successes)
PATHS = [
    ("alloc", 30 * MIB, 5, 3, 90 * MIB),
    ("pitch", 30 * MIB, 5, 3, 3 * ((30 * MIB // 1024 - 100 + 511) // 512 * 512) * 1024),
    ("managed", 30 * MIB, 5, 3, 90 * MIB),
    ("async", 30 * MIB, 5, 3, 96 * MIB),  # the pool reserves 32 MiB chunks
    ("async_ptsz", 30 * MIB, 5, 3, 96 * MIB),
    ("pool", 30 * MIB, 5, 3, 96 * MIB),
    ("pool_ptsz", 30 * MIB, 5, 3, 96 * MIB),
    ("vmm", 30 * MIB, 5, 3, 90 * MIB),
    ("array", 30 * MIB, 5, 3, 3 * (30 * MIB + 64 * 1024)),  # the driver's memory requirement
    ("array3d", 30 * MIB, 5, 3, 90 * MIB),
    ("mipmap", 30 * MIB, 5, 2, None),  # sum over 4 levels, as the driver reports it
]


@pytest.mark.parametrize(
    ("path", "size", "count", "ok", "charged"), PATHS, ids=[p[0] for p in PATHS]
)
def test_allocation_path_is_limited_and_exactly_accounted(shim, path, size, count, ok, charged):
    p = shim.start("paths", path, str(size), str(count), CUDA_DEVICE_MEMORY_LIMIT="100m")
    try:
        held = p.until("allocated")
        rcs = [int(held[f"rc_{i}"]) for i in range(ok + 1)]
        assert rcs == [0] * ok + [OOM]
        r = shim.region()
        usage = r.usage(0)
        driver_used = int(held["driver_used"])
        # refused before the driver was called: the driver holds exactly what was charged
        assert usage.total == driver_used
        if charged is not None:
            assert usage.total == charged
        assert usage.total <= 100 * MIB
        assert r.limits[0] == 100 * MIB
        assert_consistent(r)
        p.resume()
        p.until("freed")
        r = shim.region()
        assert r.usage(0).total == 0
        assert_consistent(r)
    finally:
        res = p.finish()
    assert res.rc == 0, res.stderr
    oom_lines = [ln for ln in res.stderr.splitlines() if "out of memory" in ln]
    assert len(oom_lines) == 1, res.stderr
    assert f"device 0 ({UUID0})" in oom_lines[0]
    assert "limit 104857600 bytes" in oom_lines[0]
    assert re.search(r"in use \d+, requested \d+", oom_lines[0])
    # without the shim the stand-in driver grants every request: the refusal was the shim's
    base = shim.run(
        "paths", path, str(size), str(count), shim=False, CUDA_DEVICE_MEMORY_LIMIT="100m"
    )
    assert base.int("allocated") == count, base.stdout


def test_host_memory_is_not_device_memory(shim):
    res = shim.run("paths", "host", str(30 * MIB), "5", CUDA_DEVICE_MEMORY_LIMIT="100m")
    assert res.int("allocated") == 5
    assert shim.region().usage(0).total == 0


def test_free_of_unknown_pointer_reaches_the_driver(shim):
    with_shim = shim.run("paths", "unknown_free", "1", "1", CUDA_DEVICE_MEMORY_LIMIT="100m")
    without = shim.run("paths", "unknown_free", "1", "1", shim=False)
    assert with_shim.values == without.values
    assert with_shim.int("reached_driver") == 1
    assert with_shim.int("release_reached_driver") == 1
    assert with_shim.int("rc") == 1  # CUDA_ERROR_INVALID_VALUE, the driver's answer


def test_successful_run_is_quiet_at_default_level(shim):
    res = shim.run("paths", "alloc", str(10 * MIB), "3", CUDA_DEVICE_MEMORY_LIMIT="1g")
    assert res.rc == 0
    assert res.stderr == ""
    assert "hami" not in res.stdout


def test_malformed_limit_fails_closed_with_one_error(shim):
    res = shim.run("paths", "alloc", str(MIB), "2", CUDA_DEVICE_MEMORY_LIMIT="1.5g")
    assert res.int("rc_0") == OOM
    errors = [ln for ln in res.stderr.splitlines() if "ERROR" in ln and "1.5g" in ln]
    assert len(errors) == 1, res.stderr


def test_context_overhead_is_charged_and_released(shim):
    """Contexts consume device memory in the stand-in (context_mib); the shim charges exactly that
    to context_size, counts it toward the limit and in cuMemGetInfo, and releases it on destroy /
    last primary release (shim-contract.md 6.2)."""
    conf = shim.tmp / "gpus.conf"
    conf.write_text("context_mib = 64\n" + conf.read_text())
    env = {"CUDA_DEVICE_MEMORY_LIMIT_0": "1g", "CUDA_DEVICE_MEMORY_LIMIT_1": "200m"}
    p = shim.start("contexts", str(100 * MIB), **env)
    try:
        held = p.until("primary")
        r = shim.region()
        assert r.usage(0).context_size == 64 * MIB  # retained twice, charged once
        assert r.usage(0).total == int(held["primary.driver_used_0"]) == 64 * MIB
        assert (int(held["primary.total"]), int(held["primary.free"])) == (1024 * MIB, 960 * MIB)
        assert_consistent(r)
        p.resume()
        held = p.until("created")
        r = shim.region()
        assert int(held["alloc_rc"]) == 0
        assert r.usage(0) == region.DeviceUsage(192 * MIB, 0, 100 * MIB, 292 * MIB)
        assert r.usage(0).total == int(held["created.driver_used_0"])
        # two contexts on device 1 leave 72 MiB of its 200 MiB: the 100 MiB allocation is refused
        assert int(held["alloc_in_created_rc"]) == OOM
        assert r.usage(1) == region.DeviceUsage(128 * MIB, 0, 0, 128 * MIB)
        assert r.usage(1).total == int(held["created.driver_used_1"])
        assert int(held["created.free"]) == 1024 * MIB - 292 * MIB
        assert_consistent(r)
        p.resume()
        held = p.until("destroyed")
        r = shim.region()
        assert r.usage(0) == region.DeviceUsage(64 * MIB, 0, 0, 64 * MIB)
        assert r.usage(1).total == 0 == int(held["destroyed.driver_used_1"])
        assert r.usage(0).total == int(held["destroyed.driver_used_0"])
        p.resume()
        held = p.until("released")
        r = shim.region()
        assert r.usage(0).total == r.usage(1).total == 0
        assert int(held["released.driver_used_0"]) == 0
        assert_consistent(r)
    finally:
        res = p.finish()
    assert res.rc == 0, res.stderr
    base = shim.run("contexts", str(100 * MIB), shim=False, **env)
    assert base.int("alloc_in_created_rc") == 0  # the refusal was the shim's


# --------------------------------------------------------------------------------- capacity


def test_no_limit_reports_the_device_values(shim):
    with_shim = shim.run("info", "0", str(256 * MIB))
    without = shim.run("info", "0", str(256 * MIB), shim=False)
    assert with_shim.values == without.values
    assert with_shim.int("total") == 81920 * MIB


def test_capacity_is_the_slice_in_cuda_and_nvml(shim):
    res = shim.run("info", "0", str(256 * MIB), CUDA_DEVICE_MEMORY_LIMIT="1g")
    g = 1024 * MIB
    assert res.int("getinfo_rc") == 0
    assert (res.int("total"), res.int("free")) == (g, g - 256 * MIB)
    assert (res.int("total_v1"), res.int("free_v1")) == (g, g - 256 * MIB)
    assert res.int("totalmem") == g
    assert res.int("totalmem_v1") == g
    for v in ("nvml", "nvml2"):
        assert res.int(f"{v}_rc") == 0
        assert res.int(f"{v}_total") == g
        assert res.int(f"{v}_used") == 256 * MIB
        assert res.int(f"{v}_free") == g - 256 * MIB


def test_free_never_exceeds_real_free(shim):
    res = shim.run("info", "0", "0", "100", CUDA_DEVICE_MEMORY_LIMIT="1g")
    assert res.int("total") == 1024 * MIB
    assert res.int("free") == 100 * MIB


def test_usage_above_limit_clamps_instead_of_failing(shim):
    holder = shim.start("paths", "alloc", str(512 * MIB), "1", CUDA_DEVICE_MEMORY_LIMIT="1g")
    try:
        holder.until("allocated")
        # the operator lowers the limit below the usage (offset of limit[0] in the v1 layout)
        with open(shim.cache, "r+b") as f:
            f.seek(1600)
            f.write((256 * MIB).to_bytes(8, "little"))
        res = shim.run("info", "0", "0")
    finally:
        holder.finish()
    assert res.int("getinfo_rc") == 0
    assert (res.int("total"), res.int("free")) == (256 * MIB, 0)
    assert (res.int("nvml_total"), res.int("nvml_used"), res.int("nvml_free")) == (
        256 * MIB,
        256 * MIB,
        0,
    )


def test_limits_follow_uuids_with_reordered_devices(shim):
    """Reverse CUDA order; CUDA_VISIBLE_DEVICES=1 selects CUDA ordinal 1 = table device 0."""
    (shim.tmp / "gpus.conf").write_text(
        "cuda_order = reverse\n" + (shim.tmp / "gpus.conf").read_text()
    )
    env = {
        "CUDA_VISIBLE_DEVICES": "1",
        "CUDA_DEVICE_MEMORY_LIMIT_0": "100m",
        "CUDA_DEVICE_MEMORY_LIMIT_1": "300m",
    }
    p = shim.start("paths", "alloc", str(30 * MIB), "20", **env)
    try:
        held = p.until("allocated")
        r = shim.region()
        assert r.uuids[:2] == (UUID0, UUID1)  # NVML (table) order = limit-index order
        assert int(held["allocated"]) == 3  # device UUID0 has the 100 MiB limit
        assert r.usage(0).total == 90 * MIB
        assert r.usage(1).total == 0
    finally:
        p.finish()
    info = shim.run("info", "0", "0", **env)
    assert info.values["uuid"] == UUID0
    assert info.int("total") == 100 * MIB


# ------------------------------------------------------------------------ processes, crashes


def test_multi_process_accounting_is_exact(shim):
    procs, threads = 8, 4
    total_ops = int(os.environ.get("HAMI_SHIM_STRESS_OPS", "1000000"))
    per_thread = max(1, total_ops // (procs * threads))
    env = {"CUDA_DEVICE_MEMORY_LIMIT_0": "768m", "CUDA_DEVICE_MEMORY_LIMIT_1": "512m"}
    running = [
        shim.start(
            "stress", "random", str(threads), str(per_thread), str(seed), "2", str(8 * MIB), **env
        )
        for seed in range(procs)
    ]
    try:
        outs = [p.until("done", timeout=1200) for p in running]
        r = shim.region()
        assert len(r.live_slots()) == procs
        for d, limit in ((0, 768 * MIB), (1, 512 * MIB)):
            live = sum(int(o[f"live_{d}"]) for o in outs)
            assert r.usage(d).total == live
            assert live <= limit
        assert_consistent(r)
        assert sum(int(o["ooms"]) for o in outs) > 0  # the limit was reached and held
    finally:
        results = [p.finish() for p in running]
    assert all(res.rc == 0 for res in results), [res.stderr for res in results]
    r = shim.region()
    assert r.live_slots() == ()
    assert r.usage(0).total == r.usage(1).total == 0
    assert_consistent(r)


def test_racing_processes_never_overshoot(shim):
    limit = 800 * MIB
    size = limit // 8 + MIB
    running = [
        shim.start("stress", "race", str(size), CUDA_DEVICE_MEMORY_LIMIT="800m") for _ in range(8)
    ]
    try:
        rcs = sorted(int(p.until("raced")["rc"]) for p in running)
        assert rcs == [0] * 7 + [OOM]
        assert shim.region().usage(0).total == 7 * size
    finally:
        for p in running:
            p.finish()


def test_sigkill_mid_allocation_releases_the_usage(shim):
    env = {"CUDA_DEVICE_MEMORY_LIMIT": "1g"}
    victim = shim.start("stress", "midalloc", **env)
    try:
        victim.until("running")
        time.sleep(0.05)  # let it run alloc/free pairs: the kill lands mid-operation
        os.kill(victim.p.pid, signal.SIGKILL)
    finally:
        victim.kill()
    before = shim.region()
    assert before.usage(0).total >= 600 * MIB  # still charged to the dead process
    assert [s.pid for s in before.live_slots()] == [victim.p.pid]
    # a new process needs 600 MiB: only possible once the dead process's usage is released
    p = shim.start("paths", "alloc", str(300 * MIB), "2", **env)
    try:
        held = p.until("allocated", timeout=30)
        assert int(held["allocated"]) == 2
        r = shim.region()
        assert [s.pid for s in r.live_slots()] == [p.p.pid]
        assert r.usage(0).total == 600 * MIB
        assert_consistent(r)
    finally:
        p.finish()


def poll_region(shim, done, deadline_s: float = 1.0):
    """Reads the region until ``done(region)`` holds or the deadline passes; returns the last."""
    deadline = time.monotonic() + deadline_s
    while True:
        r = shim.region()
        if done(r) or time.monotonic() > deadline:
            return r
        time.sleep(0.02)


def test_sigkilled_process_is_reclaimed_within_a_second_by_the_others(shim):
    """Nobody allocates: the surviving process's watcher sweep releases the dead one's usage."""
    env = {"CUDA_DEVICE_MEMORY_LIMIT": "1g"}
    bystander = shim.start("paths", "alloc", str(100 * MIB), "1", **env)
    victim = shim.start("stress", "midalloc", **env)
    try:
        bystander.until("allocated")
        victim.until("running")
        time.sleep(0.05)  # alloc/free pairs in flight: the kill lands mid-operation
        os.kill(victim.p.pid, signal.SIGKILL)
        victim.kill()  # reaped: not even a zombie is left

        def reclaimed(r: region.Region) -> bool:
            return [s.pid for s in r.live_slots()] == [bystander.p.pid]

        r = poll_region(shim, reclaimed, 1.0)
        assert reclaimed(r), [(s.pid, s.used[0].total) for s in r.live_slots()]
        assert r.usage(0).total == 100 * MIB
        assert_consistent(r)  # the counter is repaired even if the kill landed under the lock
    finally:
        victim.kill()
        res = bystander.finish()
    assert res.rc == 0, res.stderr
    r = shim.region()
    assert r.live_slots() == ()
    assert r.usage(0).total == 0


def test_reader_excludes_dead_processes_when_none_is_left(shim):
    """With no process of the container alive nobody rewrites the file; the reader's exclude_dead
    (what the node monitor applies) treats the dead process's slot as free."""
    victim = shim.start("stress", "midalloc", CUDA_DEVICE_MEMORY_LIMIT="1g")
    try:
        victim.until("running")
        os.kill(victim.p.pid, signal.SIGKILL)
    finally:
        victim.kill()
    raw = shim.region()
    assert [s.pid for s in raw.live_slots()] == [victim.p.pid]
    assert raw.usage(0).total >= 600 * MIB
    seen = region.exclude_dead(raw)
    assert seen.live_slots() == ()
    assert seen.usage(0).total == 0


def test_process_killed_holding_the_lock_blocks_nobody(shim):
    env = {"CUDA_DEVICE_MEMORY_LIMIT": "1g"}
    dead = shim.run("lockholder", **env)
    assert dead.rc == -signal.SIGKILL
    assert dead.int("locked") == 1
    res = shim.run("paths", "alloc", str(30 * MIB), "2", timeout=30, **env)
    assert res.rc == 0
    assert res.int("allocated") == 2
    assert "died holding the accounting lock" in res.stderr
    r = shim.region()
    assert r.live_slots() == ()
    assert r.extension is not None
    assert r.extension.devices[0].reserved == 0  # the half-done update and the dead slot are gone


# ------------------------------------------------------------------- resolution and dlsym


def test_cu_get_proc_address_is_version_and_flag_exact(shim):
    with_shim = shim.start("procaddr", CUDA_DEVICE_MEMORY_LIMIT="1g")
    try:
        w = with_shim.until("resolved")
        r = shim.region()
        assert (
            r.usage(0).total == 32 * MIB
        )  # the per-thread cuMemAllocAsync was charged (one chunk)
    finally:
        with_shim.finish()
    wo = shim.run("procaddr", shim=False)
    assert wo.rc == 0, wo.stdout
    for key, value in wo.values.items():
        if key.endswith((".rc", ".status", ".call_rc")) or ".reached." in key:
            assert w[key] == value, key
    # hooked entries come back as our wrappers, the rest as the driver's functions
    assert w["gpa.owner"] == "shim"
    assert w["cuInit.owner"] == "shim"
    assert w["cuLaunchKernel@ptds.owner"] == "shim"
    assert w["cuLaunchKernel@legacy.owner"] == "shim"
    assert w["cuMemAllocAsync@ptds.owner"] == "shim"
    assert w["cuGetProcAddress@12000.owner"] == "shim"
    assert w["v1.owner"] == "shim"
    assert w["cuDeviceGet.owner"] == "driver"
    assert w["cuMemAdvise@12020.owner"] == "driver"
    assert wo.values["cuInit.owner"] == "driver"
    # exact variants reached through the substituted pointers
    assert w["cuLaunchKernel@ptds.reached.cuLaunchKernel_ptsz"] == "1"
    assert w["cuLaunchKernel@ptds.reached.cuLaunchKernel"] == "0"
    assert w["cuLaunchKernel@legacy.reached.cuLaunchKernel"] == "1"
    assert w["cuMemAllocAsync@ptds.reached.cuMemAllocAsync_ptsz"] == "1"
    assert w["cuCtxCreate@11040.reached.cuCtxCreate_v3"] == "1"
    assert w["cuCtxCreate@13000.reached.cuCtxCreate_v4"] == "1"
    assert w["cuCtxCreate@3020.reached.cuCtxCreate_v2"] == "1"
    assert w["cuMemAdvise@12000.reached.cuMemAdvise"] == "1"
    assert w["cuMemAdvise@12020.reached.cuMemAdvise_v2"] == "1"
    assert w["cuCtxCreate@1000.status"] == "2"  # CU_GET_PROC_ADDRESS_VERSION_NOT_SUFFICIENT
    assert w["nosuch.status"] == "1"  # CU_GET_PROC_ADDRESS_SYMBOL_NOT_FOUND
    assert w["dlsym_handle.cuMemAlloc_v2.owner"] == "shim"
    assert w["dlsym_handle.cuMemsetD8_v2.owner"] == "driver"


def test_dlsym_rtld_next_is_relative_to_the_caller(shim):
    res = shim.run("dlsym")
    assert res.rc == 0, res.stderr
    assert res.values["next_puts_1"] == res.values["next_puts_2"] == "1"
    assert res.values["probe_next"] == "b"  # the next definition, not the caller's own
    assert res.values["handle.cuMemAlloc_v2"] == "shim"
    assert res.values["handle.cuDeviceGetName"] == "driver"
    assert res.values["default.cuMemAlloc_v2"] == "shim"
    assert res.stderr == ""


def test_non_cuda_program_is_untouched(shim):
    res = shim.run("nocuda", CUDA_DEVICE_MEMORY_LIMIT="1g")
    assert res.rc == 0
    assert res.stdout.strip() == "curl=0 cuda=0"
    assert res.stderr == ""
    assert not shim.cache.exists()


def test_calls_before_cuinit_return_the_driver_error(shim):
    res = shim.run("preinit", CUDA_DEVICE_MEMORY_LIMIT="1g")
    assert res.rc == 0, res.stderr
    assert res.values
    assert all(int(v) == NOT_INITIALIZED for v in res.values.values()), res.values
    assert res.values == shim.run("preinit", shim=False).values
    assert not shim.cache.exists()


def test_disable_control_passes_everything_through(shim):
    res = shim.run(
        "paths",
        "alloc",
        str(30 * MIB),
        "5",
        CUDA_DEVICE_MEMORY_LIMIT="100m",
        CUDA_DISABLE_CONTROL="true",
    )
    assert res.int("allocated") == 5
    assert res.stderr == ""
    assert not shim.cache.exists()


def test_no_umask_or_signal_side_effects(shim):
    probe = shim.tmp / "probe-file"
    res = shim.run("sideeffects", CUDA_DEVICE_MEMORY_LIMIT="1g", PROBE_FILE=str(probe))
    assert res.rc == 0, res.stderr
    assert res.int("umask") == 0o077
    assert res.int("sigusr1_kept") == 1
    assert res.int("sigusr2_kept") == 1
    assert stat.S_IMODE(probe.stat().st_mode) == 0o600  # the application's umask still applies
    assert stat.S_IMODE(shim.cache.stat().st_mode) == 0o666  # fchmod, not umask(0)


def test_unusable_cache_path_degrades_to_local_limits(shim):
    # a path below a regular file cannot be created, even by root (a read-only mount behaves alike)
    blocker = shim.tmp / "not-a-directory"
    blocker.write_text("")
    res = shim.run(
        "paths",
        "alloc",
        str(30 * MIB),
        "5",
        CUDA_DEVICE_MEMORY_LIMIT="100m",
        CUDA_DEVICE_MEMORY_SHARED_CACHE=str(blocker / "x.cache"),
    )
    assert res.rc == 0
    assert res.int("allocated") == 3  # the limit still holds, per process
    errors = [ln for ln in res.stderr.splitlines() if "cannot open shared region" in ln]
    assert len(errors) == 1, res.stderr


# ------------------------------------------------------------------------------- launches


def test_every_launch_variant_reaches_the_driver_and_beats_the_heartbeat(shim):
    first = shim.run("paths", "alloc", str(MIB), "1", CUDA_DEVICE_MEMORY_LIMIT="1g")
    assert first.rc == 0
    with open(shim.cache, "r+b") as f:  # the monitor decremented recent_kernel to 0
        f.seek(2_008_904)
        f.write((0).to_bytes(4, "little"))
        f.seek(2_008_912)
        f.write((0).to_bytes(8, "little"))
    res = shim.run("launches", "3", CUDA_DEVICE_MEMORY_LIMIT="1g")
    assert res.rc == 0, res.stderr
    for name in (
        "cuLaunchKernel",
        "cuLaunchKernel_ptsz",
        "cuLaunchKernelEx",
        "cuLaunchKernelEx_ptsz",
        "cuLaunchCooperativeKernel",
        "cuLaunchCooperativeKernel_ptsz",
        "cuGraphLaunch",
        "cuGraphLaunch_ptsz",
    ):
        assert res.int(name) == 3, name
    r = shim.region()
    assert r.recent_kernel == 2
    assert r.last_kernel_time > 0


def test_controller_converges_against_a_simulated_plant(shim):
    res = shim.run("controller_plant", shim=False)
    assert res.rc == 0, res.stdout
    assert res.int("cases") == 168
    assert res.int("failures") == 0
    ticks = [int(m) for m in re.findall(r"^case .* ticks=(-?\d+)$", res.stdout, re.M)]
    assert len(ticks) == 168
    assert max(ticks) <= 40


# ---------------------------------------------------------------------------- graph memory


def test_graph_memory_nodes_are_charged_refused_and_released(shim):
    """The graph memory pool is charged as its reserved bytes (shim-contract.md 6.2): a graph
    whose allocation nodes would grow it past the limit is refused at instantiation; destroying
    the executable graph keeps the reservation (the pool keeps it), cuDeviceGraphMemTrim gives it
    back."""
    p = shim.start("graphmem", "64", CUDA_DEVICE_MEMORY_LIMIT="100m")
    try:
        for step, charged in (
            ("one", 64 * MIB),
            ("second", 64 * MIB),
            ("destroyed", 64 * MIB),
            ("reused", 64 * MIB),
            ("trimmed", 0),
        ):
            held = p.until(step)
            r = shim.region()
            assert r.usage(0).data_size == charged, step
            assert r.usage(0).total == int(held[f"{step}.driver_used"]), step
            assert int(held[f"{step}.reserved"]) == charged, step
            assert_consistent(r)
            if step == "one":
                assert (int(held["inst_a_rc"]), int(held["launch_a_rc"])) == (0, 0)
            if step == "second":
                assert int(held["inst_b_rc"]) == OOM
            if step == "reused":
                assert int(held["inst_b2_rc"]) == 0  # fits in what the pool already reserves
            p.resume()
    finally:
        res = p.finish()
    assert res.rc == 0, res.stderr
    oom_lines = [ln for ln in res.stderr.splitlines() if "out of memory" in ln]
    assert len(oom_lines) == 1, res.stderr
    assert "cuGraphInstantiateWithParams" in oom_lines[0]
    base = shim.run("graphmem", "64", shim=False, CUDA_DEVICE_MEMORY_LIMIT="100m")
    assert base.int("inst_b_rc") == 0  # the refusal was the shim's


# ------------------------------------------------------------------- limits and modules

STACK = 256 * 108 * 2048  # CU_LIMIT_STACK_SIZE x resident threads (108 SMs x 2048)


def test_context_limits_and_modules_are_charged(shim):
    """Heap and printf FIFO are charged directly (context_size) and refused over the limit;
    stacks, module and library images and memory the driver takes on its own are found by
    reconciliation with NVML's per-process usage (module_size) (shim-contract.md 6.2, 6.3).
    The region equals the stand-in's used bytes at every step."""
    conf = shim.tmp / "gpus.conf"
    conf.write_text("module_kib = 8192\n" + conf.read_text())
    expected = {
        "heap": (64 * MIB, 0),
        "stack": (80 * MIB, STACK),
        "loaded": (80 * MIB, STACK + 24 * MIB),
        "driver": (80 * MIB, STACK + 34 * MIB),  # found by the watcher's periodic reconciliation
        "unloaded": (80 * MIB, STACK + 10 * MIB),
        "released": (0, 10 * MIB),
    }
    p = shim.start("limits", CUDA_DEVICE_MEMORY_LIMIT="1g")
    try:
        for step, (ctx, module) in expected.items():
            held = p.until(step)
            # synchronous re-reads (load, unload, set limit, release) are exact at once
            deadline = time.monotonic() + (5 if step == "driver" else 0)
            while True:
                u = shim.region().usage(0)
                if (u.context_size, u.module_size) == (ctx, module) or time.monotonic() > deadline:
                    break
                time.sleep(0.05)
            assert (u.context_size, u.module_size, u.data_size) == (ctx, module, 0), step
            assert u.total == int(held[f"{step}.driver_used"]) == ctx + module, step
            r = shim.region()
            assert r.extension is not None
            assert r.extension.devices[0].reserved == u.total
            p.resume()
    finally:
        res = p.finish()
    assert res.rc == 0, res.stderr
    for key in ("heap_rc", "fifo_rc", "stack_rc", "mod1_rc", "mod2_rc", "lib_rc"):
        assert res.int(key) == 0, key
    assert res.int("heap_big_rc") == OOM
    oom_lines = [ln for ln in res.stderr.splitlines() if "out of memory" in ln]
    assert len(oom_lines) == 1, res.stderr
    assert "cuCtxSetLimit" in oom_lines[0] and "malloc heap" in oom_lines[0]
    base = shim.run("limits", shim=False, CUDA_DEVICE_MEMORY_LIMIT="1g")
    assert base.int("heap_big_rc") == 0  # the refusal was the shim's
