"""Built-in ``hami_quota_check``: Kubernetes ResourceQuota ``limits.<resource>`` semantics."""

from __future__ import annotations

import hami_core_fw
from hami_core_fw import models, quota


@hami_core_fw.hookimpl(trylast=True)
def hami_quota_check(
    namespace: str,
    resources: models.ResourceNames,
    memory: int,
    cores: int,
    ledger: quota.QuotaLedger,
) -> bool | None:
    """Answer with :func:`hami_core_fw.quota.fits` (runs after any plugin that has an opinion)."""
    return quota.fits(ledger, namespace, resources, memory, cores)
