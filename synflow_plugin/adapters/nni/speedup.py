"""From NNI masks to a model: completing out-channel masks, and NNI's speedup on a torch.fx graph.

NNI's ``ModelSpeedup`` fails on torch 2.13 inside its ``concrete_trace``;
:func:`speedup_model` runs it on a ``torch.fx.symbolic_trace`` graph instead, after
masking the BatchNorm channels that follow removed channels, so the small model
computes what the masked model computes.
"""

from __future__ import annotations

import logging
import warnings
from typing import Any, Mapping

import torch
import torch.fx
from torch import nn

from synflow_plugin.errors import PruningError, PruningTypeError
from synflow_plugin.permanent import apply_masks

__all__ = ["complete_masks", "speedup_model"]

_logger = logging.getLogger(__name__)


def _check_unwrapped(model: nn.Module, caller: str) -> None:
    wrapped = [name for name, m in model.named_modules() if hasattr(m, "_nni_wrapper")]
    if wrapped:
        raise PruningError(
            f"{caller}: the model is still wrapped by NNI ({', '.join(wrapped[:3])}"
            f"{', ...' if len(wrapped) > 3 else ''}); call pruner.unwrap_model() first."
        )


_ZERO_PRESERVING = (nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.Hardtanh, nn.MaxPool1d, nn.MaxPool2d, nn.MaxPool3d,
                    nn.AvgPool1d, nn.AvgPool2d, nn.AvgPool3d, nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d,
                    nn.AdaptiveAvgPool3d, nn.AdaptiveMaxPool2d, nn.Dropout, nn.Identity)


_CONV_TRANSPOSE = (nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)


