"""Method registry: ``get_method(name)``. Importing this package imports every module in it, and each module
registers its methods: adding a method is adding a module here. The first modules come in the order of the
methods table (full, head, the LoRA family, the selectors, PaCA); the others follow by name."""

import importlib
import pkgutil

from .base import (ADAPTER, FULL, HEAD, AdapterLayout, Layout, Method, get_method, is_head, method_names,
                   register)

FIRST = ("full", "lora", "asym", "cla", "paca")
for _name in [*FIRST, *sorted(m.name for m in pkgutil.iter_modules(__path__) if m.name not in (*FIRST, "base"))]:
    importlib.import_module(f"{__name__}.{_name}")

__all__ = ["ADAPTER", "FULL", "HEAD", "AdapterLayout", "Layout", "Method", "get_method", "is_head", "method_names",
           "register"]
