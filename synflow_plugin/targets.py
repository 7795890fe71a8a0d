"""Which tensors are pruned, and the private copy of the model that scoring runs on.

Scoring changes a network a lot (SynFlow replaces every parameter by its absolute
value, every criterion zeroes pruned weights and needs gradients). All of that
happens on a *scoring copy*: the user's model, its parameters, buffers, modes,
``requires_grad`` flags, gradients and hooks are never touched, whatever happens
while scoring.
"""

from __future__ import annotations

import copy
import warnings
from dataclasses import dataclass
from typing import Iterable, Sequence

import torch
from torch import nn
from torch.nn.utils import parametrize, prune

from synflow_plugin.errors import PruningError, PruningTypeError

__all__ = [
    # what is pruned
    "PRUNABLE_TYPES",
    "RECURRENT_AND_ATTENTION",
    "EMBEDDINGS",
    "Target",
    "prunable_parameters",
    "resolve_targets",
    "held_tensor",
    "tensor_uses",
    "group_by_tensor",
    "TiedWeightWarning",
    "ComputedWeightWarning",
    "warn_unmasked_uses",
    "current_mask",
    "count_true",
    "expanded_value",
    # copies and views
    "clone_model",
    "scoring_copy",
    "embeddings_as_inputs",
]

#: Module types whose ``weight`` is pruned by default (the paper prunes every
#: convolution and linear layer, classifier included; biases and norms are kept).
PRUNABLE_TYPES: tuple[type[nn.Module], ...] = (
    nn.Linear,
    nn.Bilinear,
    nn.Conv1d,
    nn.Conv2d,
    nn.Conv3d,
    nn.ConvTranspose1d,
    nn.ConvTranspose2d,
    nn.ConvTranspose3d,
)
#: Layers whose weights are not called ``weight``, pruned by default too: attention's
#: packed (or separate) input projections, and every recurrent weight matrix.
RECURRENT_AND_ATTENTION: tuple[type[nn.Module], ...] = (nn.MultiheadAttention, nn.RNNBase, nn.RNNCellBase)
#: Embedding tables, pruned only on request (``prunable_parameters(model, embeddings=True)``).
EMBEDDINGS: tuple[type[nn.Module], ...] = (nn.Embedding, nn.EmbeddingBag)


def _weight_names(module: nn.Module, types: tuple[type[nn.Module], ...], embeddings: bool) -> list[str]:
    """The names of ``module``'s own parameters that :func:`prunable_parameters` lists."""
    own = {n[: -len("_orig")] if n.endswith("_orig") else n: p for n, p in module._parameters.items() if p is not None}
    if isinstance(module, nn.MultiheadAttention) and any(issubclass(nn.MultiheadAttention, t) for t in types):
        return [n for n in ("in_proj_weight", "q_proj_weight", "k_proj_weight", "v_proj_weight") if n in own]
    if isinstance(module, (nn.RNNBase, nn.RNNCellBase)) and isinstance(module, types):
        return [n for n in own if n.startswith("weight_")]
    if isinstance(module, types) or (embeddings and isinstance(module, EMBEDDINGS)) or _is_conv1d(module, types):
        return ["weight"] if "weight" in own else []
    return []


def _is_conv1d(module: nn.Module, types: tuple[type[nn.Module], ...]) -> bool:
    """Hugging Face's ``Conv1D`` (GPT-2's linear layers, weight stored (in, out)),
    recognised by its name and shape so that transformers need not be imported."""
    return (nn.Linear in types and type(module).__name__ == "Conv1D"
            and isinstance(module._parameters.get("weight", module._parameters.get("weight_orig")), torch.Tensor)
            and module._parameters.get("weight", module._parameters.get("weight_orig")).dim() == 2)


@dataclass(frozen=True)
class Target:
    """One prunable tensor, addressed by name so it can be found in any copy of the model.

    Attributes:
        module_name: qualified name of the owning module in the model (``""`` for the model).
        name: the parameter's name in that module, e.g. ``"weight"``.
        shape: the tensor's shape.
    """

    module_name: str
    name: str
    shape: torch.Size

    @property
    def qualified_name(self) -> str:
        return f"{self.module_name}.{self.name}" if self.module_name else self.name

    @property
    def numel(self) -> int:
        return self.shape.numel()