def _live_output_channels(module: nn.Module, weight_mask: torch.Tensor) -> torch.Tensor:
    """Per output channel of ``module``, whether ``weight_mask`` keeps any of its weights.

    A convolution's (and a Linear's) output channels are dim 0 of its weight; a
    transposed convolution stores its weight as ``(in, out / groups, *kernel)``, so its
    output channel ``g * (out / groups) + j`` is column ``j`` of the rows of group ``g``.
    """
    if isinstance(module, _CONV_TRANSPOSE):
        groups = module.groups
        per_group = weight_mask.reshape(groups, weight_mask.shape[0] // groups, weight_mask.shape[1], -1)
        return (per_group != 0).any(dim=3).any(dim=1).reshape(-1)
    return (weight_mask.reshape(weight_mask.shape[0], -1) != 0).any(dim=1)


def _dead_channels(module: nn.Module, module_masks: Mapping[str, torch.Tensor | None]) -> torch.Tensor | None:
    weight = module_masks.get("weight")
    if weight is None or weight.dim() < 2:
        return None
    dead = ~_live_output_channels(module, weight)
    return dead if dead.any() else None


_MIXING = (nn.Linear, nn.modules.conv._ConvNd, nn.Embedding, nn.Bilinear)


def _output_layers(graph: torch.fx.GraphModule) -> set[str]:
    """Names of the linear/conv layers whose output units reach the model's output
    without passing through another linear/conv layer: removing their channels would
    change the output's shape."""
    modules = dict(graph.named_modules())
    found: set[str] = set()
    frontier = [n for n in graph.graph.nodes if n.op == "output"]
    seen = set()
    while frontier:
        node = frontier.pop()
        if node in seen:
            continue
        seen.add(node)
        if node.op == "call_module" and isinstance(modules.get(node.target), _MIXING):
            found.add(node.target)
            continue
        frontier.extend(node.all_input_nodes)
    return found


def complete_masks(model: nn.Module, masks: Mapping[str, Mapping[str, torch.Tensor | None]],
                   *, graph: torch.fx.GraphModule | None = None) -> dict[str, dict[str, torch.Tensor | None]]:
    """``masks`` plus masks for the BatchNorm layers fed by removed output channels.

    In a masked model a BatchNorm after a fully masked channel still emits a constant
    there (its bias, shifted by the running mean), which a model without that channel
    cannot reproduce. Masking the BatchNorm's ``weight`` and ``bias`` on those channels
    (found through ReLU, pooling and dropout layers) makes the masked model output zero
    there, so removing the channels changes nothing: :func:`speedup_model` uses these
    masks, and ``export.apply_masks(model, complete_masks(model, masks))`` is the model it
    reproduces. Channels of the output layers are not removed (see :func:`speedup_model`)
    and get no BatchNorm mask.

    Args:
        model: the unwrapped model, traceable by ``torch.fx.symbolic_trace``.
        masks: NNI-format masks, ``{module_name: {target_name: mask}}``.
        graph: a ready ``torch.fx`` trace of ``model`` (traced when not given).

    Returns:
        A new dict; the given masks are not changed.
    """
    _check_mask_names(model, masks, "complete_masks()")
    graph = graph if graph is not None else _trace(model, "complete_masks()")
    modules = dict(graph.named_modules())
    outputs = _output_layers(graph)
    full: dict[str, dict[str, torch.Tensor | None]] = {name: dict(m) for name, m in masks.items()}
    for node in graph.graph.nodes:
        if node.op != "call_module" or node.target not in masks or node.target in outputs:
            continue
        dead = _dead_channels(modules[node.target], masks[node.target])
        if dead is None:
            continue
        frontier, seen = list(node.users), set()
        while frontier:
            user = frontier.pop()
            if user in seen:
                continue
            seen.add(user)
            module = modules.get(user.target) if user.op == "call_module" else None
            if isinstance(module, nn.modules.batchnorm._BatchNorm) and module.num_features == dead.numel():
                for name in ("weight", "bias"):
                    tensor = getattr(module, name, None)
                    if tensor is None:
                        continue
                    keep = (~dead).to(device=tensor.device, dtype=tensor.dtype)
                    old = full.setdefault(user.target, {}).get(name)
                    full[user.target][name] = keep if old is None else old * keep
            elif isinstance(module, _ZERO_PRESERVING) or (
                user.op == "call_function" and user.target in (torch.relu, nn.functional.relu)
            ):
                frontier.extend(user.users)
    return full


def _check_mask_format(masks: Any, caller: str) -> None:
    bad = None if isinstance(masks, Mapping) else type(masks).__name__
    if bad is None:
        bad = next((f"masks[{k!r}] is a {type(v).__name__}" for k, v in masks.items() if not isinstance(v, Mapping)),
                   None)
    if bad is not None:
        raise PruningTypeError(
            f"{caller}: masks should be a dict {{module_name: {{'weight': mask, 'bias': mask}}}} as "
            f"pruner.compress() returns, got {bad}"
        )


def _check_mask_names(model: nn.Module, masks: Any, caller: str) -> None:
    _check_mask_format(masks, caller)
    modules = dict(model.named_modules(remove_duplicate=False))
    unknown = [name for name in masks if name not in modules]
    if unknown:
        raise PruningError(
            f"{caller}: masks name module(s) {', '.join(repr(n) for n in unknown[:3])}, which the "
            f"{type(model).__name__} model does not have; masks must come from this model, after "
            "pruner.unwrap_model()."
        )


def _trace(model: nn.Module, caller: str) -> torch.fx.GraphModule:
    try:
        return torch.fx.symbolic_trace(model)
    except Exception as exc:
        raise PruningError(
            f"{caller}: torch.fx.symbolic_trace cannot trace {type(model).__name__} ({type(exc).__name__}: "
            f"{exc}); NNI's speedup needs a traceable model (no data-dependent control flow)."
        ) from exc


def speedup_model(model: nn.Module, masks: Mapping[str, Mapping[str, torch.Tensor | None]],
                  dummy_input: Any) -> nn.Module:
    """Turn ``out_channel`` masks into a physically smaller model with NNI's ModelSpeedup,
    in place; returns ``model``, in the train/eval mode it had.

    NNI's own tracer (``concrete_trace``) fails on torch 2.13, so the model is traced
    with ``torch.fx.symbolic_trace`` instead. The small model computes exactly what
    ``synflow_plugin.export.apply_masks(model, complete_masks(model, masks))``
    computes, and its output has
    the original shape:

    * every mask is applied to the weights first, so element-wise zeros stay zeros in
      the layers NNI rebuilds;
    * BatchNorm channels after removed channels are masked (:func:`complete_masks`);
    * the output layers (linear/conv layers whose units reach the output without
      another such layer) keep all their units: NNI would drop masked ones and change
      the output's shape, so their masked rows become zero rows after the speedup.

    Args:
        model: the unwrapped model (call ``pruner.unwrap_model()`` first).
        masks: the masks ``pruner.compress()`` returned.
        dummy_input: an input the model accepts, to propagate the masks.

    Returns:
        ``model``, with the masked channels removed.

    Raises:
        PruningError: the model is still wrapped, cannot be traced by ``torch.fx``, or the masks
            cover a transposed convolution (NNI cannot shrink it).
    """
    with warnings.catch_warnings():  # NNI registers torch pytree nodes with a deprecated call
        warnings.filterwarnings("ignore", message=".*pytree.*")
        from nni.compression.speedup import ModelSpeedup

    caller = "speedup_model()"
    _check_unwrapped(model, caller)
    _check_mask_names(model, masks, caller)
    modules = dict(model.named_modules(remove_duplicate=False))
    transposed = [name for name in masks if isinstance(modules.get(name), _CONV_TRANSPOSE)]
    if transposed:
        # NNI's speedup reads dim 0 of every weight as its output channels, which for a
        # transposed convolution are its input channels.
        raise PruningError(
            f"{caller}: masks cover transposed convolution(s) {', '.join(repr(n) for n in transposed[:3])}, "
            "which NNI's speedup cannot shrink; use synflow_plugin.export.compact_channels("
            "apply_masks(model, masks), dummy_input) instead, or keep the masks (export.make_permanent)."
        )
    # as NNI reads dummy_input: a tensor, or a list/tuple/dict of the positional arguments
    inputs = (tuple(dummy_input.values()) if isinstance(dummy_input, dict) else tuple(dummy_input)
              if isinstance(dummy_input, (list, tuple)) else (dummy_input,))
    modes = [(m, m.training) for m in model.modules()]
    try:  # a bad input fails here, before the model is changed, not deep inside NNI
        with torch.no_grad():
            model.eval()(*inputs)  # eval: BatchNorm statistics stay as they are
    except Exception as exc:
        raise PruningError(
            f"{caller}: the {type(model).__name__} model does not run on dummy_input ({type(exc).__name__}: "
            f"{str(exc).strip()[:300]}); pass an input model(dummy_input) accepts, e.g. one batch of the data."
        ) from exc
    finally:
        for module, training in modes:
            module.training = training
    graph = _trace(model, caller)
    outputs = _output_layers(graph) & set(masks)
    full = complete_masks(model, {n: m for n, m in masks.items() if n not in outputs}, graph=graph)
    rows = {}
    for name in outputs:  # their fully masked rows are zeroed after the speedup
        dead = _dead_channels(modules[name], masks[name])
        rows[name] = dead
        if dead is None:
            full[name] = dict(masks[name])
            continue
        alive = (~dead).reshape((-1,) + (1,) * (masks[name]["weight"].dim() - 1))
        full[name] = {t: None if m is None else (m if t not in ("weight", "bias") else
                                                 m + (~alive if t == "weight" else dead).to(m.dtype))
                      for t, m in masks[name].items()}
    apply_masks(model, full, caller="speedup_model()")
    training = model.training
    # NNI logs every node at INFO; its messages go to this module's logger (silent unless configured).
    try:
        ModelSpeedup(model, dummy_input, {n: m for n, m in full.items() if n not in outputs},
                     graph_module=graph, logger=_logger).speedup_model()
    except Exception as exc:
        raise PruningError(
            f"{caller}: NNI's ModelSpeedup failed ({type(exc).__name__}: {str(exc).strip()[:300]}). The masks "
            f"are already applied to the {type(model).__name__} model and NNI may have replaced some of its "
            "layers: rebuild it before using it again. The full error is chained below."
        ) from exc
    with torch.no_grad():
        for name, dead in rows.items():
            if dead is None:
                continue
            module = model.get_submodule(name)
            module.weight[dead.to(module.weight.device)] = 0
            bias_mask = masks[name].get("bias")
            if getattr(module, "bias", None) is not None and bias_mask is not None:
                module.bias.mul_(bias_mask.to(module.bias))
    return model.train(training)
