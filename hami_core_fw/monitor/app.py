"""The ``hami monitor`` process: container scan, priority feedback and ``/metrics`` of one node.

:class:`MonitorProcess` holds the parts: a :class:`~hami_core_fw.monitor.scan.ContainerScanner`
over ``<hook>/containers``, the pods of this node (fed by a watch cache of the pods labelled
``hami.io/vgpu-node=<node>``, hami-compat.md 10.1), the vendor backends for device telemetry, and
a private :class:`~prometheus_client.CollectorRegistry` with the
:class:`~hami_core_fw.monitor.collector.MonitorCollector`. :meth:`MonitorProcess.tick` is one scan
plus one feedback pass (hami-compat.md 10.3); :func:`serve` runs it every scan interval, and at
once when a pod appears, so a new container is picked up without waiting.

:func:`build_app` is pure; :func:`serve` owns the API connection, the socket, the background tasks
and the signals (style.md 9). Routes: ``/metrics``, ``/healthz`` (the event loop answers) and
``/readyz`` (200 once the pod cache has synced and a scan has run with the pod list; 503 while
shutting down). A scrape runs the collector on a worker thread: vendor telemetry calls may block.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import re
import signal
import threading
import time
from collections.abc import Callable, Coroutine, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

from hami_core_fw import _names, config, errors, models, plugins
from hami_core_fw import vendor as hv
from hami_core_fw.k8s import api, cache
from hami_core_fw.monitor import collector, feedback, hostpid, region, scan

logger = logging.getLogger(__name__)

#: HAMi's MIG apply lock (hami-compat.md 9.4): feedback pauses while it exists
MIG_APPLY_LOCK = "/tmp/hami/hami-mig-apply.lock"  # noqa: S108 - HAMi's fixed host path


@dataclass(frozen=True, slots=True)
class MonitorOptions:
    """Process options of ``hami monitor``.

    :param node_name: this node (``NODE_NAME``); pods are selected by ``hami.io/vgpu-node``
    :param hook_path: HAMi's ``HOOK_PATH`` for the monitor, which already includes ``vgpu``
    :param metrics_bind: ``host:port`` of the listener (HAMi ``--metrics-bind-address :9394``)
    :param kubeconfig: kubeconfig file; None = in-cluster service account
    :param resync_interval_s: a directory of a pod not on this node is deleted once this old
        (HAMi ``HAMI_RESYNC_INTERVAL``, 5 min)
    :param scan_interval_s: the scan + feedback period (HAMi 5 s)
    :param vendors: vendor ids whose backends give device telemetry; empty = every installed one
    :param legacy_metrics: also emit HAMi's old metric names
    :param feedback: run the priority feedback loop
    :param proc_root: where host PIDs of region slots are checked (the host's ``/proc``)
    :param mig_apply_lock: feedback pauses while this file exists
    """

    node_name: str
    hook_path: str = "/usr/local/vgpu"
    metrics_bind: str = ":9394"
    kubeconfig: str | None = None
    resync_interval_s: float = 300.0
    scan_interval_s: float = 5.0
    vendors: tuple[str, ...] = ()
    legacy_metrics: bool = False
    feedback: bool = True
    proc_root: str = "/proc"
    mig_apply_lock: str = MIG_APPLY_LOCK


_DURATION = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|ms|s|m|h)")
_UNIT_S = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}


def parse_duration(text: str) -> float:
    """Seconds from a Go duration (``5m``, ``1h30m``, ``90s``) or a plain number of seconds.

    :raises ValueError: neither form, or not positive
    """
    raw = text.strip()
    try:
        seconds = float(raw)
    except ValueError:
        parts = _DURATION.findall(raw)
        if not parts or "".join(n + u for n, u in parts) != raw:
            raise ValueError(f"{text!r} is not a duration such as 5m, 90s or 300") from None
        seconds = sum(float(n) * _UNIT_S[u] for n, u in parts)
    if not seconds > 0:
        raise ValueError(f"duration {text!r} is not positive")
    return seconds


def split_address(address: str) -> tuple[str, int]:
    """``host:port`` (``:9394`` = all addresses) -> (host, port).

    :raises ConfigError: not ``host:port`` with a numeric port
    """
    host, sep, port = address.rpartition(":")
    if not sep or not port.isdigit():
        raise errors.ConfigError([f"address {address!r} is not host:port"], source="listen address")
    return (host.strip("[]") or "0.0.0.0"), int(port)  # noqa: S104 - HAMi's :9394 listens on all addresses


class MonitorProcess:
    """Every part of one node monitor, without sockets or tasks (see :func:`serve`).

    :param settings: the process settings
    :param host: the plugin host (``hami_monitor_collect`` families)
    :param options: node, paths and intervals
    :param backends: vendor id -> backend giving device telemetry
    :param clock: wall-clock seconds (directory ages, kernel ages)
    """

    def __init__(
        self,
        settings: config.Settings,
        host: plugins.PluginHost,
        options: MonitorOptions,
        *,
        backends: Mapping[str, hv.DeviceBackend] | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.settings = settings
        self.host = host
        self.options = options
        self.backends = dict(backends or {})
        self._clock = clock
        self.scanner = scan.ContainerScanner(
            options.hook_path, resync_interval_s=options.resync_interval_s, clock=clock
        )
        # copy-on-write: replaced on every change by the event loop, read from scrape threads
        self._pods: Mapping[str, models.PodView] = {}
        self._pods_synced = False
        self._scanned_with_pods = False
        self.stopping = False
        #: set when a scan should run before the next period (a pod appeared)
        self.wake = asyncio.Event()
        #: set once a scan has run with the complete pod list (readiness)
        self.scanned = asyncio.Event()
        self._feedback_paused = False
        self.registry = CollectorRegistry()
        self.collector = collector.MonitorCollector(
            self.snapshot,
            legacy=options.legacy_metrics,
            extra=host.monitor_collect,
            exclude=collector.exclude_dead_by_host_pid(options.proc_root),
        )
        self.registry.register(self.collector)
        self._tasks: set[asyncio.Task[Any]] = set()

    # ------------------------------------------------------------------ pods

    @property
    def pods(self) -> Mapping[str, models.PodView]:
        """UID -> pod, for the pods of this node."""
        return self._pods

    def on_pod(self, event: cache.CacheEvent[models.PodView]) -> None:
        """Apply a pod cache event (called on the event loop)."""
        pods = dict(self._pods)
        if event.kind is cache.EventKind.DELETED:
            pods.pop(event.key, None)
        else:
            pods[event.key] = event.obj
        self._pods = pods
        if event.kind is cache.EventKind.ADDED:
            self.wake.set()

    def mark_pods_synced(self) -> None:
        """The pod list is complete: scans may now delete directories of gone pods."""
        self._pods_synced = True
        self.wake.set()

    # ------------------------------------------------------------------ periodic work

    def tick(self) -> scan.ScanReport:
        """One scan of the container directories, host PIDs, one feedback pass (blocking I/O)."""
        synced = self._pods_synced
        report = self.scanner.scan(set(self._pods) if synced else None)
        # shim-contract.md 7.1: the slots' host PIDs, before feedback and the next scrape read them
        hostpid.fill((mapped for _key, mapped in self.scanner.entries()), self.options.proc_root)
        if self.options.feedback:
            if os.path.exists(self.options.mig_apply_lock):
                if not self._feedback_paused:
                    logger.info(
                        "feedback paused: MIG apply lock %s exists", self.options.mig_apply_lock
                    )
                self._feedback_paused = True
            else:
                if self._feedback_paused:
                    logger.info("feedback resumed: the MIG apply lock is gone")
                self._feedback_paused = False
                self.feedback_pass()
        if synced:
            self._scanned_with_pods = True
        return report

    def feedback_pass(self) -> dict[str, feedback.Decision]:
        """Read every loaded region, plan the feedback, write what changed."""
        loaded: list[tuple[scan.MappedRegion, str, feedback.ContainerState]] = []
        for key, mapped in self.scanner.entries():
            try:
                r = mapped.read()
            except region.RegionError as err:
                logger.debug("feedback skips %s: %s", key.name, err)
                continue
            loaded.append((mapped, r.layout, feedback.state_of(key.name, r)))
        decisions = feedback.plan(state for _m, _l, state in loaded)
        for mapped, layout, state in loaded:
            decision = decisions[state.key]
            try:
                written = feedback.apply(mapped, layout, state, decision)
            except (region.RegionError, OSError, ValueError) as err:
                logger.warning("feedback could not update %s: %s", mapped.path, err)
                continue
            if "recent_kernel" in written and (decision.recent_kernel < 0) != (
                state.recent_kernel < 0
            ):
                logger.info(
                    "container %s (priority %d) %s",
                    state.key,
                    state.priority,
                    "blocked: a higher-priority container is active on its GPU"
                    if decision.recent_kernel < 0
                    else "unblocked",
                )
            if "utilization_switch" in written:
                logger.info(
                    "container %s: SM limit %s",
                    state.key,
                    "enforced" if decision.utilization_switch else "lifted (no contention)",
                )
        return decisions

    # ------------------------------------------------------------------ metrics

    def snapshot(self) -> collector.Snapshot:
        """Device telemetry and the regions of this node's pods' containers, read now."""
        devices: list[models.DeviceSample] = []
        for vendor_id, backend in sorted(self.backends.items()):
            try:
                devices.extend(backend.sample())
            except Exception as err:  # noqa: BLE001 - vendor library boundary: report the rest of the node
                logger.warning("device telemetry of vendor %s failed: %s", vendor_id, err)
        pods = self._pods
        containers: list[collector.ContainerUsage] = []
        for key, mapped in self.scanner.entries():
            pod = pods.get(key.pod_uid)
            if pod is None or key.container not in {c.name for c in pod.all_containers}:
                continue
            try:
                r = mapped.read()
            except region.RegionError as err:
                logger.debug("region of %s not reported: %s", key.name, err)
                continue
            containers.append(collector.ContainerUsage(pod.namespace, pod.name, key.container, r))
        return collector.Snapshot(
            node=self.options.node_name,
            devices=tuple(devices),
            containers=tuple(containers),
            now=self._clock(),
        )

    # ------------------------------------------------------------------ handlers

    @property
    def ready(self) -> tuple[bool, str]:
        """(ready, why not)."""
        if self.stopping:
            return False, "shutting down"
        if not self._pods_synced:
            return False, "pod cache not synced"
        if not self._scanned_with_pods:
            return False, "container directories not scanned yet"
        return True, "ok"

    async def handle_healthz(self, request: web.Request) -> web.Response:
        """``GET /healthz``: the event loop answers."""
        return web.Response(text="ok\n")

    async def handle_readyz(self, request: web.Request) -> web.Response:
        """``GET /readyz``: pods synced and scanned."""
        ok, why = self.ready
        return web.Response(status=200 if ok else 503, text=f"{why}\n")

    async def handle_metrics(self, request: web.Request) -> web.Response:
        """``GET /metrics``: the collector runs on a worker thread."""
        body = await asyncio.to_thread(generate_latest, self.registry)
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})

    # ------------------------------------------------------------------ lifecycle

    def spawn(self, coro: Coroutine[Any, Any, Any]) -> asyncio.Task[Any]:
        """Run ``coro`` in the background, keeping a reference until it ends."""
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    async def run_scans(self) -> None:
        """Scan + feedback every ``scan_interval_s``, and at once when woken; never returns."""
        while True:
            self.wake.clear()
            try:
                await asyncio.to_thread(self.tick)
            except Exception:  # a periodic job must keep running
                logger.exception("container scan failed")
            if self._scanned_with_pods:
                self.scanned.set()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.wake.wait(), timeout=self.options.scan_interval_s)

    async def close(self) -> None:
        """Cancel background tasks, unmap regions, release the vendor libraries."""
        for task in list(self._tasks):
            task.cancel()
        for task in list(self._tasks):
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        self.scanner.close()
        for vendor_id, backend in self.backends.items():
            try:
                await asyncio.to_thread(backend.close)
            except Exception as err:  # noqa: BLE001 - vendor library boundary: close the others
                logger.warning("closing the backend of vendor %s failed: %s", vendor_id, err)


def build_app(
    settings: config.Settings,
    host: plugins.PluginHost,
    *,
    process: MonitorProcess | None = None,
    options: MonitorOptions | None = None,
) -> web.Application:
    """The aiohttp application: ``/metrics``, ``/healthz``, ``/readyz`` (pure: no I/O)."""
    proc = process or MonitorProcess(settings, host, options or MonitorOptions(node_name=""))
    app = web.Application()
    app.router.add_get("/metrics", proc.handle_metrics)
    app.router.add_get("/healthz", proc.handle_healthz)
    app.router.add_get("/readyz", proc.handle_readyz)
    return app


async def make_backends(
    host: plugins.PluginHost, node_name: str, vendor_ids: Sequence[str]
) -> dict[str, hv.DeviceBackend]:
    """Create the telemetry backends of the chosen vendors (all installed ones when empty).

    A vendor whose library is missing on this node is skipped with an info line.

    :raises ConfigError: a vendor id that is not installed
    """
    unknown = [v for v in vendor_ids if v not in host.vendors]
    if unknown:
        known = ", ".join(sorted(host.vendors)) or "none"
        raise errors.ConfigError(
            [f"--vendor {v!r} is not installed (installed vendors: {known})" for v in unknown],
            source="monitor",
        )
    backends: dict[str, hv.DeviceBackend] = {}
    for vendor_id in vendor_ids or sorted(host.vendors):
        try:
            backends[vendor_id] = await asyncio.to_thread(
                host.vendors[vendor_id].make_backend, node_name
            )
        except errors.VendorUnavailable as err:
            logger.info("no device telemetry from vendor %s: %s", vendor_id, err)
    return backends


def pod_cache(
    source: cache.ListWatcher, node_name: str, process: MonitorProcess
) -> cache.WatchCache[models.PodView]:
    """The pods labelled ``hami.io/vgpu-node=<node>``, keyed by UID, feeding ``process``."""
    return cache.WatchCache(
        source,
        "/api/v1/pods",
        convert=models.PodView.from_manifest,
        key=cache.uid_key,
        handler=process.on_pod,
        label_selector=f"{_names.LABEL_VGPU_NODE}={node_name}",
        name="pods",
    )


async def _when_synced(process: MonitorProcess, pods: cache.WatchCache[models.PodView]) -> None:
    await pods.synced.wait()
    process.mark_pods_synced()
    logger.info("pod cache synced: %d pods on node %s", len(pods), process.options.node_name)


async def serve(
    settings: config.Settings,
    host: plugins.PluginHost,
    *,
    stop: asyncio.Event | None = None,
    ready: asyncio.Event | threading.Event | None = None,
    options: MonitorOptions,
    source: cache.ListWatcher | None = None,
    backends: Mapping[str, hv.DeviceBackend] | None = None,
) -> None:
    """Run the monitor until ``stop`` is set (or SIGTERM/SIGINT when ``stop`` is None).

    :param ready: set once the listener accepts connections and a scan has run with the complete
        pod list (``/readyz`` answers 200 from then on)
    :param options: node, paths, intervals
    :param source: where pods are listed and watched; None = connect with ``options.kubeconfig``
    :param backends: telemetry backends; None = :func:`make_backends` for ``options.vendors``
    :raises ConfigError: no node name, a bad address or an unknown vendor
    """
    if not options.node_name:
        raise errors.ConfigError(
            ["the node name is unknown: pass --node-name or set NODE_NAME"], source="monitor"
        )
    bind_host, bind_port = split_address(options.metrics_bind)
    loop = asyncio.get_running_loop()
    if stop is None:
        stop = asyncio.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
    if backends is None:
        backends = await make_backends(host, options.node_name, options.vendors)
    process = MonitorProcess(settings, host, options, backends=backends)
    kube: api.Kube | None = None
    runner: web.AppRunner | None = None
    try:
        if source is None:
            kube = await api.Kube.connect(options.kubeconfig)
            source = kube
        pods = pod_cache(source, options.node_name, process)
        process.spawn(pods.run())
        process.spawn(_when_synced(process, pods))
        process.spawn(process.run_scans())
        runner = web.AppRunner(build_app(settings, host, process=process), access_log=None)
        await runner.setup()
        await web.TCPSite(runner, bind_host, bind_port).start()
        logger.info(
            "monitor of node %s listening on http://%s:%d, scanning %s",
            options.node_name,
            bind_host,
            bind_port,
            process.scanner.root,
        )
        waits = [asyncio.ensure_future(stop.wait()), asyncio.ensure_future(process.scanned.wait())]
        try:
            await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for w in waits:
                w.cancel()
        if ready is not None and not stop.is_set():
            ready.set()
        await stop.wait()
        logger.info("stopping")
        process.stopping = True
    finally:
        if runner is not None:
            await runner.cleanup()
        await process.close()
        if kube is not None:
            await kube.close()
