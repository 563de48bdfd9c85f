"""Options as typed dataclasses whose fields carry their own help: the command line is generated from them
(one --option per field), and a study file's sections are checked against them. No torch here, so
``genbound --help`` starts without it.

    @dataclass
    class Options:
        grid: int = opt(41, "points per axis (odd puts the centre on the grid)")
"""

from __future__ import annotations

import argparse
import dataclasses
import types
import typing
from collections.abc import Callable
from typing import Any


def opt(default: Any, help: str, flag: str | None = None, parse: Callable[[str], Any] | None = None):
    """A dataclass field with its command-line help (and optionally its flag and a parser for its text)."""
    meta = {"help": help, "flag": flag, "parse": parse}
    if isinstance(default, (list, dict)):
        return dataclasses.field(default_factory=lambda d=default: type(d)(d), metadata=meta)
    return dataclasses.field(default=default, metadata=meta)


def add_options(parser: argparse.ArgumentParser, cls: type) -> None:
    """One --option per field of ``cls``, typed from its annotation, with the field's help."""
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        flag = f.metadata.get("flag") or "--" + f.name.replace("_", "-")
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
        kind = hints[f.name]
        optional = typing.get_origin(kind) in (typing.Union, types.UnionType)
        base = next(a for a in typing.get_args(kind) if a is not type(None)) if optional else kind
        common = {"dest": f.name, "default": default, "help": f.metadata.get("help")}
        if base is bool:
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, **common)
        elif typing.get_origin(base) is list:
            parser.add_argument(flag, nargs="+", type=typing.get_args(base)[0], **common)
        else:
            parser.add_argument(flag, type=f.metadata.get("parse") or base, metavar=f.name.upper(), **common)


def options_from(args: argparse.Namespace, cls: type):
    """An instance of ``cls`` from the parsed command line."""
    return cls(**{f.name: getattr(args, f.name) for f in dataclasses.fields(cls)})


def options_of(cls: type, values: dict, where: str):
    """An instance of ``cls`` from a study file's section; unknown keys are refused in one line."""
    from .errors import GenboundError

    known = {f.name for f in dataclasses.fields(cls)}
    bad = sorted(set(values) - known)
    if bad:
        raise GenboundError(f"{where} has unknown option(s) {bad}; known: {sorted(known)}")
    return cls(**values)
