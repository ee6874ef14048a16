"""The ``hami`` command: one console script, one subcommand per process (ARCHITECTURE.md 1).

Only this module configures logging. Subcommands of servers that are not built yet are not listed:
``hami --help`` shows exactly what exists.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Sequence

from hami_core_fw import __version__, config, errors, log, plugins

Handler = Callable[[argparse.Namespace], int]


def _host(args: argparse.Namespace) -> plugins.PluginHost:
    settings = config.Settings()
    path = getattr(args, "device_config", None) or settings.device_config_file
    device_config = config.load_device_config(path) if path else config.DeviceConfig()
    return plugins.make_plugin_manager(device_config=device_config)


def _cmd_version(args: argparse.Namespace) -> int:
    print(f"hami-core-fw {__version__} (python {sys.version.split()[0]})")  # noqa: T201 - CLI output
    return 0


def _cmd_plugins(args: argparse.Namespace) -> int:
    host = _host(args)
    infos = host.plugins()
    if args.output == "json":
        doc = [
            {
                "name": i.name,
                "module": i.module,
                "distribution": i.distribution,
                "version": i.version,
                "builtin": i.builtin,
                "vendors": list(i.vendors),
                "resources": list(i.resources),
                "hooks": list(i.hooks),
                "error": i.error,
            }
            for i in infos
        ]
        print(json.dumps(doc, indent=2))  # noqa: T201 - CLI output
        return 0
    header = ("ENTRY POINT", "DISTRIBUTION", "VERSION", "VENDORS", "RESOURCES", "HOOKS")
    rows = [
        (
            i.name + (" (builtin)" if i.builtin else ""),
            i.distribution or "-",
            i.version or "-",
            ",".join(i.vendors) or "-",
            ",".join(i.resources) or "-",
            ",".join(h.removeprefix("hami_") for h in i.hooks)
            or ("FAILED: " + i.error if i.error else "-"),
        )
        for i in infos
    ]
    widths = [max(len(r[c]) for r in [header, *rows]) for c in range(len(header))]
    for row in [header, *rows]:
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip())  # noqa: T201
    return 0


def build_parser() -> tuple[argparse.ArgumentParser, dict[str, Handler]]:
    """The argument parser and the handler of each subcommand."""
    parser = argparse.ArgumentParser(
        prog="hami",
        description="GPU sharing for Kubernetes (HAMi-compatible, vendor plugins via entry points)",
    )
    parser.add_argument("--log-level", default=None, help="DEBUG, INFO, WARNING, ERROR")
    parser.add_argument("--log-json", action="store_true", help="log one JSON object per line")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    handlers: dict[str, Handler] = {}

    p = sub.add_parser("version", help="print the version")
    handlers["version"] = _cmd_version

    p = sub.add_parser("plugins", help="list installed plugins, vendors, resource names and hooks")
    p.add_argument("--device-config", help="HAMi device-config.yaml to build vendors from")
    p.add_argument("-o", "--output", choices=("table", "json"), default="table")
    handlers["plugins"] = _cmd_plugins

    for register in _EXTRA_COMMANDS:
        register(sub, handlers)
    return parser, handlers


#: subcommand registrars contributed by the server packages (scheduler, device-plugin, ...)
_EXTRA_COMMANDS: list[
    Callable[[argparse._SubParsersAction[argparse.ArgumentParser], dict[str, Handler]], None]
] = []


def _load_extra_commands() -> None:
    """Import the optional subcommand modules that exist in this build."""
    import importlib  # noqa: PLC0415 - optional modules, imported only when the CLI runs

    for module in (
        "hami_core_fw.simulate.cli",
        "hami_core_fw.scheduler.cli",
        "hami_core_fw.deviceplugin.cli",
        "hami_core_fw.monitor.cli",
    ):
        try:
            mod = importlib.import_module(module)
        except ModuleNotFoundError as err:
            if err.name != module:
                raise
            continue
        _EXTRA_COMMANDS.append(mod.register)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``hami`` console script."""
    if not _EXTRA_COMMANDS:
        _load_extra_commands()
    parser, handlers = build_parser()
    args = parser.parse_args(argv)
    settings = config.Settings()
    log.configure_logging(
        args.log_level or settings.log_level, json_format=args.log_json or settings.log_json
    )
    if not args.command:
        parser.print_help()
        return 2
    try:
        return handlers[args.command](args)
    except errors.HamiError as err:
        print(f"hami {args.command}: error: {err}", file=sys.stderr)  # noqa: T201 - CLI output
        return 1


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
