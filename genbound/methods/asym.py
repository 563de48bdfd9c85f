"""Asymmetric LoRA (A frozen random, only B trains; Zhu et al. 2024) and RAC, its chain."""

from .base import ADAPTER, DENSE, Method, gaussian_a, register

ASYM = register(Method("asym", ADAPTER, "Asym-LoRA", link=DENSE, init_a=gaussian_a))
RAC = register(
    Method(
        "rac", ADAPTER, "RAC", link=DENSE, chain=True, init_a=gaussian_a,
        notes="each link draws a fresh frozen A; A never trains (the released code trained it: a defect).",
    )
)
