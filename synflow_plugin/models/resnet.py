"""CIFAR ResNets (20/32/44/56), ResNet-18 and Wide-ResNet-18 of the SynFlow paper; ImageNet ResNet-18/50.

* ``resnet20/32/44/56``: the CIFAR ResNets of He et al. in the "lottery ticket"
  form of the paper's code (``Models/lottery_resnet.py``): a 3x3 stem conv with 16
  channels + BN + ReLU, three stages of ``(depth - 2) / 6`` BasicBlocks with
  16/32/64 channels, stride 2 at the first block of stages 2 and 3, 1x1 conv + BN
  shortcuts where the shape changes (option B), global average pool and a linear
  classifier.
* ``resnet18`` / ``wide_resnet18``: the CIFAR variant of ResNet-18 (3x3 stem conv,
  no max-pool) with ``[2, 2, 2, 2]`` BasicBlocks of 64/128/256/512 channels, and the
  same network with every channel count doubled (128/256/512/1024). Made for 32x32
  inputs: the stem keeps the resolution, so at 224x224 ResNet-18 costs 27.2 GMACs,
  not the 1.8 G of the ImageNet model; use ``resnet18_imagenet`` for 224x224.
* ``resnet18_imagenet`` / ``resnet50_imagenet``: the ImageNet ResNets of He et al.
  (https://arxiv.org/abs/1512.03385) with torchvision's layer shapes: a 7x7 stride-2
  stem conv (64 channels) + BN + ReLU + 3x3 stride-2 max-pool, then
  ``[2, 2, 2, 2]`` BasicBlocks (ResNet-18) or ``[3, 4, 6, 3]`` Bottleneck blocks
  (ResNet-50, 1x1 -> 3x3 -> 1x1 with 4x expansion, stride on the 3x3 conv as in
  torchvision's "v1.5") of 64/128/256/512 channels, 1x1 conv + BN shortcuts where the
  shape changes. At 3x224x224: 1.81 GMACs / 11.7 M parameters (ResNet-18) and
  4.09 GMACs / 25.6 M parameters (ResNet-50), 1000 classes.

All convolutions have no bias (each is followed by BatchNorm). The residual sum is
a plain ``out + shortcut`` so the models trace with ``torch.fx`` and export to ONNX.

Paper: Tanaka et al., "Pruning neural networks without any data by iteratively
conserving synaptic flow", NeurIPS 2020, https://arxiv.org/abs/2006.05467
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from synflow_plugin.errors import PruningError
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
    # ImageNet ResNets (7x7 stem + max-pool)
    "Bottleneck",
    "resnet18_imagenet",
    "resnet50_imagenet",
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

    expansion = 1

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


class Bottleneck(nn.Module):
    """1x1 reduce, 3x3, 1x1 expand (x4), each with BN, and a residual connection.

    ``out = relu(bn3(conv3(relu(bn2(conv2(relu(bn1(conv1(x)))))))) + shortcut(x))``;
    the stride is on the 3x3 conv (torchvision's ResNet "v1.5"); the shortcut is the
    identity when the shape is kept, else a strided 1x1 conv (no bias) + BN.

    Args:
        in_channels: channels of the block's input.
        width: channels of the 1x1 and 3x3 convs; the block outputs ``4 * width``.
        stride: stride of ``conv2`` and of the shortcut conv.
    """

    expansion = 4

    def __init__(self, in_channels: int, width: int, stride: int = 1):
        super().__init__()
        out_channels = width * self.expansion
        self.conv1 = nn.Conv2d(in_channels, width, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.relu1 = nn.ReLU()
        self.conv2 = nn.Conv2d(width, width, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(width)
        self.relu2 = nn.ReLU()
        self.conv3 = nn.Conv2d(width, out_channels, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(out_channels)
        if stride != 1 or in_channels != out_channels:
            self.shortcut: nn.Module = nn.Sequential(
                nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=False),
                nn.BatchNorm2d(out_channels),
            )
        else:
            self.shortcut = nn.Identity()
        self.relu3 = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu1(self.bn1(self.conv1(x)))
        out = self.relu2(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu3(out + self.shortcut(x))


class ResNet(nn.Module):
    """A ResNet: stem, ``stages`` of residual blocks, global average pool, ``fc``.

    Args:
        stage_widths: channels of each stage; the stem has ``stage_widths[0]`` channels.
        blocks_per_stage: number of blocks in each stage.
        num_classes: number of outputs of the classifier.
        in_channels: channels of the input images.
        block: :class:`BasicBlock` (default) or :class:`Bottleneck` (whose output has
            ``4 *`` the stage width).
        stem: ``"cifar"`` (default): one 3x3 stride-1 conv, the resolution is kept;
            ``"imagenet"``: a 7x7 stride-2 conv and a 3x3 stride-2 max-pool, the
            resolution divided by 4 (``self.maxpool`` is ``nn.Identity`` otherwise).

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
        *,
        block: type[nn.Module] = BasicBlock,
        stem: str = "cifar",
    ):
        super().__init__()
        if stem not in ("cifar", "imagenet"):
            raise PruningError(f"ResNet: stem={stem!r} should be 'cifar' or 'imagenet'")
        channels = stage_widths[0]
        if stem == "imagenet":
            self.conv1 = nn.Conv2d(in_channels, channels, 7, stride=2, padding=3, bias=False)
        else:
            self.conv1 = nn.Conv2d(in_channels, channels, 3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(channels)
        self.relu = nn.ReLU()
        self.maxpool: nn.Module = nn.MaxPool2d(3, stride=2, padding=1) if stem == "imagenet" else nn.Identity()
        stages = []
        for index, (width, blocks) in enumerate(zip(stage_widths, blocks_per_stage)):
            stage = []
            for k in range(blocks):
                stride = 2 if index > 0 and k == 0 else 1
                stage.append(block(channels, width, stride))
                channels = width * block.expansion
            stages.append(nn.Sequential(*stage))
        self.stages = nn.Sequential(*stages)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(channels, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
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
    *,
    block: type[nn.Module] = BasicBlock,
    stem: str = "cifar",
) -> ResNet:
    num_classes = check_num_classes(num_classes)
    shape = check_input_shape(
        input_shape, model=name, ndims=(3,), layout="(channels, height, width)"
    )
    downsamplings = len(stage_widths) - 1
    if stem == "imagenet":
        check_min_extent(
            shape,
            2 ** (downsamplings + 2),
            model=name,
            reason=f"its stride-2 stem conv, stride-2 max-pool and {downsamplings} stride-2 stages halve it",
        )
    else:
        check_min_extent(
            shape,
            2**downsamplings,
            model=name,
            reason=f"its {downsamplings} stride-2 stages halve it",
        )
    width_multiplier = check_width_multiplier(width_multiplier, model=name)
    widths = [scale_channels(w, width_multiplier) for w in stage_widths]
    model = ResNet(widths, blocks_per_stage, num_classes, in_channels=shape[0], block=block, stem=stem)
    model.input_shape = shape
    model.num_classes = num_classes
    initialize_weights(model)
    if zero_init_residual:
        for module in model.modules():
            if isinstance(module, BasicBlock):
                nn.init.zeros_(module.bn2.weight)
            elif isinstance(module, Bottleneck):
                nn.init.zeros_(module.bn3.weight)
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


def _factory(name: str, stage_widths: Sequence[int], blocks_per_stage: Sequence[int], doc: str, *,
             block: type[nn.Module] = BasicBlock, stem: str = "cifar", num_classes: int = 10,
             input_shape: Sequence[int] = (3, 32, 32)):
    """The zoo factory ``name``: a ResNet of these stages, keyword options only, with
    ``num_classes`` and ``input_shape`` as its defaults."""
    default_classes, default_shape = num_classes, tuple(input_shape)

    def factory(
        *,
        num_classes: int = default_classes,
        input_shape: Sequence[int] = default_shape,
        width_multiplier: float = 1.0,
        zero_init_residual: bool = False,
    ) -> ResNet:
        return _resnet(name, stage_widths, blocks_per_stage, num_classes, input_shape, width_multiplier,
                       zero_init_residual, block=block, stem=stem)

    factory.__name__ = factory.__qualname__ = name
    factory.__module__ = __name__
    factory.__doc__ = doc
    return factory


def _make_cifar_factory(depth: int):
    blocks = (depth - 2) // 6
    return _factory(
        f"resnet{depth}", (16, 32, 64), (blocks,) * 3,
        f"ResNet-{depth} for CIFAR: 3 stages of {blocks} BasicBlocks with 16/32/64 channels.\n\n"
        "    Initialised as in the SynFlow paper (kaiming-normal convs and linear, BN 1/0);\n"
        "    see https://arxiv.org/abs/2006.05467.\n" + _ARGS_DOC.format(minimum=4),
    )


resnet20 = _make_cifar_factory(20)
resnet32 = _make_cifar_factory(32)
resnet44 = _make_cifar_factory(44)
resnet56 = _make_cifar_factory(56)

resnet18 = _factory("resnet18", (64, 128, 256, 512), (2, 2, 2, 2), (
    "ResNet-18, CIFAR variant for 32x32 inputs: 3x3 stem conv, no max-pool, [2, 2, 2, 2]\n"
    "    BasicBlocks with 64/128/256/512 channels (for 224x224: resnet18_imagenet).\n\n"
    "    Initialised as in the SynFlow paper (https://arxiv.org/abs/2006.05467).\n"
    "    Made for 32x32 inputs (0.56 GMACs there). The stem keeps the resolution, so at\n"
    "    224x224 it costs 27.2 GMACs; for ImageNet-sized inputs use\n"
    "    :func:`resnet18_imagenet` (1.81 GMACs at 224x224).\n" + _ARGS_DOC.format(minimum=8)
))
wide_resnet18 = _factory("wide_resnet18", (128, 256, 512, 1024), (2, 2, 2, 2), (
    "Wide ResNet-18: :func:`resnet18` with every channel count doubled\n"
    "    (stem and stages 128/256/512/1024), initialised as in the SynFlow paper\n"
    "    (https://arxiv.org/abs/2006.05467).\n" + _ARGS_DOC.format(minimum=8)
))

_IMAGENET_DOC = """
    Layer shapes of torchvision's ``{tv}`` (He et al., https://arxiv.org/abs/1512.03385):
    7x7 stride-2 stem conv with 64 channels, BN, ReLU, 3x3 stride-2 max-pool, then
    {blocks}, global average pool and a linear classifier. At 3x224x224 with 1000
    classes: {macs} GMACs and {params} M parameters. Initialised as in the SynFlow
    paper (kaiming-normal convs and linear, BN 1/0; https://arxiv.org/abs/2006.05467),
    not with torchvision's weights: nothing is downloaded.

    Defaults: ``num_classes=1000``, ``input_shape=(3, 224, 224)``.
""" + _ARGS_DOC

resnet18_imagenet = _factory(
    "resnet18_imagenet", (64, 128, 256, 512), (2, 2, 2, 2),
    "ResNet-18 for ImageNet-sized 224x224 inputs, torchvision's layer shapes: 1.81 GMACs.\n" + _IMAGENET_DOC.format(
        tv="resnet18", blocks="[2, 2, 2, 2] BasicBlocks with 64/128/256/512 channels", macs="1.81", params="11.7",
        minimum=32),
    stem="imagenet", num_classes=1000, input_shape=(3, 224, 224),
)
resnet50_imagenet = _factory(
    "resnet50_imagenet", (64, 128, 256, 512), (3, 4, 6, 3),
    "ResNet-50 for ImageNet-sized 224x224 inputs, torchvision's layer shapes: 4.09 GMACs.\n" + _IMAGENET_DOC.format(
        tv="resnet50", blocks="[3, 4, 6, 3] Bottleneck blocks (1x1, 3x3 with the stride, 1x1 with 4x expansion)\n"
        "    of widths 64/128/256/512 (outputs 256/512/1024/2048)", macs="4.09", params="25.6", minimum=32),
    block=Bottleneck, stem="imagenet", num_classes=1000, input_shape=(3, 224, 224),
)
