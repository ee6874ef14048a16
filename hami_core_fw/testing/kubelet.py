"""A kubelet stand-in for device-plugin tests (k8s-protocols.md 6.8), on ``grpc.aio``.

No real kubelet runs without a container runtime, so tests of device plugins use
:class:`FakeKubelet`: it serves ``Registration`` on ``<dir>/kubelet.sock``, validates and dials
back every registering plugin, consumes its ``ListAndWatch`` stream, tracks capacity and
allocatable per resource, admits containers the way the kubelet's device manager does (choose
healthy unallocated ids, ``GetPreferredAllocation`` when advertised, one ``Allocate`` per
container, ``PreStartContainer`` when required), writes the node's capacity into a real API server
on request, and simulates a kubelet restart and the loss of a plugin's stream.

Every wait is event-driven with a timeout; nothing sleeps on the wall clock.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

import grpc
from grpc import aio

from hami_core_fw.deviceplugin.proto import api_pb2, api_pb2_grpc
from hami_core_fw.k8s import api

logger = logging.getLogger(__name__)

KUBELET_SOCKET: Final = "kubelet.sock"
CHECKPOINT: Final = "kubelet_internal_checkpoint"
_RESOURCE_NAME: Final = re.compile(r"^([a-z0-9]([-a-z0-9]*[a-z0-9])?\.)+[a-z]{2,}/[-A-Za-z0-9_.]+$")


class AdmissionError(Exception):
    """The stand-in could not admit a container (no devices, or the plugin refused)."""


@dataclass
class Resource:
    """What the kubelet knows about one extended resource.

    :param devices: the latest complete list from ``ListAndWatch`` (id -> device)
    :param connected: a plugin is registered and its stream is open
    :param registrations: ``Register`` calls accepted for this resource
    :param lists: ``ListAndWatch`` messages received
    :param allocated: device ids in use by admitted containers
    """

    name: str
    endpoint: str = ""
    options: api_pb2.DevicePluginOptions = field(default_factory=api_pb2.DevicePluginOptions)
    devices: dict[str, api_pb2.Device] = field(default_factory=dict)
    connected: bool = False
    registrations: int = 0
    lists: int = 0
    allocated: set[str] = field(default_factory=set)
    channel: aio.Channel | None = None
    stub: api_pb2_grpc.DevicePluginStub | None = None
    stream_task: asyncio.Task[None] | None = None

    @property
    def capacity(self) -> int:
        """Healthy plus unhealthy devices."""
        return len(self.devices)

    @property
    def allocatable(self) -> int:
        """Healthy devices of a connected plugin (0 once its stream is gone)."""
        if not self.connected:
            return 0
        return sum(1 for d in self.devices.values() if d.health == "Healthy")

    def healthy_ids(self) -> list[str]:
        """Ids the kubelet may hand out, in the plugin's order."""
        if not self.connected:
            return []
        return [i for i, d in self.devices.items() if d.health == "Healthy"]


@dataclass(frozen=True)
class Admission:
    """One container admitted: the ids the kubelet chose and the plugin's answer."""

    resource: str
    device_ids: tuple[str, ...]
    response: api_pb2.ContainerAllocateResponse
    preferred: tuple[str, ...] | None = None


class _Registration(api_pb2_grpc.RegistrationServicer):
    def __init__(self, kubelet: FakeKubelet) -> None:
        self._kubelet = kubelet

    async def Register(
        self, request: api_pb2.RegisterRequest, context: aio.ServicerContext
    ) -> api_pb2.Empty:
        problem = await self._kubelet._register(request)
        if problem:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, problem)
        return api_pb2.Empty()


