"""Make pruning masks permanent: plain dense tensors with zeros where the masks said so.

An operation of the core, used by export (:mod:`synflow_plugin.export`) and by the
host adapters (NNI's speedup) alike.

Masks come in three forms, all handled by :func:`make_permanent`:

* ``torch.nn.utils.prune`` (our criteria included: ``SynFlow``, ``SNIP``, ...) leaves
  ``weight_orig`` and ``weight_mask`` plus a forward pre-hook on every pruned module;
  :func:`torch.nn.utils.prune.remove` folds them into one ``weight`` parameter.
* NNI gives ``_, masks = pruner.compress()``, a dict
  ``{module_name: {"weight": mask, "bias": mask_or_None}}``; pass it as ``masks=``
  after ``pruner.unwrap_model()``.
* torch-pruning removes channels itself: nothing to do.

Exporting after this step matters: an exported model that still has masks stores
both the dense weights and the masks (twice the size, no zeros to compress).
"""

from __future__ import annotations

from typing import Any, Mapping

import torch
from torch import nn
from torch.nn.utils import prune

from synflow_plugin.errors import ExportError, PruningError, PruningTypeError
from synflow_plugin.targets import clone_model, current_mask, tensor_uses

__all__ = ["make_permanent", "apply_masks", "has_pruning_hooks", "copy_model", "check_nni_unwrapped"]


def copy_model(model: nn.Module, caller: str) -> nn.Module:
    """A deep copy of ``model``, also of one pruned with ``torch.nn.utils.prune``
    (see :func:`synflow_plugin.targets.clone_model`); failures become an :class:`ExportError`."""
    try:
        return clone_model(model)
    except PruningError as exc:
        raise ExportError(
            f"{caller}: {exc} The model is exported from a copy so that it is left as it was."
        ) from exc.__cause__


def check_nni_unwrapped(model: nn.Module, caller: str) -> None:
    """Refuse a model still wrapped by an NNI pruner: its masks live in NNI's wrappers."""
    for name, module in model.named_modules():
        if "_nni_wrapper" in module.__dict__ or "_nni_wrapper" in module._modules:
            where = f"'{name}'" if name else "the model itself"
            raise ExportError(
                f"{caller}: the model is still wrapped by an NNI pruner ({where} has an "
                "_nni_wrapper). Take the masks and unwrap it first: "
                "`_, masks = pruner.compress(); pruner.unwrap_model()`, then pass masks=masks."
            )

def has_pruning_hooks(model: nn.Module) -> bool:
    """Whether any module of ``model`` still carries a ``torch.nn.utils.prune`` mask."""
    return any(
        isinstance(hook, prune.BasePruningMethod)
        for module in model.modules()
        for hook in module._forward_pre_hooks.values()
    )


def _remove_prune_hooks(model: nn.Module) -> int:
    count = 0
    for module in model.modules():
        names = [
            hook._tensor_name
            for hook in list(module._forward_pre_hooks.values())
            if isinstance(hook, prune.BasePruningMethod)
        ]
        for name in names:
            prune.remove(module, name)
            count += 1
    return count


def _resolve_masks(model: nn.Module, masks: Any, caller: str) -> list[tuple[nn.Module, str, torch.Tensor]]:
    """Check ``masks`` against ``model`` and return ``(module, param_name, keep)`` triples.

    Nothing is changed, so a bad entry anywhere leaves the model as it was.
    """
    if not isinstance(masks, Mapping):
        raise PruningTypeError(
            f"{caller}: masks should be a dict {{module_name: {{'weight': mask, 'bias': mask}}}} "
            f"as NNI's pruner.compress() returns, got {type(masks).__name__}"
        )
    modules = dict(model.named_modules(remove_duplicate=False))  # every name of a shared module
    resolved = []
    for module_name, per_param in masks.items():
        module = modules.get(module_name)
        if module is None:
            close = [n for n in modules if n and (n.endswith(str(module_name)) or str(module_name).endswith(n))]
            hint = f" Did you mean {close[0]!r}?" if close else ""
            raise PruningError(
                f"{caller}: masks name module {module_name!r}, which the model does not have.{hint} "
                "Masks must come from the same model, after pruner.unwrap_model()."
            )
        if not isinstance(per_param, Mapping):
            raise PruningTypeError(
                f"{caller}: masks[{module_name!r}] should be a dict {{'weight': mask, ...}}, "
                f"got {type(per_param).__name__}"
            )
        for param_name, mask in per_param.items():
            if mask is None:
                continue
            # a tensor pruned with torch.nn.utils.prune too lives in <name>_orig until removed
            param = module._parameters.get(param_name, module._parameters.get(f"{param_name}_orig"))
            if param is None:
                available = ", ".join(sorted(n.removesuffix("_orig") for n in module._parameters)) or "none"
                raise PruningError(
                    f"{caller}: masks[{module_name!r}] names parameter {param_name!r}, which "
                    f"'{module_name}' does not have (its parameters: {available})."
                )
            if not isinstance(mask, torch.Tensor):
                raise PruningTypeError(
                    f"{caller}: masks[{module_name!r}][{param_name!r}] should be a torch.Tensor, "
                    f"got {type(mask).__name__}"
                )
            try:
                keep = torch.broadcast_to(mask.detach().to(param.device) != 0, param.shape)
            except RuntimeError as exc:
                raise PruningError(
                    f"{caller}: masks[{module_name!r}][{param_name!r}] has shape {tuple(mask.shape)}, "
                    f"which does not fit '{module_name}.{param_name}' of shape {tuple(param.shape)}."
                ) from exc
            resolved.append((module, param_name, keep))
    return resolved