def prunable_parameters(
    model: nn.Module,
    types: Sequence[type[nn.Module]] = PRUNABLE_TYPES + RECURRENT_AND_ATTENTION,
    *,
    embeddings: bool = False,
) -> list[tuple[nn.Module, str]]:
    """The ``(module, name)`` pairs of every weight matrix and kernel of ``model``.

    The list to hand to ``prune.global_unstructured``. By default: the ``weight`` of
    every linear and convolution layer (transposed ones, ``nn.Bilinear`` and Hugging
    Face's ``Conv1D`` included), the input projections of ``nn.MultiheadAttention``
    (``in_proj_weight``, or ``q/k/v_proj_weight``; its ``out_proj`` is a linear layer),
    and the weight matrices of ``nn.RNN`` / ``nn.LSTM`` / ``nn.GRU`` and their cells
    (``weight_ih_l0``, ``weight_hh_l0``, ...). Biases and norms are kept. Embedding
    tables only with ``embeddings=True``.

    Args:
        model: the network.
        types: the module types to list (e.g. ``(nn.Conv2d,)`` for convolutions only).
        embeddings: also list ``nn.Embedding`` / ``nn.EmbeddingBag`` tables.

    Each module appears once even if it is registered under several names. A weight
    tied into several modules (e.g. an output layer sharing an embedding's table) is
    listed with every module that holds it, the embedding too: ``torch.nn.utils.prune``
    masks a tensor module by module, so a use left out would go on reading every weight.
    The pruning methods rank such a tensor once and give each of its uses the same mask.

    >>> model = nn.Sequential(nn.Linear(4, 3), nn.ReLU(), nn.Linear(3, 2))
    >>> [type(m).__name__ for m, _ in prunable_parameters(model)]
    ['Linear', 'Linear']
    >>> lstm = nn.LSTM(4, 8)
    >>> [name for _, name in prunable_parameters(lstm)]
    ['weight_ih_l0', 'weight_hh_l0']
    """
    if not isinstance(model, nn.Module):
        raise PruningTypeError(
            f"prunable_parameters(): model should be a torch.nn.Module, got {type(model).__name__}"
        )
    if isinstance(types, type) or not all(isinstance(t, type) and issubclass(t, nn.Module) for t in types):
        raise PruningTypeError(
            f"prunable_parameters(): types should be a sequence of nn.Module subclasses, got {types!r}"
        )
    types = tuple(types)
    listed, computed = set(), []
    for qualname, module in model.named_modules():
        for name in _weight_names(module, types, embeddings):
            tensor = held_tensor(module, name)
            if tensor is None:  # weight_orig without a prune mask: a hook computes the weight
                computed.append(_label(qualname, name))
            else:
                listed.add(id(tensor))
        if isinstance(module, types) and parametrize.is_parametrized(module, "weight"):
            computed.append(_label(qualname, "weight"))
    if computed:
        warnings.warn(
            f"prunable_parameters(): {', '.join(repr(c) for c in computed)} "
            f"{'is' if len(computed) == 1 else 'are'} computed from other tensors (a parametrization, or "
            "a hook such as spectral_norm or weight_norm) and not listed: torch.nn.utils.prune cannot mask a "
            "computed weight. Remove the parametrization first (torch.nn.utils.parametrize."
            "remove_parametrizations(module, 'weight'), or torch.nn.utils.remove_spectral_norm / "
            "remove_weight_norm), then list and prune the plain weight.",
            ComputedWeightWarning, stacklevel=2)
    return [(module, name) for module in model.modules() for name, tensor in held_tensors(module)
            if id(tensor) in listed]


class ComputedWeightWarning(UserWarning):
    """:func:`prunable_parameters` left out a weight that its module computes from other
    tensors (a parametrization such as ``weight_norm``), which no pruning method can mask."""


def held_tensor(module: nn.Module, name: str) -> torch.Tensor | None:
    """The parameter that ``module.<name>`` reads: its own, or ``<name>_orig`` where
    ``torch.nn.utils.prune`` has masked it."""
    return module._parameters.get(f"{name}_orig") if _is_pruned(module, name) else module._parameters.get(name)


def held_tensors(module: nn.Module) -> list[tuple[str, torch.Tensor]]:
    """``(name, parameter)`` for every parameter ``module`` reads (pruned ones by their name)."""
    names = [n[: -len("_orig")] if n.endswith("_orig") and _is_pruned(module, n[: -len("_orig")]) else n
             for n, p in module._parameters.items() if p is not None]
    return [(n, held_tensor(module, n)) for n in names]


def _label(qualname: str, name: str) -> str:
    return f"{qualname}.{name}" if qualname else name


def tensor_uses(model: nn.Module) -> dict[int, list[tuple[str, nn.Module, str]]]:
    """``id(parameter) -> [('qualified.name', module, name), ...]``: every module
    attribute of ``model`` that reads each parameter (several for a tied weight), in
    module order."""
    uses: dict[int, list[tuple[str, nn.Module, str]]] = {}
    for qualname, module in model.named_modules():
        for name, tensor in held_tensors(module):
            uses.setdefault(id(tensor), []).append((_label(qualname, name), module, name))
    return uses


