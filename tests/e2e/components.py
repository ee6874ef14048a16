"""Our own processes for end-to-end tests: ``hami scheduler`` and ``hami device-plugin``.

Shared by the e2e test modules: :class:`HamiScheduler` runs the scheduler (extender + webhook on
HTTPS with a certificate of the harness CA) as a subprocess; :func:`device_plugin` runs
``hami device-plugin --vendor V`` as a subprocess next to the kubelet stand-in
(:class:`~hami_core_fw.testing.kubelet.FakeKubelet`), with the stand-in NVML for ``nvidia``;
:class:`LockReleaser` plays the device plugin's part in lock handling where no plugin runs.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
import tempfile
import threading
import time
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from harness import ControlPlane, ManagedProcess, free_port, https_get_ok, wait_until

from hami_core_fw.k8s import api as kapi
from hami_core_fw.k8s import lock
from hami_core_fw.testing.kubelet import FakeKubelet

SCHEDULER = "hami-scheduler"
FAKE_RESOURCES = (
    "hami.io/fake-gpu",
    "hami.io/fake-gpumem",
    "hami.io/fake-gpumem-percentage",
    "hami.io/fake-gpucores",
)
NVIDIA_RESOURCES = (
    "nvidia.com/gpu",
    "nvidia.com/gpumem",
    "nvidia.com/gpumem-percentage",
    "nvidia.com/gpucores",
    "nvidia.com/priority",
)
#: every resource our extender manages in the e2e cluster (fake + nvidia vendors)
MANAGED_RESOURCES = FAKE_RESOURCES + NVIDIA_RESOURCES


class HamiScheduler:
    """One ``hami scheduler`` subprocess on a fixed port (a restart reuses it)."""

    def __init__(self, plane: ControlPlane, workdir: Path) -> None:
        self.plane = plane
        self.port = free_port()
        self.metrics_port = free_port()
        self.cert, self.key = plane.ca.issue_loopback_server("hami-scheduler").write(
            workdir, "hami-scheduler"
        )
        self.workdir = workdir
        self.process: ManagedProcess | None = None
        self.starts = 0

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.port}"

    def start(self) -> None:
        self.starts += 1
        env_args = [
            sys.executable,
            "-m",
            "hami_core_fw.cli",
            "--log-level=INFO",
            "scheduler",
            f"--kubeconfig={self.plane.kubeconfig}",
            f"--http-bind=127.0.0.1:{self.port}",
            f"--cert-file={self.cert}",
            f"--key-file={self.key}",
            f"--metrics-bind-address=127.0.0.1:{self.metrics_port}",
            f"--scheduler-name={SCHEDULER}",
        ]
        self.process = ManagedProcess(
            f"hami-scheduler-{self.starts}",
            env_args,
            self.plane.log_dir / f"hami-scheduler-{self.port}-{self.starts}.log",
        )
        self.plane.processes.append(self.process)
        self.process.start()
        context = self.plane.ca.client_ssl_context()
        wait_until(
            lambda: https_get_ok(f"{self.url}/readyz", context),
            timeout=60,
            what="hami scheduler /readyz",
            processes=[self.process],
        )

    def kill(self) -> None:
        """SIGKILL the whole process group: no drain, no lease release."""
        assert self.process is not None and self.process.pid is not None
        os.killpg(self.process.pid, signal.SIGKILL)
        wait_until(
            lambda: self.process is not None and self.process.exit_code() is not None,
            timeout=10,
            what="the scheduler to die",
        )
        self.process.stop()

    def stop(self) -> None:
        if self.process is not None:
            self.process.stop()

    def log(self) -> str:
        return self.process.log_tail(200) if self.process is not None else ""


class LockReleaser:
    """The device plugin's part in lock handling: release a node's lock once its pod is bound.

    Runs a watch on the namespace's pods (through ``hami_core_fw.k8s``) on its own event loop in a
    thread; records every bound pod; ``all_bound(n)`` waits for ``n`` of them.
    """

    def __init__(self, plane: ControlPlane, namespace: str) -> None:
        self.plane = plane
        self.namespace = namespace
        self.bound: dict[str, str] = {}
        self.bound_at: dict[str, float] = {}
        self.released = 0
        self._cond = threading.Condition()
        self._loop = asyncio.new_event_loop()
        self._stop: asyncio.Event | None = None
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._ready = threading.Event()
        self.error: BaseException | None = None

    def __enter__(self) -> LockReleaser:
        self._thread.start()
        assert self._ready.wait(30), "lock releaser did not start"
        return self

    def __exit__(self, *exc: object) -> None:
        if self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(30)

    def _run(self) -> None:
        self._loop.run_until_complete(self._main())

    async def _main(self) -> None:
        self._stop = asyncio.Event()
        kube = await kapi.Kube.connect(str(self.plane.kubeconfig))
        try:
            path = f"/api/v1/namespaces/{self.namespace}/pods"
            listed = await kube.list(path)
            rv = listed["metadata"]["resourceVersion"]
            self._ready.set()
            watcher = asyncio.ensure_future(self._watch(kube, path, rv))
            await self._stop.wait()
            watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await watcher
        except BaseException as err:
            self.error = err
            self._ready.set()
            raise
        finally:
            await kube.close()

    async def _watch(self, kube: kapi.Kube, path: str, rv: str) -> None:
        while True:
            async for event in kube.watch(path, resource_version=rv, timeout_s=60):
                pod = event["object"]
                rv = pod["metadata"]["resourceVersion"]
                node = (pod.get("spec") or {}).get("nodeName")
                name = pod["metadata"]["name"]
                if event["type"] == "BOOKMARK" or not node or name in self.bound:
                    continue
                if await lock.release_node_lock(kube, node, self.namespace, name):
                    self.released += 1
                with self._cond:
                    self.bound[name] = node
                    self.bound_at[name] = time.monotonic()
                    self._cond.notify_all()

    def wait_bound(self, n: int, timeout: float) -> bool:
        with self._cond:
            return self._cond.wait_for(lambda: len(self.bound) >= n, timeout)


@dataclass
class DevicePlugin:
    """A running ``hami device-plugin`` subprocess with its kubelet stand-in."""

    kube: kapi.Kube
    kubelet: FakeKubelet
    node: str
    hook: Path
    table: Path
    log: Path
    process: asyncio.subprocess.Process


@contextlib.asynccontextmanager
async def device_plugin(
    control_plane: ControlPlane,
    node: str,
    *,
    vendor: str = "nvidia",
    device_config: str = "",
    nvml_table: str = "",
    nvml_dir: Path | None = None,
    extra_args: Sequence[str] = (),
    extra_env: Mapping[str, str] | None = None,
) -> AsyncIterator[DevicePlugin]:
    """Run ``hami device-plugin --vendor <vendor>`` for ``node`` next to a kubelet stand-in.

    :param device_config: HAMi ``device-config.yaml`` text for the plugin
    :param nvml_table: the stand-in NVML's device table (``HAMI_FAKE_GPU_CONFIG``)
    :param nvml_dir: directory holding the stand-in ``libnvidia-ml.so.1`` (LD_LIBRARY_PATH)
    """
    work = Path(tempfile.mkdtemp(prefix="dp-", dir="/tmp"))  # short: unix socket paths
    kdir, hook = work / "k", work / "h"
    table = work / "gpus.cfg"
    table.write_text(nvml_table)
    devcfg = work / "device-config.yaml"
    devcfg.write_text(device_config or "{}\n")
    log = work / "plugin.log"
    kubelet = FakeKubelet(kdir)
    await kubelet.start()
    env = {
        **os.environ,
        "HAMI_FAKE_GPU_CONFIG": str(table),
        "HAMI_DEVICES__NVIDIA__NODE_CONFIG_FILE": str(work / "no-config.json"),
        "HAMI_DEVICES__NVIDIA__SYSFS_ROOT": str(work / "sys"),
        "HAMI_PLUGINS": vendor,
        **(extra_env or {}),
    }
    if nvml_dir is not None:
        env["LD_LIBRARY_PATH"] = str(nvml_dir)
    with log.open("wb") as out:
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "hami_core_fw.cli",
            "device-plugin",
            f"--vendor={vendor}",
            f"--node-name={node}",
            f"--kubeconfig={control_plane.kubeconfig}",
            f"--kubelet-dir={kdir}",
            f"--hook-path={hook}",
            f"--device-config={devcfg}",
            *extra_args,
            env=env,
            stdout=out,
            stderr=out,
        )
    kube = await kapi.Kube.connect(str(control_plane.kubeconfig))
    try:
        yield DevicePlugin(kube, kubelet, node, hook, table, log, proc)
    finally:
        if proc.returncode is None:
            proc.terminate()
            try:
                await asyncio.wait_for(proc.wait(), 20)
            except TimeoutError:
                proc.kill()
        await kube.close()
        await kubelet.stop()
    assert proc.returncode == 0, log.read_text()[-4000:]
