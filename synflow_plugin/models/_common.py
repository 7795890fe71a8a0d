"""Helpers shared by the model families: argument checks and the paper's initialisation.

Every check raises :class:`~synflow_plugin.errors.PruningError` (or
:class:`~synflow_plugin.errors.PruningTypeError` for a wrong type) with a message
that names the bad value, what was expected and how to fix it.
"""

from __future__ import annotations

import math
from numbers import Integral, Real
from typing import Optional, Sequence

from torch import nn

from synflow_plugin.errors import PruningError, PruningTypeError

__all__ = [
    # initialisation
    "initialize_weights",
    # argument checks
    "check_num_classes",
    "check_input_shape",
    "check_min_extent",
    "check_int_at_least",
    "check_width_multiplier",
    "scale_channels",
]

_BATCH_NORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)
_WEIGHTED = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)


def initialize_weights(model: nn.Module) -> nn.Module:
    """Apply the SynFlow paper's initialisation to ``model`` in place.

    Every ``Conv1d/2d/3d`` and ``Linear`` weight is drawn from
    ``kaiming_normal_(mode="fan_in", nonlinearity="relu")``, i.e. a normal
    distribution with standard deviation ``sqrt(2 / fan_in)``; every bias is set
    to zero; every BatchNorm gets weight 1 and bias 0. This is the scheme of the
    paper's published code (https://github.com/ganguli-lab/Synaptic-Flow).

    Args:
        model: the module to initialise; its submodules are visited recursively.

    Returns:
        The same ``model``, for chaining.
    """
    for module in model.modules():
        if isinstance(module, _WEIGHTED):
            nn.init.kaiming_normal_(module.weight, mode="fan_in", nonlinearity="relu")
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, _BATCH_NORMS):
            if module.weight is not None:
                nn.init.ones_(module.weight)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
    return model


def _is_int(value: object) -> bool:
    return isinstance(value, Integral) and not isinstance(value, bool)


def check_num_classes(num_classes: object) -> int:
    """Return ``num_classes`` as an ``int`` after checking it is a positive integer."""
    if not _is_int(num_classes):
        raise PruningTypeError(
            f"num_classes must be an int, got {num_classes!r} ({type(num_classes).__name__}); "
            "pass the number of output classes, e.g. num_classes=10"
        )
    if num_classes < 1:
        raise PruningError(
            f"num_classes must be a positive int, got {num_classes}; "
            "pass the number of output classes, e.g. num_classes=10"
        )
    return int(num_classes)


def check_input_shape(
    input_shape: object,
    *,
    model: str,
    ndims: Optional[Sequence[int]],
    layout: str,
) -> tuple[int, ...]:
    """Check ``input_shape`` (no batch dimension) and return it as a tuple of ints.

    Args:
        input_shape: the shape of one sample, e.g. ``(3, 32, 32)``.
        model: the model name, used in messages.
        ndims: the accepted numbers of entries, e.g. ``(3,)``; ``None`` accepts any
            number of entries but at least one.
        layout: a human description of the expected layout, e.g. ``"(channels, height, width)"``.

    Returns:
        ``input_shape`` as a tuple of Python ints.
    """
    if isinstance(input_shape, (str, bytes)) or not isinstance(input_shape, Sequence):
        raise PruningTypeError(
            f"input_shape for {model} must be a tuple of ints {layout} without the batch "
            f"dimension, got {input_shape!r} ({type(input_shape).__name__})"
        )
    shape = tuple(input_shape)
    if not all(_is_int(d) for d in shape):
        raise PruningTypeError(
            f"input_shape for {model} must contain only ints, got {shape!r}; "
            "pass e.g. input_shape=(3, 32, 32)"
        )
    shape = tuple(int(d) for d in shape)
    if ndims is None:
        if not shape:
            raise PruningError(
                f"input_shape for {model} must have at least one entry {layout}, got (); "
                "pass the shape of one sample, e.g. (1, 28, 28)"
            )
    elif len(shape) not in ndims:
        expected = " or ".join(str(n) for n in ndims)
        hint = ""
        if len(shape) == max(ndims) + 1:
            hint = "; it looks like it includes the batch dimension: drop the first entry"
        raise PruningError(
            f"input_shape for {model} must have {expected} entries {layout} without the batch "
            f"dimension, got {shape} with {len(shape)}{hint}"
        )
    if any(d < 1 for d in shape):
        raise PruningError(
            f"input_shape for {model} must contain only positive sizes, got {shape}; "
            f"pass the shape of one sample {layout}, e.g. (3, 32, 32)"
        )
    return shape


def check_min_extent(shape: tuple[int, ...], minimum: int, *, model: str, reason: str) -> None:
    """Raise if a spatial extent of ``shape`` (entries after the channel) is below ``minimum``."""
    spatial = shape[1:]
    if any(d < minimum for d in spatial):
        example = (shape[0],) + tuple(max(d, minimum) for d in spatial)
        raise PruningError(
            f"input_shape {shape} is too small for {model}: every spatial extent must be at "
            f"least {minimum} ({reason}); pass a larger input_shape such as {example} "
            "or pick a model with fewer downsampling stages"
        )


def check_int_at_least(value: object, minimum: int, *, name: str, model: str, meaning: str) -> int:
    """Return ``value`` as an int after checking it is an int ``>= minimum``."""
    if not _is_int(value):
        raise PruningTypeError(
            f"{name} for {model} must be an int ({meaning}), got {value!r} "
            f"({type(value).__name__})"
        )
    if value < minimum:
        raise PruningError(
            f"{name} for {model} must be at least {minimum} ({meaning}), got {value}; "
            f"pass {name}={minimum} or more"
        )
    return int(value)


def check_width_multiplier(value: object, *, model: str) -> float:
    """Return ``value`` as a float after checking it is a finite number ``> 0``."""
    if isinstance(value, bool) or not isinstance(value, Real):
        raise PruningTypeError(
            f"width_multiplier for {model} must be a float, got {value!r} "
            f"({type(value).__name__}); pass e.g. width_multiplier=0.25 for a narrow model"
        )
    value = float(value)
    if not math.isfinite(value) or value <= 0:
        raise PruningError(
            f"width_multiplier for {model} must be a finite number > 0, got {value}; "
            "pass 1.0 for the paper's widths or e.g. 0.25 for a narrow model"
        )
    return value


def scale_channels(channels: int, width_multiplier: float) -> int:
    """Scale a channel count by ``width_multiplier``, rounding to the nearest int, minimum 1."""
    return max(1, int(round(channels * width_multiplier)))
