"""Human byte sizes such as `5GB` or `500MB`, as Hugging Face's `max_shard_size` reads them."""

from __future__ import annotations

import re

from .errors import SurgeryError

__all__ = ["parse_size", "format_size"]

# Decimal units as Hugging Face uses them; binary units when spelled with an i.
_UNITS = {
    "": 1,
    "B": 1,
    "KB": 10**3,
    "MB": 10**6,
    "GB": 10**9,
    "TB": 10**12,
    "KIB": 2**10,
    "MIB": 2**20,
    "GIB": 2**30,
    "TIB": 2**40,
}
_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([A-Za-z]*)\s*$")


def parse_size(text: str, where: str = "--shard-size") -> int:
    """Bytes in `text`: a whole number of bytes, or a number with KB/MB/GB/TB (or KiB/MiB/GiB/TiB).

    >>> parse_size("5GB"), parse_size("500MB"), parse_size("1024")
    (5000000000, 500000000, 1024)
    """
    match = _SIZE.match(str(text))
    unit = match.group(2).upper() if match else ""
    if not match or unit not in _UNITS:
        raise SurgeryError(
            f"cannot read {text!r} as a size", where, "write bytes as a number, or with a unit: 500MB, 5GB, 2GiB"
        )
    size = int(float(match.group(1)) * _UNITS[unit])
    if size <= 0:
        raise SurgeryError(f"size {text!r} is not positive", where, "give a size above zero, e.g. 5GB")
    return size


def format_size(n: int) -> str:
    """A short human form: 1.5 GB, 12.0 MB, 512 B."""
    for unit, scale in (("GB", 10**9), ("MB", 10**6), ("KB", 10**3)):
        if n >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{n} B"
