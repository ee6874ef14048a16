"""Fixtures of the scheduling-core tests."""

from __future__ import annotations

import pytest
from _sched_helpers import make_host

from hami_core_fw import plugins


@pytest.fixture
def host() -> plugins.PluginHost:
    """Built-in plugins only (fake vendor + quota)."""
    return make_host()
