"""The small convolutional network ``conv`` of the SynFlow paper's code.

``depth - 1`` convolutions (3x3, padding 1, ``width`` channels, with bias) each
followed by ReLU, then flatten and a linear classifier. ``depth`` counts every
weight layer, the classifier included, as the paper code's ``L`` does (default 3:
two convolutions and the classifier). The convolutions are ``Conv1d`` for
sequence inputs ``(C, L)`` such as MNIST-1D ``(1, 40)`` and ``Conv2d`` for image
inputs ``(C, H, W)`` such as MNIST ``(1, 28, 28)``; the resolution is kept, so
the classifier sees ``width * L`` or ``width * H * W`` features.

Paper: Tanaka et al., "Pruning neural networks without any data by iteratively
conserving synaptic flow", NeurIPS 2020, https://arxiv.org/abs/2006.05467
"""

from __future__ import annotations

import math
from typing import Sequence

import torch
from torch import nn

from synflow_plugin.models._common import (
    check_input_shape,
    check_int_at_least,
    check_num_classes,
    initialize_weights,
)

__all__ = [
    # model class
    "ConvNet",
    # factory
    "conv",
]


class ConvNet(nn.Module):
    """Same-padding convolutions + ReLU, flatten, Linear classifier.

    Args:
        input_shape: ``(C, L)`` for ``Conv1d`` layers or ``(C, H, W)`` for ``Conv2d``.
        num_classes: number of outputs.
        depth: number of weight layers including the classifier (at least 2).
        width: channels of every convolution.
    """

    def __init__(
        self, input_shape: Sequence[int], num_classes: int, depth: int = 3, width: int = 32
    ):
        super().__init__()
        conv_cls = nn.Conv1d if len(input_shape) == 2 else nn.Conv2d
        layers: list[nn.Module] = []
        channels = input_shape[0]
        for _ in range(depth - 1):
            layers.append(conv_cls(channels, width, kernel_size=3, padding=1))
            layers.append(nn.ReLU())
            channels = width
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Linear(channels * math.prod(input_shape[1:]), num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.features(x)
        x = torch.flatten(x, 1)
        return self.classifier(x)


def conv(
    *,
    num_classes: int = 10,
    input_shape: Sequence[int] = (3, 32, 32),
    depth: int = 3,
    width: int = 32,
) -> ConvNet:
    """The paper code's small conv net, initialised as in the SynFlow paper.

    Uses ``nn.Conv1d`` when ``input_shape`` has two entries ``(C, L)`` and ``nn.Conv2d``
    when it has three ``(C, H, W)``. Weights are kaiming-normal (fan_in, relu), biases
    zero. See https://arxiv.org/abs/2006.05467.

    Args:
        num_classes: number of outputs.
        input_shape: ``(C, L)``, e.g. ``(1, 40)`` for MNIST-1D, or ``(C, H, W)``, e.g.
            ``(1, 8, 8)`` for the 8x8 digits or ``(1, 28, 28)`` for MNIST.
        depth: number of weight layers including the classifier (the paper code's
            ``L``, default 3 = two convolutions); at least 2.
        width: channels of every convolution (the paper code's ``N``, default 32).

    Returns:
        A :class:`ConvNet` with ``input_shape`` and ``num_classes`` attributes.

    Raises:
        PruningError: for a non-positive ``num_classes`` or ``width``, ``depth < 2`` or
            an ``input_shape`` that is not two or three positive ints.
    """
    num_classes = check_num_classes(num_classes)
    shape = check_input_shape(
        input_shape,
        model="conv",
        ndims=(2, 3),
        layout="((channels, length) for Conv1d or (channels, height, width) for Conv2d)",
    )
    depth = check_int_at_least(
        depth, 2, name="depth", model="conv", meaning="weight layers including the classifier"
    )
    width = check_int_at_least(
        width, 1, name="width", model="conv", meaning="channels per convolution"
    )
    model = ConvNet(shape, num_classes, depth=depth, width=width)
    model.input_shape = shape
    model.num_classes = num_classes
    return initialize_weights(model)
