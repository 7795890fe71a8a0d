"""The fully-connected network ``mlp`` of the SynFlow paper (the ``fc`` model of its code).

``depth`` counts every Linear layer, the classifier included, as the paper code's
``L`` does: the default ``depth=6, width=100`` is the paper's MNIST network of five
hidden layers of 100 units with ReLU, then a linear classifier.

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
    "MLP",
    # factory
    "mlp",
]


class MLP(nn.Module):
    """Flatten, ``depth - 1`` hidden Linear + ReLU layers, then a Linear classifier.

    Args:
        in_features: size of one flattened sample.
        num_classes: number of outputs.
        depth: number of Linear layers including the classifier (at least 2).
        width: units in every hidden layer.
        bias: give every Linear layer a bias.
    """

    def __init__(
        self,
        in_features: int,
        num_classes: int,
        depth: int = 6,
        width: int = 100,
        bias: bool = True,
    ):
        super().__init__()
        layers: list[nn.Module] = []
        features = in_features
        for _ in range(depth - 1):
            layers.append(nn.Linear(features, width, bias=bias))
            layers.append(nn.ReLU())
            features = width
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Linear(features, num_classes, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.flatten(x, 1)
        x = self.features(x)
        return self.classifier(x)


def mlp(
    *,
    num_classes: int = 10,
    input_shape: Sequence[int] = (3, 32, 32),
    depth: int = 6,
    width: int = 100,
    bias: bool = True,
) -> MLP:
    """The paper's fully-connected network, initialised as in the SynFlow paper.

    The input is flattened, passes ``depth - 1`` hidden layers ``Linear(., width)`` +
    ReLU and a final ``Linear(width, num_classes)``. Weights are kaiming-normal
    (fan_in, relu), biases zero. See https://arxiv.org/abs/2006.05467.

    Args:
        num_classes: number of outputs.
        input_shape: shape of one sample without the batch dimension, any number of
            positive entries, e.g. ``(1, 28, 28)`` for MNIST or ``(40,)`` for MNIST-1D.
        depth: number of Linear layers including the classifier (the paper code's
            ``L``, default 6 = five hidden layers); at least 2.
        width: units in every hidden layer (the paper code's ``N``, default 100).
        bias: give every Linear layer a bias.

    Returns:
        An :class:`MLP` with ``input_shape`` and ``num_classes`` attributes.

    Raises:
        PruningError: for a non-positive ``num_classes`` or ``width``, ``depth < 2``
            or an ``input_shape`` that is empty or has a non-positive entry.
    """
    num_classes = check_num_classes(num_classes)
    shape = check_input_shape(
        input_shape, model="mlp", ndims=None, layout="(e.g. (1, 28, 28))"
    )
    depth = check_int_at_least(
        depth, 2, name="depth", model="mlp", meaning="Linear layers including the classifier"
    )
    width = check_int_at_least(
        width, 1, name="width", model="mlp", meaning="units per hidden layer"
    )
    model = MLP(math.prod(shape), num_classes, depth=depth, width=width, bias=bool(bias))
    model.input_shape = shape
    model.num_classes = num_classes
    return initialize_weights(model)
