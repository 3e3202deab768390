"""Byte counts as people read them: the one formatter for sizes and the one for limits.

Used across notebooks 02 (memory limits), 04 (layer sizes) and 06 (`contained ps`, `images`).
Two conventions, each where its model uses it:

- sizes in decimal units, as Docker prints them (``docker images``: 4.26MB), like ``du
  --si``; a size is a measurement, three significant digits are plenty;
- limits in binary units, as they were written (``-m 16M``, ``memory.max``), like ``numfmt
  --to=iec 16777216``; a limit is exact, so it is shown exactly.
"""

__all__ = ["GIB", "KIB", "MIB", "format_limit", "format_size"]

KIB = 1 << 10
MIB = 1 << 20
GIB = 1 << 30


def format_size(size: int) -> str:
    """Decimal units, as Docker prints sizes: 512B, 4.26MB, 1.2GB."""
    value = float(size)
    for unit in ("B", "kB", "MB", "GB"):
        if value < 1000 or unit == "GB":
            return f"{value:.0f}{unit}" if unit == "B" else f"{value:.3g}{unit}"
        value /= 1000
    return f"{size}B"


def format_limit(count: int | None) -> str:
    """A memory limit as it was written: 16M, 1G, 512K, or bytes (none without one)."""
    if not count:
        return "none"
    for unit, size in (("G", GIB), ("M", MIB), ("K", KIB)):
        if count >= size and count % size == 0:
            return f"{count // size}{unit}"
    return f"{count}B"
