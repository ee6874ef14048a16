"""{{distribution}}: the {{common_word}} vendor plugin of hami-core-fw."""

from __future__ import annotations

__version__ = "0.1.0"