def _multiply(resolved: list[tuple[nn.Module, str, torch.Tensor]]) -> None:
    with torch.no_grad():
        for module, param_name, keep in resolved:
            param = module._parameters[param_name]
            param.mul_(keep.to(param.dtype))


def apply_masks(model: nn.Module, masks: Mapping[str, Mapping[str, Any]], *, caller: str = "apply_masks()") -> nn.Module:
    """Multiply the parameters of ``model`` by NNI-style ``masks``, in place.

    Args:
        model: the (unwrapped) model the masks were computed for, without
            ``torch.nn.utils.prune`` hooks on the masked tensors (see :func:`make_permanent`).
        masks: ``{module_name: {param_name: mask or None}}``; a mask has the parameter's
            shape (or broadcasts to it) and zero marks a pruned entry.
        caller: the public function's name, for messages.

    Returns:
        ``model``, for chaining. Every mask is checked before any is applied.

    Raises:
        PruningTypeError: ``masks`` is not a mapping of mappings of tensors.
        PruningError: a module or parameter name that ``model`` lacks, or a mask whose
            shape does not fit its parameter.
    """
    resolved = _resolve_masks(model, masks, caller)
    for module, param_name, _ in resolved:
        if param_name not in module._parameters:
            raise PruningError(
                f"{caller}: '{param_name}' of {type(module).__name__} still has a "
                "torch.nn.utils.prune mask; use make_permanent(model, masks=masks) instead."
            )
    _multiply(resolved)
    return model


def check_tied_masks(model: nn.Module, caller: str) -> None:
    """Refuse a tied weight (one parameter several modules read) whose uses carry
    different ``torch.nn.utils.prune`` masks: baking a mask in writes it into the one
    tensor, so every use would take it and the model would compute something else."""
    for group in tensor_uses(model).values():
        if len(group) < 2:
            continue
        masks = [current_mask(module, name) for _, module, name in group]
        if all(torch.equal(masks[0], mask) for mask in masks[1:]):
            continue
        kept = ", ".join(f"{label!r} keeps {mask.float().mean().item():.1%}"
                         for (label, _, _), mask in zip(group, masks))
        raise PruningError(
            f"{caller}: {' and '.join(repr(label) for label, _, _ in group)} are one tensor (tied) but masked "
            f"differently ({kept}). Making the masks permanent writes them into that one tensor, so every use "
            "would be pruned alike and the model would no longer compute what it computes now. Prune every use "
            "with the same mask (prune.global_unstructured over prunable_parameters(model) does), or untie them "
            "first (e.g. module.weight = nn.Parameter(module.weight.detach().clone()))."
        )


def make_permanent(
    model: nn.Module,
    *,
    masks: Mapping[str, Mapping[str, Any]] | None = None,
    inplace: bool = False,
) -> nn.Module:
    """A model whose masks are baked into plain parameters (pruned entries are zeros).

    ``torch.nn.utils.prune`` masks are removed with :func:`torch.nn.utils.prune.remove`
    (the weight keeps its masked values, ``weight_orig``, ``weight_mask`` and the hook
    go); NNI masks given as ``masks=`` are multiplied in. Non-pruning hooks and every
    other attribute are kept.

    Args:
        model: the pruned model. A model still wrapped by an NNI pruner is refused:
            call ``pruner.unwrap_model()`` first and pass the masks.
        masks: NNI's ``{module_name: {"weight": mask, "bias": mask_or_None}}``.
        inplace: change ``model`` itself instead of a copy (saves memory; the model
            loses its prune hooks and its NNI-masked weights become zeros).

    Returns:
        The model with permanent masks: a copy unless ``inplace=True``.

    Raises:
        PruningTypeError: ``model`` is not a module or ``masks`` is malformed.
        PruningError: masks that do not fit the model, an NNI-wrapped model, or a tied
            weight whose uses are masked differently.

    Example:
        >>> import torch, torch.nn as nn, torch.nn.utils.prune as prune
        >>> model = nn.Sequential(nn.Linear(4, 2))
        >>> _ = prune.l1_unstructured(model[0], "weight", amount=0.5)
        >>> plain = make_permanent(model)
        >>> hasattr(plain[0], "weight_orig"), hasattr(model[0], "weight_orig")
        (False, True)
        >>> int((plain[0].weight == 0).sum())
        4
    """
    caller = "make_permanent()"
    if not isinstance(model, nn.Module):
        raise PruningTypeError(f"{caller}: model should be a torch.nn.Module, got {type(model).__name__}")
    if not isinstance(inplace, bool):
        raise PruningTypeError(f"{caller}: inplace should be True or False, got {inplace!r}")
    check_nni_unwrapped(model, caller)
    check_tied_masks(model, caller)
    target = model if inplace else copy_model(model, caller)
    resolved = _resolve_masks(target, masks, caller) if masks is not None else []
    _remove_prune_hooks(target)
    _multiply(resolved)
    return target
