"""Meta tests: every hookspec is documented, typed and tested; the public API is tidy."""

from __future__ import annotations

import inspect
import re
from pathlib import Path

import pytest

import hami_core_fw
from hami_core_fw import hookspecs

SPECS = [
    (name, fn)
    for name, fn in inspect.getmembers(hookspecs, inspect.isfunction)
    if name.startswith("hami_")
]
TESTS = Path(__file__).parents[1]


def test_there_are_hookspecs() -> None:
    assert {n for n, _ in SPECS} >= {
        "hami_register_vendors",
        "hami_admission_mutate",
        "hami_node_filter",
        "hami_node_score",
        "hami_quota_check",
        "hami_monitor_collect",
    }


@pytest.mark.parametrize(("name", "fn"), SPECS, ids=[n for n, _ in SPECS])
def test_hookspec_is_documented_and_typed(name: str, fn: object) -> None:
    doc = inspect.getdoc(fn) or ""
    assert "Called by:" in doc, f"{name}: docstring lacks 'Called by:'"
    assert ".. versionadded::" in doc, f"{name}: docstring lacks '.. versionadded::'"
    sig = inspect.signature(fn)  # type: ignore[arg-type]
    for param in sig.parameters.values():
        assert param.annotation is not inspect.Parameter.empty, f"{name}({param.name}) untyped"
        assert f":param {param.name}:" in doc, f"{name}: ':param {param.name}:' missing"
    assert sig.return_annotation is not inspect.Signature.empty, f"{name}: return type missing"


@pytest.mark.parametrize(("name", "fn"), SPECS, ids=[n for n, _ in SPECS])
def test_hookspec_has_a_test(name: str, fn: object) -> None:
    pattern = re.compile(rf"def test_hook_{name}\b")
    assert any(pattern.search(p.read_text()) for p in TESTS.rglob("test_*.py")), (
        f"no test named test_hook_{name}"
    )


def test_public_api_is_sorted_and_resolvable() -> None:
    assert hami_core_fw.__all__ == sorted(hami_core_fw.__all__)
    for name in hami_core_fw.__all__:
        assert hasattr(hami_core_fw, name), name
