"""Image classifiers: the vision transformers genbound builds (``vit``, ``tiny-vit``), how an HF model is told to
be one, and the pixels a vision task's flat features become for it.

Vision tasks hold flat float features in [0, 1] (N x side^2, grey). A model without an image processor
(genbound's own ViTs, a base from ``genbound pretrain --model vit``) takes them reshaped to its
``config.image_size`` (N x C x side x side, grey repeated over C channels); one with a processor
(``preprocessor_config.json`` in its folder or hub repo) gets each image as the processor wants it (grey ->
RGB where the model has 3 channels, resized and normalised as the processor says).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from .errors import GenboundError

# patch 4 on 28 x 28 grey images: 49 patches + [CLS]; 6 layers of width 192 (3 heads of 64), MLP 768: 2.7M
# parameters, a ViT-Tiny-like width at the depth of MiniLM
VIT_SIZES: dict[str, dict[str, int]] = {
    "vit": {"image_size": 28, "patch_size": 4, "num_channels": 1, "hidden_size": 192, "num_hidden_layers": 6,
            "num_attention_heads": 3, "intermediate_size": 768},
    "tiny-vit": {"image_size": 28, "patch_size": 7, "num_channels": 1, "hidden_size": 32, "num_hidden_layers": 2,
                 "num_attention_heads": 2, "intermediate_size": 64},
}
PROCESSOR_CHUNK = 512  # images per call of an image processor


def random_vit(name: str, num_classes: int, init_seed: int):
    """A random-init ViTForImageClassification of one of VIT_SIZES (its head included, seeded)."""
    from transformers import ViTConfig, ViTForImageClassification

    with torch.random.fork_rng():
        torch.manual_seed(init_seed)
        return ViTForImageClassification(ViTConfig(**VIT_SIZES[name], num_labels=num_classes))


def is_image_classifier(config) -> bool:
    """Whether an HF config belongs to an image-classification model (ViT, DeiT, Swin, ConvNeXt, ...)."""
    from transformers import MODEL_FOR_IMAGE_CLASSIFICATION_MAPPING

    return type(config) in MODEL_FOR_IMAGE_CLASSIFICATION_MAPPING


def side_of(size: Any) -> int:
    """The side length of a square image size given as an int, a (h, w) pair or a {"height", "width"} dict."""
    if isinstance(size, dict):
        size = (size.get("height"), size.get("width"))
    if isinstance(size, (list, tuple)):
        if len(size) != 2 or size[0] != size[1]:
            raise GenboundError(f"image size {size}: genbound feeds square images only")
        size = size[0]
    return int(size)


@dataclass
class Pixels:
    """How a vision task's flat features become a model's ``pixel_values``: reshaped to ``side`` x ``side`` with
    ``channels`` channels, or through ``processor`` when the model has one."""

    model: str  # the model's name, for messages
    side: int
    channels: int
    processor: Any = None

    def check(self, features: int, task: str = "this task") -> None:
        """One line when examples of ``features`` features cannot become this model's pixels."""
        if self.processor is None and features != self.side * self.side:
            raise GenboundError(f"model {self.model} takes {self.side} x {self.side} images ({self.side ** 2} "
                                f"features), but {task} has {features} features per example")
        if math.isqrt(features) ** 2 != features:
            raise GenboundError(f"{task} has {features} features per example, not a square grey image, so "
                                f"model {self.model}'s image processor cannot take it")

    def encode(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        n, features = x.shape
        self.check(features)
        own = math.isqrt(features)
        if self.processor is None:
            grey = x.float().reshape(n, 1, self.side, self.side)
            return {"pixel_values": grey.expand(n, self.channels, self.side, self.side).contiguous()}
        # uint8 H x W x C images, as a processor reads a picture: grey repeated to RGB for a 3-channel model
        images = (x.float().clamp(0, 1) * 255).round().to(torch.uint8).reshape(n, own, own, 1).numpy()
        if self.channels != 1:
            images = np.repeat(images, self.channels, axis=3)
        parts = [self.processor(images=list(images[lo:lo + PROCESSOR_CHUNK]), return_tensors="pt",
                                input_data_format="channels_last")["pixel_values"]
                 for lo in range(0, n, PROCESSOR_CHUNK)]
        return {"pixel_values": torch.cat(parts).float() if parts else
                torch.zeros(0, self.channels, self.side, self.side)}


def pixels_for(model, name: str, source: str | None, offline: bool) -> Pixels:
    """The Pixels of an image model: its config's image size and channels, and its image processor when its
    folder (or hub repo) has one (``source`` None: a model genbound builds, which has none)."""
    config = model.config
    channels, side = int(getattr(config, "num_channels", 3)), side_of(getattr(config, "image_size", 224))
    processor = None
    if source is not None:
        from transformers import AutoImageProcessor

        try:
            processor = AutoImageProcessor.from_pretrained(source, local_files_only=offline)
        except (OSError, ValueError):
            processor = None  # no preprocessor_config.json: the pixels are reshaped to the config's size
    return Pixels(name, side, channels, processor)
