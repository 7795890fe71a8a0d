"""CIFAR ResNets (20/32/44/56), ResNet-18 and Wide-ResNet-18, as used in the SynFlow paper.

* ``resnet20/32/44/56``: the CIFAR ResNets of He et al. in the "lottery ticket"
  form of the paper's code (``Models/lottery_resnet.py``): a 3x3 stem conv with 16
  channels + BN + ReLU, three stages of ``(depth - 2) / 6`` BasicBlocks with
  16/32/64 channels, stride 2 at the first block of stages 2 and 3, 1x1 conv + BN
  shortcuts where the shape changes (option B), global average pool and a linear
  classifier.
* ``resnet18`` / ``wide_resnet18``: the CIFAR variant of ResNet-18 (3x3 stem conv,
  no max-pool) with ``[2, 2, 2, 2]`` BasicBlocks of 64/128/256/512 channels, and the
  same network with every channel count doubled (128/256/512/1024).

All convolutions have no bias (each is followed by BatchNorm). The residual sum is
a plain ``out + shortcut`` so the models trace with ``torch.fx`` and export to ONNX.

Paper: Tanaka et al., "Pruning neural networks without any data by iteratively
conserving synaptic flow", NeurIPS 2020, https://arxiv.org/abs/2006.05467
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from synflow_plugin.models._common import (
    check_input_shape,
    check_min_extent,
    check_num_classes,
    check_width_multiplier,
    initialize_weights,
    scale_channels,
)

__all__ = [
    # building blocks
    "BasicBlock",
    "ResNet",
    # CIFAR ResNets (16/32/64 channels)
    "resnet20",
    "resnet32",
    "resnet44",
    "resnet56",
    # ResNet-18 family (64/128/256/512 channels)
    "resnet18",
    "wide_resnet18",
]


class BasicBlock(nn.Module):
    """Two 3x3 conv + BN layers with a residual connection.

    ``out = relu(bn2(conv2(relu(bn1(conv1(x))))) + shortcut(x))``, where the shortcut
    is the identity when the shape is kept and a 1x1 conv (no bias) + BN otherwise.

    Args:
        in_channels: channels of the block's input.
        out_channels: channels of the block's output.
        stride: stride of ``conv1`` and of the shortcut conv (2 to halve the resolution).
    """

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.relu1 = nn.ReLU()
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels)
        if stride != 1 or in_channels != out_channels:
            self.shortcut: nn.Module = nn.Sequential(
                nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=False),
                nn.BatchNorm2d(out_channels),
            )
        else:
            self.shortcut = nn.Identity()
        self.relu2 = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu1(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        out = out + self.shortcut(x)
        return self.relu2(out)


class ResNet(nn.Module):
    """A ResNet of BasicBlocks: stem, ``stages``, global average pool, ``fc``.

    Args:
        stage_widths: channels of each stage; the stem has ``stage_widths[0]`` channels.
        blocks_per_stage: number of BasicBlocks in each stage.
        num_classes: number of outputs of the classifier.
        in_channels: channels of the input images.

    Every stage after the first starts with a stride-2 block. The weights are left at
    PyTorch's defaults; the factories apply
    :func:`~synflow_plugin.models.initialize_weights`.
    """

    def __init__(
        self,
        stage_widths: Sequence[int],
        blocks_per_stage: Sequence[int],
        num_classes: int,
        in_channels: int = 3,
    ):
        super().__init__()
        channels = stage_widths[0]
        self.conv1 = nn.Conv2d(in_channels, channels, 3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(channels)
        self.relu = nn.ReLU()
        stages = []
        for index, (width, blocks) in enumerate(zip(stage_widths, blocks_per_stage)):
            stage = []
            for block in range(blocks):
                stride = 2 if index > 0 and block == 0 else 1
                stage.append(BasicBlock(channels, width, stride))
                channels = width
            stages.append(nn.Sequential(*stage))
        self.stages = nn.Sequential(*stages)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(channels, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.stages(x)
        x = self.pool(x)
        x = torch.flatten(x, 1)
        return self.fc(x)


def _resnet(
    name: str,
    stage_widths: Sequence[int],
    blocks_per_stage: Sequence[int],
    num_classes: int,
    input_shape: Sequence[int],
    width_multiplier: float,
    zero_init_residual: bool,
) -> ResNet:
    num_classes = check_num_classes(num_classes)
    shape = check_input_shape(
        input_shape, model=name, ndims=(3,), layout="(channels, height, width)"
    )
    downsamplings = len(stage_widths) - 1
    check_min_extent(
        shape,
        2**downsamplings,
        model=name,
        reason=f"its {downsamplings} stride-2 stages halve it",
    )
    width_multiplier = check_width_multiplier(width_multiplier, model=name)
    widths = [scale_channels(w, width_multiplier) for w in stage_widths]
    model = ResNet(widths, blocks_per_stage, num_classes, in_channels=shape[0])
    model.input_shape = shape
    model.num_classes = num_classes
    initialize_weights(model)
    if zero_init_residual:
        for module in model.modules():
            if isinstance(module, BasicBlock):
                nn.init.zeros_(module.bn2.weight)
    return model


_ARGS_DOC = """
    Args:
        num_classes: number of outputs.
        input_shape: shape of one sample without the batch dimension, ``(C, H, W)``;
            ``H`` and ``W`` must be at least {minimum}.
        width_multiplier: scales every channel count (rounded, at least 1); 1.0 gives
            the paper's model, small values give tiny models for tests.
        zero_init_residual: set the weight of the last BatchNorm of every residual
            block to zero, so each block starts as its shortcut (the residual branch
            then carries no synaptic flow at initialisation).

    Returns:
        A :class:`ResNet` in training mode, with ``input_shape`` and ``num_classes``
        attributes.

    Raises:
        PruningError: for a non-positive ``num_classes``, an ``input_shape`` that is not
            three positive ints or is too small, or a non-positive ``width_multiplier``.
    """


def _make_cifar_factory(depth: int):
    blocks = (depth - 2) // 6

    def factory(
        *,
        num_classes: int = 10,
        input_shape: Sequence[int] = (3, 32, 32),
        width_multiplier: float = 1.0,
        zero_init_residual: bool = False,
    ) -> ResNet:
        return _resnet(
            f"resnet{depth}",
            (16, 32, 64),
            (blocks,) * 3,
            num_classes,
            input_shape,
            width_multiplier,
            zero_init_residual,
        )

    factory.__name__ = factory.__qualname__ = f"resnet{depth}"
    factory.__module__ = __name__
    factory.__doc__ = (
        f"ResNet-{depth} for CIFAR: 3 stages of {blocks} BasicBlocks with 16/32/64 channels.\n\n"
        "    Initialised as in the SynFlow paper (kaiming-normal convs and linear, BN 1/0);\n"
        "    see https://arxiv.org/abs/2006.05467.\n" + _ARGS_DOC.format(minimum=4)
    )
    return factory


resnet20 = _make_cifar_factory(20)
resnet32 = _make_cifar_factory(32)
resnet44 = _make_cifar_factory(44)
resnet56 = _make_cifar_factory(56)


def resnet18(
    *,
    num_classes: int = 10,
    input_shape: Sequence[int] = (3, 32, 32),
    width_multiplier: float = 1.0,
    zero_init_residual: bool = False,
) -> ResNet:
    return _resnet(
        "resnet18",
        (64, 128, 256, 512),
        (2, 2, 2, 2),
        num_classes,
        input_shape,
        width_multiplier,
        zero_init_residual,
    )


def wide_resnet18(
    *,
    num_classes: int = 10,
    input_shape: Sequence[int] = (3, 32, 32),
    width_multiplier: float = 1.0,
    zero_init_residual: bool = False,
) -> ResNet:
    return _resnet(
        "wide_resnet18",
        (128, 256, 512, 1024),
        (2, 2, 2, 2),
        num_classes,
        input_shape,
        width_multiplier,
        zero_init_residual,
    )


resnet18.__doc__ = (
    "ResNet-18, CIFAR variant: 3x3 stem conv, no max-pool, [2, 2, 2, 2] BasicBlocks\n"
    "    with 64/128/256/512 channels, initialised as in the SynFlow paper\n"
    "    (https://arxiv.org/abs/2006.05467).\n" + _ARGS_DOC.format(minimum=8)
)
wide_resnet18.__doc__ = (
    "Wide ResNet-18: :func:`resnet18` with every channel count doubled\n"
    "    (stem and stages 128/256/512/1024), initialised as in the SynFlow paper\n"
    "    (https://arxiv.org/abs/2006.05467).\n" + _ARGS_DOC.format(minimum=8)
)
