"""CIFAR VGG-11/13/16/19, with and without BatchNorm, as used in the SynFlow paper.

These are the "lottery ticket" VGGs of the paper's code
(https://github.com/ganguli-lab/Synaptic-Flow, ``Models/lottery_vgg.py``): stacks of
3x3 convolutions (padding 1, with bias) [+ BatchNorm] + ReLU, a 2x2 max-pool between
the five stages (four pools in all, none after the last stage), an average pool to
1x1 and a single linear classifier ``512 -> num_classes``. For 32x32 inputs the
final pool is the paper's 2x2 average pool; :class:`torch.nn.AdaptiveAvgPool2d`
makes any input of at least 16x16 work.

Paper: Tanaka et al., "Pruning neural networks without any data by iteratively
conserving synaptic flow", NeurIPS 2020, https://arxiv.org/abs/2006.05467
"""

from __future__ import annotations

from typing import Sequence, Union

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
    # model class and layer plans
    "VGG",
    "VGG_PLANS",
    # factories
    "vgg11",
    "vgg11_bn",
    "vgg13",
    "vgg13_bn",
    "vgg16",
    "vgg16_bn",
    "vgg19",
    "vgg19_bn",
]

Plan = Sequence[Union[int, str]]

#: Layer plans: an int is a 3x3 conv with that many output channels, ``"M"`` a 2x2 max-pool.
VGG_PLANS: dict[int, tuple[Union[int, str], ...]] = {
    11: (64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512),
    13: (64, 64, "M", 128, 128, "M", 256, 256, "M", 512, 512, "M", 512, 512),
    16: (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512),
    19: (
        64, 64, "M",
        128, 128, "M",
        256, 256, 256, 256, "M",
        512, 512, 512, 512, "M",
        512, 512, 512, 512,
    ),
}  # fmt: skip


class VGG(nn.Module):
    """A plain VGG: ``features`` (convs, ReLUs, max-pools), ``pool``, ``classifier``.

    Args:
        plan: the layer plan, see :data:`VGG_PLANS`; ints are already-scaled channel counts.
        num_classes: number of outputs of the classifier.
        in_channels: channels of the input images.
        batch_norm: insert a ``BatchNorm2d`` after every convolution.

    The weights are left at PyTorch's defaults; the factories (``vgg16`` ...) apply
    :func:`~synflow_plugin.models.initialize_weights`.
    """

    def __init__(
        self, plan: Plan, num_classes: int, in_channels: int = 3, batch_norm: bool = False
    ):
        super().__init__()
        layers: list[nn.Module] = []
        channels = in_channels
        for spec in plan:
            if spec == "M":
                layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
                continue
            layers.append(nn.Conv2d(channels, int(spec), kernel_size=3, padding=1, bias=True))
            if batch_norm:
                layers.append(nn.BatchNorm2d(int(spec)))
            layers.append(nn.ReLU())
            channels = int(spec)
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(channels, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.features(x)
        x = self.pool(x)
        x = torch.flatten(x, 1)
        return self.classifier(x)


def _vgg(
    depth: int,
    batch_norm: bool,
    num_classes: int,
    input_shape: Sequence[int],
    width_multiplier: float,
) -> VGG:
    name = f"vgg{depth}_bn" if batch_norm else f"vgg{depth}"
    num_classes = check_num_classes(num_classes)
    shape = check_input_shape(
        input_shape, model=name, ndims=(3,), layout="(channels, height, width)"
    )
    plan = VGG_PLANS[depth]
    pools = sum(1 for spec in plan if spec == "M")
    check_min_extent(shape, 2**pools, model=name, reason=f"its {pools} 2x2 max-pools halve it")
    width_multiplier = check_width_multiplier(width_multiplier, model=name)
    scaled = [
        spec if spec == "M" else scale_channels(int(spec), width_multiplier) for spec in plan
    ]
    model = VGG(scaled, num_classes, in_channels=shape[0], batch_norm=batch_norm)
    model.input_shape = shape
    model.num_classes = num_classes
    return initialize_weights(model)


_DOC = """{title} for CIFAR-sized inputs, initialised as in the SynFlow paper.
{bn}
    Layer plan (ints are 3x3 conv widths, ``M`` a 2x2 max-pool), followed by an
    average pool to 1x1 and one linear classifier::

        {plan}

    See https://arxiv.org/abs/2006.05467.

    Args:
        num_classes: number of outputs (10 for CIFAR-10, 100 for CIFAR-100).
        input_shape: shape of one sample without the batch dimension, ``(C, H, W)``
            with ``H, W >= 16``.
        width_multiplier: scales every channel count (rounded, at least 1); 1.0 gives
            the paper's model, small values give tiny models for tests.

    Returns:
        A :class:`VGG` in training mode, with ``input_shape`` and ``num_classes``
        attributes.

    Raises:
        PruningError: for a non-positive ``num_classes``, an ``input_shape`` that is not
            three positive ints or smaller than 16x16, or a non-positive ``width_multiplier``.
    """


def _make_factory(depth: int, batch_norm: bool):
    def factory(
        *,
        num_classes: int = 10,
        input_shape: Sequence[int] = (3, 32, 32),
        width_multiplier: float = 1.0,
    ) -> VGG:
        return _vgg(depth, batch_norm, num_classes, input_shape, width_multiplier)

    factory.__name__ = factory.__qualname__ = f"vgg{depth}_bn" if batch_norm else f"vgg{depth}"
    factory.__module__ = __name__
    factory.__doc__ = _DOC.format(
        title=f"VGG-{depth} with BatchNorm" if batch_norm else f"VGG-{depth}",
        bn="\n    A BatchNorm2d follows every convolution.\n" if batch_norm else "",
        plan=", ".join(str(s) for s in VGG_PLANS[depth]),
    )
    return factory


vgg11 = _make_factory(11, batch_norm=False)
vgg11_bn = _make_factory(11, batch_norm=True)
vgg13 = _make_factory(13, batch_norm=False)
vgg13_bn = _make_factory(13, batch_norm=True)
vgg16 = _make_factory(16, batch_norm=False)
vgg16_bn = _make_factory(16, batch_norm=True)
vgg19 = _make_factory(19, batch_norm=False)
vgg19_bn = _make_factory(19, batch_norm=True)
