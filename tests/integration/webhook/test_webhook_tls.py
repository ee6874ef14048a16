"""The webhook over HTTPS on loopback: AdmissionReview round trips and certificate rotation.

Certificates come from ``trustme``; the server is the scheduler application
(:func:`hami_core_fw.scheduler.app.build_app`, which mounts ``/webhook``) on an aiohttp site whose
TLS context is a :class:`~hami_core_fw.webhook.server.ReloadingTLS`. Every answer's base64
JSONPatch is applied with ``jsonpatch`` to the pod that was sent, as the API server would.
"""

from __future__ import annotations

import asyncio
import base64
import copy
import json
import os
import ssl
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiohttp
import jsonpatch
import pytest
import trustme
from aiohttp import web

from hami_core_fw import config, errors, plugins
from hami_core_fw.scheduler import app
from hami_core_fw.webhook import server

pytestmark = pytest.mark.integration

GPU, MEM = "hami.io/fake-gpu", "hami.io/fake-gpumem"


def write_pair(ca: trustme.CA, directory: Path, unit: str) -> tuple[Path, Path]:
    """Issue a 127.0.0.1 certificate and put it in place atomically (as a secret volume does)."""
    cert = ca.issue_cert("127.0.0.1", "localhost", organization_unit_name=unit)
    cert_path, key_path = directory / "tls.crt", directory / "tls.key"
    for path, blob in (
        (cert_path, cert.cert_chain_pems[0].bytes()),
        (key_path, cert.private_key_pem.bytes()),
    ):
        tmp = path.with_suffix(".tmp")
        tmp.write_bytes(blob)
        os.replace(tmp, path)
    return cert_path, key_path


@asynccontextmanager
async def https_server(host: plugins.PluginHost, tls: server.ReloadingTLS) -> AsyncIterator[int]:
    settings = config.Settings()
    runner = web.AppRunner(app.build_app(settings, host))
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=tls.context)
    await site.start()
    try:
        yield site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    finally:
        await runner.cleanup()


async def peer_unit(port: int, context: ssl.SSLContext) -> str:
    """The organizational unit of the certificate a fresh connection is served."""
    _reader, writer = await asyncio.open_connection("127.0.0.1", port, ssl=context)
    try:
        cert = writer.get_extra_info("peercert")
        subject = dict(pair[0] for pair in cert["subject"])
        return str(subject["organizationalUnitName"])
    finally:
        writer.close()
        await writer.wait_closed()


async def post(port: int, context: ssl.SSLContext, body: bytes) -> tuple[int, Any]:
    connector = aiohttp.TCPConnector(ssl=context, force_close=True)
    async with (
        aiohttp.ClientSession(connector=connector) as session,
        session.post(
            f"https://127.0.0.1:{port}/webhook?timeout=10s",
            data=body,
            headers={"Content-Type": "application/json"},
        ) as response,
    ):
        text = await response.text()
        try:
            return response.status, json.loads(text)
        except ValueError:
            return response.status, text


def review(obj: dict[str, Any], version: str = "admission.k8s.io/v1") -> dict[str, Any]:
    return {
        "apiVersion": version,
        "kind": "AdmissionReview",
        "request": {
            "uid": "3f0e8d1c",
            "kind": {"group": "", "version": "v1", "kind": "Pod"},
            "resource": {"group": "", "version": "v1", "resource": "pods"},
            "namespace": "team-a",
            "operation": "CREATE",
            "object": obj,
        },
    }


def gpu_pod() -> dict[str, Any]:
    # generateName pods arrive without a name (k8s-protocols.md 3.1)
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"generateName": "job-", "labels": {"app": "x"}},
        "spec": {
            "initContainers": [{"name": "fetch", "image": "busybox"}],
            "containers": [
                {"name": "train", "image": "t", "resources": {"limits": {GPU: "2"}}},
                {"name": "infer", "image": "i", "resources": {"limits": {GPU: "1", MEM: "3k"}}},
            ],
        },
    }


