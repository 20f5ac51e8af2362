"""The four transfer-learning cases as data (REFERENCE.md §3), for `surgery freeze --recipe`.

A module of its own, with no numpy, so that the CLI can list the recipe names in
`--help` without importing the operations.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

__all__ = ["Setting", "Recipe", "RECIPES"]


@dataclass(frozen=True)
class Setting:
    """How one parameter trains: whether at all, and at what multiple of the base learning rate."""

    trainable: bool = True
    lr_mult: float = 1.0

    def to_json(self) -> dict[str, Any]:
        return {"trainable": self.trainable, "lr_mult": self.lr_mult}


@dataclass(frozen=True)
class Recipe:
    """One transfer-learning case (REFERENCE.md §3): what the head and the body get."""

    name: str
    case: str
    body: Setting
    head: Setting
    note: str


# Model knowledge is data: the four cases, by dataset size and similarity to the pretraining data.
RECIPES: dict[str, Recipe] = {
    r.name: r
    for r in (
        Recipe(
            "small-similar",
            "small dataset, similar to the pretraining data",
            body=Setting(False, 1.0),
            head=Setting(True, 1.0),
            note="freeze everything pretrained; train only the new head",
        ),
        Recipe(
            "small-different",
            "small dataset, different from the pretraining data",
            body=Setting(False, 1.0),
            head=Setting(True, 1.0),
            note="freeze the kept early layers, train the new head; cut the later layers off first with `surgery truncate`",
        ),
        Recipe(
            "large-similar",
            "large dataset, similar to the pretraining data",
            body=Setting(True, 1.0),
            head=Setting(True, 10.0),
            note="train everything from the pretrained weights; the new head at 10x the learning rate",
        ),
        Recipe(
            "large-different",
            "large dataset, different from the pretraining data",
            body=Setting(True, 1.0),
            head=Setting(True, 10.0),
            note="retrain everything, the new head at 10x the learning rate; to start from scratch, re-initialise first",
        ),
    )
}
