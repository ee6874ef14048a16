"""The webhook decision (hami_core_fw.webhook.admission): pure AdmissionReview in, answer out."""

from __future__ import annotations

import base64
import copy
import json
from typing import Any

import jsonpatch
import pytest

from hami_core_fw import plugins, quota
from hami_core_fw.webhook import admission

GPU, MEM, CORES = "hami.io/fake-gpu", "hami.io/fake-gpumem", "hami.io/fake-gpucores"


def pod(*containers: dict[str, Any], **spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "p", "namespace": "ns"},
        "spec": {"containers": list(containers), **spec},
    }


def container(name: str = "main", **limits: str) -> dict[str, Any]:
    c: dict[str, Any] = {"name": name, "image": "x"}
    if limits:
        c["resources"] = {"limits": dict(limits)}
    return c


def review_doc(obj: object, version: str = admission.API_V1, **request: Any) -> dict[str, Any]:
    return {
        "apiVersion": version,
        "kind": "AdmissionReview",
        "request": {
            "uid": "req-1",
            "kind": {"group": "", "version": "v1", "kind": "Pod"},
            "resource": {"group": "", "version": "v1", "resource": "pods"},
            "namespace": "ns",
            "operation": "CREATE",
            "object": obj,
            **request,
        },
    }


def answer(
    host: plugins.PluginHost, obj: object, ledger: quota.QuotaLedger | None = None, **kw: Any
) -> dict[str, Any]:
    doc = review_doc(obj, **kw)
    out = admission.review(doc, host, ledger or quota.QuotaLedger())
    assert out["response"]["uid"] == "req-1"
    response: dict[str, Any] = out["response"]
    return response


def patched(original: dict[str, Any], response: dict[str, Any]) -> dict[str, Any]:
    assert response["allowed"] is True and response["patchType"] == "JSONPatch"
    ops = json.loads(base64.b64decode(response["patch"]))
    result: dict[str, Any] = jsonpatch.apply_patch(copy.deepcopy(original), ops)
    return result


def test_bare_count_becomes_exclusive_and_gets_our_scheduler(
    plugin_host: plugins.PluginHost,
) -> None:
    original = pod(container(**{GPU: "1"}))
    out = patched(original, answer(plugin_host, original))
    assert out["spec"]["schedulerName"] == "hami-scheduler"
    assert out["spec"]["containers"][0]["resources"]["limits"] == {GPU: "1", CORES: "100"}


def test_shared_request_keeps_cores_open_and_takes_over_default_scheduler(
    plugin_host: plugins.PluginHost,
) -> None:
    original = pod(container(**{GPU: "1", MEM: "3k"}), schedulerName="default-scheduler")
    out = patched(original, answer(plugin_host, original))
    assert out["spec"]["schedulerName"] == "hami-scheduler"
    assert out["spec"]["containers"][0]["resources"]["limits"] == {GPU: "1", MEM: "3k"}


def test_pods_without_our_resources_pass_untouched(plugin_host: plugins.PluginHost) -> None:
    response = answer(plugin_host, pod(container(), container("side")))
    assert response == {"allowed": True, "uid": "req-1"}


def test_other_scheduler_is_left_alone(plugin_host: plugins.PluginHost) -> None:
    response = answer(plugin_host, pod(container(**{GPU: "1"}), schedulerName="volcano"))
    assert response == {"allowed": True, "uid": "req-1"}


def test_v1beta1_is_answered_in_v1beta1(plugin_host: plugins.PluginHost) -> None:
    doc = review_doc(pod(container(**{GPU: "1"})), admission.API_V1BETA1)
    out = admission.review(doc, plugin_host, quota.QuotaLedger())
    assert out["apiVersion"] == admission.API_V1BETA1 and out["kind"] == "AdmissionReview"
    assert out["response"]["allowed"] is True


@pytest.mark.parametrize(
    "key",
    [
        "hami.io/vgpu-devices-allocated",
        "hami.io/vgpu-node",
        "hami.io/bind-phase",
        "hami.io/fake-devices-allocated",
        "hami.io/fake-devices-to-allocate",
    ],
)
def test_forged_allocation_annotations_are_denied(
    plugin_host: plugins.PluginHost, key: str
) -> None:
    obj = pod(container())
    obj["metadata"]["annotations"] = {key: "x"}
    response = answer(plugin_host, obj)
    assert response["allowed"] is False
    assert response["status"]["code"] == 403
    assert key in response["status"]["message"]


