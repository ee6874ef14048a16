"""Kubernetes Events about pods, recorded in the background so callers never wait on the API.

The scheduler reports ``FilteringFailed`` / ``FilteringSucceed`` / ``BindingFailed`` /
``BindingSucceed`` (hami-compat.md 4.12) from its request handlers; those must answer from memory,
so :meth:`EventRecorder.record` only queues the event and a worker task creates it. The queue is
bounded: when the API server is slow, further events are dropped (and counted), never buffered
without limit.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import uuid
from dataclasses import dataclass
from typing import Final, Protocol

from hami_core_fw.k8s import api

logger = logging.getLogger(__name__)

NORMAL: Final = "Normal"
WARNING: Final = "Warning"
#: the API server rejects longer messages
_MAX_MESSAGE: Final = 1024


@dataclass(frozen=True, slots=True)
class ObjectRef:
    """The object an event is about."""

    namespace: str
    name: str
    uid: str = ""
    kind: str = "Pod"


class EventSink(Protocol):
    """Where events go; :class:`~hami_core_fw.k8s.api.Kube` is one."""

    async def create_event(self, namespace: str, event: api.Json) -> None:
        """Create one core/v1 Event (best effort)."""
        ...


def build_event(
    ref: ObjectRef, event_type: str, reason: str, message: str, component: str
) -> api.Json:
    """A core/v1 Event as ``kubectl describe`` shows it (source component = the scheduler)."""
    now = dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    return {
        "apiVersion": "v1",
        "kind": "Event",
        "metadata": {"name": f"{ref.name}.{uuid.uuid4().hex[:16]}", "namespace": ref.namespace},
        "involvedObject": {
            "apiVersion": "v1",
            "kind": ref.kind,
            "namespace": ref.namespace,
            "name": ref.name,
            "uid": ref.uid,
        },
        "type": event_type,
        "reason": reason,
        "message": message[:_MAX_MESSAGE],
        "source": {"component": component},
        "reportingComponent": component,
        "firstTimestamp": now,
        "lastTimestamp": now,
        "count": 1,
    }


class EventRecorder:
    """Queue events and create them from one background task.

    :param sink: where to create them; ``None`` only logs (tests without an API server)
    :param component: ``source.component`` of every event (HAMi: the scheduler name)
    :param max_pending: events queued beyond this are dropped
    """

    def __init__(self, sink: EventSink | None, component: str, *, max_pending: int = 1000) -> None:
        self._sink = sink
        self.component = component
        self._queue: asyncio.Queue[api.Json] = asyncio.Queue(maxsize=max_pending)
        self.dropped = 0

    def record(self, ref: ObjectRef, event_type: str, reason: str, message: str) -> None:
        """Queue one event; never blocks."""
        logger.debug("event %s %s/%s: %s", reason, ref.namespace, ref.name, message)
        if self._sink is None:
            return
        try:
            self._queue.put_nowait(build_event(ref, event_type, reason, message, self.component))
        except asyncio.QueueFull:
            self.dropped += 1
            logger.warning(
                "event queue full; dropped %s for %s/%s", reason, ref.namespace, ref.name
            )

    async def run(self) -> None:
        """Create queued events until cancelled."""
        if self._sink is None:
            return
        while True:
            event = await self._queue.get()
            try:
                namespace = str(event["metadata"]["namespace"])
                await self._sink.create_event(namespace, event)
            finally:
                self._queue.task_done()

    async def flush(self) -> None:
        """Wait until every queued event was sent (needs :meth:`run` running)."""
        await self._queue.join()
