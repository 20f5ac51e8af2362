"""Helpers for Keras users: freeze maps on models.

keras is imported inside each function, so `import surgery` never needs it.
"""

from __future__ import annotations

__all__: list[str] = []

# @@ section: freeze @@
