"""Proves the control-plane harness against the real etcd, kube-apiserver and kube-scheduler.

These tests pin the Kubernetes behaviour the project relies on (k8s-protocols.md 1, 3, 4): the
version the binaries report, scheduling onto a fake GPU node, ``pods/binding`` through the
``kubernetes`` 37 client with annotations and UID precondition, optimistic concurrency on node
annotations (the node lock), and kube-scheduler really calling an HTTPS extender and the API
server really calling an HTTPS mutating webhook registered by the harness.
"""

from __future__ import annotations

import base64
import json
import os
import ssl
import threading
import uuid
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from harness import (
    CLUSTER_DIR,
    Binaries,
    ControlPlane,
    ExtenderConfig,
    Json,
    bind_pod,
    cache_dir,
    register_mutating_webhook,
    request_json,
    wait_until,
)
from kubernetes import client as k8s
from kubernetes import config

pytestmark = [pytest.mark.controlplane]

FIXTURE_DIR = Path(__file__).resolve().parents[1] / "fixtures" / "extender"
RECORDED_FILTER_REQUEST = FIXTURE_DIR / "filter_request_recorded.json"
GPU = "nvidia.com/gpu"
HAMI_RESOURCES = [GPU, "nvidia.com/gpumem", "nvidia.com/gpucores"]


def pod_manifest(
    name: str,
    *,
    scheduler_name: str,
    node: str | None = None,
    limits: dict[str, str] | None = None,
) -> Json:
    """A bare pod; ``node`` pins it with a hostname nodeSelector (other tests' nodes exist)."""
    spec: Json = {
        "schedulerName": scheduler_name,
        "containers": [
            {
                "name": "main",
                "image": "registry.k8s.io/pause:3.10",
                "resources": {"limits": limits or {}},
            }
        ],
    }
    if node is not None:
        spec["nodeSelector"] = {"kubernetes.io/hostname": node}
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name}, "spec": spec}


def create_pod(api: k8s.ApiClient, namespace: str, manifest: Json) -> Json:
    return request_json(api, "POST", f"/api/v1/namespaces/{namespace}/pods", manifest)


def read_pod(api: k8s.ApiClient, namespace: str, name: str) -> Json:
    return request_json(api, "GET", f"/api/v1/namespaces/{namespace}/pods/{name}")


def node_of(pod: Json) -> object:
    spec = pod["spec"]
    assert isinstance(spec, dict)
    return spec.get("nodeName")


def annotations_of(obj: Json) -> dict[str, str]:
    metadata = obj["metadata"]
    assert isinstance(metadata, dict)
    return dict(metadata.get("annotations") or {})


def wait_bound(
    plane: ControlPlane, api: k8s.ApiClient, namespace: str, name: str, timeout: float = 30.0
) -> Json:
    """Wait until the pod has spec.nodeName (fails early if a control-plane process died)."""
    wait_until(
        lambda: node_of(read_pod(api, namespace, name)) is not None,
        timeout=timeout,
        what=f"pod {namespace}/{name} to be bound",
        processes=plane.processes,
        interval=0.1,
    )
    return read_pod(api, namespace, name)


# ---------------------------------------------------------------------------------------------
# A recording HTTPS server (test double)


Handler = Callable[[str, Json], Json]


