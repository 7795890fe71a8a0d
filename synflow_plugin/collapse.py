"""Saying so when a prune empties a layer: :class:`LayerCollapseWarning`.

Layer collapse is what SynFlow exists to avoid: a tensor left with no weight (or a
channel-pruned layer left with a single channel) cuts every path through it. After
every prune, in every host, :func:`warn_collapse` names each such tensor and says
whether the whole network is now disconnected (its output no longer depends on its
input) or only a branch was removed (a residual block's convolutions, one head of
several).

The connectivity check runs the pruned network once, on a private copy, with the
masks applied: the output depends on the input when the gradient of the summed
floating outputs with respect to the floating inputs is not zero everywhere.
"""

from __future__ import annotations

import warnings
from typing import Any, Sequence

import torch
from torch import nn

from synflow_plugin.criteria.base import Inputs, flow_outputs
from synflow_plugin.targets import Target, clone_model, count_true, current_mask

__all__ = ["LayerCollapseWarning", "collapsed_targets", "output_depends_on_input", "warn_collapse"]


class LayerCollapseWarning(UserWarning):
    """A prune left a tensor with no weight (or a layer with one channel)."""


def collapsed_targets(targets: Sequence[Target], masks: Sequence[torch.Tensor],
                      start_masks: Sequence[torch.Tensor], units: Sequence[int] | None = None) -> list[str]:
    """Descriptions of the targets this prune collapsed: emptied (they had weights
    before), or, pruned by output channels, left with one channel of several."""
    out = []
    for k, (target, mask, start) in enumerate(zip(targets, masks, start_masks)):
        if mask.numel() == 0 or not count_true(start):
            continue
        if not bool(mask.any()):
            out.append(f"'{target.qualified_name}' (no weight left)")
            continue
        channels = units[k] if units is not None else None
        if channels is not None and 1 < channels < target.numel:
            alive = int(mask.reshape(channels, -1).any(dim=1).sum())
            if alive == 1 and int(start.reshape(channels, -1).any(dim=1).sum()) > 1:
                out.append(f"'{target.qualified_name}' (one output channel of {channels} left)")
    return out


def _with_grad(value: Any) -> Any:
    """``value`` with each floating tensor a fresh leaf that requires grad."""
    if isinstance(value, torch.Tensor):
        return value.detach().clone().requires_grad_(True) if value.is_floating_point() else value
    if isinstance(value, dict):
        return {k: _with_grad(v) for k, v in value.items()}
    if isinstance(value, (tuple, list)):
        return type(value)(_with_grad(v) for v in value)
    return value


def _an_input(inputs: Inputs) -> Any:
    if inputs.example_inputs is not None:
        return inputs.example_inputs
    data = inputs.reusable_data
    if data is None:
        return None
    for batch in data:
        return batch[0] if isinstance(batch, (tuple, list)) and batch else None
    return None


def output_depends_on_input(model: nn.Module, targets: Sequence[Target], masks: Sequence[torch.Tensor],
                            example: Any) -> bool | None:
    """Whether ``model`` with ``masks`` applied to ``targets`` still has an output that
    depends on its input ``example``; None when that cannot be told (no floating input,
    or the model does not run on it). ``model`` is not changed (a copy is run)."""
    if example is None or not flow_outputs(example):
        return None
    copy = clone_model(model)
    copy.eval()
    with torch.no_grad():
        for target, mask in zip(targets, masks):
            module = copy.get_submodule(target.module_name)
            orig = module._parameters.get(f"{target.name}_orig")
            tensor = orig if orig is not None else module._parameters[target.name]
            tensor.mul_(mask.to(tensor.dtype) * current_mask(module, target.name).to(tensor.dtype))
    leaves_in = _with_grad(example)
    try:
        with torch.enable_grad():
            output = Inputs().call(copy, leaves_in, "the pruned network")
            outputs = flow_outputs(output)
            if not outputs:
                return None
            total = sum(o.float().sum() for o in outputs)
            if not total.requires_grad:
                return False
            grads = torch.autograd.grad(total, flow_outputs(leaves_in), allow_unused=True)
    except Exception:  # a check that cannot run must not turn a prune into an error
        return None
    return any(g is not None and bool(g.detach().abs().sum() > 0) for g in grads)


def warn_collapse(model: nn.Module, targets: Sequence[Target], masks: Sequence[torch.Tensor],
                  start_masks: Sequence[torch.Tensor], inputs: Inputs, what: str,
                  units: Sequence[int] | None = None, stacklevel: int = 3) -> list[str]:
    """Warn (:class:`LayerCollapseWarning`) about every target this prune collapsed,
    and whether the network is disconnected; returns the descriptions (empty: none)."""
    collapsed = collapsed_targets(targets, masks, start_masks, units)
    if not collapsed:
        return collapsed
    connected = output_depends_on_input(model, targets, masks, _an_input(inputs))
    verdict = {
        False: "The network is disconnected: its output no longer depends on its input.",
        True: "The output still depends on the input: only a branch was removed.",
        None: "Whether the output still depends on the input was not checked: that needs a floating-point "
              "example_inputs= (or data=).",
    }[connected]
    warnings.warn(
        f"{what} collapsed {len(collapsed)} layer{'s' if len(collapsed) > 1 else ''}: {', '.join(collapsed)}. "
        f"{verdict} Prune less, or keep a share of every tensor with min_density= "
        "(NNI: max_sparse_ratio; torch-pruning: min_channels).",
        LayerCollapseWarning,
        stacklevel=stacklevel,
    )
    return collapsed
