"""Convolutional Block Attention Module (Woo et al., ECCV 2018).

Exactly the original design, since DAFH does not modify it: channel attention from a shared
MLP (reduction ratio 16) over average- and max-pooled descriptors, added and passed through a
sigmoid; then spatial attention from a 7x7 convolution over the channel-wise average and max
maps. Channel first, then spatial (the order Woo et al. found best).
"""
from __future__ import annotations

import torch
from torch import nn


class ChannelAttention(nn.Module):
    """CAM: which channels matter, from avg- and max-pooled descriptors through one MLP."""

    def __init__(self, channels: int, reduction: int = 16) -> None:
        super().__init__()
        hidden = max(channels // reduction, 1)
        self.mlp = nn.Sequential(
            nn.Conv2d(channels, hidden, 1, bias=False),
            nn.ReLU(inplace=True),
            nn.Conv2d(hidden, channels, 1, bias=False),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        avg = self.mlp(x.mean(dim=(2, 3), keepdim=True))
        mx = self.mlp(x.amax(dim=(2, 3), keepdim=True))
        return torch.sigmoid(avg + mx)


class SpatialAttention(nn.Module):
    """SAM: where to look, from channel-wise avg and max maps through a 7x7 conv."""

    def __init__(self, kernel_size: int = 7) -> None:
        super().__init__()
        self.conv = nn.Conv2d(2, 1, kernel_size, padding=kernel_size // 2, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        desc = torch.cat([x.mean(dim=1, keepdim=True), x.amax(dim=1, keepdim=True)], dim=1)
        return torch.sigmoid(self.conv(desc))


class CBAM(nn.Module):
    """F' = M_c(F) * F; F'' = M_s(F') * F'."""

    def __init__(self, channels: int, reduction: int = 16, kernel_size: int = 7) -> None:
        super().__init__()
        self.channel = ChannelAttention(channels, reduction)
        self.spatial = SpatialAttention(kernel_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x * self.channel(x)
        return x * self.spatial(x)
