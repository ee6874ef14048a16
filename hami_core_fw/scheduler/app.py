"""The ``hami scheduler`` process: extender + webhook + caches + leader election + metrics.

:class:`SchedulerProcess` wires the parts together: the watch caches feed the
:class:`~hami_core_fw.scheduler.cluster.Cluster`, the :class:`~hami_core_fw.scheduler.extender.
Extender` answers ``/filter`` from it, the :class:`~hami_core_fw.scheduler.bind.Binder` answers
``/bind``, :mod:`hami_core_fw.webhook` answers ``/webhook``, and a
:class:`~hami_core_fw.k8s.lease.Leadership` decides whether this replica serves.

:func:`build_app` is pure (routes over a process object); :func:`serve` owns the API connection,
the sockets, the background tasks and the signals (style.md 9). One listener serves every route
(HAMi: ``/filter``, ``/bind``, ``/webhook``, ``/healthz``, ``/readyz``), over TLS when a
certificate and key are configured (reloaded when they change); ``/metrics`` is served there and,
when configured, on a separate plain-HTTP metrics address (HAMi ``:9395``).

``/readyz`` is 200 only when the caches are synced **and** this replica leads (Q24 fixed).
Filter waits (bounded) for the first sync and answers an error otherwise; a replica that does not
lead refuses filter and bind with an error, and a bind that is waiting when leadership is lost is
abandoned before it writes anything.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import signal
import socket
import threading
import time
import uuid
from collections.abc import Awaitable, Callable, Coroutine, Mapping
from dataclasses import dataclass
from typing import Any, Literal

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from hami_core_fw import config, errors, plugins
from hami_core_fw.k8s import api, cache, events, lease
from hami_core_fw.scheduler import bind, cluster, extender, metrics
from hami_core_fw.webhook import admission
from hami_core_fw.webhook import server as webhook_server

logger = logging.getLogger(__name__)

Json = dict[str, Any]


@dataclass(frozen=True, slots=True)
class ServeOptions:
    """Process options that are not part of :class:`~hami_core_fw.config.Settings`.

    :param http_bind: ``host:port`` of the main listener (HAMi ``--http_bind``)
    :param cert_file: TLS certificate; TLS is on when both files are given (reloaded on change)
    :param key_file: TLS private key
    :param metrics_bind: separate plain-HTTP ``/metrics`` address (``:9395``); empty = none
    :param kubeconfig: kubeconfig file; None = in-cluster service account
    :param leader_elect: ``none`` (single replica), ``follow`` (the kube-scheduler sidecar's Lease,
        HAMi's behaviour) or ``campaign`` (our own Lease)
    :param lease_name: the Lease to follow or hold (default: the scheduler name)
    :param lease_namespace: its namespace
    :param identity: leader identity (follow: the prefix of the sidecar's holder, the hostname)
    :param grace_period_s: how long in-flight binds may finish after SIGTERM
    :param registration_period_s: the periodic registration pass (HAMi 15 s)
    :param bind_queue_limit: binds allowed to wait for one node
    :param sync_wait_s: how long filter waits for the first cache sync
    :param reservation_ttl_s: how long a filter decision waits for its bind
    """

    http_bind: str = "127.0.0.1:8080"
    cert_file: str = ""
    key_file: str = ""
    metrics_bind: str = ""
    kubeconfig: str | None = None
    leader_elect: Literal["none", "follow", "campaign"] = "none"
    lease_name: str = ""
    lease_namespace: str = "kube-system"
    identity: str = ""
    grace_period_s: float = 5.0
    registration_period_s: float = 15.0
    bind_queue_limit: int = 128
    sync_wait_s: float = 10.0
    reservation_ttl_s: float = 120.0


def split_address(address: str, default_host: str = "0.0.0.0") -> tuple[str, int]:  # noqa: S104 - HAMi's default listens on all addresses
    """``host:port`` (``:9395`` = all addresses) -> (host, port).

    :raises ConfigError: not ``host:port`` with a numeric port
    """
    host, sep, port = address.rpartition(":")
    if not sep or not port.isdigit():
        raise errors.ConfigError([f"address {address!r} is not host:port"], source="listen address")
    return (host.strip("[]") or default_host), int(port)


class SchedulerProcess:
    """Every part of one scheduler replica, without sockets or tasks (see :func:`serve`)."""

    def __init__(
        self,
        settings: config.Settings,
        host: plugins.PluginHost,
        *,
        options: ServeOptions | None = None,
        kube: api.Kube | None = None,
        leadership: lease.Leadership | None = None,
    ) -> None:
        self.settings = settings
        self.host = host
        self.options = options or ServeOptions()
        self.kube = kube
        sched = settings.scheduler
        self.cluster = cluster.Cluster(
            host,
            node_selector=sched.node_label_selector,
            patch_node=self._patch_node if kube is not None else None,
            reservation_ttl_s=self.options.reservation_ttl_s,
        )
        self.recorder = events.EventRecorder(kube, sched.scheduler_name)
        self.leadership = leadership or lease.AlwaysLeader()
        self.leadership.add_listener(self._leadership_changed)
        self.cluster.leader = self.leadership.is_leader
        self.metrics = metrics.SchedulerMetrics(
            self.cluster.state, host, queue_depths=self._queue_depths
        )
        self.extender = extender.Extender(
            self.cluster, host, sched, self.recorder, observe=self.metrics.observe_filter
        )
        self.binder: bind.Binder | None = None
        if kube is not None:
            self.binder = bind.Binder(
                self.cluster,
                host,
                kube,
                sched,
                self.recorder,
                is_leader=lambda: self.leadership.is_leader,
                queue_limit=self.options.bind_queue_limit,
                observe=self.metrics.observe_bind,
            )
        self.policy = admission.AdmissionPolicy(
            scheduler_name=sched.scheduler_name,
            force_overwrite_default_scheduler=sched.force_overwrite_default_scheduler,
        )
        self.synced = asyncio.Event()
        self.stopping = False
        self._patching: set[str] = set()
        self._tasks: set[asyncio.Task[Any]] = set()
        self.inflight_binds = 0

    # ------------------------------------------------------------------ state

    @property
    def ready(self) -> tuple[bool, str]:
        """(ready, why not)."""
        if self.stopping:
            return False, "shutting down"
        if not self.synced.is_set():
            return False, "caches not synced"
        if not self.leadership.is_leader:
            return False, "not the leader"
        return True, "ok"

    def _queue_depths(self) -> Mapping[str, int]:
        if self.binder is None:
            return {}
        return {n: self.binder.waiting(n) for n in self.cluster.nodes if self.binder.waiting(n)}

    def _leadership_changed(self, leader: bool) -> None:
        self.cluster.leader = leader
        if leader:
            self.cluster.registration_pass()
        self.cluster.wake_all()

    def spawn(self, coro: Coroutine[Any, Any, Any]) -> asyncio.Task[Any]:
        """Run ``coro`` in the background, keeping a reference until it ends."""
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    def _patch_node(self, name: str, annotations: Mapping[str, str | None]) -> None:
        if self.kube is None or name in self._patching:
            return
        kube = self.kube
        self._patching.add(name)

        async def write() -> None:
            try:
                await kube.patch_node_annotations(name, annotations)
            except api.ApiError as err:
                logger.warning("could not write handshake annotations of node %s: %s", name, err)
            finally:
                self._patching.discard(name)

        self.spawn(write())

    # ------------------------------------------------------------------ handlers

    async def _gate(self) -> str:
        """Why filter/bind must be refused now ('' = go)."""
        if not self.synced.is_set():
            try:
                await asyncio.wait_for(self.synced.wait(), timeout=self.options.sync_wait_s)
            except TimeoutError:
                return "the scheduler's caches are not synced yet; retry later"
        if not self.leadership.is_leader:
            return "this scheduler replica is not the leader"
        return ""

    async def handle_filter(self, request: web.Request) -> web.Response:
        """``POST /filter``."""
        begin = time.perf_counter()
        try:
            doc = await _read_json(request)
            args = extender.parse_filter_args(doc)
        except _TooLarge as err:
            self.metrics.observe_filter("bad_request", {})
            return web.json_response(extender.filter_result(error=str(err)), status=413)
        except extender.BadRequest as err:
            self.metrics.observe_filter("bad_request", {})
            return web.json_response(extender.filter_result(error=str(err)))
        refused = await self._gate()
        if refused:
            self.metrics.observe_filter("error", {})
            return web.json_response(extender.filter_result(error=refused))
        try:
            result = self.extender.filter(args)
        except Exception as err:  # request handler boundary: answer the error, keep serving
            logger.exception("filter of pod %s failed", args.pod.key)
            self.metrics.observe_filter("error", {})
            result = extender.filter_result(error=f"internal error: {type(err).__name__}: {err}")
        self.metrics.filter_seconds.observe(time.perf_counter() - begin)
        return web.json_response(result)

    async def handle_bind(self, request: web.Request) -> web.Response:
        """``POST /bind``."""
        begin = time.perf_counter()
        try:
            doc = await _read_json(request)
            args = extender.parse_binding_args(doc)
        except _TooLarge as err:
            self.metrics.observe_bind("bad_request")
            return web.json_response({"Error": str(err)}, status=413)
        except extender.BadRequest as err:
            self.metrics.observe_bind("bad_request")
            return web.json_response({"Error": str(err)})
        refused = await self._gate()
        if refused or self.binder is None:
            self.metrics.observe_bind("not_leader" if refused else "no_api")
            return web.json_response({"Error": refused or "this process has no API connection"})
        self.inflight_binds += 1
        try:
            result = await self.binder.bind(args)
        except Exception as err:  # request handler boundary: answer the error, keep serving
            logger.exception("bind of pod %s/%s failed", args.pod_namespace, args.pod_name)
            self.metrics.observe_bind("error")
            result = {"Error": f"internal error: {type(err).__name__}: {err}"}
        finally:
            self.inflight_binds -= 1
        self.metrics.bind_seconds.observe(time.perf_counter() - begin)
        return web.json_response(result)

    async def handle_healthz(self, request: web.Request) -> web.Response:
        """``GET /healthz``: the event loop answers."""
        return web.Response(text="ok\n")

    async def handle_readyz(self, request: web.Request) -> web.Response:
        """``GET /readyz``: synced and leader."""
        ok, why = self.ready
        return web.Response(status=200 if ok else 503, text=f"{why}\n")

    async def handle_metrics(self, request: web.Request) -> web.Response:
        """``GET /metrics``."""
        body = generate_latest(self.metrics.registry)
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})


class _TooLarge(ValueError):
    pass


async def _read_json(request: web.Request) -> object:
    """The JSON body, with a clear error for a huge, empty or malformed one."""
    try:
        body = await request.read()
    except web.HTTPRequestEntityTooLarge as err:
        raise _TooLarge(
            f"request body larger than the {extender.MAX_BODY_BYTES} bytes limit"
        ) from err
    if not body:
        raise extender.BadRequest("empty request body; expected a JSON document")
    try:
        return json.loads(body)
    except ValueError as err:
        raise extender.BadRequest(f"malformed JSON in the request body: {err}") from err


def build_app(
    settings: config.Settings,
    host: plugins.PluginHost,
    *,
    process: SchedulerProcess | None = None,
) -> web.Application:
    """The aiohttp application with every route (pure: no sockets, no API calls)."""
    proc = process or SchedulerProcess(settings, host)
    app = web.Application(client_max_size=extender.MAX_BODY_BYTES)
    app.router.add_post("/filter", proc.handle_filter)
    app.router.add_post("/bind", proc.handle_bind)
    app.router.add_get("/healthz", proc.handle_healthz)
    app.router.add_get("/readyz", proc.handle_readyz)
    app.router.add_get("/metrics", proc.handle_metrics)
    webhook_server.add_routes(app, host, lambda: proc.cluster.state.quota, proc.policy)
    return app


def metrics_app(process: SchedulerProcess) -> web.Application:
    """A plain-HTTP application with ``/metrics`` only."""
    app = web.Application()
    app.router.add_get("/metrics", process.handle_metrics)
    return app


def _label_selector(selector: Mapping[str, str]) -> str:
    return ",".join(f"{k}={v}" for k, v in sorted(selector.items()))


def _leadership(options: ServeOptions, kube: api.Kube, scheduler_name: str) -> lease.Leadership:
    name = options.lease_name or scheduler_name
    hostname = options.identity or os.environ.get("POD_NAME") or socket.gethostname()
    if options.leader_elect == "follow":
        return lease.LeaseFollower(kube, options.lease_namespace, name, hostname)
    if options.leader_elect == "campaign":
        identity = options.identity or f"{hostname}_{uuid.uuid4().hex[:8]}"
        return lease.LeaseCampaign(kube, options.lease_namespace, name, identity)
    return lease.AlwaysLeader()


async def _periodic(every_s: float, fn: Callable[[], object]) -> None:
    while True:
        await asyncio.sleep(every_s)
        try:
            fn()
        except Exception:  # a periodic job must keep running
            logger.exception("periodic job failed")


async def _when_synced(process: SchedulerProcess, caches: list[Awaitable[Any]]) -> None:
    await asyncio.gather(*caches)
    process.cluster.registration_pass()
    process.synced.set()
    logger.info(
        "caches synced: %d nodes registered, %d pods tracked",
        len(process.cluster.state.node_names()),
        sum(1 for _ in process.cluster.state.pods()),
    )


async def serve(
    settings: config.Settings,
    host: plugins.PluginHost,
    *,
    stop: asyncio.Event | None = None,
    ready: asyncio.Event | threading.Event | None = None,
    options: ServeOptions | None = None,
) -> None:
    """Run the scheduler until ``stop`` is set (or SIGTERM/SIGINT when ``stop`` is None).

    :param ready: set once every listener accepts connections
    :raises ConfigError: bad addresses or TLS files
    """
    opts = options or ServeOptions()
    loop = asyncio.get_running_loop()
    if stop is None:
        stop = asyncio.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
    bind_host, bind_port = split_address(opts.http_bind, "127.0.0.1")
    tls = webhook_server.ReloadingTLS(opts.cert_file, opts.key_file) if opts.cert_file else None
    kube = await api.Kube.connect(opts.kubeconfig)
    runners: list[web.AppRunner] = []
    process: SchedulerProcess | None = None
    try:
        leadership = _leadership(opts, kube, settings.scheduler.scheduler_name)
        process = SchedulerProcess(settings, host, options=opts, kube=kube, leadership=leadership)
        cl = process.cluster
        nodes = cache.node_cache(
            kube,
            label_selector=_label_selector(settings.scheduler.node_label_selector),
            handler=cl.on_node,
        )
        pods = cache.pod_cache(kube, handler=cl.on_pod)
        quotas = cache.quota_cache(kube, handler=cl.on_quota)
        for c in (nodes, pods, quotas):
            process.spawn(c.run())
        process.spawn(leadership.run())
        process.spawn(process.recorder.run())
        process.spawn(_periodic(opts.registration_period_s, cl.registration_pass))
        process.spawn(_periodic(5.0, cl.expire_reservations))
        process.spawn(
            _when_synced(process, [nodes.synced.wait(), pods.synced.wait(), quotas.synced.wait()])
        )

        runner = web.AppRunner(build_app(settings, host, process=process), access_log=None)
        await runner.setup()
        runners.append(runner)
        await web.TCPSite(
            runner, bind_host, bind_port, ssl_context=tls.context if tls else None
        ).start()
        logger.info(
            "scheduler %r listening on %s://%s:%d",
            settings.scheduler.scheduler_name,
            "https" if tls else "http",
            bind_host,
            bind_port,
        )
        if opts.metrics_bind and opts.metrics_bind != opts.http_bind:
            m_host, m_port = split_address(opts.metrics_bind)
            m_runner = web.AppRunner(metrics_app(process), access_log=None)
            await m_runner.setup()
            runners.append(m_runner)
            await web.TCPSite(m_runner, m_host, m_port).start()
        if ready is not None:
            ready.set()
        await stop.wait()
        logger.info("stopping: not ready any more; draining in-flight binds")
        process.stopping = True
        deadline = time.monotonic() + opts.grace_period_s
        while process.inflight_binds and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        await leadership.release()
    finally:
        for runner in reversed(runners):
            await runner.cleanup()
        if process is not None:
            for task in list(process._tasks):
                task.cancel()
            for task in list(process._tasks):
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
        await kube.close()
