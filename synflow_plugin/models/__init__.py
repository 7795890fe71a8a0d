"""Model zoo: the architectures of the SynFlow paper, initialised as the paper does.

The models are those of Tanaka et al., "Pruning neural networks without any data by
iteratively conserving synaptic flow" (NeurIPS 2020, https://arxiv.org/abs/2006.05467)
and of its published code (https://github.com/ganguli-lab/Synaptic-Flow):

* ``vgg11``, ``vgg13``, ``vgg16``, ``vgg19`` and their ``_bn`` variants (CIFAR VGGs);
* ``resnet20``, ``resnet32``, ``resnet44``, ``resnet56`` (CIFAR ResNets),
  ``resnet18`` and ``wide_resnet18`` (CIFAR variants: 3x3 stem, no max-pool, made
  for 32x32 inputs; at 224x224 ResNet-18 costs 27.2 GMACs);
* ``resnet18_imagenet``, ``resnet50_imagenet``: ImageNet ResNets with torchvision's
  layer shapes (7x7 stride-2 stem + max-pool) for 224x224 inputs, 1.81 and 4.09
  GMACs; their defaults are 1000 classes and ``input_shape=(3, 224, 224)``;
* ``mlp`` (fully connected) and ``conv`` (small Conv1d/Conv2d net) for MNIST-like data.

Every Conv and Linear weight is kaiming-normal (fan_in, relu), every bias zero and
every BatchNorm has weight 1 and bias 0 (:func:`initialize_weights`). All models are
plain ``nn.Module`` trees without data-dependent control flow, so they trace with
``torch.fx.symbolic_trace``, work with torch-pruning's ``DependencyGraph`` and export
with ``torch.onnx.export``.

Example:
    >>> import torch
    >>> from synflow_plugin.models import create_model, list_models
    >>> "resnet20" in list_models()
    True
    >>> model = create_model("resnet20", num_classes=100, width_multiplier=0.25)
    >>> model(torch.zeros(2, 3, 32, 32)).shape
    torch.Size([2, 100])
"""

from __future__ import annotations

import inspect
import re
from typing import Any, Callable, Sequence

from torch import nn

from synflow_plugin.errors import PruningError, PruningTypeError
from synflow_plugin.models._common import initialize_weights
from synflow_plugin.models.convnet import ConvNet, conv
from synflow_plugin.models.mlp import MLP, mlp
from synflow_plugin.models.resnet import (
    BasicBlock,
    Bottleneck,
    ResNet,
    resnet18,
    resnet20,
    resnet32,
    resnet44,
    resnet56,
    resnet18_imagenet,
    resnet50_imagenet,
    wide_resnet18,
)
from synflow_plugin.models.vgg import (
    VGG,
    VGG_PLANS,
    vgg11,
    vgg11_bn,
    vgg13,
    vgg13_bn,
    vgg16,
    vgg16_bn,
    vgg19,
    vgg19_bn,
)

__all__ = [
    # registry
    "MODELS",
    "create_model",
    "list_models",
    "model_summaries",
    # initialisation
    "initialize_weights",
    # model classes
    "VGG",
    "VGG_PLANS",
    "ResNet",
    "BasicBlock",
    "Bottleneck",
    "MLP",
    "ConvNet",
    # factories
    "vgg11",
    "vgg11_bn",
    "vgg13",
    "vgg13_bn",
    "vgg16",
    "vgg16_bn",
    "vgg19",
    "vgg19_bn",
    "resnet20",
    "resnet32",
    "resnet44",
    "resnet56",
    "resnet18",
    "wide_resnet18",
    "resnet18_imagenet",
    "resnet50_imagenet",
    "mlp",
    "conv",
]

