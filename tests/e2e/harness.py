"""A real Kubernetes control plane for tests: etcd, kube-apiserver and kube-scheduler processes.

What this module is for: tests that talk to Kubernetes must run against the real API server and
scheduler, not a mock (k8s-protocols.md section 6). The binaries are built from the Go module proxy
by ``tests/e2e/cluster/build.sh`` into a cache outside the repository; this module finds them (or
runs the script), generates the certificates with ``cryptography``, starts every binary as a child
process in its own process group on loopback ports, waits until it is ready, and tears it all down
again. It also holds the small API helpers the tests share: fake GPU nodes, the ``pods/binding``
call of the ``kubernetes`` 37 client, and the registration of a MutatingWebhookConfiguration.

It deliberately does not import ``hami_core_fw``: the harness must work while the project package
is being written, and it is what that package is tested against.
"""

from __future__ import annotations

import atexit
import base64
import contextlib
import datetime
import ipaddress
import json
import os
import shutil
import signal
import socket
import ssl
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import yaml
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from kubernetes import client as k8s

CLUSTER_DIR = Path(__file__).resolve().parent / "cluster"
BUILD_SCRIPT = CLUSTER_DIR / "build.sh"

#: Resources every fake node advertises besides the extended ones: without ``pods`` in
#: allocatable the in-tree fit check rejects every pod on the node (k8s-protocols.md 6.5).
#: A JSON object as the API server sends it. ``Any`` values because tests index deep into it.
Json = dict[str, Any]

DEFAULT_NODE_RESOURCES: Mapping[str, str] = {"cpu": "32", "memory": "256Gi", "pods": "110"}


class HarnessError(RuntimeError):
    """A control-plane process could not be built, started or reached."""


# ---------------------------------------------------------------------------------------------
# Binaries


@dataclass(frozen=True)
class Binaries:
    """Paths of the built control-plane binaries and the versions they were built at."""

    k8s_version: str
    etcd_version: str
    etcd: Path
    kube_apiserver: Path
    kube_scheduler: Path

    def missing(self) -> list[Path]:
        """Return the binaries that are not present (or not executable)."""
        paths = (self.etcd, self.kube_apiserver, self.kube_scheduler)
        return [p for p in paths if not os.access(p, os.X_OK)]


def cache_dir() -> Path:
    """Return the binary cache directory (``$HAMI_CACHE_DIR``, default ~/.cache/hami-core-fw)."""
    configured = os.environ.get("HAMI_CACHE_DIR")
    return Path(configured) if configured else Path.home() / ".cache" / "hami-core-fw"


def pinned_versions() -> dict[str, str]:
    """Read ``K8S_VERSION`` and ``ETCD_VERSION`` from cluster/env.sh, the one place they live."""
    versions: dict[str, str] = {}
    for line in (CLUSTER_DIR / "env.sh").read_text().splitlines():
        key, sep, value = line.partition("=")
        if sep and key in {"K8S_VERSION", "ETCD_VERSION"}:
            versions[key] = value.strip()
    if set(versions) != {"K8S_VERSION", "ETCD_VERSION"}:
        raise HarnessError(f"{CLUSTER_DIR / 'env.sh'} lacks K8S_VERSION or ETCD_VERSION")
    return versions


def binaries() -> Binaries:
    """Return where build.sh puts the binaries of the pinned versions (they may not exist yet)."""
    versions = pinned_versions()
    k8s_dir = cache_dir() / f"k8s-{versions['K8S_VERSION']}"
    return Binaries(
        k8s_version=versions["K8S_VERSION"],
        etcd_version=versions["ETCD_VERSION"],
        etcd=cache_dir() / f"etcd-{versions['ETCD_VERSION']}" / "etcd",
        kube_apiserver=k8s_dir / "kube-apiserver",
        kube_scheduler=k8s_dir / "kube-scheduler",
    )


