"""Leadership from a ``coordination.k8s.io/v1`` Lease: follow another process's, or campaign.

HAMi's extender does not campaign: it follows the Lease of the kube-scheduler sidecar in the same
pod (name = scheduler name, in the release namespace) and considers itself leader when the Lease's
``holderIdentity`` starts with its own hostname (hami-compat.md 4.2). :class:`LeaseFollower` does
exactly that, and additionally treats an expired Lease as "nobody leads". :class:`LeaseCampaign`
holds a Lease of its own (the client-go algorithm: create, renew every ``retry_period``, take over
an expired one) for deployments without a sidecar. :class:`AlwaysLeader` is the single-replica
case.

Every implementation exposes :attr:`~Leadership.is_leader`, flips it *before* notifying listeners,
and never raises out of :meth:`~Leadership.run`.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
from collections.abc import Callable
from typing import Final

from hami_core_fw.k8s import api

logger = logging.getLogger(__name__)

_MICROTIME: Final = "%Y-%m-%dT%H:%M:%S.%fZ"

Listener = Callable[[bool], None]


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def format_microtime(when: dt.datetime) -> str:
    """A Kubernetes MicroTime (``2025-01-02T03:04:05.123456Z``)."""
    return when.astimezone(dt.UTC).strftime(_MICROTIME)


def parse_microtime(text: object) -> dt.datetime | None:
    """Parse a MicroTime or an RFC 3339 time; None when absent or malformed."""
    if not isinstance(text, str) or not text:
        return None
    try:
        return dt.datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return None


def lease_path(namespace: str, name: str = "") -> str:
    """The API path of a Lease (or of the namespace's Lease collection)."""
    base = f"/apis/coordination.k8s.io/v1/namespaces/{namespace}/leases"
    return f"{base}/{name}" if name else base


def lease_expired(spec: api.Json, now: dt.datetime) -> bool:
    """Whether nobody renewed the Lease within its duration."""
    renew = parse_microtime(spec.get("renewTime")) or parse_microtime(spec.get("acquireTime"))
    duration = spec.get("leaseDurationSeconds")
    if renew is None or not isinstance(duration, int):
        return True
    return now > renew + dt.timedelta(seconds=duration)


class Leadership:
    """Whether this replica leads, with change listeners."""

    def __init__(self) -> None:
        self._leader = False
        self._listeners: list[Listener] = []

    @property
    def is_leader(self) -> bool:
        """True while this replica may serve filter and bind."""
        return self._leader

    def add_listener(self, listener: Listener) -> None:
        """Call ``listener(is_leader)`` on every change."""
        self._listeners.append(listener)

    def _set(self, leader: bool, why: str) -> None:
        if leader == self._leader:
            return
        self._leader = leader
        logger.info("leadership %s: %s", "acquired" if leader else "lost", why)
        for listener in self._listeners:
            try:
                listener(leader)
            except Exception:  # a listener bug must not stop leader election
                logger.exception("leadership listener failed")

    async def run(self) -> None:
        """Maintain leadership until cancelled."""
        raise NotImplementedError

    async def release(self) -> None:
        """Give leadership up (on shutdown)."""
        self._set(False, "released")


class AlwaysLeader(Leadership):
    """One replica, no election: leader from the start."""

    def __init__(self) -> None:
        super().__init__()
        self._set(True, "leader election disabled")

    async def run(self) -> None:
        """Nothing to maintain."""
        await asyncio.Event().wait()


class LeaseFollower(Leadership):
    """Follow someone else's Lease: leader iff its holder starts with ``identity`` (HAMi 4.2).

    :param identity: the prefix to look for (HAMi: the pod's hostname)
    :param period_s: how often the Lease is read
    """

    def __init__(
        self,
        kube: api.Kube,
        namespace: str,
        name: str,
        identity: str,
        *,
        period_s: float = 2.0,
        now: Callable[[], dt.datetime] = _now,
    ) -> None:
        super().__init__()
        self._kube = kube
        self._path = lease_path(namespace, name)
        self.identity = identity
        self._period = period_s
        self._now = now

    async def check(self) -> None:
        """Read the Lease once and update leadership."""
        try:
            lease = await self._kube.request("GET", self._path)
        except api.NotFound:
            self._set(False, f"lease {self._path} does not exist")
            return
        except api.ApiError as err:
            logger.warning("cannot read lease %s: %s", self._path, err)
            return
        spec = lease.get("spec") or {}
        holder = str(spec.get("holderIdentity") or "")
        if not holder.startswith(self.identity):
            self._set(False, f"lease {self._path} is held by {holder!r}")
        elif lease_expired(spec, self._now()):
            self._set(False, f"lease {self._path} of {holder!r} expired")
        else:
            self._set(True, f"lease {self._path} is held by {holder!r}")

    async def run(self) -> None:
        """Re-read the Lease every ``period_s``."""
        while True:
            await self.check()
            await asyncio.sleep(self._period)


class LeaseCampaign(Leadership):
    """Hold our own Lease (client-go's algorithm).

    :param identity: this replica's unique holder identity
    :param lease_duration_s: how long others wait after the last renewal before taking over
    :param renew_deadline_s: leadership is dropped when no renewal succeeded for this long
    :param retry_period_s: pause between attempts
    """

    def __init__(
        self,
        kube: api.Kube,
        namespace: str,
        name: str,
        identity: str,
        *,
        lease_duration_s: int = 15,
        renew_deadline_s: float = 10.0,
        retry_period_s: float = 2.0,
        now: Callable[[], dt.datetime] = _now,
    ) -> None:
        super().__init__()
        self._kube = kube
        self._namespace = namespace
        self._name = name
        self.identity = identity
        self._duration = lease_duration_s
        self._deadline = renew_deadline_s
        self._retry = retry_period_s
        self._now = now
        self._last_renew: dt.datetime | None = None

    def _spec(self, now: dt.datetime, acquire: str | None, transitions: int) -> api.Json:
        return {
            "holderIdentity": self.identity,
            "leaseDurationSeconds": self._duration,
            "acquireTime": acquire or format_microtime(now),
            "renewTime": format_microtime(now),
            "leaseTransitions": transitions,
        }

    async def try_acquire_or_renew(self) -> bool:
        """One round: create, renew or take over the Lease. Returns whether we hold it."""
        now = self._now()
        path = lease_path(self._namespace, self._name)
        try:
            try:
                lease = await self._kube.request("GET", path)
            except api.NotFound:
                body = {
                    "apiVersion": "coordination.k8s.io/v1",
                    "kind": "Lease",
                    "metadata": {"name": self._name, "namespace": self._namespace},
                    "spec": self._spec(now, None, 0),
                }
                await self._kube.request("POST", lease_path(self._namespace), body=body)
                return self._renewed(now, "created the lease")
            spec = lease.get("spec") or {}
            holder = str(spec.get("holderIdentity") or "")
            transitions = int(spec.get("leaseTransitions") or 0)
            if holder == self.identity:
                lease["spec"] = self._spec(now, spec.get("acquireTime"), transitions)
            elif not holder or lease_expired(spec, now):
                lease["spec"] = self._spec(now, None, transitions + 1)
            else:
                self._set(False, f"lease {path} is held by {holder!r}")
                return False
            # PUT carries metadata.resourceVersion: a concurrent writer makes it fail with 409
            await self._kube.request("PUT", path, body=lease)
            return self._renewed(now, f"holding lease {path}")
        except api.Conflict:
            return self._failed(now, "conflict while writing the lease")
        except api.ApiError as err:
            return self._failed(now, f"lease {path}: {err}")

    def _renewed(self, now: dt.datetime, why: str) -> bool:
        self._last_renew = now
        self._set(True, why)
        return True

    def _failed(self, now: dt.datetime, why: str) -> bool:
        last = self._last_renew
        if last is None or (now - last).total_seconds() > self._deadline:
            self._set(False, f"{why}; no renewal within {self._deadline:.0f}s")
            return False
        logger.warning("lease renewal failed (%s); still leader until the renew deadline", why)
        return self.is_leader

    async def run(self) -> None:
        """Campaign and renew every ``retry_period_s``."""
        while True:
            await self.try_acquire_or_renew()
            await asyncio.sleep(self._retry)

    async def release(self) -> None:
        """Hand the Lease back so another replica takes over at once."""
        was_leader = self.is_leader
        self._set(False, "released")
        if not was_leader:
            return
        path = lease_path(self._namespace, self._name)
        try:
            lease = await self._kube.request("GET", path)
            spec = lease.get("spec") or {}
            if spec.get("holderIdentity") != self.identity:
                return
            spec["holderIdentity"] = ""
            spec["leaseDurationSeconds"] = 1
            lease["spec"] = spec
            await self._kube.request("PUT", path, body=lease)
        except api.ApiError as err:
            logger.warning("could not release lease %s: %s", path, err)
