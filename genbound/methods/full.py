"""Full fine-tuning and head-only training: no adapter layer, only a choice of trainable tensors."""

from .base import FullLayout, HeadLayout, Method, register

FULL_FT = register(Method("full", "full fine-tuning", FullLayout()))
HEAD_ONLY = register(Method("head", "head only", HeadLayout()))
