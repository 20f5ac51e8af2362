"""Module attributes imported on first use (PEP 562), so `import surgery` and `--help` stay light.

A package lists `name -> module` in a table and takes `__getattr__`/`__dir__` from `lazy_attributes`.
A name that is the module's own last part (`ops` -> `surgery.ops`) stands for the module itself.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from typing import Any


def lazy_attributes(package: str, table: Mapping[str, str], namespace: dict[str, Any]) -> tuple[Callable[[str], Any], Callable[[], list[str]]]:
    """`__getattr__` and `__dir__` for the module whose globals are `namespace`."""

    def __getattr__(name: str) -> Any:
        module = table.get(name)
        if module is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        imported = importlib.import_module(module)
        value = imported if module.rsplit(".", 1)[-1] == name else getattr(imported, name)
        namespace[name] = value  # later look-ups skip __getattr__
        return value

    def __dir__() -> list[str]:
        return sorted({*namespace, *table})

    return __getattr__, __dir__
