"""Whether the Hugging Face hub can be reached: one TCP probe, so an offline machine is told in one line instead
of waiting out a library's retries. Bottom layer (no torch, no genbound imports): data and models both ask it."""

from __future__ import annotations

import functools
import os
import socket
from urllib.parse import urlparse

OFFLINE_VALUES = ("1", "true", "yes", "on")


@functools.lru_cache(maxsize=1)
def hub_reachable(timeout: float = 3.0) -> bool:
    """Whether the hub (HF_ENDPOINT) answers a TCP connection within ``timeout`` seconds; False at once under
    HF_HUB_OFFLINE=1 (or HF_DATASETS_OFFLINE=1). Asked once per process."""
    if any(os.environ.get(v, "").lower() in OFFLINE_VALUES for v in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE")):
        return False
    url = urlparse(os.environ.get("HF_ENDPOINT") or "https://huggingface.co")
    try:
        socket.create_connection((url.hostname, url.port or (443 if url.scheme == "https" else 80)),
                                 timeout=timeout).close()
        return True
    except OSError:
        return False
