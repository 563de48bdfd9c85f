"""Method registry: ``get_method(name)``. Importing this package registers every method."""

from . import full, lora, asym, cla, paca  # noqa: F401, I001  (registration order = table order)
from .base import ADAPTER, COLUMNS, DENSE, FULL, HEAD, SELECT, Method, generator, get_method, method_names

__all__ = [
    "ADAPTER", "COLUMNS", "DENSE", "FULL", "HEAD", "SELECT", "Method", "generator", "get_method", "method_names",
]
