"""What an analysis returns: a typed result that knows its JSON schema id, renders its table, and declares the
measures ``genbound compare`` may rank against the gap. It imports no torch itself."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar

Measure = tuple[Callable[[dict], Any], str]  # (value from the result's JSON, what it is)


@dataclass
class Result:
    """One analysis of one checkpoint. ``data`` is exactly its JSON (docs/design.md lists the keys of each
    schema); it reads like that JSON (``result["eigenvalues"]``)."""

    data: dict
    SCHEMA: ClassVar[str] = ""
    MEASURES: ClassVar[dict[str, Measure]] = {}

    def render(self) -> str:
        """The readable table."""
        raise NotImplementedError

    def to_json(self) -> dict:
        return self.data

    def measures(self) -> dict[str, float | None]:
        """Every declared measure's value (None where the result does not hold it, or it is not finite)."""
        out = {}
        for name, (get, _) in self.MEASURES.items():
            try:
                value = get(self.data)
            except (KeyError, IndexError, TypeError, ValueError):
                value = None
            out[name] = value if isinstance(value, (int, float)) and math.isfinite(value) else None
        return out

    def __getitem__(self, key: str) -> Any:
        return self.data[key]

    def __contains__(self, key: str) -> bool:
        return key in self.data

    def get(self, key: str, default: Any = None) -> Any:
        return self.data.get(key, default)