def ensure_binaries(*, log: Path | None = None, timeout: float = 3600.0) -> Binaries:
    """Run build.sh (idempotent, 0.05 s when cached) and return the binaries.

    A cold build takes about 4 minutes on two cores (3.5 GB of Go caches); the script's output
    goes to ``log`` (or is inherited) so that a long first run shows progress. Raises
    HarnessError with the log tail when the build fails.
    """
    with contextlib.ExitStack() as stack:
        out: IO[bytes] | None = None
        if log is not None:
            out = stack.enter_context(log.open("ab"))
        result = subprocess.run(
            ["bash", str(BUILD_SCRIPT)],
            stdout=out,
            stderr=subprocess.STDOUT if out is not None else None,
            timeout=timeout,
            check=False,
        )
    if result.returncode != 0:
        tail = tail_text(log) if log is not None else "(output above)"
        raise HarnessError(f"{BUILD_SCRIPT} failed with exit code {result.returncode}:\n{tail}")
    found = binaries()
    if missing := found.missing():
        raise HarnessError(f"{BUILD_SCRIPT} succeeded but did not produce {missing}")
    return found


# ---------------------------------------------------------------------------------------------
# Certificates


@dataclass(frozen=True)
class CertKey:
    """A PEM certificate and its PEM private key."""

    cert_pem: bytes
    key_pem: bytes

    def write(self, directory: Path, name: str) -> tuple[Path, Path]:
        """Write ``<name>.crt`` and ``<name>.key`` (mode 0600) and return both paths."""
        cert = directory / f"{name}.crt"
        key = directory / f"{name}.key"
        cert.write_bytes(self.cert_pem)
        key.touch(mode=0o600)
        key.write_bytes(self.key_pem)
        return cert, key


def _new_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


class CertificateAuthority:
    """An in-memory test CA (ECDSA P-256) that issues serving and client certificates.

    One CA signs everything in a test run: the API server's serving certificate, the admin client
    certificate, and the serving certificates of the webhook and extender under test, so one
    ``caBundle`` / ``caData`` is trusted everywhere.
    """

    def __init__(self, common_name: str = "hami-core-fw test CA") -> None:
        self._key = _new_key()
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
        now = datetime.datetime.now(datetime.UTC)
        self._cert = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(self._key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(hours=1))
            .not_valid_after(now + datetime.timedelta(days=7))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    key_cert_sign=True,
                    crl_sign=True,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(
                x509.SubjectKeyIdentifier.from_public_key(self._key.public_key()), critical=False
            )
            .sign(self._key, hashes.SHA256())
        )

    @property
    def cert_pem(self) -> bytes:
        """The CA certificate in PEM form (what goes into caBundle, caData, kubeconfigs)."""
        return self._cert.public_bytes(serialization.Encoding.PEM)

    @property
    def cert_b64(self) -> str:
        """The CA certificate PEM, base64-encoded, as Kubernetes ``[]byte`` fields want it."""
        return base64.b64encode(self.cert_pem).decode()

    def issue(
        self,
        common_name: str,
        *,
        organizations: Sequence[str] = (),
        dns_names: Sequence[str] = (),
        ip_addresses: Sequence[str] = (),
        server: bool = False,
        client: bool = False,
    ) -> CertKey:
        """Issue a leaf certificate; Go clients need the SANs, they ignore the Common Name."""
        key = _new_key()
        attributes = [x509.NameAttribute(NameOID.COMMON_NAME, common_name)]
        attributes += [x509.NameAttribute(NameOID.ORGANIZATION_NAME, o) for o in organizations]
        usages = [ExtendedKeyUsageOID.SERVER_AUTH] if server else []
        usages += [ExtendedKeyUsageOID.CLIENT_AUTH] if client else []
        now = datetime.datetime.now(datetime.UTC)
        builder = (
            x509.CertificateBuilder()
            .subject_name(x509.Name(attributes))
            .issuer_name(self._cert.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(hours=1))
            .not_valid_after(now + datetime.timedelta(days=7))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(self._key.public_key()),
                critical=False,
            )
        )
        if usages:
            builder = builder.add_extension(x509.ExtendedKeyUsage(usages), critical=False)
        sans: list[x509.GeneralName] = [x509.DNSName(d) for d in dns_names]
        sans += [x509.IPAddress(ipaddress.ip_address(i)) for i in ip_addresses]
        if sans:
            builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
        cert = builder.sign(self._key, hashes.SHA256())
        return CertKey(cert.public_bytes(serialization.Encoding.PEM), _key_pem(key))

    def issue_loopback_server(self, common_name: str = "127.0.0.1") -> CertKey:
        """Issue a serving certificate for ``https://127.0.0.1`` / ``https://localhost``."""
        return self.issue(
            common_name, dns_names=["localhost"], ip_addresses=["127.0.0.1"], server=True
        )

    def server_ssl_context(self, cert: CertKey, directory: Path) -> ssl.SSLContext:
        """Return a TLS >= 1.2 server context serving ``cert`` (files written to ``directory``)."""
        cert_path, key_path = cert.write(directory, f"serving-{time.monotonic_ns()}")
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        context.load_cert_chain(cert_path, key_path)
        return context

    def client_ssl_context(self) -> ssl.SSLContext:
        """Return a client context that trusts this CA (and only it)."""
        context = ssl.create_default_context(cadata=self.cert_pem.decode())
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        return context


