"""The vendor-neutral kubelet device plugin server (API ``v1beta1``, k8s-protocols.md 2).

:class:`DevicePluginServer` serves the ``DevicePlugin`` service on a unix socket in the kubelet's
device-plugin directory and registers it with ``kubelet.sock``. Its lifecycle follows the
kubelet's rules (2.3): the socket is served *before* ``Register`` is called, a stale file of the
same name is removed before binding, and when the kubelet restarts (``kubelet.sock`` is recreated)
or our socket disappears the old server is stopped first - ending the old ``ListAndWatch``
stream - and a new one is started and registered. Restarts draw on a budget; exhausting it stops
the process so that Kubernetes restarts it with fresh state.

What the server advertises comes from a :class:`DeviceList` (complete lists, never deltas);
what ``Allocate``, ``GetPreferredAllocation`` and ``PreStartContainer`` answer comes from an
:class:`AllocationHandler`. Neither knows about a vendor.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections.abc import AsyncIterator, Coroutine, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, Protocol

import grpc
from grpc import aio

from hami_core_fw import errors, models
from hami_core_fw.deviceplugin.proto import api_pb2, api_pb2_grpc

logger = logging.getLogger(__name__)

API_VERSION: Final = "v1beta1"
HEALTHY: Final = "Healthy"
UNHEALTHY: Final = "Unhealthy"
KUBELET_SOCKET: Final = "kubelet.sock"
DEFAULT_KUBELET_DIR: Final = "/var/lib/kubelet/device-plugins"


@dataclass(frozen=True, slots=True)
class KubeletDevice:
    """One device as the kubelet sees it (a replica of a physical device).

    :param numa: NUMA node advertised in ``topology``; None = no topology
    """

    id: str
    healthy: bool = True
    numa: int | None = None


@dataclass(frozen=True, slots=True)
class PluginOptions:
    """``DevicePluginOptions``: the optional kubelet calls the plugin asks for."""

    pre_start_required: bool = False
    get_preferred_allocation_available: bool = False


class AllocationHandler(Protocol):
    """What answers the kubelet's allocation calls."""

    async def allocate(
        self, requests: Sequence[Sequence[str]]
    ) -> Sequence[models.ContainerRuntime]:
        """One answer per container request (device ids chosen by the kubelet).

        :raises HamiError: the allocation failed; the kubelet fails the pod's admission
        """
        ...

    async def preferred(
        self, available: Sequence[str], must_include: Sequence[str], size: int
    ) -> Sequence[str]:
        """The ids the plugin prefers for one container (``GetPreferredAllocation``)."""
        ...

    async def pre_start(self, device_ids: Sequence[str]) -> None:
        """Prepare devices before a container starts (``PreStartContainer``)."""
        ...


class DeviceList:
    """The latest complete device list; every change wakes the ``ListAndWatch`` streams."""

    def __init__(self, devices: Sequence[KubeletDevice] = ()) -> None:
        self._devices = tuple(devices)
        self._version = 0
        self._changed = asyncio.Event()

    @property
    def devices(self) -> tuple[KubeletDevice, ...]:
        """The current list."""
        return self._devices

    @property
    def version(self) -> int:
        """Incremented on every change."""
        return self._version

    def update(self, devices: Sequence[KubeletDevice]) -> bool:
        """Replace the list; returns whether it changed (unchanged lists are not re-sent)."""
        new = tuple(devices)
        if new == self._devices:
            return False
        self._devices = new
        self._version += 1
        changed, self._changed = self._changed, asyncio.Event()
        changed.set()
        return True

    async def wait_change(self, version: int) -> None:
        """Return once the version differs from ``version``."""
        while self._version == version:
            await self._changed.wait()


def replicas(uuid: str, count: int, *, healthy: bool, numa: int | None) -> list[KubeletDevice]:
    """``count`` kubelet devices ``<uuid>-<i>`` for one physical device (hami-compat.md 9.1)."""
    return [KubeletDevice(f"{uuid}-{i}", healthy, numa) for i in range(count)]


