"""Diffusion Policy's image encoder, laid out as LeRobot saves it (``diffusion.rgb_encoder.*``).

A ResNet trunk without its pooling and classifier (torchvision's ``resnet18``/``resnet34`` layout
as an ``nn.Sequential``: 0 conv1, 1 norm, 2 relu, 3 maxpool, 4-7 layer1-4 of basic blocks), its
BatchNorms replaced by GroupNorm(C // 16) when the policy was trained with ``use_group_norm``; then
a spatial soft-argmax (a 1x1 conv to K keypoint maps, softmax over each map, expected x/y on a
[-1, 1] grid), and ``relu(Linear(2K, 2K))``. Eval-time preprocessing is a centre crop to
``crop_shape``. Written for dmc without torchvision; names match so the weights load as saved.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

BLOCKS = {"resnet18": (2, 2, 2, 2), "resnet34": (3, 4, 6, 3)}


def _norm(channels: int, group_norm: bool) -> nn.Module:
    return nn.GroupNorm(channels // 16, channels) if group_norm else nn.BatchNorm2d(channels)


class BasicBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int, group_norm: bool):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = _norm(cout, group_norm)
        self.relu = nn.ReLU(inplace=False)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = _norm(cout, group_norm)
        self.downsample = (nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), _norm(cout, group_norm))
                           if stride != 1 or cin != cout else None)

    def forward(self, x):
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + (self.downsample(x) if self.downsample is not None else x))


def resnet_trunk(name: str, in_channels: int, group_norm: bool) -> nn.Sequential:
    layers: list[nn.Module] = [nn.Conv2d(in_channels, 64, 7, 2, 3, bias=False), _norm(64, group_norm), nn.ReLU(),
                               nn.MaxPool2d(3, 2, 1)]
    cin = 64
    for i, (blocks, cout) in enumerate(zip(BLOCKS[name], (64, 128, 256, 512))):
        stride = 1 if i == 0 else 2
        layers.append(nn.Sequential(*[BasicBlock(cin if b == 0 else cout, cout, stride if b == 0 else 1, group_norm)
                                      for b in range(blocks)]))
        cin = cout
    return nn.Sequential(*layers)


class SpatialSoftmax(nn.Module):
    def __init__(self, channels: int, height: int, width: int, keypoints: int | None):
        super().__init__()
        self.nets = nn.Conv2d(channels, keypoints, 1) if keypoints else None
        self.keypoints = keypoints or channels
        self.hw = height * width
        xs, ys = np.meshgrid(np.linspace(-1.0, 1.0, width), np.linspace(-1.0, 1.0, height))  # numpy, as trained
        grid = np.stack([xs.reshape(-1), ys.reshape(-1)], axis=1)
        self.register_buffer("pos_grid", torch.from_numpy(grid).float())

    def forward(self, features):
        if self.nets is not None:
            features = self.nets(features)
        attention = torch.softmax(features.reshape(-1, self.hw), dim=-1)
        return (attention @ self.pos_grid).reshape(-1, self.keypoints, 2)


class RgbEncoder(nn.Module):
    """``[N, C, H, W]`` images in [0, 1] (already normalised) -> ``[N, 2K]`` features."""

    def __init__(self, backbone: str, image_shape: tuple[int, int, int], crop: tuple[int, int] | None,
                 keypoints: int, group_norm: bool):
        super().__init__()
        self.crop = crop
        self.backbone = resnet_trunk(backbone, image_shape[0], group_norm)
        h, w = crop or image_shape[1:]
        with torch.no_grad():
            c, fh, fw = self.backbone.eval()(torch.zeros(1, image_shape[0], h, w)).shape[1:]
        self.pool = SpatialSoftmax(c, fh, fw, keypoints)
        self.out = nn.Linear(2 * keypoints, 2 * keypoints)
        self.relu = nn.ReLU()

    def forward(self, x):
        if self.crop is not None:  # centre crop, as torchvision's CenterCrop (eval mode)
            h, w = x.shape[-2:]
            ch, cw = self.crop
            top, left = int(round((h - ch) / 2.0)), int(round((w - cw) / 2.0))
            x = x[..., top:top + ch, left:left + cw]
        return self.relu(self.out(torch.flatten(self.pool(self.backbone(x)), start_dim=1)))
