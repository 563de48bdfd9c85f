"""LoRA (Hu et al. 2021), LoRA+ (Hayou et al. 2024) and CoLA, the chain of LoRA links (Xia et al. 2024)."""

from .base import ADAPTER, DENSE, Method, kaiming_a, register

LORA = register(Method("lora", ADAPTER, "LoRA", link=DENSE, train_a=True, init_a=kaiming_a))
LORA_PLUS = register(
    Method(
        "lora_plus", ADAPTER, "LoRA+", link=DENSE, train_a=True, init_a=kaiming_a, lr_ratio=16.0,
        notes="B gets lr_ratio times A's learning rate (lambda = 16 by default; --lr-ratio).",
    )
)
COLA = register(
    Method(
        "cola", ADAPTER, "CoLA", link=DENSE, train_a=True, chain=True, init_a=kaiming_a,
        notes="each link: fresh Kaiming A (own seed), B = 0; the finished link is merged and frozen.",
    )
)