def service_account_key_pair() -> tuple[bytes, bytes]:
    """Return (private PEM, public PEM) of a service-account signing key (ES256)."""
    key = _new_key()
    public = key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return _key_pem(key), public


# ---------------------------------------------------------------------------------------------
# Processes


def free_port() -> int:
    """Return a TCP port on 127.0.0.1 that was free a moment ago (the kernel picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def tail_text(path: Path, lines: int = 40) -> str:
    """Return the last ``lines`` lines of a text file, or a note when it does not exist."""
    try:
        text = path.read_text(errors="replace")
    except FileNotFoundError:
        return f"({path} does not exist)"
    return "\n".join(text.splitlines()[-lines:])


class ManagedProcess:
    """A child process in its own process group, with its output in a log file.

    The process group lets teardown kill the binary and anything it spawned without touching any
    other process; ``stop`` is also registered with ``atexit`` so an aborted test run does not
    leave servers behind.
    """

    def __init__(self, name: str, args: Sequence[str], log_path: Path) -> None:
        self.name = name
        self.args = list(args)
        self.log_path = log_path
        self._popen: subprocess.Popen[bytes] | None = None
        self._stopped = False

    @property
    def pid(self) -> int | None:
        """The process id (also the process-group id) once started."""
        return self._popen.pid if self._popen is not None else None

    def start(self) -> None:
        """Start the process; its stdout and stderr go to ``log_path``."""
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("ab") as log:
            log.write(f"$ {' '.join(self.args)}\n".encode())
            log.flush()
            self._popen = subprocess.Popen(
                self.args,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        atexit.register(self.stop)

    def exit_code(self) -> int | None:
        """Return the exit code if the process has exited, else None."""
        return self._popen.poll() if self._popen is not None else None

    def check_running(self) -> None:
        """Raise HarnessError with the log tail if the process exited without ``stop()``."""
        code = self.exit_code()
        if code is not None and not self._stopped:
            raise HarnessError(
                f"{self.name} exited with code {code}; last lines of {self.log_path}:\n"
                f"{tail_text(self.log_path)}"
            )

    def stop(self, timeout: float = 10.0) -> None:
        """Terminate the process group (SIGTERM, then SIGKILL after ``timeout``); idempotent."""
        popen = self._popen
        if popen is None:
            return
        self._stopped = True
        if popen.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(popen.pid, signal.SIGTERM)
            try:
                popen.wait(timeout)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(popen.pid, signal.SIGKILL)
                popen.wait(timeout)
        # children left in the group (none expected) are killed too
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(popen.pid, signal.SIGKILL)
        atexit.unregister(self.stop)

    def log_tail(self, lines: int = 40) -> str:
        """Return the last lines of the process log."""
        return tail_text(self.log_path, lines)


def wait_until(
    condition: Callable[[], bool],
    *,
    timeout: float,
    what: str,
    processes: Iterable[ManagedProcess] = (),
    interval: float = 0.05,
) -> None:
    """Poll ``condition`` until it is true; fail early if one of ``processes`` has exited."""
    deadline = time.monotonic() + timeout
    watched = list(processes)
    while True:
        for process in watched:
            process.check_running()
        if condition():
            return
        if time.monotonic() > deadline:
            details = "\n".join(f"--- {p.name} ({p.log_path}):\n{p.log_tail()}" for p in watched)
            raise HarnessError(f"timed out after {timeout:.0f}s waiting for {what}\n{details}")
        time.sleep(interval)


def https_get_ok(url: str, context: ssl.SSLContext, timeout: float = 2.0) -> bool:
    """Return True if GET ``url`` answers 200; connection errors and other codes are False."""
    try:
        with urllib.request.urlopen(url, context=context, timeout=timeout) as response:  # noqa: S310 - the URL is a loopback https URL built by this module
            return bool(response.status == 200)
    except (OSError, urllib.error.URLError):
        return False


# ---------------------------------------------------------------------------------------------
# etcd + kube-apiserver


@dataclass
class ControlPlane:
    """etcd and kube-apiserver on loopback, with an admin kubeconfig and ``kubernetes`` clients.

    Create with ``ControlPlane.start(...)``; ``stop()`` kills the processes and removes the work
    directory (certificates, etcd data) but keeps the logs in ``log_dir``. Schedulers started with
    ``start_scheduler`` are tracked here so their logs are reported with the control plane's.
    """

    binaries: Binaries
    workdir: Path
    log_dir: Path
    ca: CertificateAuthority
    api_port: int
    etcd_port: int
    admin: CertKey
    kubeconfig: Path = field(init=False)
    processes: list[ManagedProcess] = field(default_factory=list)
    startup_seconds: float = 0.0

    def __post_init__(self) -> None:
        self.kubeconfig = self.workdir / "admin.kubeconfig"

    @property
    def api_url(self) -> str:
        """The API server URL, ``https://127.0.0.1:<port>``."""
        return f"https://127.0.0.1:{self.api_port}"

    @property
    def ca_path(self) -> Path:
        """Path of the CA certificate (PEM) that signs every certificate of the run."""
        return self.workdir / "ca.crt"

    @classmethod
    def start(
        cls,
        bins: Binaries,
        *,
        log_dir: Path,
        workdir: Path | None = None,
        timeout: float = 120.0,
    ) -> ControlPlane:
        """Generate certificates, start etcd and kube-apiserver, wait for ``/readyz``.

        On any failure the processes started so far are stopped before the error propagates.
        """
        begin = time.monotonic()
        workdir = workdir or Path(tempfile.mkdtemp(prefix="hami-cp-"))
        ca = CertificateAuthority()
        plane = cls(
            binaries=bins,
            workdir=workdir,
            log_dir=log_dir,
            ca=ca,
            api_port=free_port(),
            etcd_port=free_port(),
            admin=ca.issue("admin", organizations=["system:masters"], client=True),
        )
        try:
            plane._start(timeout)
        except BaseException:
            plane.stop()
            raise
        plane.startup_seconds = time.monotonic() - begin
        return plane

    def _start(self, timeout: float) -> None:
        d = self.workdir
        self.ca_path.write_bytes(self.ca.cert_pem)
        serving = self.ca.issue(
            "kube-apiserver",
            dns_names=["localhost", "kubernetes", "kubernetes.default.svc"],
            ip_addresses=["127.0.0.1"],
            server=True,
        )
        serving_cert, serving_key = serving.write(d, "apiserver")
        self.admin.write(d, "admin")
        # front proxy (aggregation layer), as kubeadm sets it up: kube-scheduler's delegated
        # authentication reads the request-header CA from the API server and complains without it
        front_proxy_ca = CertificateAuthority("hami-core-fw test front-proxy CA")
        (d / "front-proxy-ca.crt").write_bytes(front_proxy_ca.cert_pem)
        proxy_cert, proxy_key = front_proxy_ca.issue("front-proxy-client", client=True).write(
            d, "front-proxy-client"
        )
        sa_private, sa_public = service_account_key_pair()
        (d / "sa.pub").write_bytes(sa_public)
        (d / "sa.key").touch(mode=0o600)
        (d / "sa.key").write_bytes(sa_private)
        self._write_kubeconfig()

        peer_port = free_port()
        etcd = ManagedProcess(
            "etcd",
            [
                str(self.binaries.etcd),
                "--name=t",
                f"--data-dir={d / 'etcd'}",
                f"--listen-client-urls=http://127.0.0.1:{self.etcd_port}",
                f"--advertise-client-urls=http://127.0.0.1:{self.etcd_port}",
                f"--listen-peer-urls=http://127.0.0.1:{peer_port}",
                f"--initial-advertise-peer-urls=http://127.0.0.1:{peer_port}",
                f"--initial-cluster=t=http://127.0.0.1:{peer_port}",
                "--unsafe-no-fsync",
                "--log-level=warn",
            ],
            self.log_dir / "etcd.log",
        )
        self.processes.append(etcd)
        etcd.start()
        wait_until(
            lambda: _http_health(f"http://127.0.0.1:{self.etcd_port}/health"),
            timeout=timeout,
            what="etcd /health",
            processes=[etcd],
        )

        apiserver = ManagedProcess(
            "kube-apiserver",
            [
                str(self.binaries.kube_apiserver),
                f"--etcd-servers=http://127.0.0.1:{self.etcd_port}",
                "--bind-address=127.0.0.1",
                "--advertise-address=127.0.0.1",
                f"--secure-port={self.api_port}",
                f"--tls-cert-file={serving_cert}",
                f"--tls-private-key-file={serving_key}",
                f"--client-ca-file={self.ca_path}",
                "--authorization-mode=RBAC",
                f"--service-account-issuer=https://127.0.0.1:{self.api_port}",
                f"--service-account-key-file={d / 'sa.pub'}",
                f"--service-account-signing-key-file={d / 'sa.key'}",
                "--service-cluster-ip-range=10.0.0.0/24",
                "--allow-privileged=true",
                "--endpoint-reconciler-type=none",
                "--disable-admission-plugins=ServiceAccount,TaintNodesByCondition",
                f"--cert-dir={d / 'apiserver-certs'}",
                f"--requestheader-client-ca-file={d / 'front-proxy-ca.crt'}",
                "--requestheader-allowed-names=front-proxy-client",
                "--requestheader-username-headers=X-Remote-User",
                "--requestheader-group-headers=X-Remote-Group",
                "--requestheader-extra-headers-prefix=X-Remote-Extra-",
                f"--proxy-client-cert-file={proxy_cert}",
                f"--proxy-client-key-file={proxy_key}",
            ],
            self.log_dir / "kube-apiserver.log",
        )
        self.processes.append(apiserver)
        apiserver.start()
        context = self.ca.client_ssl_context()
        wait_until(
            lambda: https_get_ok(f"{self.api_url}/readyz", context),
            timeout=timeout,
            what="kube-apiserver /readyz",
            processes=[etcd, apiserver],
        )
        # the "default" namespace is created by a post-start controller shortly after readiness
        core = k8s.CoreV1Api(self.api_client())
        wait_until(
            lambda: _exists(lambda: core.read_namespace("default")),
            timeout=timeout,
            what="namespace default",
            processes=[etcd, apiserver],
        )

    def _write_kubeconfig(self) -> None:
        config = {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [
                {
                    "name": "t",
                    "cluster": {
                        "server": self.api_url,
                        "certificate-authority-data": self.ca.cert_b64,
                    },
                }
            ],
            "users": [
                {
                    "name": "admin",
                    "user": {
                        "client-certificate-data": base64.b64encode(self.admin.cert_pem).decode(),
                        "client-key-data": base64.b64encode(self.admin.key_pem).decode(),
                    },
                }
            ],
            "contexts": [{"name": "t", "context": {"cluster": "t", "user": "admin"}}],
            "current-context": "t",
        }
        self.kubeconfig.touch(mode=0o600)
        self.kubeconfig.write_text(yaml.safe_dump(config, sort_keys=False))

    def api_client(self) -> k8s.ApiClient:
        """Return a new ``kubernetes`` ApiClient authenticated as admin (system:masters).

        Each call builds its own Configuration, so tests never touch the client's global default.
        The caller closes it (``with plane.api_client() as api: ...``) or lets it be collected.
        """
        configuration = k8s.Configuration(host=self.api_url)
        configuration.ssl_ca_cert = str(self.ca_path)
        configuration.cert_file = str(self.workdir / "admin.crt")
        configuration.key_file = str(self.workdir / "admin.key")
        return k8s.ApiClient(configuration)

    def start_scheduler(
        self,
        config: Mapping[str, object],
        *,
        name: str = "kube-scheduler",
        timeout: float = 60.0,
    ) -> KubeScheduler:
        """Start kube-scheduler with a KubeSchedulerConfiguration (see ``scheduler_config``)."""
        scheduler = KubeScheduler(self, config, name=name)
        self.processes.append(scheduler.process)
        scheduler.start(timeout)
        return scheduler

    def log_tails(self, lines: int = 40) -> str:
        """Return the last lines of every process log, one block per process."""
        return "\n".join(
            f"--- {p.name} (pid {p.pid}, exit {p.exit_code()}, {p.log_path}):\n{p.log_tail(lines)}"
            for p in self.processes
        )

    def stop(self) -> None:
        """Kill the processes (newest first) and remove the work directory; keep the logs."""
        for process in reversed(self.processes):
            process.stop()
        shutil.rmtree(self.workdir, ignore_errors=True)


