"""Fixtures for tests against a real control plane (k8s-protocols.md section 6).

``control_plane`` starts etcd and kube-apiserver once per test run; ``start_kube_scheduler``
starts kube-scheduler processes for one test; ``api``, ``namespace`` and ``fake_node`` give each
test a client, a fresh namespace and GPU nodes that are removed again afterwards.

The binaries come from ``tests/e2e/cluster/build.sh``. When they are missing the fixture runs the
script itself (about 4 minutes cold on two cores, printed live; 0.05 s when cached): these
tests are never skipped. When a test fails, the tails of every process log are added to its
report; the full logs stay in pytest's temporary directory.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Generator, Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest
from components import MANAGED_RESOURCES, SCHEDULER, HamiScheduler
from harness import (
    Binaries,
    ControlPlane,
    ExtenderConfig,
    Json,
    KubeScheduler,
    binaries,
    create_fake_node,
    ensure_binaries,
    register_mutating_webhook,
    request_json,
    scheduler_config,
)
from kubernetes import client as k8s

_PLANE_KEY = pytest.StashKey[ControlPlane]()
_TIMINGS_KEY = pytest.StashKey[dict[str, float]]()


@pytest.fixture(scope="session")
def control_plane_binaries(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Binaries:
    """The etcd, kube-apiserver and kube-scheduler binaries, built by build.sh if missing."""
    begin = time.monotonic()
    if binaries().missing():
        # a cold build takes many minutes: let its progress reach the terminal
        capture = request.config.pluginmanager.getplugin("capturemanager")
        reporter = request.config.pluginmanager.getplugin("terminalreporter")
        with capture.global_and_fixture_disabled():
            if reporter is not None:
                reporter.write_line("[e2e] binaries missing: running tests/e2e/cluster/build.sh")
            found = ensure_binaries()
    else:
        found = ensure_binaries(log=tmp_path_factory.getbasetemp() / "build.log")
    request.config.stash.setdefault(_TIMINGS_KEY, {})["build.sh"] = time.monotonic() - begin
    return found


@pytest.fixture(scope="session")
def control_plane(
    request: pytest.FixtureRequest,
    control_plane_binaries: Binaries,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[ControlPlane]:
    """etcd + kube-apiserver on loopback for the whole run (kubeconfig, api_url, CA, clients)."""
    plane = ControlPlane.start(
        control_plane_binaries, log_dir=tmp_path_factory.mktemp("controlplane-logs")
    )
    request.config.stash[_PLANE_KEY] = plane
    timings = request.config.stash.setdefault(_TIMINGS_KEY, {})
    timings["etcd + kube-apiserver to /readyz"] = plane.startup_seconds
    try:
        yield plane
    finally:
        plane.stop()


@pytest.fixture
def api(control_plane: ControlPlane) -> Iterator[k8s.ApiClient]:
    """An admin ``kubernetes`` ApiClient for one test."""
    with control_plane.api_client() as client:
        yield client


@pytest.fixture
def namespace(api: k8s.ApiClient) -> Iterator[str]:
    """A fresh namespace; its pods are deleted (grace period 0) after the test.

    Without kube-controller-manager a deleted namespace would stay Terminating, so the namespace
    itself is left behind; its name is unique.
    """
    name = f"t-{uuid.uuid4().hex[:10]}"
    request_json(api, "POST", "/api/v1/namespaces", {"metadata": {"name": name}})
    yield name
    request_json(api, "DELETE", f"/api/v1/namespaces/{name}/pods?gracePeriodSeconds=0")


FakeNodeFactory = Callable[..., Json]


@pytest.fixture
def fake_node(api: k8s.ApiClient) -> Iterator[FakeNodeFactory]:
    """Create fake GPU nodes (see ``harness.create_fake_node``); deleted after the test.

    Call as ``fake_node(extended_resources={"nvidia.com/gpu": 4}, annotations=...)``; the name
    is generated unless given. Returns the created Node as JSON.
    """
    created: list[str] = []

    def create(
        name: str | None = None,
        *,
        extended_resources: Mapping[str, str | int] | None = None,
        annotations: Mapping[str, str] | None = None,
        labels: Mapping[str, str] | None = None,
    ) -> Json:
        node_name = name or f"gpu-node-{uuid.uuid4().hex[:8]}"
        node = create_fake_node(
            api,
            node_name,
            extended_resources=extended_resources,
            annotations=annotations,
            labels=labels,
        )
        created.append(node_name)
        return node

    yield create
    for node_name in created:
        request_json(api, "DELETE", f"/api/v1/nodes/{node_name}")


SchedulerFactory = Callable[..., KubeScheduler]


@pytest.fixture
def start_kube_scheduler(
    request: pytest.FixtureRequest, control_plane: ControlPlane
) -> Iterator[SchedulerFactory]:
    """Start kube-scheduler processes for one test; all are stopped afterwards.

    ``start_kube_scheduler(scheduler_name="hami-scheduler", extender=ExtenderConfig(...))``
    starts a scheduler whose one profile uses the extender; ``extender=None`` with
    ``scheduler_name="default-scheduler"`` is a plain default scheduler. Returns once the
    scheduler's ``/readyz`` answers.
    """
    started: list[KubeScheduler] = []

    def start(
        *,
        scheduler_name: str = "hami-scheduler",
        extender: ExtenderConfig | None = None,
        extra: Mapping[str, object] | None = None,
    ) -> KubeScheduler:
        config = scheduler_config(
            control_plane.kubeconfig, scheduler_name=scheduler_name, extender=extender
        )
        config.update(extra or {})
        scheduler = control_plane.start_scheduler(config, name=f"kube-scheduler-{scheduler_name}")
        started.append(scheduler)
        timings = request.config.stash.setdefault(_TIMINGS_KEY, {})
        timings[f"kube-scheduler ({scheduler_name}) to /readyz"] = scheduler.startup_seconds
        return scheduler

    yield start
    for scheduler in reversed(started):
        scheduler.stop()


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    """Attach the control-plane process log tails to the report of a failed test."""
    report = yield
    plane = item.config.stash.get(_PLANE_KEY, None)
    if report.failed and plane is not None:
        report.sections.append(("control-plane process logs (tails)", plane.log_tails()))
    return report


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    """Print how long the build check and the control-plane start-up took."""
    timings = terminalreporter.config.stash.get(_TIMINGS_KEY, None)
    if not timings:
        return
    terminalreporter.section("control-plane timings")
    for what, seconds in timings.items():
        terminalreporter.write_line(f"{what}: {seconds:.2f}s")
    plane = terminalreporter.config.stash.get(_PLANE_KEY, None)
    if plane is not None:
        terminalreporter.write_line(f"process logs: {plane.log_dir}")


@pytest.fixture
def hami(
    control_plane: ControlPlane, api: k8s.ApiClient, tmp_path: Path
) -> Iterator[HamiScheduler]:
    """A running ``hami scheduler`` with its webhook registered (and waited for)."""
    scheduler = HamiScheduler(control_plane, tmp_path)
    scheduler.start()
    name = f"hami-webhook-{uuid.uuid4().hex[:6]}"
    register_mutating_webhook(
        api,
        url=f"{scheduler.url}/webhook",
        ca_pem=control_plane.ca.cert_pem,
        configuration_name=name,
        extra={
            # only pods of the test namespaces (t-*) are sent, never the harness's own objects
            "namespaceSelector": {
                "matchExpressions": [
                    {
                        "key": "kubernetes.io/metadata.name",
                        "operator": "NotIn",
                        "values": ["default", "kube-system"],
                    }
                ]
            }
        },
    )
    try:
        yield scheduler
    finally:
        request_json(
            api,
            "DELETE",
            f"/apis/admissionregistration.k8s.io/v1/mutatingwebhookconfigurations/{name}",
        )
        scheduler.stop()


@pytest.fixture
def kube_scheduler(
    hami: HamiScheduler, control_plane: ControlPlane, start_kube_scheduler: Callable[..., Any]
) -> Any:
    """kube-scheduler with the ``hami-scheduler`` profile and ``hami`` as its extender."""
    extender = ExtenderConfig(
        url_prefix=hami.url, ca_pem=control_plane.ca.cert_pem, managed_resources=MANAGED_RESOURCES
    )
    return start_kube_scheduler(
        scheduler_name=SCHEDULER,
        extender=extender,
        extra={"podInitialBackoffSeconds": 1, "podMaxBackoffSeconds": 2},
    )
