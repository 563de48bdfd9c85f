"""Full fine-tuning and head-only training: no adapter layer, only a choice of trainable tensors."""

from .base import FULL, HEAD, Method, register

FULL_FT = register(Method("full", FULL, "full fine-tuning"))
HEAD_ONLY = register(Method("head", HEAD, "head only"))