def _http_health(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2.0) as response:  # noqa: S310 - loopback http URL built by this module
            body = json.loads(response.read())
    except (OSError, urllib.error.URLError, ValueError):
        return False
    return isinstance(body, dict) and body.get("health") == "true"


def _exists(read: Callable[[], object]) -> bool:
    try:
        read()
    except k8s.ApiException as exc:
        if exc.status == 404:
            return False
        raise
    return True


# ---------------------------------------------------------------------------------------------
# kube-scheduler


@dataclass(frozen=True)
class ExtenderConfig:
    """What a KubeSchedulerConfiguration ``extenders[]`` entry needs (k8s-protocols.md 1.3).

    Defaults are those of HAMi's chart: filter + bind, nodeCacheCapable, httpTimeout 30s, HTTPS;
    every resource in ``managed_resources`` is ``ignoredByScheduler``.
    """

    url_prefix: str
    ca_pem: bytes | None
    managed_resources: Sequence[str]
    filter_verb: str = "filter"
    bind_verb: str | None = "bind"
    prioritize_verb: str | None = None
    weight: int = 1
    http_timeout: str = "30s"
    node_cache_capable: bool = True
    ignorable: bool = False

    def to_dict(self) -> dict[str, object]:
        """Return the ``extenders[]`` entry as the scheduler's YAML expects it."""
        entry: dict[str, object] = {
            "urlPrefix": self.url_prefix,
            "filterVerb": self.filter_verb,
            "weight": self.weight,
            "nodeCacheCapable": self.node_cache_capable,
            "httpTimeout": self.http_timeout,
            "enableHTTPS": self.url_prefix.startswith("https://"),
            "managedResources": [
                {"name": name, "ignoredByScheduler": True} for name in self.managed_resources
            ],
            "ignorable": self.ignorable,
        }
        if self.bind_verb:
            entry["bindVerb"] = self.bind_verb
        if self.prioritize_verb:
            entry["prioritizeVerb"] = self.prioritize_verb
        if self.ca_pem is not None:
            entry["tlsConfig"] = {"caData": base64.b64encode(self.ca_pem).decode()}
        return entry


