"""A small asynchronous JSON client for the Kubernetes API, on the official ``kubernetes.aio``.

Everything that talks to the API server goes through :class:`Kube`. It speaks plain JSON (dicts),
not the generated pydantic models: our code narrows objects into :mod:`hami_core_fw.models` views
itself, watch events stay cheap, and the ``pods/binding`` reply (a ``Status``, which the typed
client fails to parse after the bind succeeded, k8s-protocols.md 4.1) is handled correctly.

API errors become project errors: 409 -> :class:`Conflict`, 404 -> :class:`NotFound`, 410 ->
:class:`Gone`, 429/5xx and connection failures -> :class:`Unavailable` (retryable), anything else
-> :class:`ApiError`.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator, Mapping
from typing import Any, Final, cast

import aiohttp
from kubernetes.aio import client as aio_client
from kubernetes.aio import config as aio_config
from kubernetes.aio.client.exceptions import ApiException

from hami_core_fw import errors

logger = logging.getLogger(__name__)

Json = dict[str, Any]

MERGE_PATCH: Final = "application/merge-patch+json"
JSON_PATCH: Final = "application/json-patch+json"


class ApiError(errors.HamiError):
    """The API server refused a request.

    :param status: HTTP status code (0 when no answer arrived)
    :param reason: the ``Status.reason`` (``Conflict``, ``NotFound``, ...) when there is one
    """

    def __init__(self, message: str, *, status: int, reason: str = "") -> None:
        self.status = status
        self.reason = reason
        super().__init__(message)


class Conflict(ApiError):
    """409: a precondition (resourceVersion, uid) failed or the object changed concurrently."""


class NotFound(ApiError):
    """404: the object does not exist."""


class Gone(ApiError):
    """410: a watch's resourceVersion is too old; re-list."""


class Unavailable(ApiError):
    """429, 5xx or no answer: worth retrying."""


def _error(method: str, path: str, status: int, body: bytes | str | None) -> ApiError:
    text = body.decode("utf-8", "replace") if isinstance(body, bytes) else (body or "")
    message, reason = text.strip()[:500], ""
    try:
        doc = json.loads(text)
    except ValueError:
        doc = None
    if isinstance(doc, dict):
        message = str(doc.get("message") or message)
        reason = str(doc.get("reason") or "")
    full = f"{method} {path}: {status} {reason or 'error'}: {message}"
    cls: type[ApiError] = ApiError
    if status == 409:
        cls = Conflict
    elif status == 404:
        cls = NotFound
    elif status == 410:
        cls = Gone
    elif status == 0 or status == 429 or status >= 500:
        cls = Unavailable
    return cls(full, status=status, reason=reason)