def physical_id(replica_id: str) -> str:
    """The physical device of a replica id: ``<uuid>-<n>`` or ``<uuid>::<n>``."""
    if "::" in replica_id:
        return replica_id.split("::", 1)[0]
    head, sep, tail = replica_id.rpartition("-")
    return head if sep and tail.isdigit() else replica_id


def _device_pb(dev: KubeletDevice) -> api_pb2.Device:
    out = api_pb2.Device(ID=dev.id, health=HEALTHY if dev.healthy else UNHEALTHY)
    if dev.numa is not None:
        out.topology.nodes.append(api_pb2.NUMANode(ID=dev.numa))
    return out


def runtime_pb(runtime: models.ContainerRuntime) -> api_pb2.ContainerAllocateResponse:
    """The wire form of one container's answer."""
    return api_pb2.ContainerAllocateResponse(
        envs=dict(runtime.envs),
        mounts=[
            api_pb2.Mount(
                container_path=m.container_path, host_path=m.host_path, read_only=m.read_only
            )
            for m in runtime.mounts
        ],
        devices=[
            api_pb2.DeviceSpec(
                container_path=d.container_path, host_path=d.host_path, permissions=d.permissions
            )
            for d in runtime.devices
        ],
        annotations=dict(runtime.annotations),
    )


async def _first(*waits: Coroutine[Any, Any, object] | asyncio.Event) -> None:
    """Wait until the first of the coroutines finishes (events: until one is set)."""
    tasks = [asyncio.ensure_future(w.wait() if isinstance(w, asyncio.Event) else w) for w in waits]
    try:
        await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for t in tasks:
            t.cancel()


class _Servicer(api_pb2_grpc.DevicePluginServicer):
    """The ``DevicePlugin`` service of one server generation."""

    def __init__(
        self,
        devices: DeviceList,
        handler: AllocationHandler,
        options: PluginOptions,
        closing: asyncio.Event,
    ) -> None:
        self._devices = devices
        self._handler = handler
        self._options = options
        self._closing = closing
        self.streams = 0

    def _options_pb(self) -> api_pb2.DevicePluginOptions:
        return api_pb2.DevicePluginOptions(
            pre_start_required=self._options.pre_start_required,
            get_preferred_allocation_available=self._options.get_preferred_allocation_available,
        )

    async def GetDevicePluginOptions(
        self, request: api_pb2.Empty, context: aio.ServicerContext
    ) -> api_pb2.DevicePluginOptions:
        """The same options as in ``RegisterRequest`` (older kubelets read those)."""
        return self._options_pb()

    async def ListAndWatch(
        self, request: api_pb2.Empty, context: aio.ServicerContext
    ) -> AsyncIterator[api_pb2.ListAndWatchResponse]:
        """The complete list now and after every change, until the server stops."""
        self.streams += 1
        logger.info("kubelet opened ListAndWatch")
        while not self._closing.is_set():
            version = self._devices.version
            yield api_pb2.ListAndWatchResponse(
                devices=[_device_pb(d) for d in self._devices.devices]
            )
            await _first(self._devices.wait_change(version), self._closing)
        logger.info("ListAndWatch ended: the server is stopping")

    async def GetPreferredAllocation(
        self, request: api_pb2.PreferredAllocationRequest, context: aio.ServicerContext
    ) -> api_pb2.PreferredAllocationResponse:
        """The handler's preference for each container request."""
        answers = []
        for creq in request.container_requests:
            try:
                ids = await self._handler.preferred(
                    list(creq.available_deviceIDs),
                    list(creq.must_include_deviceIDs),
                    int(creq.allocation_size),
                )
            except errors.HamiError as err:
                await context.abort(grpc.StatusCode.FAILED_PRECONDITION, str(err))
            answers.append(api_pb2.ContainerPreferredAllocationResponse(deviceIDs=list(ids)))
        return api_pb2.PreferredAllocationResponse(container_responses=answers)

    async def Allocate(
        self, request: api_pb2.AllocateRequest, context: aio.ServicerContext
    ) -> api_pb2.AllocateResponse:
        """One answer per container request; a failure fails the pod's admission."""
        requests = [list(r.devices_ids) for r in request.container_requests]
        try:
            runtimes = await self._handler.allocate(requests)
        except errors.HamiError as err:
            logger.error("Allocate %s failed: %s", requests, err)  # noqa: TRY400 - expected
            await context.abort(grpc.StatusCode.FAILED_PRECONDITION, str(err))
        except Exception as err:  # request handler boundary: report, never crash the server
            logger.exception("Allocate %s failed unexpectedly", requests)
            await context.abort(grpc.StatusCode.INTERNAL, f"{type(err).__name__}: {err}")
        return api_pb2.AllocateResponse(container_responses=[runtime_pb(r) for r in runtimes])

    async def PreStartContainer(
        self, request: api_pb2.PreStartContainerRequest, context: aio.ServicerContext
    ) -> api_pb2.PreStartContainerResponse:
        """Delegate to the handler."""
        try:
            await self._handler.pre_start(list(request.devices_ids))
        except errors.HamiError as err:
            await context.abort(grpc.StatusCode.FAILED_PRECONDITION, str(err))
        return api_pb2.PreStartContainerResponse()


