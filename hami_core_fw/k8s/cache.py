"""Watch-based caches of API objects that emit typed events of our own models.

A :class:`WatchCache` keeps one collection (nodes, pods, resource quotas) in memory with the
informer pattern of k8s-protocols.md 7.2: LIST, then WATCH from the list's ``resourceVersion`` with
bookmarks; a watch that ends is resumed from the last version seen; a **410 Gone** re-LISTs and
diffs the new list against the cache, emitting synthetic ``DELETED`` events for objects that
vanished meanwhile. Every object is narrowed by a ``convert`` function into a model
(:class:`~hami_core_fw.models.NodeView`, :class:`~hami_core_fw.models.PodView`,
:class:`QuotaView`) before anyone sees it, and the consumer's handler receives
:class:`CacheEvent` values in the order the API server produced them.

``synced`` is set once the first LIST has been applied (the extender must not answer filter
before that). This module never imports the scheduler: the scheduler process plugs its state
updates in as handlers.
"""

from __future__ import annotations

import asyncio
import enum
import logging
import math
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from typing import Generic, Protocol, TypeVar

from kubernetes.utils import parse_quantity

from hami_core_fw import models
from hami_core_fw.k8s import api

logger = logging.getLogger(__name__)

T = TypeVar("T")


class EventKind(enum.StrEnum):
    """What happened to an object."""

    ADDED = "ADDED"
    MODIFIED = "MODIFIED"
    DELETED = "DELETED"


@dataclass(frozen=True, slots=True)
class CacheEvent(Generic[T]):
    """One change of one cached object.

    :param key: the cache key (uid for pods, name for nodes, ``namespace/name`` for quotas)
    :param obj: the object after the change (for ``DELETED``: its last known state)
    :param old: the object before the change (``MODIFIED`` and ``DELETED`` only)
    :param synthetic: produced by a re-LIST diff rather than by a watch event
    """

    kind: EventKind
    key: str
    obj: T
    old: T | None = None
    synthetic: bool = False


@dataclass(frozen=True, slots=True)
class QuotaView:
    """The parts of a ResourceQuota the scheduler reads: ``spec.hard`` as whole numbers.

    Quantities are rounded up to integers (Kubernetes ``Quantity.Value()``); a value that does
    not parse is left out and logged.
    """

    namespace: str
    name: str
    hard: Mapping[str, int] = field(default_factory=dict)

    @classmethod
    def from_manifest(cls, obj: Mapping[str, object]) -> QuotaView:
        """Narrow a ResourceQuota JSON object."""
        meta = obj.get("metadata")
        meta = meta if isinstance(meta, Mapping) else {}
        spec = obj.get("spec")
        raw = spec.get("hard") if isinstance(spec, Mapping) else None
        hard: dict[str, int] = {}
        if isinstance(raw, Mapping):
            for key, value in raw.items():
                amount = quantity_int(value)
                if amount is None:
                    logger.warning(
                        "resource quota %s/%s: %s=%r is not a quantity; ignored",
                        meta.get("namespace"),
                        meta.get("name"),
                        key,
                        value,
                    )
                    continue
                hard[str(key)] = amount
        return cls(
            namespace=str(meta.get("namespace") or ""), name=str(meta.get("name") or ""), hard=hard
        )


def quantity_int(value: object) -> int | None:
    """A Kubernetes quantity (``10k``, ``1Gi``, ``500m``) rounded up to an integer, or None."""
    try:
        number = parse_quantity(value)
    except (ValueError, TypeError, InvalidOperation):
        return None
    if not isinstance(number, Decimal) or not number.is_finite():
        return None
    return math.ceil(number)


def uid_key(obj: Mapping[str, object]) -> str:
    """Key objects by ``metadata.uid`` (pods: a re-created pod is a different object)."""
    meta = obj.get("metadata")
    return str(meta.get("uid") or "") if isinstance(meta, Mapping) else ""


def name_key(obj: Mapping[str, object]) -> str:
    """Key cluster-scoped objects by ``metadata.name``."""
    meta = obj.get("metadata")
    return str(meta.get("name") or "") if isinstance(meta, Mapping) else ""


def namespaced_key(obj: Mapping[str, object]) -> str:
    """Key namespaced objects by ``namespace/name``."""
    meta = obj.get("metadata")
    if not isinstance(meta, Mapping):
        return ""
    return f"{meta.get('namespace') or ''}/{meta.get('name') or ''}"


def _resource_version(obj: Mapping[str, object]) -> str:
    meta = obj.get("metadata")
    return str(meta.get("resourceVersion") or "") if isinstance(meta, Mapping) else ""