def test_admission_round_trips_over_tls_and_the_patch_applies(
    plugin_host: plugins.PluginHost, tmp_path: Path
) -> None:
    ca = trustme.CA()
    cert, key = write_pair(ca, tmp_path, "first")
    tls = server.ReloadingTLS(cert, key)
    client = ssl.create_default_context()
    ca.configure_trust(client)

    async def main() -> None:
        async with https_server(plugin_host, tls) as port:
            for version in ("admission.k8s.io/v1", "admission.k8s.io/v1beta1"):
                original = gpu_pod()
                status, answer = await post(
                    port, client, json.dumps(review(original, version)).encode()
                )
                assert status == 200
                assert answer["apiVersion"] == version and answer["kind"] == "AdmissionReview"
                response = answer["response"]
                assert response["uid"] == "3f0e8d1c" and response["allowed"] is True
                assert response["patchType"] == "JSONPatch"
                ops = json.loads(base64.b64decode(response["patch"]))
                result = jsonpatch.apply_patch(copy.deepcopy(original), ops)
                assert result["spec"]["schedulerName"] == "hami-scheduler"
                train, infer = result["spec"]["containers"]
                assert train["resources"]["limits"] == {GPU: "2", "hami.io/fake-gpucores": "100"}
                assert infer["resources"]["limits"] == {GPU: "1", MEM: "3k"}
                assert result["spec"]["initContainers"] == original["spec"]["initContainers"]
            # a forged allocation is rejected, the answer still well-formed
            forged = gpu_pod()
            forged["metadata"]["annotations"] = {
                "hami.io/vgpu-devices-allocated": "GPU-0,NVIDIA,1,1:;"
            }
            status, answer = await post(port, client, json.dumps(review(forged)).encode())
            assert status == 200 and answer["response"]["allowed"] is False
            assert answer["response"]["status"]["code"] == 403
            # bad bodies: 400 with a message, and the server keeps serving
            status, text = await post(port, client, b'{"apiVersion": "admission.k8s.io/v1", "kind"')
            assert status == 400 and "not JSON" in text
            status, text = await post(
                port, client, json.dumps({"kind": "AdmissionReview"}).encode()
            )
            assert status == 400 and "apiVersion None is not supported" in text
            status, text = await post(port, client, b"{" + b" " * (2 << 20) + b"}")
            assert status == 413
            status, answer = await post(port, client, json.dumps(review(gpu_pod())).encode())
            assert status == 200 and answer["response"]["allowed"] is True

    asyncio.run(asyncio.wait_for(main(), timeout=30))


def test_certificate_rotation_while_serving(
    plugin_host: plugins.PluginHost, tmp_path: Path
) -> None:
    old_ca, new_ca = trustme.CA(), trustme.CA()
    cert, key = write_pair(old_ca, tmp_path, "first")
    tls = server.ReloadingTLS(cert, key)
    client = ssl.create_default_context()
    old_ca.configure_trust(client)
    new_ca.configure_trust(client)
    only_new = ssl.create_default_context()
    new_ca.configure_trust(only_new)

    async def main() -> None:
        async with https_server(plugin_host, tls) as port:
            assert await peer_unit(port, client) == "first"
            with pytest.raises(ssl.SSLCertVerificationError):
                await peer_unit(port, only_new)
            # the secret is rotated: a new certificate from a new CA, same listener
            write_pair(new_ca, tmp_path, "second")
            assert await peer_unit(port, client) == "second"
            assert tls.reloads == 1
            status, answer = await post(port, only_new, json.dumps(review(gpu_pod())).encode())
            assert status == 200 and answer["response"]["allowed"] is True
            # a half-written pair (key of another certificate) keeps the working one
            other = new_ca.issue_cert("127.0.0.1", organization_unit_name="third")
            (tmp_path / "tls.key").write_bytes(other.private_key_pem.bytes())
            assert await peer_unit(port, client) == "second"
            assert tls.reloads == 1

    asyncio.run(asyncio.wait_for(main(), timeout=30))


def test_unloadable_files_fail_at_start_with_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(errors.ConfigError, match="cannot load certificate"):
        server.ReloadingTLS(tmp_path / "missing.crt", tmp_path / "missing.key")
