"""``hami scheduler``: HAMi's scheduler flags, where they make sense (hami-compat.md 4.1).

Precedence, one source per value (Q6 fixed): a flag given on the command line wins over the
``HAMI_SCHEDULER__*`` / ``HAMI_*`` environment (:class:`~hami_core_fw.config.Settings`), which wins
over the defaults. ``KUBECONFIG``, ``POD_NAME`` and ``POD_NAMESPACE`` are read as HAMi reads them.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
from typing import TYPE_CHECKING, Final

from hami_core_fw import config, errors, plugins
from hami_core_fw.scheduler import app

if TYPE_CHECKING:
    from collections.abc import Callable

_DURATION: Final = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h)")
_UNITS: Final = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}


def parse_duration(text: str) -> float:
    """Seconds from a Go duration (``5m``, ``28s``, ``1m30s``) or a plain number of seconds.

    :raises argparse.ArgumentTypeError: neither
    """
    text = text.strip()
    try:
        return float(text)
    except ValueError:
        pass
    pos, total = 0, 0.0
    for m in _DURATION.finditer(text):
        if m.start() != pos:
            break
        total += float(m.group(1)) * _UNITS[m.group(2)]
        pos = m.end()
    if pos != len(text) or not text:
        raise argparse.ArgumentTypeError(f"{text!r} is not a duration such as 30s, 5m or 1m30s")
    return total


def parse_selector(text: str) -> dict[str, str]:
    """``k=v,k2=v2`` -> mapping.

    :raises argparse.ArgumentTypeError: an entry without ``=``
    """
    out: dict[str, str] = {}
    for part in (p.strip() for p in text.split(",")):
        if not part:
            continue
        key, sep, value = part.partition("=")
        if not sep or not key.strip():
            raise argparse.ArgumentTypeError(f"selector entry {part!r} is not key=value")
        out[key.strip()] = value.strip()
    return out


def _bool(text: str) -> bool:
    if text.lower() in ("1", "t", "true", "yes", "on"):
        return True
    if text.lower() in ("0", "f", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"{text!r} is not a boolean")


def register(
    subparsers: argparse._SubParsersAction[argparse.ArgumentParser],
    handlers: dict[str, Callable[[argparse.Namespace], int]],
) -> None:
    """Add ``hami scheduler`` to the CLI."""
    p = subparsers.add_parser(
        "scheduler",
        help="run the scheduler extender and admission webhook beside kube-scheduler",
        description=__doc__,
    )
    p.add_argument("--scheduler-name", help="profile name written into pods (hami-scheduler)")
    p.add_argument("--node-scheduler-policy", choices=("binpack", "spread"))
    p.add_argument("--gpu-scheduler-policy", help="spread, binpack, topology-aware, mutex, ...")
    p.add_argument("--node-label-selector", type=parse_selector, help="k=v,...: nodes to register")
    p.add_argument("--node-lock-timeout", type=parse_duration, help="node lock expiry (5m)")
    p.add_argument(
        "--node-lock-retry-timeout",
        type=parse_duration,
        help="how long a bind waits for a locked node (25s; keep below httpTimeout 30s)",
    )
    p.add_argument(
        "--force-overwrite-default-scheduler",
        type=_bool,
        help="take over pods of default-scheduler that request shared devices (true)",
    )
    p.add_argument(
        "--exhaustive-filter",
        action="store_true",
        default=None,
        help="fit every candidate node per /filter (HAMi's full FilteringSucceed message); "
        "default: stop at the first fitting node in score order (same choice, faster)",
    )
    p.add_argument("--device-config-file", help="HAMi device-config.yaml")
    p.add_argument("--http-bind", "--http_bind", default="127.0.0.1:8080", help="host:port")
    p.add_argument("--cert-file", default="", help="TLS certificate (enables HTTPS)")
    p.add_argument("--key-file", default="", help="TLS private key")
    p.add_argument("--metrics-bind-address", default=":9395", help="'' disables the listener")
    p.add_argument("--kubeconfig", default=os.environ.get("KUBECONFIG") or None)
    p.add_argument(
        "--leader-elect",
        nargs="?",
        const="follow",
        default="none",
        choices=("none", "follow", "campaign", "true", "false"),
        help="follow the kube-scheduler sidecar's Lease (HAMi), campaign on our own, or none",
    )
    p.add_argument("--leader-elect-resource-name", default="", help="Lease name (scheduler name)")
    p.add_argument(
        "--leader-elect-resource-namespace",
        default=os.environ.get("POD_NAMESPACE") or "kube-system",
    )
    p.add_argument("--leader-elect-identity", default="", help="default: POD_NAME or hostname")
    p.add_argument("--grace-period", type=parse_duration, default=5.0)
    p.add_argument("--bind-queue-limit", type=int, default=128)
    handlers["scheduler"] = run


def settings_from_args(args: argparse.Namespace) -> config.Settings:
    """Settings from the environment with the flags given on the command line applied."""
    settings = config.Settings()
    updates: dict[str, object] = {}
    for flag, field in (
        ("scheduler_name", "scheduler_name"),
        ("node_scheduler_policy", "node_scheduler_policy"),
        ("gpu_scheduler_policy", "gpu_scheduler_policy"),
        ("node_label_selector", "node_label_selector"),
        ("node_lock_timeout", "node_lock_timeout_seconds"),
        ("node_lock_retry_timeout", "node_lock_wait_seconds"),
        ("force_overwrite_default_scheduler", "force_overwrite_default_scheduler"),
        ("exhaustive_filter", "exhaustive_filter"),
    ):
        value = getattr(args, flag, None)
        if value is not None:
            updates[field] = value
    scheduler = config.SchedulerSettings.model_validate(
        {**settings.scheduler.model_dump(), **updates}
    )
    top: dict[str, object] = {"scheduler": scheduler}
    if args.device_config_file:
        top["device_config_file"] = args.device_config_file
    return settings.model_copy(update=top)


def options_from_args(args: argparse.Namespace) -> app.ServeOptions:
    """The process options."""
    if bool(args.cert_file) != bool(args.key_file):
        raise errors.ConfigError(["--cert-file and --key-file go together"], source="flags")
    mode = {"true": "follow", "false": "none"}.get(args.leader_elect, args.leader_elect)
    return app.ServeOptions(
        http_bind=args.http_bind,
        cert_file=args.cert_file,
        key_file=args.key_file,
        metrics_bind=args.metrics_bind_address,
        kubeconfig=args.kubeconfig,
        leader_elect=mode,
        lease_name=args.leader_elect_resource_name,
        lease_namespace=args.leader_elect_resource_namespace,
        identity=args.leader_elect_identity,
        grace_period_s=args.grace_period,
        bind_queue_limit=args.bind_queue_limit,
    )


def run(args: argparse.Namespace) -> int:
    """Run the scheduler until SIGTERM."""
    settings = settings_from_args(args)
    options = options_from_args(args)
    host = plugins.make_plugin_manager(device_config=settings.device_config())
    asyncio.run(app.serve(settings, host, options=options))
    return 0
