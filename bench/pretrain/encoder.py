"""The image encoder every method trains: a plain torchvision ResNet, and how images reach it.

Owns :func:`new_encoder` (``weights_registry.build_resnet``: ``fc = Identity``, three
input channels, so the exported state dict is exactly the torchvision layout that
``weights_registry.build_encoder`` loads strictly), :func:`to_input` (a float batch in
[0, 1] with one channel -> three channels with the ImageNet normalization that the
catalogue entry of a pretrained encoder then declares), :func:`feature_dim` and
:func:`c5` (the last feature map, for CLIP's attention pooling).
"""

from __future__ import annotations

import torch
from torch import nn

from weights_registry.normalization import IMAGENET_MEAN, IMAGENET_STD

MEAN, STD = list(IMAGENET_MEAN), list(IMAGENET_STD)


def new_encoder(arch: str) -> nn.Module:
    """A randomly initialized torchvision ResNet (draws from the global torch RNG)."""
    from weights_registry import build_resnet

    return build_resnet(arch, in_channels=3)


def feature_dim(encoder: nn.Module) -> int:
    """Width of the pooled features (512 for resnet18/34, 2048 for resnet50)."""
    last = encoder.layer4[-1]
    return (last.conv3 if hasattr(last, "conv3") else last.conv2).out_channels


def to_input(x: torch.Tensor) -> torch.Tensor:
    """(B, 1, H, W) floats in [0, 1] -> (B, 3, H, W), ImageNet-normalized."""
    mean = torch.tensor(MEAN, device=x.device, dtype=x.dtype).view(1, 3, 1, 1)
    std = torch.tensor(STD, device=x.device, dtype=x.dtype).view(1, 3, 1, 1)
    return (x.expand(-1, 3, -1, -1) - mean) / std


def c5(encoder: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The ResNet's last feature map (B, C, H/32, W/32), before global pooling."""
    e = encoder
    x = e.maxpool(e.relu(e.bn1(e.conv1(x))))
    return e.layer4(e.layer3(e.layer2(e.layer1(x))))


def export_state(encoder: nn.Module) -> dict[str, torch.Tensor]:
    """The encoder's tensors in the torchvision ResNet layout (no ``fc``), contiguous on CPU."""
    return {k: v.detach().cpu().contiguous().clone() for k, v in encoder.state_dict().items()}