def scheduler_config(
    kubeconfig: Path,
    *,
    scheduler_name: str = "hami-scheduler",
    extender: ExtenderConfig | None = None,
) -> dict[str, object]:
    """Build a KubeSchedulerConfiguration with one profile and at most one extender.

    ``extender=None`` with ``scheduler_name="default-scheduler"`` is a plain default scheduler.
    Leader election is off and every node is scored (``percentageOfNodesToScore: 100``) so the
    extender sees every feasible node.
    """
    config: dict[str, object] = {
        "apiVersion": "kubescheduler.config.k8s.io/v1",
        "kind": "KubeSchedulerConfiguration",
        "clientConnection": {"kubeconfig": str(kubeconfig)},
        "leaderElection": {"leaderElect": False},
        "percentageOfNodesToScore": 100,
        "profiles": [{"schedulerName": scheduler_name}],
    }
    if extender is not None:
        config["extenders"] = [extender.to_dict()]
    return config


class KubeScheduler:
    """A kube-scheduler process driven by a KubeSchedulerConfiguration file.

    It serves its health endpoints on a free loopback port with a certificate of the run's CA, so
    readiness (``/readyz``: informers synced) is checked over verified TLS.
    """

    def __init__(
        self, plane: ControlPlane, config: Mapping[str, object], *, name: str = "kube-scheduler"
    ) -> None:
        self.plane = plane
        self.config = dict(config)
        self.port = free_port()
        self.startup_seconds = 0.0
        directory = plane.workdir / f"{name}-{self.port}"
        directory.mkdir(parents=True)
        self.config_path = directory / "config.yaml"
        self.config_path.write_text(yaml.safe_dump(self.config, sort_keys=False))
        cert, key = plane.ca.issue_loopback_server(name).write(directory, "serving")
        self.process = ManagedProcess(
            name,
            [
                str(plane.binaries.kube_scheduler),
                f"--config={self.config_path}",
                "--bind-address=127.0.0.1",
                f"--secure-port={self.port}",
                f"--tls-cert-file={cert}",
                f"--tls-private-key-file={key}",
                f"--authentication-kubeconfig={plane.kubeconfig}",
                f"--authorization-kubeconfig={plane.kubeconfig}",
                "--v=2",
            ],
            plane.log_dir / f"{name}-{self.port}.log",
        )

    def start(self, timeout: float = 60.0) -> None:
        """Start the process and wait for its ``/readyz``; stop it again if that fails."""
        begin = time.monotonic()
        self.process.start()
        context = self.plane.ca.client_ssl_context()
        try:
            wait_until(
                lambda: https_get_ok(f"https://127.0.0.1:{self.port}/readyz", context),
                timeout=timeout,
                what=f"{self.process.name} /readyz",
                processes=[self.process],
            )
        except BaseException:
            self.process.stop()
            raise
        self.startup_seconds = time.monotonic() - begin

    def stop(self) -> None:
        """Stop the scheduler process group."""
        self.process.stop()


