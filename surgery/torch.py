"""Helpers for PyTorch users: state dicts to and from trees, and freeze maps on modules.

torch is imported inside each function, so `import surgery` never needs it.
"""

from __future__ import annotations

__all__: list[str] = []

# @@ section: state-dict @@

# @@ section: freeze @@