class FakeKubelet:
    """The kubelet side of the device plugin API, for tests.

    :param directory: the device-plugin directory (keep it short: unix socket paths < 108 bytes)
    :param dial_timeout_s: how long ``Register`` waits for ``GetDevicePluginOptions`` (kubelet 10 s)
    """

    def __init__(self, directory: str | Path, *, dial_timeout_s: float = 10.0) -> None:
        self.directory = Path(directory)
        self.socket = self.directory / KUBELET_SOCKET
        self._dial_timeout = dial_timeout_s
        self.resources: dict[str, Resource] = {}
        self._server: aio.Server | None = None
        self._changed = asyncio.Condition()
        #: registrations refused, with the reason (tests assert on them)
        self.refused: list[str] = []
        #: times a stream end disconnected a resource
        self.disconnects = 0
        self.admissions: list[Admission] = []

    # ------------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        """Create the directory, delete stale sockets, serve ``Registration``."""
        self.directory.mkdir(parents=True, exist_ok=True, mode=0o750)
        self._wipe_sockets()
        server = aio.server()
        api_pb2_grpc.add_RegistrationServicer_to_server(_Registration(self), server)
        server.add_insecure_port(f"unix://{self.socket}")
        await server.start()
        self._server = server

    def _wipe_sockets(self) -> None:
        # the kubelet deletes every socket file in the directory except its checkpoint
        for entry in self.directory.iterdir():
            if entry.name != CHECKPOINT and entry.is_socket():
                entry.unlink()

    async def stop(self) -> None:
        """Stop serving and drop every plugin connection."""
        for res in self.resources.values():
            await self._drop(res, disconnect=False)
        if self._server is not None:
            await self._server.stop(0)
            self._server = None
        with contextlib.suppress(FileNotFoundError):
            self.socket.unlink()

    async def restart(self) -> None:
        """Simulate a kubelet restart: every socket is deleted and ``kubelet.sock`` recreated.

        Known resources are kept from the "checkpoint" with zero healthy devices, as the kubelet
        does, until their plugin registers again.
        """
        await self.stop()
        async with self._changed:
            for res in self.resources.values():
                res.connected = False
                res.devices = {}
            self._changed.notify_all()
        await self.start()

    async def __aenter__(self) -> FakeKubelet:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    # ------------------------------------------------------------------ registration

    async def _register(self, request: api_pb2.RegisterRequest) -> str:
        problem = ""
        if request.version != "v1beta1":
            problem = f"unsupported API version {request.version!r}"
        elif not _RESOURCE_NAME.match(request.resource_name) or request.resource_name.startswith(
            "kubernetes.io/"
        ):
            problem = f"invalid extended resource name {request.resource_name!r}"
        if problem:
            return await self._refuse(problem)
        target = self.directory / request.endpoint
        channel = aio.insecure_channel(f"unix://{target}")
        stub = api_pb2_grpc.DevicePluginStub(channel)
        try:
            options = await stub.GetDevicePluginOptions(
                api_pb2.Empty(), timeout=self._dial_timeout, wait_for_ready=True
            )
        except grpc.RpcError as err:
            await channel.close()
            return await self._refuse(f"cannot dial the plugin at {target}: {err}")
        res = self.resources.setdefault(request.resource_name, Resource(request.resource_name))
        old = res.stream_task
        res.endpoint = request.endpoint
        res.options = options
        res.channel = channel
        res.stub = stub
        res.registrations += 1
        res.stream_task = asyncio.ensure_future(self._list_and_watch(res, stub))
        if old is not None:
            logger.info("resource %s re-registered; the previous stream is replaced", res.name)
        async with self._changed:
            self._changed.notify_all()
        return ""

    async def _refuse(self, problem: str) -> str:
        async with self._changed:
            self.refused.append(problem)
            self._changed.notify_all()
        return problem

    async def _list_and_watch(self, res: Resource, stub: api_pb2_grpc.DevicePluginStub) -> None:
        try:
            async for msg in stub.ListAndWatch(api_pb2.Empty()):
                async with self._changed:
                    res.devices = {d.ID: d for d in msg.devices}
                    res.connected = True
                    res.lists += 1
                    self._changed.notify_all()
        except grpc.RpcError as err:
            logger.info("ListAndWatch of %s ended: %s", res.name, err)
        except asyncio.CancelledError:
            raise
        # like the kubelet: a stream end disconnects whatever is registered under the name now
        async with self._changed:
            res.connected = False
            self.disconnects += 1
            self._changed.notify_all()

    async def _drop(self, res: Resource, *, disconnect: bool) -> None:
        task, res.stream_task = res.stream_task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if res.channel is not None:
            await res.channel.close()
            res.channel = None
            res.stub = None
        if disconnect:
            async with self._changed:
                res.connected = False
                self.disconnects += 1
                self._changed.notify_all()

    async def lose_stream(self, resource: str) -> None:
        """Simulate the loss of a plugin: its stream is gone, its devices count as unhealthy."""
        await self._drop(self.resources[resource], disconnect=True)

    # ------------------------------------------------------------------ waiting

    async def wait_for(
        self, predicate: Callable[[FakeKubelet], bool], *, timeout: float = 10.0, what: str = ""
    ) -> None:
        """Wait until ``predicate(self)`` holds.

        :raises TimeoutError: it did not hold within ``timeout`` seconds (message names ``what``)
        """

        async def wait() -> None:
            async with self._changed:
                await self._changed.wait_for(lambda: predicate(self))

        try:
            await asyncio.wait_for(wait(), timeout)
        except TimeoutError as err:
            raise TimeoutError(
                f"kubelet stand-in: not {what or predicate} after {timeout}s"
            ) from err

    async def wait_registered(
        self, resource: str, *, registrations: int = 1, timeout: float = 10.0
    ) -> Resource:
        """Wait for the ``registrations``-th registration of ``resource`` and its first list."""

        def ok(k: FakeKubelet) -> bool:
            res = k.resources.get(resource)
            return res is not None and res.registrations >= registrations and res.connected

        await self.wait_for(ok, timeout=timeout, what=f"registered {resource} x{registrations}")
        return self.resources[resource]

    async def wait_devices(
        self,
        resource: str,
        predicate: Callable[[dict[str, api_pb2.Device]], bool],
        *,
        timeout: float = 10.0,
    ) -> dict[str, api_pb2.Device]:
        """Wait until the latest device list of ``resource`` satisfies ``predicate``."""

        def ok(k: FakeKubelet) -> bool:
            res = k.resources.get(resource)
            return res is not None and res.connected and predicate(res.devices)

        await self.wait_for(ok, timeout=timeout, what=f"device list of {resource} as expected")
        return dict(self.resources[resource].devices)

    # ------------------------------------------------------------------ admission

    async def admit_container(
        self, resource: str, count: int, *, reuse: Sequence[str] = (), timeout: float = 30.0
    ) -> Admission:
        """Admit one container needing ``count`` devices, as the device manager does.

        :param reuse: ids of init-container devices the container may reuse (kubelet reuse)
        :raises AdmissionError: too few healthy devices, or the plugin refused ``Allocate``
        """
        res = self.resources.get(resource)
        if res is None or res.stub is None:
            raise AdmissionError(f"no plugin registered for {resource}")
        chosen = [i for i in reuse if i in res.devices][:count]
        free = [i for i in res.healthy_ids() if i not in res.allocated and i not in chosen]
        if len(chosen) + len(free) < count:
            raise AdmissionError(
                f"{resource}: need {count}, {len(chosen) + len(free)} healthy and unallocated"
            )
        preferred: tuple[str, ...] | None = None
        if len(chosen) < count and res.options.get_preferred_allocation_available:
            # also when the candidates exactly match the need (k8s-protocols.md 2.5)
            request = api_pb2.PreferredAllocationRequest(
                container_requests=[
                    api_pb2.ContainerPreferredAllocationRequest(
                        available_deviceIDs=chosen + free,
                        must_include_deviceIDs=chosen,
                        allocation_size=count,
                    )
                ]
            )
            try:
                answer = await res.stub.GetPreferredAllocation(request, timeout=timeout)
            except grpc.RpcError as err:
                raise AdmissionError(f"GetPreferredAllocation failed: {err}") from err
            preferred = tuple(answer.container_responses[0].deviceIDs)
            for i in preferred:
                if len(chosen) < count and i in free and i not in chosen:
                    chosen.append(i)
        for i in free:
            if len(chosen) >= count:
                break
            if i not in chosen:
                chosen.append(i)
        request_a = api_pb2.AllocateRequest(
            container_requests=[api_pb2.ContainerAllocateRequest(devices_ids=chosen)]
        )
        try:
            response = await res.stub.Allocate(request_a, timeout=timeout)
        except grpc.RpcError as err:
            details = err.details() if isinstance(err, aio.AioRpcError) else str(err)
            raise AdmissionError(f"Allocate failed: {details}") from err
        if res.options.pre_start_required:
            try:
                await res.stub.PreStartContainer(
                    api_pb2.PreStartContainerRequest(devices_ids=chosen), timeout=30.0
                )
            except grpc.RpcError as err:
                raise AdmissionError(f"PreStartContainer failed: {err}") from err
        res.allocated.update(chosen)
        admission = Admission(resource, tuple(chosen), response.container_responses[0], preferred)
        self.admissions.append(admission)
        return admission

    async def admit_pod(
        self,
        resource: str,
        containers: Sequence[int],
        *,
        init_containers: Sequence[int] = (),
        timeout: float = 30.0,
    ) -> list[Admission | None]:
        """Admit a pod: init containers first, then app containers (``None`` for count 0).

        App containers reuse the devices of init containers first, as the kubelet does.
        """
        out: list[Admission | None] = []
        reusable: list[str] = []
        for count in init_containers:
            if count == 0:
                out.append(None)
                continue
            adm = await self.admit_container(resource, count, reuse=reusable, timeout=timeout)
            reusable = [*reusable, *(i for i in adm.device_ids if i not in reusable)]
            self.resources[resource].allocated.difference_update(adm.device_ids)
            out.append(adm)
        for count in containers:
            if count == 0:
                out.append(None)
                continue
            adm = await self.admit_container(resource, count, reuse=reusable, timeout=timeout)
            reusable = [i for i in reusable if i not in adm.device_ids]
            out.append(adm)
        return out

    def release(self, device_ids: Sequence[str], resource: str) -> None:
        """Forget an admitted container's devices (its pod ended)."""
        self.resources[resource].allocated.difference_update(device_ids)

    # ------------------------------------------------------------------ node status

    def node_status(self) -> dict[str, dict[str, str]]:
        """``status.capacity`` and ``status.allocatable`` of the known resources."""
        return {
            "capacity": {n: str(r.capacity) for n, r in self.resources.items()},
            "allocatable": {n: str(r.allocatable) for n, r in self.resources.items()},
        }

    async def write_node_status(self, kube: api.Kube, node_name: str) -> None:
        """Merge the resources' capacity/allocatable into the node's status on a real API server.

        No real kubelet runs in tests, and the scheduler's health logic reads allocatable.
        """
        await kube.request(
            "PATCH",
            f"/api/v1/nodes/{node_name}/status",
            body={"status": self.node_status()},
            content_type=api.MERGE_PATCH,
        )