def test_privileged_container_with_shared_devices_is_denied_by_name(
    plugin_host: plugins.PluginHost,
) -> None:
    gpu = container("trainer", **{GPU: "1"})
    gpu["securityContext"] = {"privileged": True}
    plain = container("sidecar")
    plain["securityContext"] = {"privileged": True}
    response = answer(plugin_host, pod(plain, gpu))
    assert response["allowed"] is False
    assert "container 'trainer' is privileged" in response["status"]["message"]
    # privileged without shared devices is not our business
    assert answer(plugin_host, pod(plain))["allowed"] is True


@pytest.mark.parametrize(
    ("limits", "needle"),
    [
        ({GPU: "1", MEM: "1Gi"}, "binary unit suffix"),
        ({GPU: "1", CORES: "150"}, "outside the allowed range 0-100"),
        ({GPU: "1", MEM: "-1"}, "negative"),
    ],
)
def test_input_errors_are_400_naming_container_resource_and_value(
    plugin_host: plugins.PluginHost, limits: dict[str, str], needle: str
) -> None:
    response = answer(plugin_host, pod(container("c1", **limits)))
    assert response["allowed"] is False
    assert response["status"]["code"] == 400
    message = response["status"]["message"]
    assert needle in message and "'c1'" in message and "ns/p" in message


def test_node_name_and_empty_pods_are_denied(plugin_host: plugins.PluginHost) -> None:
    response = answer(plugin_host, pod(container(**{GPU: "1"}), nodeName="n1"))
    assert response["allowed"] is False and "spec.nodeName" in response["status"]["message"]
    response = answer(plugin_host, pod())
    assert response["allowed"] is False and "no containers" in response["status"]["message"]
    response = answer(plugin_host, {"spec": "nonsense"})
    assert response["status"]["code"] == 400


def test_quota_pre_check_denies_what_the_namespace_cannot_hold(
    plugin_host: plugins.PluginHost,
) -> None:
    ledger = quota.QuotaLedger()
    ledger.set_limits("ns", {f"limits.{MEM}": 4000}, frozenset({MEM, CORES}))
    ok = answer(plugin_host, pod(container(**{GPU: "1", MEM: "4000"})), ledger)
    assert ok["allowed"] is True
    ledger.add_usage("ns", MEM, 1000)
    denied = answer(plugin_host, pod(container(**{GPU: "1", MEM: "4000"})), ledger)
    assert denied["allowed"] is False
    assert "exceeding resource quota" in denied["status"]["message"]
    # init containers count by their peak, app containers by their sum
    init = container("init", **{GPU: "1", MEM: "3000"})
    spec_pod = pod(container(**{GPU: "1", MEM: "3000"}), initContainers=[init])
    assert answer(plugin_host, spec_pod, ledger)["allowed"] is True


def test_non_pod_and_non_create_requests_pass(plugin_host: plugins.PluginHost) -> None:
    assert answer(plugin_host, pod(container(**{GPU: "1"})), operation="UPDATE") == {
        "allowed": True,
        "uid": "req-1",
    }
    response = answer(
        plugin_host,
        {"kind": "Service"},
        kind={"group": "", "version": "v1", "kind": "Service"},
        resource={"group": "", "version": "v1", "resource": "services"},
    )
    assert response == {"allowed": True, "uid": "req-1"}


@pytest.mark.parametrize(
    ("doc", "needle"),
    [
        ([], "expected an AdmissionReview object"),
        ({"apiVersion": "admission.k8s.io/v2", "kind": "AdmissionReview"}, "not supported"),
        ({"apiVersion": "admission.k8s.io/v1", "kind": "Pod"}, "is not 'AdmissionReview'"),
        ({"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview"}, "no request with a uid"),
    ],
)
def test_unanswerable_documents_raise_bad_review(
    plugin_host: plugins.PluginHost, doc: object, needle: str
) -> None:
    with pytest.raises(admission.BadReview, match=needle):
        admission.review(doc, plugin_host, quota.QuotaLedger())
