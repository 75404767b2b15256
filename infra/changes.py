"""What a run did or would do, one line per resource, printed as it happens."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from enum import StrEnum


class Action(StrEnum):
    CREATE = "create"
    UPDATE = "update"
    UNCHANGED = "unchanged"
    SKIP = "skip"
    DELETE = "delete"


MUTATING = (Action.CREATE, Action.UPDATE, Action.DELETE)


@dataclass(frozen=True)
class Change:
    action: Action
    kind: str
    name: str
    detail: str = ""

    def line(self) -> str:
        text = f"{self.action.value:<9} {self.kind:<26} {self.name}"
        return f"{text}  ({self.detail})" if self.detail else text


@dataclass
class Report:
    """Collects changes; `echo` shows each one when it is recorded."""

    echo: Callable[[str], None] = print
    changes: list[Change] = field(default_factory=list)

    def record(self, action: Action, kind: str, name: str, detail: str = "") -> Change:
        change = Change(action, kind, name, detail)
        self.changes.append(change)
        self.echo(change.line())
        return change

    def step(self, title: str) -> None:
        self.echo(f"==> {title}")

    def count(self, action: Action) -> int:
        return sum(1 for change in self.changes if change.action == action)

    @property
    def changed(self) -> bool:
        return any(change.action in MUTATING for change in self.changes)

    def summary(self) -> str:
        counts = ", ".join(f"{self.count(action)} to {action.value}" for action in MUTATING if self.count(action))
        return f"{counts}; {self.count(Action.UNCHANGED)} unchanged" if counts else "nothing to change"