def group_by_tensor(pairs: Iterable[tuple[nn.Module, str]]) -> list[list[tuple[nn.Module, str]]]:
    """``pairs`` grouped by the parameter they read (a tied weight's uses together), in
    the order of each group's first pair."""
    groups: dict[int, list[tuple[nn.Module, str]]] = {}
    for module, name in pairs:
        groups.setdefault(id(held_tensor(module, name)), []).append((module, name))
    return list(groups.values())


class TiedWeightWarning(UserWarning):
    """A pruned tensor is read by modules that were not given a mask: ``torch.nn.utils.prune``
    (and NNI) mask a tensor module by module, so those go on reading every weight."""


def warn_unmasked_uses(model: nn.Module, params: Sequence[tuple[nn.Module, str]], caller: str) -> None:
    """A :class:`TiedWeightWarning` naming each pruned tensor that modules outside
    ``params`` read too (a tied weight with a use left out)."""
    names = {id(m): n for n, m in model.named_modules()}
    uses = tensor_uses(model)
    listed = {_label(names[id(m)], n) for m, n in params if id(m) in names}
    for module, name in params:
        tensor = held_tensor(module, name)
        if tensor is None or id(module) not in names:
            continue
        others = [label for label, _, _ in uses.get(id(tensor), []) if label not in listed]
        if not others:
            continue
        first = _label(names[id(module)], name)
        one = len(others) == 1
        warnings.warn(
            f"{caller}: '{first}' is tied: {', '.join(repr(u) for u in others)} "
            f"{'reads' if one else 'read'} the same tensor but {'is' if one else 'are'} not pruned with it, so "
            f"{'it goes' if one else 'they go'} on using every weight (and removing the mask later writes the "
            "pruned values into the shared tensor). Prune every use together, e.g. prune.global_unstructured "
            "over prunable_parameters(model), which lists each module that holds a tied weight: every use "
            "then gets the same mask.",
            TiedWeightWarning, stacklevel=3)
        listed.update(others)  # once per tensor


def _is_pruned(module: nn.Module, name: str) -> bool:
    return f"{name}_orig" in module._parameters and f"{name}_mask" in module._buffers


def current_mask(module: nn.Module, name: str) -> torch.Tensor:
    """The boolean mask ``torch.nn.utils.prune`` keeps for ``module.<name>`` (all True if none)."""
    if _is_pruned(module, name):
        return module._buffers[f"{name}_mask"].detach() != 0
    return torch.ones_like(getattr(module, name), dtype=torch.bool)


def expanded_value(mask: torch.Tensor) -> bool | None:
    """The one value of a mask that is an expanded scalar (every stride 0, as the
    all-True view a tensor without a prune mask gets), else None."""
    if mask.numel() and not any(mask.stride()):
        return bool(mask.reshape(-1)[0])
    return None


def count_true(mask: torch.Tensor) -> int:
    """The True entries of a boolean mask; an expanded scalar is counted without
    being materialised."""
    value = expanded_value(mask)
    if value is not None:
        return mask.numel() if value else 0
    return int(torch.count_nonzero(mask))