class RecordingHTTPSServer:
    """TEST DOUBLE, used only to prove the harness wiring: an HTTPS JSON server that records bodies.

    It stands in for our extender or webhook so that these tests can show that kube-scheduler and
    kube-apiserver, configured by the harness, really reach a TLS endpoint signed by the test CA.
    It is not the project's extender or webhook and implements none of their logic: ``handler``
    maps (path, request JSON) to the answer JSON. Every request is kept in ``requests``.
    """

    def __init__(self, context: ssl.SSLContext, handler: Handler) -> None:
        self.requests: list[tuple[str, Json]] = []
        self._handler = handler
        self._lock = threading.Lock()
        outer = self

        class _Request(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length", "0"))
                body = json.loads(self.rfile.read(length))
                path = self.path.split("?", 1)[0]
                with outer._lock:
                    outer.requests.append((path, body))
                try:
                    answer = outer._handler(path, body)
                    status = 200
                except Exception as exc:  # the double reports its own bugs as HTTP 500
                    answer, status = {"Error": f"test double failed: {exc!r}"}, 500
                data = json.dumps(answer).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, format: str, *args: object) -> None:
                pass  # keep pytest output clean; requests are recorded instead

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), _Request)
        self._server.daemon_threads = True
        self._server.socket = context.wrap_socket(self._server.socket, server_side=True)
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self._server.server_address[1]}"

    def bodies(self, path: str) -> list[Json]:
        with self._lock:
            return [body for p, body in self.requests if p == path]

    def __enter__(self) -> RecordingHTTPSServer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(5)


@pytest.fixture
def https_double(
    control_plane: ControlPlane, tmp_path: Path
) -> Iterator[Callable[[Handler], RecordingHTTPSServer]]:
    """Start RecordingHTTPSServer test doubles with a loopback certificate of the run's CA."""
    servers: list[RecordingHTTPSServer] = []

    def start(handler: Handler) -> RecordingHTTPSServer:
        cert = control_plane.ca.issue_loopback_server("test-double")
        context = control_plane.ca.server_ssl_context(cert, tmp_path)
        server = RecordingHTTPSServer(context, handler).__enter__()
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.__exit__(None, None, None)


# ---------------------------------------------------------------------------------------------
# Tests


def test_version_is_the_pinned_release(control_plane: ControlPlane, api: k8s.ApiClient) -> None:
    version = request_json(api, "GET", "/version")
    assert version["gitVersion"] == control_plane.binaries.k8s_version == "v1.36.3"
    assert version["major"] == "1"
    assert version["minor"] == "36"


def test_wrapper_go_mod_pins_every_staging_module(control_plane_binaries: Binaries) -> None:
    """Drift check of the generated k8s/go.mod against the pinned k8s.io/kubernetes go.mod."""
    version = control_plane_binaries.k8s_version
    mod_cache = Path(os.environ.get("HAMI_GOMODCACHE") or cache_dir() / "go" / "mod")
    upstream = mod_cache / "cache" / "download" / "k8s.io" / "kubernetes" / "@v" / f"{version}.mod"
    staging = set()
    for line in upstream.read_text().splitlines():
        parts = line.removeprefix("replace").split()
        if len(parts) == 3 and parts[1] == "=>" and parts[2].startswith("./staging/"):
            staging.add(parts[0])
    pinned = {}
    for line in (CLUSTER_DIR / "k8s" / "go.mod").read_text().splitlines():
        parts = line.split()
        if len(parts) == 4 and parts[1] == "=>":
            assert parts[0] == parts[2]
            pinned[parts[0]] = parts[3]
    assert len(staging) >= 33
    assert pinned == dict.fromkeys(staging, "v0." + version.removeprefix("v1."))


def test_kubeconfig_file_reaches_the_api_server(control_plane: ControlPlane) -> None:
    with config.new_client_from_config(config_file=str(control_plane.kubeconfig)) as client:
        assert request_json(client, "GET", "/version")["gitVersion"] == "v1.36.3"


def test_fake_gpu_node_has_capacity_and_allocatable(fake_node, api: k8s.ApiClient) -> None:
    node = fake_node(
        extended_resources={GPU: 4}, annotations={"hami.io/node-handshake": "Requesting_x"}
    )
    stored = request_json(api, "GET", f"/api/v1/nodes/{node['metadata']['name']}")
    for field in ("capacity", "allocatable"):
        resources = stored["status"][field]
        assert resources[GPU] == "4"
        assert {"cpu", "memory", "pods"} <= set(resources)
    assert annotations_of(stored)["hami.io/node-handshake"] == "Requesting_x"
    # TaintNodesByCondition is disabled: nothing will taint the node not-ready
    assert not stored["spec"].get("taints")