# ---------------------------------------------------------------------------------------------
# API helpers shared by the tests


def create_fake_node(
    api: k8s.ApiClient,
    name: str,
    *,
    extended_resources: Mapping[str, str | int] | None = None,
    annotations: Mapping[str, str] | None = None,
    labels: Mapping[str, str] | None = None,
    base_resources: Mapping[str, str] = DEFAULT_NODE_RESOURCES,
) -> Json:
    """Create a Ready Node whose capacity/allocatable carry cpu, memory, pods and ``extended``.

    No kubelet runs in tests, so the node is only an API object. The API server keeps the status
    given on create; should it not (the status is owned by the status subresource), it is written
    again through ``nodes/<name>/status``. Returns the node as a JSON dict.
    """
    resources = {**base_resources, **{k: str(v) for k, v in (extended_resources or {}).items()}}
    now = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    status = {
        "capacity": resources,
        "allocatable": resources,
        "conditions": [
            {
                "type": "Ready",
                "status": "True",
                "reason": "KubeletReady",
                "message": "fake node of the hami-core-fw test harness",
                "lastHeartbeatTime": now,
                "lastTransitionTime": now,
            }
        ],
    }
    body = {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {
            "name": name,
            "labels": {"kubernetes.io/hostname": name, **(labels or {})},
            "annotations": dict(annotations or {}),
        },
        "status": status,
    }
    created = request_json(api, "POST", "/api/v1/nodes", body)
    created_status = created.get("status")
    allocatable = created_status.get("allocatable") if isinstance(created_status, dict) else None
    if allocatable != resources:
        created = request_json(
            api,
            "PATCH",
            f"/api/v1/nodes/{name}/status",
            {"status": status},
            content_type="application/merge-patch+json",
        )
    return created


