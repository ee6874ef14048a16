"""The compute limiter end to end over the stand-in driver's virtual GPU clock (contract 8, 13.11).

Every launch keeps the stand-in device busy for blocks x threads x ``thread_ns`` / SMs after the
work queued before it, and a launch blocks while more than 1 ms of work is queued, as on a real
launch queue; so a loop of launches without a limit runs the device at 100 %. The stand-in NVML
reports per-process utilisation from that clock, which is what the shim's controller measures.

The ``util`` program launches back to back for a warm-up phase, then for a measured phase, and
prints the device's share over the measured phase from the virtual clock (executed device time
over clock time). The cases run as parallel processes, each with its own region file and device
table; they spend most of their time asleep (throttled, or waiting on the launch queue).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest

from hami_core_fw.monitor import region

pytestmark = pytest.mark.shim
log = logging.getLogger(__name__)

WARM_S, MEASURE_S = "1.5", "1.5"
TOLERANCE = 10  # percentage points
# 8 blocks x 128 threads on 108 SMs: 200 us of device time per launch
CLOCK = "thread_ns = 21093.75\n"


@dataclass
class Case:
    api: str = "kernel"
    env: dict[str, str] = field(default_factory=dict)
    conf: str = ""
    switch_off: bool = False  # the monitor turned the region's utilization_switch off


def limited(sm: int, **env: str) -> dict[str, str]:
    return {"CUDA_DEVICE_SM_LIMIT": str(sm), **env}


CASES = {
    "none": Case(),
    "25": Case(env=limited(25)),
    "50": Case(env=limited(50)),
    "75": Case(env=limited(75)),
    "ex_50": Case(api="ex", env=limited(50)),
    "coop_50": Case(api="coop", env=limited(50)),
    "graph_50": Case(api="graph", env=limited(50)),
    "older_nvml_api_50": Case(env=limited(50), conf="processes_util_info = unsupported\n"),
    "device_wide_fallback_50": Case(
        env=limited(50),
        conf="processes_util_info = unsupported\nprocess_util_samples = none\n",
    ),
    "policy_disable": Case(env=limited(50, GPU_CORE_UTILIZATION_POLICY="disable")),
    "switch_off": Case(env=limited(50), switch_off=True),
    "switch_off_policy_force": Case(
        env=limited(50, GPU_CORE_UTILIZATION_POLICY="FORCE"), switch_off=True
    ),
    "disable_control": Case(env=limited(50, CUDA_DISABLE_CONTROL="true")),
}


@dataclass
class Run:
    result: Any  # conftest.Result
    share: float
    region: region.Region | None  # read while the process was alive; None without a file


@pytest.fixture(scope="module")
def runs(shim_factory, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Run]]:
    shims, procs = {}, {}
    for name, case in CASES.items():
        shim = shim_factory(tmp_path_factory.mktemp(f"limiter-{name}"))
        conf = shim.tmp / "gpus.conf"
        conf.write_text(CLOCK + case.conf + conf.read_text())
        if case.switch_off:
            # an earlier process of the container created the region; then the monitor turned
            # the switch off (offset of utilization_switch in the v1 layout)
            first = shim.run("paths", "alloc", "1048576", "1", **case.env)
            assert first.rc == 0, first.stderr
            with open(shim.cache, "r+b") as f:
                f.seek(2_008_900)
                f.write((0).to_bytes(4, "little"))
        shims[name] = shim
    try:
        for name, case in CASES.items():
            procs[name] = shims[name].start("util", WARM_S, MEASURE_S, case.api, **case.env)
        out: dict[str, Run] = {}
        for name, p in procs.items():
            held = p.until("measured", timeout=120)
            reg = shims[name].region() if shims[name].cache.exists() else None
            res = p.finish()
            assert res.rc == 0, (name, res.stderr)
            out[name] = Run(res, int(held["share_x100"]) / 100, reg)
        # shown with: pytest --log-cli-level=INFO tests/shims/test_limiter.py
        log.info("measured shares (%%): %s", shares(out))
        yield out
    finally:
        for p in procs.values():
            p.kill()


def shares(runs: dict[str, Run]) -> dict[str, float]:
    return {name: r.share for name, r in runs.items()}


def test_the_workload_saturates_the_device_without_a_limit(runs):
    assert runs["none"].share >= 90, shares(runs)


@pytest.mark.parametrize("name", ["25", "50", "75", "ex_50", "coop_50", "graph_50"])
def test_share_tracks_the_limit(runs, name):
    target = int(CASES[name].env["CUDA_DEVICE_SM_LIMIT"])
    assert abs(runs[name].share - target) <= TOLERANCE, shares(runs)


def test_graph_launches_cost_their_kernels(runs):
    """Each graph holds four kernels: costed by its kernels, the controller settles at the same
    refill rate as for plain launches (at one token per graph it would have to go ~4096 times
    lower)."""
    rates = {}
    for name in ("50", "graph_50"):
        reg = runs[name].region
        assert reg is not None and reg.extension is not None
        rates[name] = reg.extension.devices[0].rate
    assert 0.5 <= rates["graph_50"] / rates["50"] <= 2, rates


def test_the_monitor_sees_the_process_utilisation(runs):
    """The controller's tick writes each container process's NVML utilisation into its slot's
    sm_util, which HAMi's monitor sums (contract 5.3); read by the program at the end of its
    measured phase."""
    res = runs["50"].result
    assert abs(res.int("slot_sm_util") - 50) <= 15, res.stdout
    assert abs(res.int("ctl_util_x100") / 100 - 50) <= 15, res.stdout
    assert runs["disable_control"].result.int("slot_sm_util") == -1  # no region at all


@pytest.mark.parametrize("name", ["older_nvml_api_50", "device_wide_fallback_50"])
def test_nvml_fallbacks_still_limit(runs, name):
    assert abs(runs[name].share - 50) <= TOLERANCE, shares(runs)


@pytest.mark.parametrize("name", ["policy_disable", "switch_off", "disable_control"])
def test_throttling_off(runs, name):
    assert runs[name].share >= 90, shares(runs)


def test_force_throttles_even_with_the_switch_off(runs):
    assert abs(runs["switch_off_policy_force"].share - 50) <= TOLERANCE, shares(runs)


def test_disable_control_attaches_nothing(runs):
    assert runs["disable_control"].region is None
    assert runs["disable_control"].result.stderr == ""
