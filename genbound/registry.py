"""A name -> item registry that refuses a name twice and answers an unknown name with one line listing the
known ones (methods and analyses are registered this way). No torch here."""

from __future__ import annotations

from typing import Generic, TypeVar

T = TypeVar("T")


class Registry(dict, Generic[T]):
    def __init__(self, kind: str, error: type[Exception]):
        super().__init__()
        self.kind, self.error = kind, error

    def add(self, item: T) -> T:
        """Register ``item`` under its ``name``."""
        if item.name in self:
            raise ValueError(f"{self.kind} {item.name} registered twice")
        self[item.name] = item
        return item

    def find(self, name: str) -> T:
        """The item registered under ``name``; the registry's error naming the known ones otherwise."""
        try:
            return self[name]
        except KeyError:
            raise self.error(f"unknown {self.kind} {name!r}; known: {', '.join(self)}") from None