def test_default_scheduler_binds_a_bare_pod(
    control_plane: ControlPlane, start_kube_scheduler, fake_node, namespace, api
) -> None:
    node = fake_node(extended_resources={GPU: 4})["metadata"]["name"]
    start_kube_scheduler(scheduler_name="default-scheduler")
    create_pod(
        api,
        namespace,
        pod_manifest("bare", scheduler_name="default-scheduler", node=node, limits={GPU: "1"}),
    )
    pod = wait_bound(control_plane, api, namespace, "bare")
    assert node_of(pod) == node
    conditions = {c["type"]: c["status"] for c in pod["status"]["conditions"]}
    assert conditions["PodScheduled"] == "True"


def test_pod_binding_through_python_client_merges_annotations(
    fake_node, namespace, api: k8s.ApiClient
) -> None:
    node = fake_node(extended_resources={GPU: 4})["metadata"]["name"]
    pod = create_pod(api, namespace, pod_manifest("p", scheduler_name="nobody"))
    uid = pod["metadata"]["uid"]
    decision = {
        "hami.io/vgpu-node": node,
        "hami.io/vgpu-time": "1700000000",
        "hami.io/vgpu-devices-allocated": "GPU-0fc3c2a4,NVIDIA,3000,30:;",
        "hami.io/bind-phase": "allocating",
    }

    status = bind_pod(api, namespace, "p", node, uid=uid, annotations=decision)

    # the answer is a Status, not a Binding (k8s-protocols.md 4.1)
    assert status["kind"] == "Status"
    assert status["status"] == "Success"
    stored = read_pod(api, namespace, "p")
    assert node_of(stored) == node
    assert annotations_of(stored).items() >= decision.items()
    conditions = {c["type"]: c["status"] for c in stored["status"]["conditions"]}
    assert conditions["PodScheduled"] == "True"


def test_typed_binding_call_fails_after_the_bind_succeeded(
    fake_node, namespace, api: k8s.ApiClient
) -> None:
    """Pins the client caveat that makes ``_preload_content=False`` necessary.

    If this starts failing, kubernetes-client/python fixed the response type and the workaround
    in ``harness.bind_pod`` (and in the project's binder) may go.
    """
    node = fake_node()["metadata"]["name"]
    pod = create_pod(api, namespace, pod_manifest("typed", scheduler_name="nobody"))
    body = k8s.V1Binding(
        metadata=k8s.V1ObjectMeta(name="typed", uid=pod["metadata"]["uid"]),
        target=k8s.V1ObjectReference(api_version="v1", kind="Node", name=node),
    )
    # pydantic's ValidationError (a ValueError): the Status reply has no "target"
    with pytest.raises(ValueError, match="target"):
        k8s.CoreV1Api(api).create_namespaced_pod_binding("typed", namespace, body)
    assert node_of(read_pod(api, namespace, "typed")) == node


def test_binding_with_a_wrong_uid_is_a_conflict(fake_node, namespace, api: k8s.ApiClient) -> None:
    node = fake_node()["metadata"]["name"]
    create_pod(api, namespace, pod_manifest("p", scheduler_name="nobody"))

    with pytest.raises(k8s.ApiException) as raised:
        bind_pod(api, namespace, "p", node, uid=str(uuid.uuid4()))

    assert raised.value.status == 409
    assert "uid" in (raised.value.body or "").lower()
    assert node_of(read_pod(api, namespace, "p")) is None


def test_binding_an_already_bound_pod_is_a_conflict(
    fake_node, namespace, api: k8s.ApiClient
) -> None:
    first, second = (fake_node()["metadata"]["name"] for _ in range(2))
    uid = create_pod(api, namespace, pod_manifest("p", scheduler_name="nobody"))["metadata"]["uid"]
    bind_pod(api, namespace, "p", first, uid=uid)

    with pytest.raises(k8s.ApiException) as raised:
        bind_pod(api, namespace, "p", second, uid=uid)

    assert raised.value.status == 409
    assert "already assigned" in (raised.value.body or "")
    assert node_of(read_pod(api, namespace, "p")) == first


