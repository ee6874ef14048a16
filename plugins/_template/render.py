"""Render the vendor plugin template into a new plugin directory (stdlib only).

Usage::

    python plugins/_template/render.py --vendor-id acme --common-word ACME --domain acme.com \
        --out plugins/hami-acme

Every file next to this script (except this script and build leftovers) is copied to ``--out``
with the placeholders below replaced in file contents and in path names:

==================  =================================  ==============
placeholder         meaning                            acme example
==================  =================================  ==============
``{{vendor_id}}``   entry-point name, lowercase        ``acme``
``{{common_word}}`` HAMi CommonWord (allocation type)  ``ACME``
``{{domain}}``      prefix of the resource names       ``acme.com``
``{{package}}``     Python package                     ``hami_acme``
``{{distribution}}``  distribution name                ``hami-acme``
``{{class_name}}``  class name prefix                  ``Acme``
``{{env_prefix}}``  env var prefix                     ``ACME``
==================  =================================  ==============

The rendered plugin is tested by ``tests/meta/test_template.py`` (style.md 5).
"""

from __future__ import annotations

import argparse
import re
import shutil
import sys
from pathlib import Path

TEMPLATE_DIR = Path(__file__).resolve().parent
SKIP_NAMES = frozenset({"render.py", "__pycache__", "build", ".pytest_cache", ".ruff_cache"})
PLACEHOLDER = re.compile(r"\{\{\s*([A-Za-z_]+)\s*\}\}")

VENDOR_ID = re.compile(r"[a-z][a-z0-9]{0,19}")
COMMON_WORD = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,23}")
DOMAIN_LABEL = r"[a-z0-9]([-a-z0-9]*[a-z0-9])?"
DOMAIN = re.compile(rf"{DOMAIN_LABEL}(\.{DOMAIN_LABEL})+")
DOMAIN_MAX = 48


class RenderError(Exception):
    """An invalid argument or an unusable output directory."""


def placeholders(vendor_id: str, common_word: str, domain: str) -> dict[str, str]:
    """Validate the arguments and return every placeholder's value.

    :raises RenderError: an argument is invalid (the message says which and why)
    """
    problems = []
    if not VENDOR_ID.fullmatch(vendor_id):
        problems.append(
            f"--vendor-id {vendor_id!r} is invalid: use 1-20 lowercase letters and digits, "
            "starting with a letter (it is the entry-point name and part of the package name)"
        )
    if any(c in common_word for c in ",:;"):
        problems.append(
            f"--common-word {common_word!r} is invalid: it must not contain ',', ':' or ';' "
            "(the separators of HAMi's allocation strings)"
        )
    elif not COMMON_WORD.fullmatch(common_word):
        problems.append(
            f"--common-word {common_word!r} is invalid: use 1-24 letters, digits, '.', '_' or "
            "'-', starting with a letter or digit"
        )
    if (
        len(domain) > DOMAIN_MAX
        or not DOMAIN.fullmatch(domain)
        or domain == "kubernetes.io"
        or domain.endswith((".kubernetes.io", "k8s.io"))
    ):
        problems.append(
            f"--domain {domain!r} is invalid: use a lowercase DNS name with a dot, at most "
            f"{DOMAIN_MAX} characters, outside kubernetes.io and k8s.io (e.g. acme.com)"
        )
    if problems:
        raise RenderError("\n".join(problems))
    return {
        "vendor_id": vendor_id,
        "common_word": common_word,
        "domain": domain,
        "package": f"hami_{vendor_id}",
        "distribution": f"hami-{vendor_id}",
        "class_name": vendor_id.capitalize(),
        "env_prefix": vendor_id.upper(),
    }


def substitute(text: str, values: dict[str, str], *, where: str) -> str:
    """Replace every ``{{name}}`` in ``text``.

    :raises RenderError: ``text`` uses a placeholder that has no value
    """

    def repl(match: re.Match[str]) -> str:
        name = match.group(1)
        if name not in values:
            raise RenderError(f"{where}: unknown placeholder {match.group(0)!r}")
        return values[name]

    return PLACEHOLDER.sub(repl, text)


def _skipped(path: Path) -> bool:
    rel = path.relative_to(TEMPLATE_DIR)
    return any(
        part in SKIP_NAMES or part.endswith((".pyc", ".egg-info")) for part in rel.parts
    )


def render(values: dict[str, str], out: Path) -> list[Path]:
    """Copy the template to ``out`` with placeholders substituted; returns the files written.

    :raises RenderError: ``out`` exists and is not an empty directory
    """
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise RenderError(f"--out {str(out)!r} exists and is not an empty directory")
    written = []
    for src in sorted(TEMPLATE_DIR.rglob("*")):
        if _skipped(src) or not src.is_file():
            continue
        rel = src.relative_to(TEMPLATE_DIR).as_posix()
        dest = out / substitute(rel, values, where=rel)
        dest.parent.mkdir(parents=True, exist_ok=True)
        dest.write_text(substitute(src.read_text(encoding="utf-8"), values, where=rel), "utf-8")
        shutil.copymode(src, dest)
        written.append(dest)
    return written


def main(argv: list[str] | None = None) -> int:
    """Command line entry: render, or print the problems to stderr and return 2."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--vendor-id", required=True, help="entry-point name, e.g. acme")
    parser.add_argument("--common-word", required=True, help="HAMi CommonWord, e.g. ACME")
    parser.add_argument("--domain", required=True, help="resource name prefix, e.g. acme.com")
    parser.add_argument("--out", required=True, type=Path, help="new plugin directory")
    args = parser.parse_args(argv)
    try:
        values = placeholders(args.vendor_id, args.common_word, args.domain)
        files = render(values, args.out)
    except RenderError as err:
        sys.stderr.write(f"render.py: error: {err}\n")
        return 2
    sys.stdout.write(f"rendered {values['distribution']} ({len(files)} files) into {args.out}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
