"""Strict JSON for headers we do not trust: UTF-8 only, no duplicate keys, no NaN, bounded depth."""

from __future__ import annotations

import json
from typing import Any

from ..errors import CorruptFileError


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise _Duplicate(key)
        out[key] = value
    return out


class _Duplicate(ValueError):
    def __init__(self, key: str) -> None:
        super().__init__(key)
        self.key = key


def _no_constants(name: str) -> Any:
    raise ValueError(f"{name} is not allowed")


def loads_strict(raw: bytes, where: str, what: str = "header", fix: str = "the file is corrupt; re-export it") -> Any:
    """Decode untrusted JSON bytes; every failure is one CorruptFileError naming `where`."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise CorruptFileError(
            f"{what} is not valid UTF-8 (byte {e.start})", where, fix
        ) from e
    try:
        return json.loads(text, object_pairs_hook=_no_duplicates, parse_constant=_no_constants)
    except _Duplicate as e:
        raise CorruptFileError(
            f"{what} names {e.key!r} twice", where, fix
        ) from None
    except RecursionError:
        raise CorruptFileError(f"{what} is nested too deeply", where, fix) from None
    except ValueError as e:
        raise CorruptFileError(
            f"{what} is not valid JSON ({e})", where, fix
        ) from None