def resolve_targets(
    model: nn.Module, params: Iterable[tuple[nn.Module, str]], *, caller: str = "prune"
) -> tuple[list[Target], list[int]]:
    """Turn ``(module, name)`` pairs into :class:`Target` s of ``model``, checking each one.

    Returns the targets, one per tensor, and for each pair the index of its target:
    the uses of a tied weight (pairs whose modules hold the same parameter) are one
    target, under the first of them.

    Raises:
        PruningTypeError: ``model`` is not a module, or a pair is malformed.
        PruningError: no pairs, a module outside ``model``, a name that is not a
            floating-point parameter of its module, or the same pair listed twice.
    """
    if not isinstance(model, nn.Module):
        raise PruningTypeError(
            f"{caller}: model should be the torch.nn.Module that contains the pruned layers, "
            f"got {type(model).__name__}. Pass model=<your network>."
        )
    names = {}
    for qualname, module in model.named_modules(remove_duplicate=False):
        names.setdefault(id(module), qualname)

    pairs = list(params)
    if not pairs:
        raise PruningError(
            f"{caller}: there are no parameters to prune. Pass (module, 'weight') pairs, "
            "e.g. synflow_plugin.prunable_parameters(model)."
        )
    targets, index, seen, target_of, outside = [], [], set(), {}, []
    for pair in pairs:
        if not (isinstance(pair, (tuple, list)) and len(pair) == 2):
            raise PruningTypeError(
                f"{caller}: each entry should be a (module, name) pair, got {pair!r}"
            )
        module, name = pair
        if not isinstance(module, nn.Module) or not isinstance(name, str):
            raise PruningTypeError(
                f"{caller}: each entry should be a (torch.nn.Module, str) pair, got "
                f"({type(module).__name__}, {type(name).__name__})"
            )
        if id(module) not in names:  # a use of a tied weight outside a view of the model, or a mistake
            outside.append((len(index), module))
            index.append(None)
            continue
        tensor = held_tensor(module, name)
        if tensor is None:
            available = ", ".join(n for n, _ in module.named_parameters(recurse=False)) or "none"
            raise PruningError(
                f"{caller}: '{names[id(module)]}' has no parameter named '{name}' "
                f"(its parameters: {available})."
            )
        if isinstance(tensor, nn.parameter.UninitializedParameter):
            raise PruningError(
                f"{caller}: '{names[id(module)]}.{name}' is not initialised yet (a lazy module, "
                f"{type(module).__name__}, sizes it on its first forward pass). Run the model once on an "
                "input, e.g. model(example_inputs), then prune."
            )
        if not tensor.is_floating_point():
            raise PruningError(
                f"{caller}: '{names[id(module)]}.{name}' has dtype {tensor.dtype}; only "
                "floating-point parameters can be pruned."
            )
        key = (id(module), name)
        if key in seen:
            raise PruningError(
                f"{caller}: '{names[id(module)]}.{name}' is listed twice; list each tensor once."
            )
        seen.add(key)
        if id(tensor) not in target_of:  # else a use of a tied weight listed already
            target_of[id(tensor)] = len(targets)
            targets.append(Target(names[id(module)], name, tensor.shape))
        index.append(target_of[id(tensor)])
    for position, module in outside:
        tensor = held_tensor(module, pairs[position][1])
        if tensor is None or id(tensor) not in target_of:
            raise PruningError(
                f"{caller}: a {type(module).__name__} module in the list is not part of the "
                f"{type(model).__name__} passed as model=...; pass the network that contains it."
            )
        index[position] = target_of[id(tensor)]  # e.g. an embedding a view replaced, tied to a listed layer
    return targets, index


def _has_grad_fn_attribute(module: nn.Module, name: str) -> bool:
    value = module.__dict__.get(name)
    return isinstance(value, torch.Tensor) and not value.is_leaf


def _deepcopy_pruned(model: nn.Module) -> nn.Module:
    """``copy.deepcopy`` skipping the non-leaf ``weight = weight_orig * weight_mask``
    attributes that ``torch.nn.utils.prune`` leaves on a module (they cannot be copied)."""
    memo: dict[int, object] = {}
    for module in model.modules():
        for name in list(module.__dict__):
            if _has_grad_fn_attribute(module, name):
                memo[id(module.__dict__[name])] = None
    try:
        return copy.deepcopy(model, memo)
    except Exception as exc:  # a model holding something that cannot be copied
        raise PruningError(
            f"cannot copy the {type(model).__name__} model ({type(exc).__name__}: {exc}); "
            "make it deep-copyable (no open files, locks or generators as attributes)."
        ) from exc


def clone_model(model: nn.Module) -> nn.Module:
    """``copy.deepcopy`` that also works on a model pruned with ``torch.nn.utils.prune``.

    Such a model holds ``weight = weight_orig * weight_mask`` as a non-leaf tensor
    attribute, which ``copy.deepcopy`` refuses to copy. Those attributes are skipped
    and rebuilt on the copy from its own ``weight_orig`` and ``weight_mask``, so the
    copy is pruned exactly like the original, hooks included.

    >>> import torch.nn.utils.prune as prune
    >>> layer = prune.l1_unstructured(nn.Linear(4, 2), "weight", amount=0.5)
    >>> twin = clone_model(layer)
    >>> torch.equal(twin.weight, layer.weight), twin.weight_orig is layer.weight_orig
    (True, False)
    """
    clone = _deepcopy_pruned(model)
    for module in clone.modules():
        for hook in module._forward_pre_hooks.values():
            if isinstance(hook, prune.BasePruningMethod):
                setattr(module, hook._tensor_name, hook.apply_mask(module))
    return clone


