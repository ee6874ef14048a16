"""``hami device-plugin --vendor V``: one vendor's kubelet device plugin on this node.

Every flag is wired (HAMi parses several device-plugin flags and ignores them, Q7). Values
come from, in increasing precedence: built-in defaults, the vendor's own choices (its device
configuration and, for NVIDIA, the node configuration file), ``HAMI_DEVICEPLUGIN__*`` settings,
then the flags. Node-level device settings (split count, scaling, filtered devices) belong to the
vendor's configuration files, not to flags.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import logging
import os
import signal
from collections.abc import Callable

from hami_core_fw import config, errors, plugins
from hami_core_fw import vendor as hv
from hami_core_fw.deviceplugin import app, server
from hami_core_fw.deviceplugin import spec as dpspec
from hami_core_fw.k8s import api

logger = logging.getLogger(__name__)

Handler = Callable[[argparse.Namespace], int]


def _positive(text: str) -> float:
    value = float(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"{text!r} is not a positive number of seconds")
    return value


def register(
    subparsers: argparse._SubParsersAction[argparse.ArgumentParser], handlers: dict[str, Handler]
) -> None:
    """Add the ``device-plugin`` subcommand."""
    p = subparsers.add_parser(
        "device-plugin",
        help="serve one vendor's devices to the kubelet and register them for the scheduler",
    )
    p.add_argument("--vendor", required=True, help="vendor id (see `hami plugins`), e.g. nvidia")
    p.add_argument(
        "--node-name", help="this node (default: HAMI_DEVICEPLUGIN__NODE_NAME, NODE_NAME)"
    )
    p.add_argument(
        "--device-config", help="HAMi device-config.yaml (default: HAMI_DEVICE_CONFIG_FILE)"
    )
    p.add_argument("--kubeconfig", help="kubeconfig file (default: in-cluster service account)")
    p.add_argument("--kubelet-dir", help="kubelet device-plugin directory")
    p.add_argument("--kubelet-socket", default=server.KUBELET_SOCKET, help="kubelet socket name")
    p.add_argument(
        "--socket-name", help="our socket name (default: the vendor's, e.g. nvidia-gpu.sock)"
    )
    p.add_argument("--hook-path", help="host library root holding vgpu/ (HAMi HOOK_PATH)")
    p.add_argument(
        "--numa-topology",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="advertise NUMA nodes on the kubelet devices (default: the vendor's configuration)",
    )
    p.add_argument(
        "--preferred-allocation",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="advertise GetPreferredAllocation (default: the vendor's configuration)",
    )
    p.add_argument("--register-interval", type=_positive, default=30.0, help="seconds (HAMi 30)")
    p.add_argument("--health-interval", type=_positive, default=1.0, help="seconds per wait")
    p.add_argument(
        "--watch-interval", type=_positive, default=1.0, help="kubelet restart check, seconds"
    )
    p.add_argument(
        "--grace-period", type=_positive, default=5.0, help="seconds to drain on SIGTERM"
    )
    handlers["device-plugin"] = run_command


def build(args: argparse.Namespace) -> tuple[app.NodeAgentConfig, hv.DeviceVendor]:
    """Resolve the node agent configuration and the vendor (no I/O besides config files)."""
    settings = config.Settings()
    node_name = args.node_name or settings.deviceplugin.node_name or os.environ.get("NODE_NAME", "")
    if not node_name:
        raise errors.ConfigError(
            ["the node name is unknown: pass --node-name or set NODE_NAME"], source="device-plugin"
        )
    path = args.device_config or settings.device_config_file
    device_config = config.load_device_config(path) if path else config.DeviceConfig()
    host = plugins.make_plugin_manager(device_config=device_config)
    vendor = host.vendors.get(args.vendor)
    if vendor is None:
        known = ", ".join(host.vendors) or "none"
        raise errors.ConfigError(
            [f"--vendor {args.vendor!r} is not installed (installed vendors: {known})"],
            source="device-plugin",
        )
    vendor = dpspec.vendor_for_node(vendor, node_name)
    spec = dpspec.spec_for(vendor)
    if args.socket_name:
        spec = dataclasses.replace(spec, socket_name=args.socket_name)
    if args.numa_topology is not None:
        spec = dataclasses.replace(spec, numa_topology=args.numa_topology)
    if args.preferred_allocation is not None:
        spec = dataclasses.replace(spec, preferred_allocation=args.preferred_allocation)
    kubelet_dir = args.kubelet_dir or settings.deviceplugin.kubelet_dir
    socket_path = os.path.join(kubelet_dir, spec.socket_name)
    if not server.socket_path_ok(socket_path):
        raise errors.ConfigError(
            [f"socket path {socket_path!r} is too long for a unix socket (max 107 bytes)"],
            source="device-plugin",
        )
    cfg = app.NodeAgentConfig(
        node_name=node_name,
        spec=spec,
        kubelet_dir=kubelet_dir,
        kubelet_socket=args.kubelet_socket,
        hook_path=args.hook_path or settings.deviceplugin.hook_path,
        register_interval_s=args.register_interval,
        register_error_interval_s=min(5.0, args.register_interval),
        health_poll_s=args.health_interval,
        watch_interval_s=args.watch_interval,
        grace_s=args.grace_period,
    )
    return cfg, vendor


async def _main(args: argparse.Namespace) -> int:
    cfg, vendor = build(args)
    backend = await asyncio.to_thread(vendor.make_backend, cfg.node_name)
    kube = await api.Kube.connect(args.kubeconfig)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    agent = app.NodeAgent(cfg, vendor, backend, kube)
    try:
        await agent.run(stop)
    finally:
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(sig)
        await kube.close()
    return 0


def run_command(args: argparse.Namespace) -> int:
    """Handler of ``hami device-plugin``."""
    return asyncio.run(_main(args))