def test_stale_resource_version_on_node_patch_is_a_conflict(fake_node, api: k8s.ApiClient) -> None:
    """The node lock: a merge patch carrying metadata.resourceVersion fails when it is stale."""
    name = fake_node()["metadata"]["name"]
    path = f"/api/v1/nodes/{name}"
    read_rv = request_json(api, "GET", path)["metadata"]["resourceVersion"]
    merge = "application/merge-patch+json"

    def lock(value: str, resource_version: str) -> Json:
        patch = {
            "metadata": {
                "resourceVersion": resource_version,
                "annotations": {"hami.io/mutex.lock": value},
            }
        }
        return request_json(api, "PATCH", path, patch, content_type=merge)

    locked = lock("first", read_rv)
    assert annotations_of(locked)["hami.io/mutex.lock"] == "first"

    with pytest.raises(k8s.ApiException) as raised:
        lock("second", read_rv)  # the same, now stale, resourceVersion

    assert raised.value.status == 409
    assert annotations_of(request_json(api, "GET", path))["hami.io/mutex.lock"] == "first"
    # the typed client call with the same content type behaves the same
    with pytest.raises(k8s.ApiException) as typed:
        k8s.CoreV1Api(api).patch_node(
            name,
            {"metadata": {"resourceVersion": read_rv, "annotations": {"x": "y"}}},
            _content_type=merge,
        )
    assert typed.value.status == 409


def test_kube_scheduler_calls_the_https_extender(
    control_plane: ControlPlane,
    start_kube_scheduler,
    https_double,
    fake_node,
    namespace,
    api: k8s.ApiClient,
) -> None:
    node = fake_node(extended_resources={GPU: 4})["metadata"]["name"]
    with control_plane.api_client() as binder_api:

        def extender(path: str, body: Json) -> Json:
            # test double (see RecordingHTTPSServer): keep our node, bind as HAMi's extender would
            if path == "/filter":
                names = body.get("NodeNames") or []
                assert isinstance(names, list)
                return {"NodeNames": [n for n in names if n == node], "Error": ""}
            if path == "/bind":
                try:
                    bind_pod(
                        binder_api,
                        str(body["PodNamespace"]),
                        str(body["PodName"]),
                        str(body["Node"]),
                        uid=str(body["PodUID"]),
                        annotations={"hami.io/vgpu-node": str(body["Node"])},
                    )
                except k8s.ApiException as exc:
                    return {"Error": f"binding failed: {exc.status} {exc.body}"}
                return {"Error": ""}
            return {"Error": f"unexpected path {path}"}

        server = https_double(extender)
        start_kube_scheduler(
            scheduler_name="hami-scheduler",
            extender=ExtenderConfig(
                url_prefix=server.url,
                ca_pem=control_plane.ca.cert_pem,
                managed_resources=HAMI_RESOURCES,
            ),
        )
        # the node advertises no gpumem/gpucores: only ignoredByScheduler lets the pod through
        limits = {GPU: "1", "nvidia.com/gpumem": "3000", "nvidia.com/gpucores": "30"}
        created = create_pod(
            api,
            namespace,
            pod_manifest("gpu-pod", scheduler_name="hami-scheduler", node=node, limits=limits),
        )
        pod = wait_bound(control_plane, api, namespace, "gpu-pod")

    assert node_of(pod) == node
    assert annotations_of(pod)["hami.io/vgpu-node"] == node
    filters = server.bodies("/filter")
    binds = server.bodies("/bind")
    assert filters, server.requests
    assert binds == [
        {
            "PodName": "gpu-pod",
            "PodNamespace": namespace,
            "PodUID": created["metadata"]["uid"],
            "Node": node,
        }
    ]
    recorded = filters[0]
    # nodeCacheCapable: node names only, no Node objects (k8s-protocols.md 1.2)
    assert recorded["Nodes"] is None
    assert recorded["NodeNames"] == [node]
    assert recorded["Pod"]["metadata"]["uid"] == created["metadata"]["uid"]
    # the API server canonicalises quantities before the extender sees them: 3000 -> "3k"
    # (the extender must parse Kubernetes quantities, not integers)
    assert recorded["Pod"]["spec"]["containers"][0]["resources"]["limits"] == {
        **limits,
        "nvidia.com/gpumem": "3k",
    }
    _check_or_record_fixture(recorded)