class Kube:
    """JSON access to one API server through a ``kubernetes.aio`` ApiClient."""

    def __init__(self, api: aio_client.ApiClient, *, timeout_s: float = 30.0) -> None:
        self._api = api
        self._timeout = timeout_s

    @classmethod
    async def connect(cls, kubeconfig: str | None = None, *, timeout_s: float = 30.0) -> Kube:
        """Connect with a kubeconfig file, or the in-cluster service account when None."""
        configuration = aio_client.Configuration()
        if kubeconfig:
            await aio_config.load_kube_config(
                config_file=kubeconfig, client_configuration=configuration
            )
        else:
            aio_config.load_incluster_config(client_configuration=configuration)
        return cls(aio_client.ApiClient(configuration=configuration), timeout_s=timeout_s)

    async def close(self) -> None:
        """Close the HTTP session."""
        await self._api.close()

    async def __aenter__(self) -> Kube:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # ------------------------------------------------------------------ raw requests

    async def _send(
        self,
        method: str,
        path: str,
        *,
        query: Mapping[str, str | int | bool] | None = None,
        body: object = None,
        content_type: str = "application/json",
        timeout_s: float | None = None,
    ) -> Any:  # noqa: ANN401 - the aio client's response object is untyped
        params = [
            (k, str(v).lower() if isinstance(v, bool) else v) for k, v in (query or {}).items()
        ]
        method_, url, headers, data, _ = await self._api.param_serialize(
            method=method,
            resource_path=path,
            query_params=params or None,
            header_params={"Content-Type": content_type, "Accept": "application/json"},
            body=body,
            auth_settings=["BearerToken"],
        )
        try:
            return await self._api.call_api(
                method_,
                url,
                header_params=headers,
                body=data,
                _request_timeout=timeout_s or self._timeout,
            )
        except ApiException as err:
            raise _error(method, path, int(err.status or 0), err.body) from err
        except (aiohttp.ClientError, TimeoutError, OSError) as err:
            raise Unavailable(f"{method} {path}: {type(err).__name__}: {err}", status=0) from err

    async def request(
        self,
        method: str,
        path: str,
        *,
        query: Mapping[str, str | int | bool] | None = None,
        body: object = None,
        content_type: str = "application/json",
    ) -> Json:
        """Send one request and return the decoded JSON answer.

        :raises ApiError: (or a subclass) when the answer is not 2xx
        """
        response = await self._send(method, path, query=query, body=body, content_type=content_type)
        data = await response.read()
        if not 200 <= response.status < 300:
            raise _error(method, path, response.status, data)
        return cast("Json", json.loads(data)) if data else {}

    # ------------------------------------------------------------------ objects

    async def get_node(self, name: str) -> Json:
        """GET a node."""
        return await self.request("GET", f"/api/v1/nodes/{name}")

    async def get_pod(self, namespace: str, name: str) -> Json:
        """GET a pod."""
        return await self.request("GET", f"/api/v1/namespaces/{namespace}/pods/{name}")

    async def list(
        self,
        path: str,
        *,
        label_selector: str = "",
        field_selector: str = "",
    ) -> Json:
        """LIST a collection (``/api/v1/pods``, ``/api/v1/nodes``, ...)."""
        query: dict[str, str | int | bool] = {}
        if label_selector:
            query["labelSelector"] = label_selector
        if field_selector:
            query["fieldSelector"] = field_selector
        return await self.request("GET", path, query=query)

    async def patch_metadata(
        self,
        path: str,
        *,
        annotations: Mapping[str, str | None] | None = None,
        labels: Mapping[str, str | None] | None = None,
        resource_version: str | None = None,
    ) -> Json:
        """Merge-patch annotations/labels (``None`` deletes a key) of the object at ``path``.

        With ``resource_version`` the write fails with :class:`Conflict` when the object changed
        since it was read (optimistic concurrency, k8s-protocols.md 4.2).
        """
        meta: dict[str, object] = {}
        if annotations is not None:
            meta["annotations"] = dict(annotations)
        if labels is not None:
            meta["labels"] = dict(labels)
        if resource_version is not None:
            meta["resourceVersion"] = resource_version
        return await self.request("PATCH", path, body={"metadata": meta}, content_type=MERGE_PATCH)

    async def patch_node_annotations(
        self,
        name: str,
        annotations: Mapping[str, str | None],
        *,
        resource_version: str | None = None,
    ) -> Json:
        """Merge-patch a node's annotations."""
        return await self.patch_metadata(
            f"/api/v1/nodes/{name}", annotations=annotations, resource_version=resource_version
        )

    async def patch_pod_annotations(
        self,
        namespace: str,
        name: str,
        annotations: Mapping[str, str | None],
        *,
        labels: Mapping[str, str | None] | None = None,
        resource_version: str | None = None,
    ) -> Json:
        """Merge-patch a pod's annotations (and labels)."""
        return await self.patch_metadata(
            f"/api/v1/namespaces/{namespace}/pods/{name}",
            annotations=annotations,
            labels=labels,
            resource_version=resource_version,
        )

    async def bind_pod(
        self,
        namespace: str,
        name: str,
        uid: str,
        node: str,
        *,
        annotations: Mapping[str, str] | None = None,
    ) -> None:
        """Create ``pods/binding`` with the pod UID; the annotations merge into the pod atomically.

        A 409 because the pod is already on ``node`` counts as success (a retried bind).

        :raises Conflict: the UID differs (pod re-created) or the pod is on another node
        """
        binding = {
            "apiVersion": "v1",
            "kind": "Binding",
            "metadata": {
                "name": name,
                "namespace": namespace,
                "uid": uid,
                "annotations": dict(annotations or {}),
            },
            "target": {"apiVersion": "v1", "kind": "Node", "name": node},
        }
        path = f"/api/v1/namespaces/{namespace}/pods/{name}/binding"
        try:
            await self.request("POST", path, body=binding)
        except Conflict:
            pod = await self.get_pod(namespace, name)
            meta, spec = pod.get("metadata", {}), pod.get("spec", {})
            if spec.get("nodeName") == node and (not uid or meta.get("uid") == uid):
                return
            raise

    async def create_event(self, namespace: str, event: Json) -> None:
        """Create a core/v1 Event (best effort: failures are logged, never raised)."""
        try:
            await self.request("POST", f"/api/v1/namespaces/{namespace}/events", body=event)
        except ApiError as err:
            logger.warning("could not record event %s: %s", event.get("reason"), err)

    async def watch(
        self,
        path: str,
        *,
        resource_version: str,
        label_selector: str = "",
        field_selector: str = "",
        timeout_s: int = 300,
    ) -> AsyncIterator[Json]:
        """Yield watch events (``{"type": ..., "object": ...}``) from ``resource_version``.

        Ends when the server closes the stream (after ``timeout_s``).

        :raises Gone: the resource version is too old (410), in the response or in an ERROR event
        """
        query: dict[str, str | int | bool] = {
            "watch": True,
            "resourceVersion": resource_version,
            "allowWatchBookmarks": True,
            "timeoutSeconds": timeout_s,
        }
        if label_selector:
            query["labelSelector"] = label_selector
        if field_selector:
            query["fieldSelector"] = field_selector
        response = await self._send("GET", path, query=query, timeout_s=timeout_s + 30)
        try:
            if not 200 <= response.status < 300:
                raise _error("WATCH", path, response.status, await response.read())
            content: aiohttp.StreamReader = response.response.content
            while True:
                line = await content.readline()
                if not line:
                    return
                if not line.strip():
                    continue
                event = json.loads(line)
                if event.get("type") == "ERROR":
                    obj = event.get("object") or {}
                    raise _error("WATCH", path, int(obj.get("code") or 500), json.dumps(obj))
                yield event
        finally:
            response.response.release()


async def sleep_backoff(attempt: int, *, base: float = 0.1, cap: float = 5.0) -> None:
    """Sleep ``base * 2**attempt`` seconds, at most ``cap`` (retry helper)."""
    await asyncio.sleep(min(cap, base * (2**attempt)))