class ListWatcher(Protocol):
    """The two calls a cache needs; :class:`~hami_core_fw.k8s.api.Kube` provides them."""

    async def list(
        self, path: str, *, label_selector: str = "", field_selector: str = ""
    ) -> api.Json:
        """LIST a collection."""
        ...

    def watch(
        self,
        path: str,
        *,
        resource_version: str,
        label_selector: str = "",
        field_selector: str = "",
        timeout_s: int = 300,
    ) -> AsyncIterator[api.Json]:
        """WATCH a collection from ``resource_version``; raises Gone on 410."""
        ...


Handler = Callable[[CacheEvent[T]], None]


class WatchCache(Generic[T]):
    """One collection kept by LIST + WATCH, narrowed by ``convert``, changes sent to ``handler``.

    :param source: where to LIST and WATCH (a :class:`~hami_core_fw.k8s.api.Kube`)
    :param path: the collection path, e.g. ``/api/v1/pods``
    :param convert: JSON object -> model; an object it raises on is logged and skipped
    :param key: JSON object -> cache key
    :param handler: called synchronously, in order, for every change (exceptions are logged)
    :param watch_timeout_s: server-side timeout of each WATCH request (then it is resumed)
    :param backoff_cap_s: longest pause between attempts after transient failures
    """

    def __init__(
        self,
        source: ListWatcher,
        path: str,
        *,
        convert: Callable[[api.Json], T],
        key: Callable[[api.Json], str] = uid_key,
        handler: Handler[T] | None = None,
        label_selector: str = "",
        field_selector: str = "",
        watch_timeout_s: int = 300,
        backoff_cap_s: float = 5.0,
        name: str = "",
    ) -> None:
        self._source = source
        self.path = path
        self._convert = convert
        self._key = key
        self._handlers: list[Handler[T]] = [handler] if handler is not None else []
        self._label_selector = label_selector
        self._field_selector = field_selector
        self._watch_timeout_s = watch_timeout_s
        self._backoff_cap_s = backoff_cap_s
        self.name = name or path
        self._items: dict[str, tuple[str, T]] = {}
        self._rv = ""
        #: set once the first LIST has been applied
        self.synced = asyncio.Event()
        #: how many times the collection was listed (1 + number of re-lists)
        self.list_count = 0

    # ------------------------------------------------------------------ reading

    def add_handler(self, handler: Handler[T]) -> None:
        """Also send every future change to ``handler``."""
        self._handlers.append(handler)

    def get(self, key: str) -> T | None:
        """The cached object under ``key``."""
        item = self._items.get(key)
        return item[1] if item is not None else None

    def items(self) -> dict[str, T]:
        """A copy of the cache, key -> object."""
        return {k: v for k, (_, v) in self._items.items()}

    def __len__(self) -> int:
        return len(self._items)

    @property
    def resource_version(self) -> str:
        """The last resourceVersion seen (list, event or bookmark)."""
        return self._rv

    # ------------------------------------------------------------------ running

    async def run(self) -> None:
        """LIST and WATCH until cancelled; never returns on its own."""
        attempt = 0
        while True:
            try:
                await self._list()
                attempt = 0
                await self._watch_forever()
            except api.Gone:
                logger.info("%s: watch expired (410 Gone); re-listing", self.name)
            except asyncio.CancelledError:
                raise
            except (api.ApiError, ValueError) as err:
                logger.warning("%s: list/watch failed: %s; retrying", self.name, err)
                await asyncio.sleep(min(self._backoff_cap_s, 0.2 * 2**attempt))
                attempt += 1

    async def _watch_forever(self) -> None:
        """Resume the watch from the last version each time it ends; Gone propagates."""
        failures = 0
        while True:
            try:
                async for event in self._source.watch(
                    self.path,
                    resource_version=self._rv,
                    label_selector=self._label_selector,
                    field_selector=self._field_selector,
                    timeout_s=self._watch_timeout_s,
                ):
                    self._apply_watch_event(event)
                    failures = 0
            except api.Unavailable as err:
                failures += 1
                logger.warning("%s: watch interrupted: %s; resuming", self.name, err)
                await asyncio.sleep(min(self._backoff_cap_s, 0.2 * 2**failures))

    async def _list(self) -> None:
        doc = await self._source.list(
            self.path, label_selector=self._label_selector, field_selector=self._field_selector
        )
        raw_items = doc.get("items")
        if not isinstance(raw_items, list):
            raise ValueError(f"{self.name}: LIST answer has no items list")  # noqa: TRY004 - a malformed answer, retried like other ValueErrors
        meta = doc.get("metadata")
        list_rv = str(meta.get("resourceVersion") or "") if isinstance(meta, Mapping) else ""
        fresh: dict[str, tuple[str, T]] = {}
        for raw in raw_items:
            if not isinstance(raw, dict):
                continue
            converted = self._narrow(raw)
            if converted is not None:
                fresh[converted[0]] = (converted[1], converted[2])
        self._replace(fresh)
        self._rv = list_rv
        self.list_count += 1
        self.synced.set()

    def _replace(self, fresh: dict[str, tuple[str, T]]) -> None:
        """Diff a fresh LIST against the cache: synthetic deletes first, then adds/updates."""
        relist = self.list_count > 0
        for key in [k for k in self._items if k not in fresh]:
            rv, obj = self._items.pop(key)
            self._emit(CacheEvent(EventKind.DELETED, key, obj, old=obj, synthetic=relist))
        for key, (rv, obj) in fresh.items():
            before = self._items.get(key)
            self._items[key] = (rv, obj)
            if before is None:
                self._emit(CacheEvent(EventKind.ADDED, key, obj, synthetic=relist))
            elif before[0] != rv:
                self._emit(CacheEvent(EventKind.MODIFIED, key, obj, old=before[1], synthetic=True))

    def _narrow(self, raw: api.Json) -> tuple[str, str, T] | None:
        key = self._key(raw)
        if not key:
            logger.warning("%s: object without a key skipped", self.name)
            return None
        try:
            obj = self._convert(raw)
        except Exception:  # a converter bug must not stop the cache; the object is skipped
            logger.exception("%s: cannot narrow object %s; skipped", self.name, key)
            return None
        return key, _resource_version(raw), obj

    def _apply_watch_event(self, event: api.Json) -> None:
        kind = event.get("type")
        raw = event.get("object")
        if not isinstance(raw, dict):
            return
        rv = _resource_version(raw)
        if kind == "BOOKMARK":
            self._rv = rv or self._rv
            return
        if kind not in ("ADDED", "MODIFIED", "DELETED"):
            logger.debug("%s: ignoring watch event %r", self.name, kind)
            return
        if rv:
            self._rv = rv
        converted = self._narrow(raw)
        if converted is None:
            return
        key, rv, obj = converted
        before = self._items.get(key)
        if kind == "DELETED":
            self._items.pop(key, None)
            self._emit(CacheEvent(EventKind.DELETED, key, obj, old=before[1] if before else None))
            return
        self._items[key] = (rv, obj)
        if before is None:
            self._emit(CacheEvent(EventKind.ADDED, key, obj))
        else:
            self._emit(CacheEvent(EventKind.MODIFIED, key, obj, old=before[1]))

    def _emit(self, event: CacheEvent[T]) -> None:
        for handler in self._handlers:
            try:
                handler(event)
            except Exception:  # one failing consumer must not stop the stream for the others
                logger.exception("%s: handler failed on %s %s", self.name, event.kind, event.key)


