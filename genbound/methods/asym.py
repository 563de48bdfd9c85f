"""Asymmetric LoRA (A frozen random, only B trains; Zhu et al. 2024) and RAC, its chain, on the dense low-rank
layout of lora.py."""

from .base import Method, gaussian_a, register
from .lora import LowRank

ASYM = register(Method("asym", "Asym-LoRA", LowRank(gaussian_a, train_a=False)))
RAC = register(
    Method("rac", "RAC", LowRank(gaussian_a, train_a=False), chain=True,
           notes="each link draws a fresh frozen A; A never trains (the released code trained it: a defect).")
)
