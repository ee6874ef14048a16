"""``hami monitor``: the node monitor (Prometheus exporter and priority feedback), one per node.

Defaults follow HAMi's ``vGPUmonitor``: ``--metrics-bind-address :9394``, ``--hook-path`` from
``HOOK_PATH`` (the chart sets ``/usr/local/vgpu``: for the monitor it already includes ``vgpu``),
``--node-name`` from ``NODE_NAME``, ``--kubeconfig`` from ``KUBECONFIG`` (else the in-cluster
service account) and ``--resync-interval`` from ``HAMI_RESYNC_INTERVAL`` (a Go duration, 5m).
"""

from __future__ import annotations

import argparse
import asyncio
import os
from collections.abc import Callable

from hami_core_fw import config, errors, plugins
from hami_core_fw.monitor import app

Handler = Callable[[argparse.Namespace], int]

_DEFAULT_HOOK_PATH = "/usr/local/vgpu"
_DEFAULT_RESYNC = "5m"


def _duration(text: str) -> float:
    try:
        return app.parse_duration(text)
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from err


def register(
    subparsers: argparse._SubParsersAction[argparse.ArgumentParser], handlers: dict[str, Handler]
) -> None:
    """Add the ``monitor`` subcommand."""
    p = subparsers.add_parser(
        "monitor",
        help="export device and per-container GPU metrics of this node; priority feedback",
    )
    p.add_argument("--node-name", help="this node (default: NODE_NAME)")
    p.add_argument(
        "--hook-path",
        help=f"directory holding containers/ (default: HOOK_PATH, else {_DEFAULT_HOOK_PATH})",
    )
    p.add_argument(
        "--metrics-bind-address", default=":9394", help="host:port of /metrics (default :9394)"
    )
    p.add_argument("--kubeconfig", help="kubeconfig file (default: KUBECONFIG, else in-cluster)")
    p.add_argument(
        "--resync-interval",
        type=_duration,
        help="age after which the directory of a pod not on this node is deleted "
        f"(default: HAMI_RESYNC_INTERVAL, else {_DEFAULT_RESYNC})",
    )
    p.add_argument(
        "--scan-interval", type=_duration, default=5.0, help="scan + feedback period (default 5s)"
    )
    p.add_argument(
        "--vendor",
        action="append",
        default=[],
        help="vendor id giving device telemetry; repeatable (default: every installed vendor)",
    )
    p.add_argument(
        "--device-config", help="HAMi device-config.yaml (default: HAMI_DEVICE_CONFIG_FILE)"
    )
    p.add_argument(
        "--legacy-metrics", action="store_true", help="also emit HAMi's pre-2.5 metric names"
    )
    p.add_argument(
        "--feedback",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="run the priority feedback loop (default on)",
    )
    p.add_argument(
        "--proc-root", default="/proc", help="the host's /proc, to drop slots of dead processes"
    )
    p.add_argument(
        "--mig-apply-lock",
        default=app.MIG_APPLY_LOCK,
        help="feedback pauses while this file exists",
    )
    handlers["monitor"] = run_command


def build(args: argparse.Namespace, env: dict[str, str] | None = None) -> app.MonitorOptions:
    """Resolve the options from flags and environment (no I/O).

    :raises ConfigError: every problem at once (node name unknown, bad HAMI_RESYNC_INTERVAL)
    """
    env = dict(os.environ) if env is None else env
    problems: list[str] = []
    node_name = args.node_name or env.get("NODE_NAME", "")
    if not node_name:
        problems.append("the node name is unknown: pass --node-name or set NODE_NAME")
    resync = args.resync_interval
    if resync is None:
        raw = env.get("HAMI_RESYNC_INTERVAL") or _DEFAULT_RESYNC
        try:
            resync = app.parse_duration(raw)
        except ValueError as err:
            problems.append(f"HAMI_RESYNC_INTERVAL: {err}")
    try:
        app.split_address(args.metrics_bind_address)
    except errors.ConfigError as err:
        problems.extend(err.problems)
    if problems:
        raise errors.ConfigError(problems, source="monitor")
    return app.MonitorOptions(
        node_name=node_name,
        hook_path=args.hook_path or env.get("HOOK_PATH") or _DEFAULT_HOOK_PATH,
        metrics_bind=args.metrics_bind_address,
        kubeconfig=args.kubeconfig or env.get("KUBECONFIG") or None,
        resync_interval_s=float(resync),
        scan_interval_s=args.scan_interval,
        vendors=tuple(dict.fromkeys(args.vendor)),
        legacy_metrics=args.legacy_metrics,
        feedback=args.feedback,
        proc_root=args.proc_root,
        mig_apply_lock=args.mig_apply_lock,
    )


def run_command(args: argparse.Namespace) -> int:
    """Handler of ``hami monitor``."""
    options = build(args)
    settings = config.Settings()
    path = args.device_config or settings.device_config_file
    device_config = config.load_device_config(path) if path else config.DeviceConfig()
    host = plugins.make_plugin_manager(device_config=device_config)
    asyncio.run(app.serve(settings, host, options=options))
    return 0