# ----------------------------------------------------------------------------------------------
# Ready-made caches of the collections the scheduler needs
# ----------------------------------------------------------------------------------------------


def node_cache(
    source: ListWatcher,
    *,
    label_selector: str = "",
    handler: Handler[models.NodeView] | None = None,
) -> WatchCache[models.NodeView]:
    """Nodes (optionally only those matching ``label_selector``), keyed by name."""
    return WatchCache(
        source,
        "/api/v1/nodes",
        convert=models.NodeView.from_manifest,
        key=name_key,
        handler=handler,
        label_selector=label_selector,
        name="nodes",
    )


def pod_cache(
    source: ListWatcher,
    *,
    field_selector: str = "",
    handler: Handler[models.PodView] | None = None,
) -> WatchCache[models.PodView]:
    """Pods of every namespace, keyed by uid."""
    return WatchCache(
        source,
        "/api/v1/pods",
        convert=models.PodView.from_manifest,
        key=uid_key,
        handler=handler,
        field_selector=field_selector,
        name="pods",
    )


def quota_cache(
    source: ListWatcher, *, handler: Handler[QuotaView] | None = None
) -> WatchCache[QuotaView]:
    """ResourceQuotas of every namespace, keyed by ``namespace/name``."""
    return WatchCache(
        source,
        "/api/v1/resourcequotas",
        convert=QuotaView.from_manifest,
        key=namespaced_key,
        handler=handler,
        name="resourcequotas",
    )
