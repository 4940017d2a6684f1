"""A small convolutional network for digits' 8x8 images: looplab calls it with the data's
sizes (n_features=64, n_outputs=10) and the model config's other keys (channels)."""

from __future__ import annotations

import math

import torch
from torch import nn


class SmallCNN(nn.Module):
    """Two 3x3 convolutions on the image the 64 features are, then one linear layer."""

    def __init__(self, n_features: int, n_outputs: int, channels: int = 8) -> None:
        super().__init__()
        self.side = math.isqrt(n_features)
        if self.side**2 != n_features:
            raise ValueError(f"SmallCNN needs square images; {n_features} features are not")
        self.features = nn.Sequential(
            nn.Conv2d(1, channels, 3, padding=1),
            nn.ReLU(),
            nn.Conv2d(channels, channels, 3, padding=1),
            nn.ReLU(),
            nn.AdaptiveAvgPool2d(2),
        )
        self.head = nn.Linear(channels * 4, n_outputs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        images = x.view(-1, 1, self.side, self.side)
        return self.head(self.features(images).flatten(1))