def _check_or_record_fixture(recorded: Json) -> None:
    """Keep the committed fixture in the shape kube-scheduler really sends.

    With ``HAMI_RECORD_FIXTURES=1`` (or when the file is missing) the request is written; otherwise
    the committed file must have the same key structure as this run's request.
    """
    if os.environ.get("HAMI_RECORD_FIXTURES") == "1" or not RECORDED_FILTER_REQUEST.exists():
        RECORDED_FILTER_REQUEST.parent.mkdir(parents=True, exist_ok=True)
        RECORDED_FILTER_REQUEST.write_text(json.dumps(recorded, indent=2, sort_keys=True) + "\n")
    committed = json.loads(RECORDED_FILTER_REQUEST.read_text())
    # the pod status depends on earlier scheduling attempts; everything else is fixed
    for request in (committed, recorded):
        request["Pod"].pop("status", None)
    assert _shape(committed) == _shape(recorded)


def _shape(value: object) -> object:
    if isinstance(value, dict):
        return {key: _shape(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_shape(item) for item in value[:1]]
    return type(value).__name__


def test_api_server_calls_the_registered_https_webhook(
    control_plane: ControlPlane, https_double, namespace, api: k8s.ApiClient
) -> None:
    def webhook(path: str, review: Json) -> Json:
        # test double (see RecordingHTTPSServer): annotate every pod of this test's namespace
        request = review["request"]
        assert isinstance(request, dict)
        patch: list[Json] = []
        if request.get("namespace") == namespace:
            patch = [
                {
                    "op": "add",
                    "path": "/metadata/annotations",
                    "value": {"hami.io/test-webhook": "called"},
                }
            ]
        return {
            "apiVersion": review["apiVersion"],
            "kind": "AdmissionReview",
            "response": {
                "uid": request["uid"],
                "allowed": True,
                "patchType": "JSONPatch",
                "patch": base64.b64encode(json.dumps(patch).encode()).decode(),
            },
        }

    server = https_double(webhook)
    name = f"hami-test-{uuid.uuid4().hex[:8]}"
    register_mutating_webhook(
        api,
        url=f"{server.url}/webhook",
        ca_pem=control_plane.ca.cert_pem,
        configuration_name=name,
        # only this test's namespace, so other tests' pods never depend on the double
        extra={"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": namespace}}},
    )
    try:
        # the API server loads the configuration asynchronously; probe with dry-run creates
        probe = pod_manifest("probe", scheduler_name="nobody")
        pods = f"/api/v1/namespaces/{namespace}/pods"
        wait_until(
            lambda: (
                "hami.io/test-webhook"
                in annotations_of(request_json(api, "POST", f"{pods}?dryRun=All", probe))
            ),
            timeout=30,
            what="the webhook configuration to take effect",
        )
        pod = create_pod(api, namespace, pod_manifest("mutated", scheduler_name="nobody"))
        assert annotations_of(pod)["hami.io/test-webhook"] == "called"
        reviews = server.bodies("/webhook")
        assert reviews[-1]["apiVersion"] == "admission.k8s.io/v1"
        assert reviews[-1]["request"]["operation"] == "CREATE"
        assert reviews[-1]["request"]["object"]["metadata"]["name"] == "mutated"
    finally:
        request_json(
            api,
            "DELETE",
            f"/apis/admissionregistration.k8s.io/v1/mutatingwebhookconfigurations/{name}",
        )
