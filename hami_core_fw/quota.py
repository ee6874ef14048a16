"""ResourceQuota arithmetic for device memory and cores (hami-compat.md section 5). Pure.

HAMi enforces only ``limits.<memory resource>`` and ``limits.<core resource>`` of a namespace's
ResourceQuotas; count resources are left to Kubernetes. :class:`QuotaLedger` holds, per namespace
and resource, the limit and what reserved pods use; :func:`fits` is the test both the webhook
(pre-check) and the vendor ``fit`` (per device) apply. The built-in ``hami_quota_check`` plugin
(``hami_core_fw.builtin.quota``) answers with it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Final

from hami_core_fw import models

LIMITS_PREFIX: Final = "limits."


@dataclass(slots=True)
class QuotaEntry:
    """One tracked resource of one namespace."""

    used: int = 0
    limit: int = 0
    limit_set: bool = False


@dataclass(slots=True)
class QuotaLedger:
    """Per namespace, per resource name: used and limit (in the units the resource uses)."""

    entries: dict[str, dict[str, QuotaEntry]] = field(default_factory=dict)

    def entry(self, namespace: str, resource: str) -> QuotaEntry | None:
        """The tracked entry, or None when the namespace or resource is not tracked."""
        return self.entries.get(namespace, {}).get(resource)

    def set_limits(self, namespace: str, hard: Mapping[str, int], tracked: frozenset[str]) -> None:
        """Replace a namespace's limits from a ResourceQuota ``spec.hard`` (keys ``limits.<r>``).

        Only resources in ``tracked`` (memory and core names of some vendor) are kept. Limits are
        swapped in one step: there is no moment where a limit reads 0.
        """
        ns = self.entries.setdefault(namespace, {})
        new_limits = {
            k.removeprefix(LIMITS_PREFIX): v
            for k, v in hard.items()
            if k.startswith(LIMITS_PREFIX) and k.removeprefix(LIMITS_PREFIX) in tracked
        }
        for name, entry in ns.items():
            if name not in new_limits:
                entry.limit, entry.limit_set = 0, False
        for name, value in new_limits.items():
            entry = ns.setdefault(name, QuotaEntry())
            entry.limit, entry.limit_set = value, True

    def add_usage(self, namespace: str, resource: str, amount: int) -> None:
        """Add (or with a negative amount, remove) usage; clamps at zero."""
        if not resource:
            return
        entry = self.entries.setdefault(namespace, {}).setdefault(resource, QuotaEntry())
        entry.used = max(0, entry.used + amount)


def fits(
    ledger: QuotaLedger,
    namespace: str,
    resources: models.ResourceNames,
    memory: int,
    cores: int,
) -> bool:
    """Whether ``memory`` MiB and ``cores`` more fit the namespace quota (equality fits).

    The memory limit is in the unit users write, usage in MiB after the vendor's factor, hence the
    limit is scaled by the factor when it is above 1 (hami-compat.md 5).
    """
    if resources.memory:
        entry = ledger.entry(namespace, resources.memory)
        if entry is not None and entry.limit_set:
            factor = resources.memory_factor if resources.memory_factor > 1 else 1
            if entry.used + memory > entry.limit * factor:
                return False
    if resources.cores:
        entry = ledger.entry(namespace, resources.cores)
        if entry is not None and entry.limit_set and entry.used + cores > entry.limit:
            return False
    return True
