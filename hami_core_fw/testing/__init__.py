"""Test support shipped with the core: pytest fixtures and the vendor conformance suite.

Vendor plugins subclass :class:`~hami_core_fw.testing.conformance.VendorConformance` in their own
tests. The pytest plugin (entry point ``pytest11``) provides the fixtures.
"""

from __future__ import annotations

from hami_core_fw.testing.conformance import VendorConformance

__all__ = ["VendorConformance"]
