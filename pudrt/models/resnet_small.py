"""Small CIFAR ResNets that train on a 2-core CPU in minutes.

A ResNet in the style of He et al. 2016 ("Deep Residual Learning"), CIFAR
variant: a 3×3 stem, three stages of basic blocks at widths (w, 2w, 4w) with
stride 2 between stages, global average pooling and one Linear head. `resnet8`
is one block per stage at w=16; the wider variants trade time for accuracy.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from pudrt.models.registry import register_model


class BasicBlock(nn.Module):
    def __init__(self, c_in: int, c_out: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.shortcut = (
            nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride, bias=False), nn.BatchNorm2d(c_out))
            if stride != 1 or c_in != c_out
            else nn.Identity()
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class ResNetSmall(nn.Module):
    def __init__(self, num_classes: int = 10, width: int = 16, blocks: tuple[int, int, int] = (1, 1, 1)):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, width, 3, 1, 1, bias=False), nn.BatchNorm2d(width), nn.ReLU())
        layers, c = [], width
        for stage, n in enumerate(blocks):
            c_out = width * 2**stage
            for b in range(n):
                layers.append(BasicBlock(c, c_out, 2 if stage > 0 and b == 0 else 1))
                c = c_out
        self.layers = nn.Sequential(*layers)
        self.fc = nn.Linear(c, num_classes)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Penultimate features: (N, 4w) after global average pooling."""
        return self.layers(self.stem(x)).mean(dim=(2, 3))

    def forward_head(self, features: torch.Tensor) -> torch.Tensor:
        return self.fc(features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


@register_model
def resnet8(num_classes: int = 10) -> ResNetSmall:
    """3 stages × 1 block, width 16 (78k parameters)."""
    return ResNetSmall(num_classes, width=16, blocks=(1, 1, 1))


@register_model
def resnet8w32(num_classes: int = 10) -> ResNetSmall:
    """3 stages × 1 block, width 32 (310k parameters)."""
    return ResNetSmall(num_classes, width=32, blocks=(1, 1, 1))


@register_model
def resnet14w32(num_classes: int = 10) -> ResNetSmall:
    """3 stages × 2 blocks, width 32 (690k parameters)."""
    return ResNetSmall(num_classes, width=32, blocks=(2, 2, 2))


class ResNet9(nn.Module):
    """The fast-training 'ResNet-9' of Page (2018, DAWNBench), at width `w` instead of 64.

    conv(w) → conv(2w)+pool → residual(2w) → conv(4w)+pool → conv(8w)+pool → residual(8w)
    → global max pool → Linear, logits scaled by 1/8 as in the original (the max-pooled
    features are large; without the scale, early training diverges). Pooling early keeps
    it cheap on a CPU.
    """

    def __init__(self, num_classes: int = 10, width: int = 16):
        super().__init__()

        def cbr(c_in, c_out, pool=False):
            layers = [nn.Conv2d(c_in, c_out, 3, 1, 1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU()]
            return nn.Sequential(*layers, nn.MaxPool2d(2)) if pool else nn.Sequential(*layers)

        w = width
        self.prep = cbr(3, w)
        self.layer1 = cbr(w, 2 * w, pool=True)
        self.res1 = nn.Sequential(cbr(2 * w, 2 * w), cbr(2 * w, 2 * w))
        self.layer2 = cbr(2 * w, 4 * w, pool=True)
        self.layer3 = cbr(4 * w, 8 * w, pool=True)
        self.res3 = nn.Sequential(cbr(8 * w, 8 * w), cbr(8 * w, 8 * w))
        self.fc = nn.Linear(8 * w, num_classes)
        self.fc_scale = 0.125

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        x = self.layer1(self.prep(x))
        x = x + self.res1(x)
        x = self.layer3(self.layer2(x))
        x = x + self.res3(x)
        return x.amax(dim=(2, 3))

    def forward_head(self, features: torch.Tensor) -> torch.Tensor:
        return self.fc(features) * self.fc_scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


@register_model
def resnet9w16(num_classes: int = 10) -> ResNet9:
    """ResNet-9 at width 16 (0.4M parameters)."""
    return ResNet9(num_classes, width=16)


@register_model
def resnet9w24(num_classes: int = 10) -> ResNet9:
    """ResNet-9 at width 24 (0.9M parameters)."""
    return ResNet9(num_classes, width=24)


@register_model
def resnet9w32(num_classes: int = 10) -> ResNet9:
    """ResNet-9 at width 32 (1.6M parameters)."""
    return ResNet9(num_classes, width=32)