def _inode(path: Path) -> tuple[int, int] | None:
    try:
        st = path.stat()
    except FileNotFoundError:
        return None
    return (st.st_dev, st.st_ino)


class DevicePluginServer:
    """Serve one resource to the kubelet; restart and re-register as the kubelet requires.

    :param resource_name: extended resource name (``nvidia.com/gpu``)
    :param socket_name: our socket file name inside ``kubelet_dir``
    :param kubelet_dir: the device-plugin directory (tests: a short temporary directory)
    :param kubelet_socket: the kubelet's registration socket name in ``kubelet_dir``
    :param watch_interval_s: how often the sockets are checked for a kubelet restart
    :param grace_s: how long in-flight calls may finish when a server generation stops
    :param restart_budget: restarts allowed within ``budget_window_s``; one more stops the server
    """

    def __init__(
        self,
        *,
        resource_name: str,
        socket_name: str,
        devices: DeviceList,
        handler: AllocationHandler,
        options: PluginOptions = PluginOptions(),
        kubelet_dir: str | Path = DEFAULT_KUBELET_DIR,
        kubelet_socket: str = KUBELET_SOCKET,
        watch_interval_s: float = 1.0,
        grace_s: float = 2.0,
        register_timeout_s: float = 10.0,
        restart_budget: int = 20,
        budget_window_s: float = 300.0,
    ) -> None:
        self.resource_name = resource_name
        self.socket_name = socket_name
        self.devices = devices
        self._handler = handler
        self.options = options
        self.kubelet_dir = Path(kubelet_dir)
        self.kubelet_socket = self.kubelet_dir / kubelet_socket
        self.socket_path = self.kubelet_dir / socket_name
        self._watch_interval = watch_interval_s
        self._grace = grace_s
        self._register_timeout = register_timeout_s
        self._budget = restart_budget
        self._window = budget_window_s
        self._restarts: list[float] = []
        #: successful registrations so far (each server generation registers once)
        self.registrations = 0
        #: set after every successful registration (tests and readiness)
        self.registered = asyncio.Event()

    # ------------------------------------------------------------------ one generation

    async def _start_server(self, closing: asyncio.Event) -> aio.Server:
        self.kubelet_dir.mkdir(parents=True, exist_ok=True)
        # a stale socket file of the same name makes bind() fail (k8s-protocols.md 2.3 step 2)
        with contextlib.suppress(FileNotFoundError):
            self.socket_path.unlink()
        server = aio.server()
        api_pb2_grpc.add_DevicePluginServicer_to_server(
            _Servicer(self.devices, self._handler, self.options, closing), server
        )
        server.add_insecure_port(f"unix://{self.socket_path}")
        await server.start()
        logger.info("serving %s on %s", self.resource_name, self.socket_path)
        return server

    async def _register(self) -> None:
        request = api_pb2.RegisterRequest(
            version=API_VERSION,
            endpoint=self.socket_name,
            resource_name=self.resource_name,
            options=api_pb2.DevicePluginOptions(
                pre_start_required=self.options.pre_start_required,
                get_preferred_allocation_available=self.options.get_preferred_allocation_available,
            ),
        )
        async with aio.insecure_channel(f"unix://{self.kubelet_socket}") as channel:
            stub = api_pb2_grpc.RegistrationStub(channel)
            await stub.Register(request, timeout=self._register_timeout)

    async def _register_until(self, stop: asyncio.Event, lost: asyncio.Event) -> bool:
        """Register, retrying with backoff; False when stopped or our socket went away first."""
        attempt = 0
        while not stop.is_set() and not lost.is_set():
            if _inode(self.kubelet_socket) is not None:
                try:
                    await self._register()
                except grpc.RpcError as err:
                    code = err.code() if isinstance(err, aio.AioRpcError) else None
                    logger.warning(
                        "registration of %s with %s failed (%s): %s",
                        self.resource_name,
                        self.kubelet_socket,
                        code,
                        err.details() if isinstance(err, aio.AioRpcError) else err,
                    )
                else:
                    return True
            delay = min(5.0, 0.05 * (2**attempt), max(self._watch_interval, 0.05) * 5)
            attempt += 1
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(_first(stop, lost), timeout=delay)
        return False

    async def _watch(self, stop: asyncio.Event, kubelet_inode: tuple[int, int] | None) -> str:
        """Return why this generation must end: ``stop``, a kubelet restart, our socket lost."""
        ours = _inode(self.socket_path)
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=self._watch_interval)
            if stop.is_set():
                return "stop"
            if _inode(self.socket_path) != ours:
                return f"our socket {self.socket_path} was removed"
            current = _inode(self.kubelet_socket)
            if current is not None and current != kubelet_inode:
                return f"{self.kubelet_socket} was recreated (kubelet restart)"

    async def _socket_lost(self, stop: asyncio.Event, lost: asyncio.Event) -> None:
        ours = _inode(self.socket_path)
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=self._watch_interval)
            if _inode(self.socket_path) != ours:
                lost.set()
                return

    def _charge_restart(self) -> None:
        now = time.monotonic()
        self._restarts = [t for t in self._restarts if now - t < self._window]
        self._restarts.append(now)
        if len(self._restarts) > self._budget:
            raise errors.PermanentError(
                f"device plugin for {self.resource_name!r} restarted {len(self._restarts)} times "
                f"within {self._window:.0f}s (budget {self._budget}); giving up so that the pod "
                "is restarted with fresh state"
            )

    # ------------------------------------------------------------------ lifecycle

    async def run(self, stop: asyncio.Event, ready: asyncio.Event | None = None) -> None:
        """Serve until ``stop`` is set; ``ready`` is set after the first registration.

        :raises PermanentError: the restart budget is exhausted
        """
        while not stop.is_set():
            closing = asyncio.Event()
            server = await self._start_server(closing)
            reason = "stop"
            try:
                lost = asyncio.Event()
                lost_task = asyncio.ensure_future(self._socket_lost(stop, lost))
                kubelet_inode = _inode(self.kubelet_socket)
                try:
                    ok = await self._register_until(stop, lost)
                finally:
                    lost_task.cancel()
                if lost.is_set():
                    reason = f"our socket {self.socket_path} was removed before registration"
                elif ok:
                    # the inode we registered with; a kubelet restart replaces the file
                    kubelet_inode = _inode(self.kubelet_socket) or kubelet_inode
                    self.registrations += 1
                    self.registered.set()
                    if ready is not None:
                        ready.set()
                    logger.info(
                        "registered %s with the kubelet (endpoint %s, registration %d)",
                        self.resource_name,
                        self.socket_name,
                        self.registrations,
                    )
                    reason = await self._watch(stop, kubelet_inode)
            finally:
                # end the old ListAndWatch stream BEFORE registering again (2.3 step 3)
                closing.set()
                await server.stop(self._grace)
            if reason == "stop" or stop.is_set():
                break
            logger.warning("restarting the device plugin server: %s", reason)
            self.registered.clear()
            self._charge_restart()
        with contextlib.suppress(FileNotFoundError):
            self.socket_path.unlink()
        logger.info("device plugin for %s stopped", self.resource_name)


def socket_path_ok(path: str | Path) -> bool:
    """Whether a unix socket path fits the kernel limit (about 107 bytes)."""
    return len(os.fsencode(str(path))) < 107
