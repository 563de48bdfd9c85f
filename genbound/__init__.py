"""genbound: train LoRA-family adapters and measure how they generalize."""

__version__ = "0.1.0"
