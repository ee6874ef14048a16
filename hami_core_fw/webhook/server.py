"""HTTPS serving for the webhook (and the extender beside it): ``POST /webhook`` and TLS reload.

:class:`ReloadingTLS` gives aiohttp one ``SSLContext`` for the listener whose SNI callback - run on
every TLS handshake, with or without SNI - checks whether the certificate or key file changed
(size, mtime, inode: a Kubernetes secret volume swaps a symlink) and, when both load, serves new
connections with a fresh context holding the new pair. Existing connections keep theirs; the
listener is never closed. A half-written pair that does not load is logged and the previous
certificate stays in use until the files are consistent again (k8s-protocols.md 3.3, 7.3).

:func:`add_routes` mounts ``POST /webhook`` on an aiohttp application; the decision itself is
:func:`hami_core_fw.webhook.admission.review`.
"""

from __future__ import annotations

import json
import logging
import os
import ssl
from collections.abc import Callable
from pathlib import Path

from aiohttp import web

from hami_core_fw import errors, plugins, quota
from hami_core_fw.webhook import admission

logger = logging.getLogger(__name__)


def _signature(path: Path) -> tuple[int, int, int]:
    st = os.stat(path)
    return (st.st_mtime_ns, st.st_size, st.st_ino)


def _load(cert_file: Path, key_file: Path) -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(cert_file, key_file)
    return context


class ReloadingTLS:
    """A server ``SSLContext`` that picks up a rotated certificate and key on the next handshake.

    :raises ConfigError: the files cannot be loaded at start-up
    """

    def __init__(self, cert_file: str | Path, key_file: str | Path) -> None:
        self.cert_file = Path(cert_file)
        self.key_file = Path(key_file)
        try:
            self._signatures = (_signature(self.cert_file), _signature(self.key_file))
            self._current = _load(self.cert_file, self.key_file)
        except (OSError, ssl.SSLError) as err:
            problem = (
                f"cannot load certificate {str(self.cert_file)!r} / key {str(self.key_file)!r}"
            )
            raise errors.ConfigError([f"{problem}: {err}"], source="TLS") from err
        #: how many times a new pair was loaded
        self.reloads = 0
        self._listener = _load(self.cert_file, self.key_file)
        self._listener.sni_callback = self._on_handshake

    @property
    def context(self) -> ssl.SSLContext:
        """The context to give the listener (its SNI callback swaps in the current pair)."""
        return self._listener

    def maybe_reload(self) -> bool:
        """Reload the pair if either file changed and both load; returns whether it did."""
        try:
            signatures = (_signature(self.cert_file), _signature(self.key_file))
        except OSError as err:
            logger.warning("TLS files not readable (%s); keeping the current certificate", err)
            return False
        if signatures == self._signatures:
            return False
        try:
            fresh = _load(self.cert_file, self.key_file)
        except (OSError, ssl.SSLError) as err:
            logger.warning("TLS files changed but do not load (%s); keeping the current pair", err)
            return False
        self._current = fresh
        self._signatures = signatures
        self.reloads += 1
        logger.info("TLS certificate reloaded from %s", self.cert_file)
        return True

    def _on_handshake(
        self, conn: ssl.SSLObject | ssl.SSLSocket, server_name: str | None, ctx: ssl.SSLContext
    ) -> None:
        self.maybe_reload()
        conn.context = self._current


def add_routes(
    app: web.Application,
    host: plugins.PluginHost,
    ledger: Callable[[], quota.QuotaLedger],
    policy: admission.AdmissionPolicy,
) -> None:
    """Mount ``POST /webhook``."""

    async def webhook(request: web.Request) -> web.Response:
        try:
            body = await request.read()
        except web.HTTPRequestEntityTooLarge:
            return web.Response(status=413, text="AdmissionReview larger than the 1 MiB limit\n")
        try:
            doc = json.loads(body)
        except ValueError as err:
            return web.Response(status=400, text=f"the body is not JSON: {err}\n")
        try:
            answer = admission.review(doc, host, ledger(), policy)
        except admission.BadReview as err:
            return web.Response(status=400, text=f"{err}\n")
        response = answer["response"]
        if not response.get("allowed"):
            logger.info("admission denied: %s", response.get("status", {}).get("message"))
        return web.json_response(answer)

    app.router.add_post("/webhook", webhook)
