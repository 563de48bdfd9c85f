"""Progress of long analyses: one tqdm bar (total and ETA) that the inner loops advance without knowing about it.

An analysis opens ``work(total, desc, unit, enabled)`` around its work, with the count of its units (evaluation
batches, QAT steps, grid chunks, data passes) computed up front; the loops that do the units call ``tick()``,
which does nothing when no bar is open (tests, the Python API, other ranks than 0, --quiet). Bars are written to
stderr, and only when it is a terminal, so a command's stdout stays its result and a log or an error stays clean.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

_current: list = []  # the open bar, if any (one at a time; an inner work() while one is open adds nothing)


@contextlib.contextmanager
def work(total: int, desc: str, unit: str = "batch", enabled: bool = True) -> Iterator[None]:
    """A bar of ``total`` units while the block runs (none when not ``enabled`` or when one is open already)."""
    if not enabled or _current:
        yield
        return
    from tqdm import tqdm

    bar = tqdm(total=max(int(total), 0), desc=desc, unit=unit, dynamic_ncols=True, leave=False,
               disable=None)  # None: drawn on a terminal only, so logs and a failing command's one line stay clean
    _current.append(bar)
    try:
        yield
    finally:
        _current.pop()
        bar.close()


def tick(n: int = 1) -> None:
    """Advance the open bar by ``n`` units (a no-op without one)."""
    if _current:
        _current[0].update(n)


def is_open() -> bool:
    return bool(_current)