def scoring_copy(model: nn.Module) -> nn.Module:
    """A private, plain copy of ``model`` to score on.

    Pruned tensors (``weight_orig`` * ``weight_mask``) become ordinary parameters
    holding the masked values, and every hook is removed so that scoring neither
    re-applies masks behind our back nor triggers the user's logging hooks. A tied
    weight stays one parameter: every module that reads it reads the rebuilt one,
    masked by what all its masked uses keep.
    """
    clone = _deepcopy_pruned(model)  # the pruned tensors are rebuilt below, without hooks
    rebuilt: dict[int, tuple[torch.Tensor, nn.Parameter]] = {}  # id(orig) -> (orig, the parameter for it)
    with torch.no_grad():
        for module in clone.modules():
            for hook_dict in (
                module._forward_pre_hooks,
                module._forward_hooks,
                module._backward_hooks,
                module._backward_pre_hooks,
            ):
                hook_dict.clear()
            for attr in ("_forward_pre_hooks_with_kwargs", "_forward_hooks_with_kwargs",
                         "_forward_hooks_always_called"):
                getattr(module, attr, {}).clear()
            for name in [n[: -len("_orig")] for n in list(module._parameters) if n.endswith("_orig")]:
                if not _is_pruned(module, name):
                    continue
                orig = module._parameters.pop(f"{name}_orig")
                mask = module._buffers.pop(f"{name}_mask")
                module.__dict__.pop(name, None)
                if id(orig) in rebuilt:  # another masked use of a tied weight
                    param = rebuilt[id(orig)][1]
                    param.mul_(mask.to(orig.dtype))
                else:
                    param = nn.Parameter(orig * mask.to(orig.dtype), orig.requires_grad)
                    rebuilt[id(orig)] = (orig, param)
                module.register_parameter(name, param)
        if rebuilt:  # the unmasked uses of a tied weight read the rebuilt parameter too
            for module in clone.modules():
                for name, tensor in list(module._parameters.items()):
                    if tensor is not None and id(tensor) in rebuilt and rebuilt[id(tensor)][0] is tensor:
                        module._parameters[name] = rebuilt[id(tensor)][1]
    return clone


def embeddings_as_inputs(model: nn.Module, *names: str) -> nn.Module:
    """A view of ``model`` that takes float embeddings where it took token ids.

    SynFlow (and any criterion that runs the model on ``example_inputs``) needs a
    floating-point input: it feeds ones, which mean nothing as token ids. This view
    shares every module and parameter with ``model`` but replaces the embedding
    modules ``names`` (qualified names, e.g. ``"embed"``) by ``nn.Identity``, so the
    model's own ``forward`` runs on ``(batch, time, dim)`` embeddings. Prune with the
    view as ``model=``; the masks land on the shared layers, i.e. on ``model`` itself.
    List the pruned pairs from ``model`` (``prunable_parameters(model)``): an output
    layer tied to a replaced embedding then gives its mask to the embedding too, which
    the view cannot see.

    Raises:
        PruningError: a name that is not an ``nn.Embedding`` / ``nn.EmbeddingBag`` of ``model``.

    >>> class LM(nn.Module):
    ...     def __init__(self):
    ...         super().__init__()
    ...         self.embed, self.out = nn.Embedding(10, 4), nn.Linear(4, 10)
    ...     def forward(self, tokens):
    ...         return self.out(self.embed(tokens))
    >>> lm = LM()
    >>> view = embeddings_as_inputs(lm, "embed")
    >>> view(torch.ones(2, 3, 4)).shape, view.out is lm.out
    (torch.Size([2, 3, 10]), True)
    """
    if not isinstance(model, nn.Module):
        raise PruningTypeError(f"embeddings_as_inputs(): model should be a torch.nn.Module, got {type(model).__name__}")
    if not names:
        found = [n for n, m in model.named_modules() if isinstance(m, (nn.Embedding, nn.EmbeddingBag))]
        raise PruningError(
            f"embeddings_as_inputs(): name the embedding modules to bypass; the model's are: {', '.join(found) or 'none'}"
        )
    modules = dict(model.named_modules())
    for name in names:
        if not isinstance(modules.get(name), (nn.Embedding, nn.EmbeddingBag)):
            raise PruningError(
                f"embeddings_as_inputs(): {name!r} is not an nn.Embedding of the model "
                f"({type(modules[name]).__name__ if name in modules else 'no such module'})"
            )
    view = copy.copy(model)  # a shallow copy: the same submodules and parameters
    view._modules = dict(model._modules)
    for name in names:
        parent_name, _, child = name.rpartition(".")
        parent = view
        for part in parent_name.split(".") if parent_name else []:
            shared = parent._modules[part]
            parent._modules[part] = copy.copy(shared)  # a shallow copy of the path, not of the layers
            parent._modules[part]._modules = dict(shared._modules)
            parent = parent._modules[part]
        parent._modules[child] = nn.Identity()
    return view
