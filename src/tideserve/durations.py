"""The one duration form the API and the CLI take: a whole number and s, m, h or d ('90s', '15m',
'6h', '30d'), for key lifetimes, monitoring windows and `--since`."""

from __future__ import annotations

import re

_FORM = re.compile(r"([0-9]{1,10})([smhd])")  # ten digits at most: no arithmetic on huge numbers
_UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def duration_seconds(text: str) -> int | None:
    """Seconds, or None when `text` (spaces around it aside) is not of that form; each caller says
    what it expected, in its own words."""
    m = _FORM.fullmatch(text.strip())
    return int(m.group(1)) * _UNIT_SECONDS[m.group(2)] if m else None
