"""What an operation did, as data: every change is listed, nothing is silent."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

__all__ = ["Change", "Report"]


@dataclass(frozen=True)
class Change:
    """One change to one tensor.

    kind is one of "dropped", "added", "reshaped", "reinitialised", "renamed", "cast", "copied".
    """

    kind: str
    name: str
    before: str = ""
    after: str = ""
    detail: str = ""


@dataclass
class Report:
    """The result description an operation returns beside its new tree."""

    operation: str
    changes: list[Change] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    facts: dict[str, object] = field(default_factory=dict)

    def add(self, kind: str, name: str, before: str = "", after: str = "", detail: str = "") -> None:
        self.changes.append(Change(kind, name, before, after, detail))

    def names(self, kind: str) -> list[str]:
        return [c.name for c in self.changes if c.kind == kind]

    def to_json(self) -> dict[str, object]:
        return {
            "operation": self.operation,
            "changes": [asdict(c) for c in self.changes],
            "notes": list(self.notes),
            "facts": dict(self.facts),
        }