#: Name -> factory, in a fixed order. Every factory takes keyword-only
#: ``num_classes`` and ``input_shape`` plus family-specific options.
#: ``resnet18`` is the CIFAR variant; ``resnet18_imagenet`` the 224x224 one.
MODELS: dict[str, Callable[..., nn.Module]] = {
    "vgg11": vgg11,
    "vgg11_bn": vgg11_bn,
    "vgg13": vgg13,
    "vgg13_bn": vgg13_bn,
    "vgg16": vgg16,
    "vgg16_bn": vgg16_bn,
    "vgg19": vgg19,
    "vgg19_bn": vgg19_bn,
    "resnet20": resnet20,
    "resnet32": resnet32,
    "resnet44": resnet44,
    "resnet56": resnet56,
    "resnet18": resnet18,
    "wide_resnet18": wide_resnet18,
    "resnet18_imagenet": resnet18_imagenet,
    "resnet50_imagenet": resnet50_imagenet,
    "mlp": mlp,
    "conv": conv,
}


def list_models() -> list[str]:
    """Return the names accepted by :func:`create_model`, in registry order.

    Returns:
        A new list of model names, e.g. ``["vgg11", "vgg11_bn", ..., "conv"]``.
    """
    return list(MODELS)


def model_summaries() -> dict[str, str]:
    """One line per model of :func:`list_models`: what it is and what input it is made for.

    The first paragraph of each factory's docstring, on one line (``synflow-plugin list``
    can print it beside the name).

    Example:
        >>> model_summaries()["resnet18_imagenet"]
        "ResNet-18 for ImageNet-sized 224x224 inputs, torchvision's layer shapes: 1.81 GMACs."
    """
    summaries = {}
    for name, factory in MODELS.items():
        first = (factory.__doc__ or "").strip().split("\n\n")[0]
        plain = re.sub(r":\w+:`~?([^`]+)`", r"\1", first)  # :func:`resnet18` -> resnet18
        summaries[name] = " ".join(plain.split())
    return summaries


def create_model(
    name: str,
    *,
    num_classes: int | None = None,
    input_shape: Sequence[int] | None = None,
    **kwargs: Any,
) -> nn.Module:
    """Build a model of the zoo by name, initialised as in the SynFlow paper.

    Args:
        name: a name from :func:`list_models`, e.g. ``"vgg16_bn"`` (case-insensitive).
        num_classes: number of outputs of the classifier; ``None``: the model's default
            (10, and 1000 for the ``*_imagenet`` ResNets).
        input_shape: shape of one sample without the batch dimension, e.g.
            ``(3, 32, 32)`` for CIFAR, ``(1, 28, 28)`` for MNIST, ``(1, 40)`` for MNIST-1D;
            ``None``: the model's default (``(3, 32, 32)``, and ``(3, 224, 224)`` for
            the ``*_imagenet`` ResNets).
        **kwargs: family options: ``width_multiplier`` for VGGs and ResNets,
            ``zero_init_residual`` for ResNets, ``depth`` and ``width`` for ``mlp`` and
            ``conv``, ``bias`` for ``mlp``.

    Returns:
        The model, in training mode, with ``input_shape`` and ``num_classes`` attributes.

    Raises:
        PruningError: for an unknown ``name``, an option the model does not take, or a
            bad ``num_classes`` / ``input_shape`` / option value.

    Example:
        >>> import torch
        >>> model = create_model("conv", num_classes=10, input_shape=(1, 40), width=8)
        >>> type(model.features[0]).__name__
        'Conv1d'
        >>> model(torch.zeros(4, 1, 40)).shape
        torch.Size([4, 10])
    """
    if not isinstance(name, str):
        raise PruningTypeError(
            f"model name must be a str, got {name!r} ({type(name).__name__}); "
            f"expected one of: {', '.join(MODELS)}"
        )
    factory = MODELS.get(name.strip().lower())
    if factory is None:
        raise PruningError(f"unknown model {name!r}; expected one of: {', '.join(MODELS)}")
    accepted = [
        p.name
        for p in inspect.signature(factory).parameters.values()
        if p.name not in ("num_classes", "input_shape")
    ]
    unknown = sorted(set(kwargs) - set(accepted))
    if unknown:
        options = ", ".join(accepted) if accepted else "none"
        raise PruningTypeError(
            f"model {name!r} does not take option(s) {', '.join(unknown)}; "
            f"its options are: {options} (plus num_classes and input_shape)"
        )
    if num_classes is not None:
        kwargs["num_classes"] = num_classes
    if input_shape is not None:
        kwargs["input_shape"] = input_shape
    return factory(**kwargs)
