"""Regenerate the Python modules of ``api.proto`` (kubelet device plugin API v1beta1).

Run from the repository root with the pinned tools installed::

    pip install grpcio-tools==1.85.1 mypy-protobuf==5.1.0
    python hami_core_fw/deviceplugin/proto/generate.py

It writes ``api_pb2.py``, ``api_pb2_grpc.py`` and their typing stubs (mypy-protobuf) next to
``api.proto``. The generated files are committed so that CI and wheels need no code generator;
``tests/unit/test_deviceplugin_proto.py`` regenerates into a temporary directory and fails when the
committed files differ (k8s-protocols.md 7.1).
"""

from __future__ import annotations

import importlib
import shutil
import sys
from pathlib import Path
from typing import Final

#: the versions the committed files were generated with
GRPCIO_TOOLS_VERSION: Final = "1.85.1"
MYPY_PROTOBUF_VERSION: Final = "5.1.0"

PROTO_DIR: Final = Path(__file__).resolve().parent
#: the directory that holds the ``hami_core_fw`` package (import root of the generated modules)
IMPORT_ROOT: Final = PROTO_DIR.parents[2]
PROTO: Final = PROTO_DIR.relative_to(IMPORT_ROOT) / "api.proto"
GENERATED: Final = ("api_pb2.py", "api_pb2_grpc.py", "api_pb2.pyi", "api_pb2_grpc.pyi")
# every generated file is excluded from ruff (pyproject extend-exclude): committed as generated


def _plugin(name: str) -> str:
    candidate = Path(sys.executable).parent / name
    if candidate.exists():
        return str(candidate)
    found = shutil.which(name)
    if found is None:
        raise RuntimeError(f"{name} not found; pip install mypy-protobuf=={MYPY_PROTOBUF_VERSION}")
    return found


def generate(out_root: Path, *, import_root: Path = IMPORT_ROOT) -> list[Path]:
    """Generate the modules of ``<import_root>/hami_core_fw/deviceplugin/proto/api.proto``.

    :param out_root: directory receiving ``hami_core_fw/deviceplugin/proto/<generated files>``
    :param import_root: directory holding the ``hami_core_fw`` package whose proto is compiled
    :returns: the generated files
    :raises RuntimeError: the code generator failed or a tool is missing
    """
    protoc = importlib.import_module("grpc_tools.protoc")
    args = [
        "grpc_tools.protoc",
        f"-I{import_root}",
        f"--plugin=protoc-gen-mypy={_plugin('protoc-gen-mypy')}",
        f"--plugin=protoc-gen-mypy_grpc={_plugin('protoc-gen-mypy_grpc')}",
        f"--python_out={out_root}",
        f"--grpc_python_out={out_root}",
        f"--mypy_out={out_root}",
        f"--mypy_grpc_out={out_root}",
        str(PROTO),
    ]
    rc = protoc.main(args)
    if rc != 0:
        raise RuntimeError(f"protoc failed with exit code {rc}: {' '.join(args)}")
    out_dir = out_root / PROTO.parent
    return [out_dir / name for name in GENERATED]


def main() -> int:
    """Regenerate in place."""
    for path in generate(IMPORT_ROOT):
        sys.stdout.write(f"wrote {path}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
