"""The exception hierarchy of hami-core-fw.

Every error the project raises on purpose derives from :class:`HamiError`. Messages say what failed,
on which object, the offending value (``!r``) and how to fix it; lower-case, no trailing period.
"""

from __future__ import annotations

from collections.abc import Sequence


class HamiError(Exception):
    """Base class of every error raised on purpose by hami-core-fw."""


class ConfigError(HamiError):
    """Configuration is invalid; carries every problem found, not only the first."""

    def __init__(self, problems: Sequence[str], *, source: str = "configuration") -> None:
        self.problems = tuple(problems)
        self.source = source
        lines = "\n".join(f"  - {p}" for p in self.problems)
        super().__init__(f"{source} has {len(self.problems)} problem(s):\n{lines}")


class CodecError(HamiError, ValueError):
    """A HAMi wire value (annotation) does not decode.

    :param key: the annotation key the value came from
    :param value: the whole value
    :param part: the offending part of the value
    :param problem: what is wrong with that part
    """

    def __init__(self, key: str, value: str, part: str, problem: str) -> None:
        self.key = key
        self.value = value
        self.part = part
        self.problem = problem
        super().__init__(f"annotation {key!r}: {problem} in part {part!r} of value {value!r}")


class PluginError(HamiError):
    """A plugin failed: it raised inside a hook, or cannot be loaded against this core."""

    def __init__(self, message: str, *, plugin: str, hook: str | None = None) -> None:
        self.plugin = plugin
        self.hook = hook
        where = f"plugin {plugin!r}" + (f" in hook {hook!r}" if hook else "")
        super().__init__(f"{where}: {message}")


class DuplicateVendorError(PluginError):
    """Two plugins registered a vendor with the same id or CommonWord."""


class VendorUnavailable(HamiError):
    """A vendor's node-side library (NVML, DCMI, ...) is missing or cannot be initialised."""


class PermanentError(HamiError):
    """An operation failed in a way that retrying will not fix."""


class RetryableError(HamiError):
    """An operation failed transiently; retry after ``delay`` seconds."""

    def __init__(self, message: str, *, delay: float = 1.0) -> None:
        self.delay = delay
        super().__init__(message)


class AdmissionDenied(HamiError):
    """The webhook must reject the pod; ``code`` is the HTTP-like status code reported."""

    def __init__(self, message: str, *, code: int = 400) -> None:
        self.message = message
        self.code = code
        super().__init__(message)


class InvalidRequest(HamiError, ValueError):
    """A pod asks for a device resource in a form we cannot honour (unit, range, type)."""
