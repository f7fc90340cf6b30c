"""Protocols: what trains and what stays frozen, and strict loading of encoder weights.

Owns :class:`ProtocolModel` (the wrapper every segmenter and detector is built in),
:func:`load_into` (copy registry tensors into a library model's encoder, failing on
any mismatch) and :func:`count_parameters`. The three protocols of design §5 are
enforced here and nowhere else:

- ``linear``: frozen encoder, one 1x1 conv on the last feature map (C5), bilinear
  upsampling to the mask size (:class:`bench.models.segmentation.LinearSegmenter`);
- ``frozen``: frozen encoder, trained U-Net decoder or FPN and detection heads;
- ``finetune``: everything trains.

"Frozen" means no gradients *and* BatchNorm in eval mode. :class:`ProtocolModel`
enforces the second part in ``train()``, so no training loop can forget it (MGCA's
frozen encoders still update their running statistics, design §8.5).
"""

from __future__ import annotations

import torch
from torch import nn

FROZEN_PROTOCOLS = ("frozen", "linear")


class LoadMismatch(RuntimeError):
    """The registry encoder's tensors did not all land in the model's encoder."""


class ProtocolModel(nn.Module):
    """A model with an ``encoder`` attribute whose training follows a protocol."""

    def __init__(self, model: nn.Module, protocol: str):
        super().__init__()
        self.model = model
        self.protocol = protocol
        if protocol in FROZEN_PROTOCOLS:
            for p in self.encoder.parameters():
                p.requires_grad_(False)
        self.train()

    @property
    def encoder(self) -> nn.Module:
        return self.model.encoder

    @property
    def encoder_outputs_used(self):
        """Which encoder outputs the model reads (positions or keys; None: all of them)."""
        return getattr(self.model, "encoder_outputs_used", None)

    @property
    def frozen(self) -> bool:
        return self.protocol in FROZEN_PROTOCOLS

    def train(self, mode: bool = True) -> ProtocolModel:
        super().train(mode)
        if self.frozen:
            self.encoder.eval()  # BatchNorm running stats must not move
        return self

    def forward(self, *args, **kwargs):
        return self.model(*args, **kwargs)

    def trainable_parameters(self) -> list[nn.Parameter]:
        return [p for p in self.parameters() if p.requires_grad]


def load_into(target: nn.Module, source_state: dict[str, torch.Tensor]) -> int:
    """Copy every tensor of ``source_state`` into ``target``; fail loudly on any mismatch.

    smp's ``encoder.load_state_dict`` returns nothing to check (design §8.6), so this
    calls ``nn.Module.load_state_dict`` strictly, then compares every tensor.
    Returns the number of tensors loaded.
    """
    target_keys = set(target.state_dict())
    source = {k: v for k, v in source_state.items() if not k.startswith("fc.")}
    missing = sorted(target_keys - set(source))
    unexpected = sorted(set(source) - target_keys)
    if missing or unexpected:
        raise LoadMismatch(
            f"encoder tensors do not match the model: missing {missing[:10]} ({len(missing)}), "
            f"unexpected {unexpected[:10]} ({len(unexpected)})"
        )
    nn.Module.load_state_dict(target, source, strict=True)
    after = target.state_dict()
    for k, v in source.items():
        if not torch.equal(after[k].cpu(), v.cpu()):
            raise LoadMismatch(f"tensor {k} did not load")
    return len(source)


def count_parameters(model: nn.Module) -> dict:
    total = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return {"total": total, "trainable": trainable}