def bind_pod(
    api: k8s.ApiClient,
    namespace: str,
    name: str,
    node: str,
    *,
    uid: str | None = None,
    annotations: Mapping[str, str] | None = None,
) -> Json:
    """POST ``pods/<name>/binding`` and return the server's ``Status`` reply as a dict.

    ``kubernetes`` 37's ``create_namespaced_pod_binding`` declares a ``V1Binding`` response, but the
    server answers 201 with a ``Status``, which fails model validation after the bind succeeded
    (k8s-protocols.md 4.1); hence ``_preload_content=False`` and our own JSON parsing. Errors
    (409 for a wrong UID, an already bound pod, ...) raise ``kubernetes.client.ApiException``.
    """
    body = k8s.V1Binding(
        metadata=k8s.V1ObjectMeta(
            name=name, namespace=namespace, uid=uid, annotations=dict(annotations or {}) or None
        ),
        target=k8s.V1ObjectReference(api_version="v1", kind="Node", name=node),
    )
    response = k8s.CoreV1Api(api).create_namespaced_pod_binding(
        name, namespace, body, _preload_content=False
    )
    # with _preload_content=False the client returns the urllib3 response, not a V1Binding
    return _json(getattr(response, "data", None))


def register_mutating_webhook(
    api: k8s.ApiClient,
    *,
    url: str,
    ca_pem: bytes,
    configuration_name: str = "hami-webhook",
    webhook_name: str = "vgpu.hami.io",
    failure_policy: str = "Fail",
    timeout_seconds: int = 10,
    extra: Mapping[str, object] | None = None,
) -> Json:
    """Register a MutatingWebhookConfiguration for pod CREATE at ``url`` (k8s-protocols.md 3.2).

    ``url`` is ``https://127.0.0.1:<port>/webhook``; ``ca_pem`` is the CA that signed the webhook's
    serving certificate (it must carry IP SAN 127.0.0.1). ``extra`` is merged into the webhook
    entry (e.g. ``matchConditions``, ``namespaceSelector``). The API server picks the
    configuration up asynchronously: wait for the first call before relying on it.
    """
    webhook: dict[str, object] = {
        "name": webhook_name,
        "clientConfig": {"url": url, "caBundle": base64.b64encode(ca_pem).decode()},
        "rules": [
            {
                "operations": ["CREATE"],
                "apiGroups": [""],
                "apiVersions": ["v1"],
                "resources": ["pods"],
                "scope": "*",
            }
        ],
        "admissionReviewVersions": ["v1", "v1beta1"],
        "sideEffects": "None",
        "failurePolicy": failure_policy,
        "timeoutSeconds": timeout_seconds,
        **(extra or {}),
    }
    body = {
        "apiVersion": "admissionregistration.k8s.io/v1",
        "kind": "MutatingWebhookConfiguration",
        "metadata": {"name": configuration_name},
        "webhooks": [webhook],
    }
    return request_json(
        api, "POST", "/apis/admissionregistration.k8s.io/v1/mutatingwebhookconfigurations", body
    )


def request_json(
    api: k8s.ApiClient,
    method: str,
    path: str,
    body: object = None,
    *,
    content_type: str = "application/json",
) -> Json:
    """Send a JSON request to an API path and return the JSON object of the answer.

    Tests assert on what the API server holds; plain JSON avoids the client's model layer (whose
    validation would hide what the server really sent). A non-2xx answer raises
    ``kubernetes.client.ApiException`` (``ConflictException`` for 409, ...), as the typed calls do.
    Merge patches need ``content_type="application/merge-patch+json"``.
    """
    headers = {"Accept": "application/json", "Content-Type": content_type}
    response = api.call_api(method, f"{api.configuration.host}{path}", headers, body)
    raw: bytes = response.response.data  # the urllib3 response; reads the whole body
    if not 200 <= response.status <= 299:
        raise k8s.ApiException.from_response(
            http_resp=response, body=raw.decode(errors="replace"), data=None
        )
    return _json(raw)


def _json(data: object) -> Json:
    if not isinstance(data, bytes):
        raise HarnessError(f"expected a raw JSON body, got {type(data).__name__}")
    body = json.loads(data)
    if not isinstance(body, dict):
        raise HarnessError(f"expected a JSON object, got {type(body).__name__}")
    return body
