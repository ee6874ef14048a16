"""One test per hookspec (tests/meta checks that each has one): each hook reaches its caller."""

from __future__ import annotations

from collections.abc import MutableMapping

import pytest
from prometheus_client.core import GaugeMetricFamily

import hami_core_fw
from hami_core_fw import errors, models, plugins, quota

POD = models.PodView(namespace="team-a", name="p")
NODE = models.NodeView(name="n1")
RES = models.ResourceNames(
    count="hami.io/fake-gpu", memory="hami.io/fake-gpumem", cores="hami.io/fake-gpucores"
)


def host_with(plugin: object) -> plugins.PluginHost:
    return plugins.make_plugin_manager(autoload=False, env={}, extra_plugins=[("t", plugin)])


def test_hook_hami_register_vendors(plugin_host: plugins.PluginHost) -> None:
    seen = []

    class P:
        @hami_core_fw.hookimpl
        def hami_register_vendors(self, register, config):  # type: ignore[no-untyped-def]
            seen.append(config.fake.resource_count_name)

    host_with(P())
    assert seen == ["hami.io/fake-gpu"]
    assert "fake" in plugin_host.vendors


def test_hook_hami_admission_mutate() -> None:
    class P:
        @hami_core_fw.hookimpl
        def hami_admission_mutate(self, pod: MutableMapping[str, object], namespace: str) -> None:
            if namespace == "forbidden":
                raise errors.AdmissionDenied("namespace 'forbidden' may not use GPUs", code=403)
            pod.setdefault("metadata", {})["labels"] = {"team": namespace}  # type: ignore[index]

    host = host_with(P())
    pod: dict[str, object] = {}
    host.admission_mutate(pod=pod, namespace="team-a")
    assert pod == {"metadata": {"labels": {"team": "team-a"}}}
    with pytest.raises(errors.AdmissionDenied, match="forbidden"):
        host.admission_mutate(pod={}, namespace="forbidden")


def test_hook_hami_node_filter() -> None:
    class P:
        @hami_core_fw.hookimpl
        def hami_node_filter(self, pod: models.PodView, node: models.NodeView) -> str | None:
            return "node is draining" if node.name == "n1" else None

    host = host_with(P())
    assert host.node_filter(pod=POD, node=NODE) == ["node is draining"]
    assert host.node_filter(pod=POD, node=models.NodeView(name="n2")) == []


def test_hook_hami_node_score() -> None:
    class P:
        @hami_core_fw.hookimpl
        def hami_node_score(
            self, pod: models.PodView, node: models.NodeView, score: float
        ) -> float:
            return 2.5

    assert host_with(P()).node_score(pod=POD, node=NODE, score=10.0) == 12.5


def test_hook_hami_quota_check(plugin_host: plugins.PluginHost) -> None:
    ledger = quota.QuotaLedger()
    ledger.set_limits(
        "team-a", {"limits.hami.io/fake-gpumem": 4000}, frozenset({"hami.io/fake-gpumem"})
    )
    ledger.add_usage("team-a", "hami.io/fake-gpumem", 3000)
    # the built-in answers with ResourceQuota semantics (equality fits)
    assert plugin_host.quota_check(
        namespace="team-a", resources=RES, memory=1000, cores=0, ledger=ledger
    )
    assert not plugin_host.quota_check(
        namespace="team-a", resources=RES, memory=1001, cores=0, ledger=ledger
    )

    class Generous:
        @hami_core_fw.hookimpl
        def hami_quota_check(self, namespace, resources, memory, cores, ledger):  # type: ignore[no-untyped-def]
            return True if namespace == "team-a" else None

    host = host_with(Generous())
    # a plugin's answer wins over the built-in (firstresult, built-in runs last)
    assert host.quota_check(namespace="team-a", resources=RES, memory=10**6, cores=0, ledger=ledger)


def test_hook_hami_monitor_collect() -> None:
    class P:
        @hami_core_fw.hookimpl
        def hami_monitor_collect(self):  # type: ignore[no-untyped-def]
            return [GaugeMetricFamily("hami_test_extra", "an extra metric", value=7)]

    (family,) = host_with(P()).monitor_collect()
    assert family.name == "hami_test_extra"
    assert family.samples[0].value == 7
