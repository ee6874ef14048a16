"""WatchCache: LIST then WATCH, bookmarks, resume, 410 re-list with synthetic deletes, typed events.

The API server is replaced by a scripted list/watch source here (the real one is exercised by the
e2e tests); what is checked is the cache's own logic: which events it emits, in which order, and
which resourceVersion it resumes from.
"""

from __future__ import annotations

import asyncio
import collections
from collections.abc import AsyncIterator, Coroutine
from typing import Any, TypeVar

import pytest

from hami_core_fw import models
from hami_core_fw.k8s import api, cache

T = TypeVar("T")
GONE = object()
END = object()


def run(coro: Coroutine[Any, Any, T]) -> T:
    return asyncio.run(asyncio.wait_for(coro, timeout=10))


def node(name: str, rv: str, **annotations: str) -> dict[str, Any]:
    return {"metadata": {"name": name, "resourceVersion": rv, "annotations": annotations}}


class Script:
    """Serves LIST answers in order and WATCH events from a queue (GONE raises 410, END ends)."""

    def __init__(self, *lists: list[dict[str, Any]]) -> None:
        self.lists = collections.deque(lists)
        self.events: asyncio.Queue[object] = asyncio.Queue()
        self.watch_from: list[str] = []
        self.list_calls = 0

    async def list(
        self, path: str, *, label_selector: str = "", field_selector: str = ""
    ) -> api.Json:
        self.list_calls += 1
        items = self.lists.popleft()
        rv = max((int(i["metadata"]["resourceVersion"]) for i in items), default=0)
        return {"metadata": {"resourceVersion": str(rv)}, "items": items}

    async def watch(
        self,
        path: str,
        *,
        resource_version: str,
        label_selector: str = "",
        field_selector: str = "",
        timeout_s: int = 300,
    ) -> AsyncIterator[api.Json]:
        self.watch_from.append(resource_version)
        while True:
            item = await self.events.get()
            if item is GONE:
                raise api.Gone("too old", status=410)
            if item is END:
                return
            assert isinstance(item, dict)
            yield item


class Recorder:
    def __init__(self) -> None:
        self.events: list[cache.CacheEvent[models.NodeView]] = []
        self.changed = asyncio.Event()

    def __call__(self, event: cache.CacheEvent[models.NodeView]) -> None:
        self.events.append(event)
        self.changed.set()

    async def wait_for(self, n: int) -> None:
        while len(self.events) < n:
            self.changed.clear()
            await self.changed.wait()

    def summary(self) -> list[tuple[str, str, bool]]:
        return [(e.kind.value, e.key, e.synthetic) for e in self.events]


def test_list_then_watch_emits_typed_events_in_order() -> None:
    async def main() -> None:
        script = Script([node("a", "1"), node("b", "2")])
        rec = Recorder()
        nodes = cache.node_cache(script, handler=rec)
        task = asyncio.create_task(nodes.run())
        await nodes.synced.wait()
        assert rec.summary() == [("ADDED", "a", False), ("ADDED", "b", False)]
        assert isinstance(rec.events[0].obj, models.NodeView)
        await script.events.put({"type": "MODIFIED", "object": node("a", "3", x="1")})
        await script.events.put({"type": "DELETED", "object": node("b", "4")})
        await script.events.put(
            {"type": "BOOKMARK", "object": {"metadata": {"resourceVersion": "5"}}}
        )
        await script.events.put({"type": "ADDED", "object": node("c", "6")})
        await rec.wait_for(5)
        assert rec.summary()[2:] == [
            ("MODIFIED", "a", False),
            ("DELETED", "b", False),
            ("ADDED", "c", False),
        ]
        assert rec.events[2].old is not None and rec.events[2].old.annotations == {}
        assert rec.events[2].obj.annotations == {"x": "1"}
        assert set(nodes.items()) == {"a", "c"}
        # a watch that ends is resumed from the last version seen
        await script.events.put(END)
        await script.events.put({"type": "MODIFIED", "object": node("c", "7", y="2")})
        await rec.wait_for(6)
        assert script.watch_from == ["2", "6"]
        # a bookmark alone moves the resume point
        await script.events.put(
            {"type": "BOOKMARK", "object": {"metadata": {"resourceVersion": "11"}}}
        )
        await script.events.put(END)
        await script.events.put({"type": "DELETED", "object": node("c", "12")})
        await rec.wait_for(7)
        assert script.watch_from == ["2", "6", "11"]
        assert script.list_calls == 1
        task.cancel()

    run(main())


def test_gone_relists_and_diffs_with_synthetic_deletes() -> None:
    async def main() -> None:
        script = Script(
            [node("a", "1"), node("b", "2"), node("c", "3")],
            # after 410: b vanished, a changed, c unchanged, d is new
            [node("a", "7"), node("c", "3"), node("d", "8")],
        )
        rec = Recorder()
        nodes = cache.node_cache(script, handler=rec)
        task = asyncio.create_task(nodes.run())
        await nodes.synced.wait()
        await script.events.put(GONE)
        await rec.wait_for(6)
        assert rec.summary()[3:] == [
            ("DELETED", "b", True),
            ("MODIFIED", "a", True),
            ("ADDED", "d", True),
        ]
        assert set(nodes.items()) == {"a", "c", "d"}
        assert nodes.list_count == 2
        # the new watch starts from the new list's version
        await script.events.put({"type": "ADDED", "object": node("e", "9")})
        await rec.wait_for(7)
        assert script.watch_from == ["3", "8"]
        task.cancel()

    run(main())


def test_a_failing_handler_or_converter_does_not_stop_the_stream(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async def main() -> None:
        script = Script([node("a", "1")])
        seen: list[str] = []

        def boom(event: cache.CacheEvent[models.NodeView]) -> None:
            raise RuntimeError("consumer bug")

        def convert(raw: api.Json) -> models.NodeView:
            if raw["metadata"]["name"] == "bad":
                raise ValueError("cannot narrow")
            return models.NodeView.from_manifest(raw)

        rec = Recorder()
        nodes: cache.WatchCache[models.NodeView] = cache.WatchCache(
            script, "/api/v1/nodes", convert=convert, key=cache.name_key, handler=boom
        )
        nodes.add_handler(lambda e: seen.append(e.key))
        nodes.add_handler(rec)
        task = asyncio.create_task(nodes.run())
        await nodes.synced.wait()
        await script.events.put({"type": "ADDED", "object": node("bad", "2")})
        await script.events.put({"type": "ADDED", "object": node("b", "3")})
        await rec.wait_for(2)
        assert seen == ["a", "b"]
        assert nodes.get("bad") is None
        task.cancel()

    run(main())
    assert "consumer bug" in caplog.text
    assert "cannot narrow" in caplog.text


def test_quota_view_reads_quantities() -> None:
    quota = cache.QuotaView.from_manifest(
        {
            "metadata": {"namespace": "ns", "name": "q"},
            "spec": {
                "hard": {"limits.hami.io/fake-gpumem": "20k", "limits.cpu": "500m", "x": "junk"}
            },
        }
    )
    assert quota.hard == {"limits.hami.io/fake-gpumem": 20000, "limits.cpu": 1}
    assert cache.quantity_int("1Gi") == 1 << 30
    assert cache.quantity_int("nonsense") is None
