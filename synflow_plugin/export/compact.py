"""Channel compaction: physically remove channels that are exactly zero.

Structured pruning by masks (NNI's out-channel pruners, ``prune.ln_structured``, a
channel criterion) leaves a model of the original size with whole output channels
set to zero. ONNX Runtime gains nothing from those zeros; a model in which those
channels are *gone* is smaller and faster. :func:`compact_channels` builds that
model with torch-pruning's :class:`~torch_pruning.DependencyGraph`, which knows which
layers share a channel (a convolution, its BatchNorm, the next layer's inputs, and
every layer tied to it by a residual sum or a concatenation).

What is removed, exactly. Channel ``i`` of a dependency group is removed only when
the tensor it names is zero for *every* input, so that the model computes the same
function (up to float rounding) without it:

1. every layer that *writes* the channel produces zero there: a Conv/Linear output
   channel whose weights and bias are all zero, a BatchNorm that maps 0 to 0 in eval
   mode (``beta - running_mean * gamma / sqrt(running_var + eps) == 0``, true at
   initialisation, not after training in general); other writers (GroupNorm,
   LayerNorm, PReLU, grouped convolutions, attention, bare parameters) make the group
   ineligible;
2. every Conv/Linear that *reads* the channel saw exactly zero there on
   ``example_inputs`` (this catches operations between layers that turn a zero into
   a constant, such as ``sigmoid`` or ``x + 1``); any other reader makes the group
   ineligible;
3. the channel does not reach a model output (the classifier's outputs and anything
   returned by ``forward`` are never compacted).

A channel that is not zero but constant (a zero convolution followed by a trained
BatchNorm with ``beta != 0``) is *kept*: with zero padding its effect on the next
convolution differs at the image border, so it cannot be folded into a bias exactly.
At least one channel of every group is kept so that every layer stays valid.
Every removal is then tried: the compacted model is run on ``example_inputs`` and
compared with the original (all groups at once, and one group at a time if that
fails). A removal that makes the model fail (attention that reshapes its channels
into heads of a fixed size) or changes its outputs beyond the tolerance is undone.

What cannot be removed is never a silent change and, by default in
:func:`~synflow_plugin.export.export_onnx` (``compact=None``), never a failed export:
such channels are kept (exported as zeros) and one :class:`CompactionWarning` names
each layer with the reason: a writer or reader compaction cannot check (LayerNorm,
attention, recurrent layers), a graph torch-pruning cannot map (its index mapping
fails on some recurrent graphs) or trace, or a removal that breaks the model. With
``strict=True`` (``compact=True``) the same list is an :class:`ExportError`.
"""

from __future__ import annotations

import warnings
from typing import Any, Iterable

import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from synflow_plugin.errors import PruningError, PruningTypeError
from synflow_plugin.export._common import (
    ExportError,
    as_input_tuple,
    check_nni_unwrapped,
    copy_model,
    output_leaves,
    relative_difference,
    require_torch_pruning,
)
from synflow_plugin.permanent import has_pruning_hooks, make_permanent

__all__ = ["compact_channels", "find_zero_channels", "channel_counts", "CompactionWarning"]

_CONV = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
_CONV_T = (nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)
_WEIGHTED = _CONV + _CONV_T + (nn.Linear,)


def channel_counts(model: nn.Module) -> dict[str, int]:
    """Output channels (features) of every Conv/Linear of ``model``, by module name."""
    counts = {}
    for name, module in model.named_modules():
        if isinstance(module, _CONV + _CONV_T):
            counts[name] = module.out_channels
        elif isinstance(module, nn.Linear):
            counts[name] = module.out_features
    return counts


# --------------------------------------------------------------------------- zero tests
def _writer_zero(module: nn.Module, idxs: list[int]) -> list[bool] | None:
    """Per index: does this layer write exactly zero to its output channel? None: unknown type."""
    with torch.no_grad():
        if isinstance(module, _CONV + (nn.Linear,)):
            if isinstance(module, _CONV) and module.groups != 1:
                return None
            weight = module.weight.detach()
            nonzero = weight.reshape(weight.shape[0], -1).ne(0).any(dim=1)
        elif isinstance(module, _CONV_T):
            if module.groups != 1:
                return None
            weight = module.weight.detach()
            nonzero = weight.transpose(0, 1).reshape(weight.shape[1], -1).ne(0).any(dim=1)
        elif isinstance(module, _BatchNorm):
            channels = module.num_features
            mean, var = module.running_mean, module.running_var
            out = torch.nn.functional.batch_norm(
                torch.zeros(2, channels, dtype=torch.float32),
                None if mean is None else mean.detach().float(),
                None if var is None else var.detach().float(),
                None if module.weight is None else module.weight.detach().float(),
                None if module.bias is None else module.bias.detach().float(),
                mean is None,  # without running stats, eval mode normalises with batch stats
                0.0,
                module.eps,
            )
            return [bool(out[:, i].eq(0).all()) for i in idxs]
        else:
            return None
        if module.bias is not None:
            nonzero = nonzero | module.bias.detach().ne(0)
    return [not bool(nonzero[i]) for i in idxs]


class _ReaderInputs:
    """Forward pre-hooks that keep the last input of every Conv/Linear, and count calls."""

    def __init__(self, model: nn.Module):
        self.inputs: dict[nn.Module, torch.Tensor] = {}
        self.calls: dict[nn.Module, int] = {}
        self.output_grad_fns: set = set()
        self._handles = [
            m.register_forward_pre_hook(self._hook) for m in model.modules() if isinstance(m, _WEIGHTED)
        ]

    def _hook(self, module, args):
        self.calls[module] = self.calls.get(module, 0) + 1
        if args and isinstance(args[0], torch.Tensor):
            self.inputs[module] = args[0].detach()

    def remove(self):
        for handle in self._handles:
            handle.remove()

    def zero(self, module: nn.Module, idxs: list[int]) -> list[bool] | None:
        """Per index: was the module's input channel exactly zero? None: cannot tell."""
        x = self.inputs.get(module)
        if x is None or self.calls.get(module) != 1:
            return None
        dim = -1 if isinstance(module, nn.Linear) else 1
        if x.dim() < 2:
            return None
        nonzero = x.ne(0).movedim(dim, 0).reshape(x.shape[dim], -1).any(dim=1)
        if max(idxs, default=-1) >= nonzero.numel():
            return None
        return [not bool(nonzero[i]) for i in idxs]


def _zero_rows(module: nn.Module) -> list[int]:
    """Output channels of a Conv/Linear whose weights (and bias) are all zero."""
    with torch.no_grad():
        weight = module.weight.detach()
        if isinstance(module, _CONV_T):
            weight = weight.transpose(0, 1)
        nonzero = weight.reshape(weight.shape[0], -1).ne(0).any(dim=1)
        bias = getattr(module, "bias", None)
        if isinstance(bias, torch.Tensor) and bias.shape == nonzero.shape:
            nonzero = nonzero | bias.detach().ne(0)
    return [i for i, nz in enumerate(nonzero.tolist()) if not nz]


def _describe(names: dict, module: Any) -> str:
    name = names.get(module)
    kind = type(module).__name__
    return f"'{name}' ({kind})" if name else f"a {kind}"


def _group_zero_channels(tp, DG, group, readers: _ReaderInputs, names: dict) -> tuple[list[int], str | None]:
    """``(root indices of group that are zero everywhere, why zero channels are kept)``.

    The reason is None when nothing needs saying: no zero channel, channels that are
    not zero for every input (a BatchNorm or an operation makes them non-zero), or
    channels that reach a model output (never compacted, see the module docstring).
    It names the layer that stops compaction when the channels look empty but
    compaction cannot prove it.
    """
    ops = tp.ops
    passthrough = {
        ops.OPTYPE.CONCAT, ops.OPTYPE.SPLIT, ops.OPTYPE.ELEMENTWISE, ops.OPTYPE.RESHAPE,
        ops.OPTYPE.UNBIND, ops.OPTYPE.EXPAND, ops.OPTYPE.SLICE,
    }
    for item in group:
        node = item.dep.target
        writes = DG.is_out_channel_pruning_fn(item.dep.handler)
        sink = not node.outputs  # nothing reads this node: it feeds a model output
        if node.type == ops.OPTYPE.OUTPUT or (sink and (writes or node.type in passthrough)):
            return [], None  # the channel is (part of) a model output
        if ((writes or node.type in passthrough) and getattr(node, "grad_fn", None) is not None
                and node.grad_fn in readers.output_grad_fns):
            return [], None  # returned by forward, and read by other layers as well
    n_root = len(group[0].idxs)
    dead = [True] * n_root
    position = {r: k for k, r in enumerate(group[0].root_idxs)}
    for item in group:
        dep, idxs, root_idxs = item.dep, list(item.idxs), list(item.root_idxs)
        node = dep.target
        if node.type in passthrough:
            continue
        module = node.module
        writes = DG.is_out_channel_pruning_fn(dep.handler)
        if writes:
            flags = _writer_zero(module, idxs)
            if flags is None:
                return [], (f"{_describe(names, module)} also writes these channels, and compaction cannot "
                            "tell whether it keeps them at zero")
        elif isinstance(module, _WEIGHTED):
            flags = readers.zero(module, idxs)
            if flags is None:
                calls = readers.calls.get(module, 0)
                why = (f"runs {calls} times per forward" if calls > 1 else
                       "did not run on example_inputs" if calls == 0 else "takes an input of another layout")
                return [], f"{_describe(names, module)} reads these channels and {why}, so its input cannot be checked"
        else:
            return [], (f"{_describe(names, module)} reads these channels; compaction removes only channels "
                        "that Conv/Linear layers read")
        for root, zero in zip(root_idxs, flags):
            if not zero and root in position:
                dead[position[root]] = False
    zero = [group[0].root_idxs[k] for k in range(n_root) if dead[k]]
    if len(zero) == n_root:  # keep one channel: a layer with no channels is not a layer
        zero = zero[1:]
    return zero, None


def _plan(tp, DG, model, ignored, readers) -> tuple[list[tuple[nn.Module, Any, list[int]]], dict[str, str]]:
    """``(groups to prune, {layer: why its zero channels are kept})``.

    Each root layer is visited on its own (torch-pruning's ``get_all_groups`` stops at
    the first layer whose channels it cannot map), and only layers with all-zero
    output channels are looked at.
    """
    names = {m: n for n, m in model.named_modules()}
    ignored = list(ignored) + list(DG.IGNORED_LAYERS_IN_TRACING)
    plan, kept, visited = [], {}, set()
    for module in list(DG.module2node):
        if not isinstance(module, _WEIGHTED) or any(module is m for m in ignored) or id(module) in visited:
            continue
        pruner = DG.get_pruner_of_module(module)
        if pruner is None or pruner.get_out_channels(module) is None:
            continue
        zero_rows = _zero_rows(module)
        try:
            group = DG.get_pruning_group(module, pruner.prune_out_channels,
                                         list(range(pruner.get_out_channels(module))))
        except Exception as exc:  # noqa: BLE001 - torch-pruning's index mapping fails on some graphs
            visited.add(id(module))
            if zero_rows:
                kept[names.get(module, "?")] = (
                    f"{len(zero_rows)} zero output channel(s): torch-pruning cannot map the channels "
                    f"of {_describe(names, module)} through the graph ({type(exc).__name__}: {_first_line(exc)})"
                )
            continue
        writers = [item.dep.target.module for item in group if DG.is_out_channel_pruning_fn(item.dep.handler)]
        for writer in writers:
            visited.add(id(writer))
        if any(any(w is m for m in ignored) for w in writers):
            continue
        if not zero_rows:
            continue  # a channel is zero only if every writer, this one included, writes zero
        zero, reason = _group_zero_channels(tp, DG, group, readers, names)
        if reason is not None:
            kept[names.get(module, "?")] = f"{len(zero_rows)} zero output channel(s): {reason}"
        elif zero:
            plan.append((module, pruner.prune_out_channels, zero))
    for module, name in names.items():  # layers the trace never reached
        if (isinstance(module, _WEIGHTED) and module not in DG.module2node and name not in kept
                and not any(module is m for m in ignored)):
            zero_rows = _zero_rows(module)
            if zero_rows:
                kept[name] = (f"{len(zero_rows)} zero output channel(s): torch-pruning's trace does not reach "
                              "this layer as a module (it did not run on example_inputs, its weights are used "
                              "directly, as nn.MultiheadAttention uses out_proj, or its output carries no "
                              "autograd history)")
    return plan, kept


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    line = lines[0] if lines else type(exc).__name__
    return line if len(line) <= 200 else line[:197] + "..."


class _Snapshot:
    """The attributes of every submodule, to undo a pruning step.

    torch-pruning replaces parameters and buffers by new tensors and changes plain
    attributes (``out_features``, ``in_channels``, ...); it does not write into the old
    tensors, so shallow copies of each module's dictionaries restore the module.
    """

    def __init__(self, modules: Iterable[nn.Module]):
        self.saved = [(m, dict(m.__dict__), dict(m._parameters), dict(m._buffers), dict(m._modules))
                      for m in modules]

    def restore(self) -> None:
        for module, attrs, params, buffers, children in self.saved:
            module.__dict__.clear()
            module.__dict__.update(attrs)
            module.__dict__["_parameters"] = dict(params)
            module.__dict__["_buffers"] = dict(buffers)
            module.__dict__["_modules"] = dict(children)


# --------------------------------------------------------------------------- public
def find_zero_channels(model: nn.Module, example_inputs: Any) -> dict[str, list[int]]:
    """The output channels :func:`compact_channels` would remove, by root module name.

    Each entry names one layer of a dependency group (the other layers of the group,
    e.g. its BatchNorm and the next layer's inputs, lose the same channels).
    ``model`` is not changed. A removal that would break the model is found only by
    trying it: :func:`compact_channels` does, and keeps those channels.
    """
    caller = "find_zero_channels()"
    tp = require_torch_pruning(caller)
    work = _working_copy(model, caller)
    inputs = as_input_tuple(example_inputs, caller)
    DG, readers = _build(tp, work, inputs, caller)
    names = {m: n for n, m in work.named_modules()}
    plan, _ = _plan(tp, DG, work, (), readers)
    return {names[m]: idxs for m, _, idxs in plan}


def _working_copy(model: nn.Module, caller: str) -> nn.Module:
    if not isinstance(model, nn.Module):
        raise PruningTypeError(f"{caller}: model should be a torch.nn.Module, got {type(model).__name__}")
    check_nni_unwrapped(model, caller)
    return make_permanent(model) if has_pruning_hooks(model) else copy_model(model, caller)


class _TracedOutputs:
    """The tensors of a model output that torch-pruning can follow back (any nesting:
    tuples, dicts, Hugging Face ``ModelOutput``; other objects such as caches are skipped).
    Remembers their autograd nodes: a tensor returned by ``forward`` that other layers
    also read is a model output too, which torch-pruning's graph does not mark."""

    def __init__(self):
        self.grad_fns: set = set()

    def __call__(self, output: Any) -> list[torch.Tensor]:
        leaves = torch.utils._pytree.tree_leaves(output)
        traced = [t for t in leaves if isinstance(t, torch.Tensor) and t.grad_fn is not None]
        if not traced:
            raise RuntimeError("no output of the model carries autograd history (is forward run under "
                               "torch.no_grad(), or are its outputs detached?)")
        self.grad_fns = {t.grad_fn for t in traced}
        return traced


def _build(tp, model: nn.Module, inputs: tuple, caller: str):
    model.eval()
    readers = _ReaderInputs(model)
    outputs = _TracedOutputs()
    try:
        with torch.enable_grad():
            DG = tp.DependencyGraph().build_dependency(
                model, example_inputs=inputs, output_transform=outputs, verbose=False)
    except Exception as exc:
        raise ExportError(
            f"{caller}: torch-pruning could not trace the {type(model).__name__} model to find its "
            f"channel dependencies ({type(exc).__name__}: {_first_line(exc)}). "
            "Check that model(*example_inputs) runs, or pass compact=False."
        ) from exc
    finally:
        readers.remove()
    readers.output_grad_fns = outputs.grad_fns
    return DG, readers


class CompactionWarning(UserWarning):
    """All-zero channels that compaction kept (exported as zeros), each layer named with the reason.

    Attributes:
        kept: ``{layer name: reason}``.
    """

    def __init__(self, message: str, kept: dict[str, str] | None = None):
        super().__init__(message)
        self.kept = dict(kept or {})


def _kept_message(caller: str, model_name: str, kept: dict[str, str], *, strict: bool = False) -> str:
    lines = "\n".join(f"  '{name}': {reason}" for name, reason in kept.items())
    if strict:
        return (f"{caller}: compact=True, but {len(kept)} layer(s) of {model_name} have all-zero channels "
                f"that cannot be removed:\n{lines}\nPass compact=None to export them as zeros (with a "
                "warning that names them), or compact=False.")
    return (f"{caller}: {len(kept)} layer(s) of {model_name} keep their all-zero channels; they are exported "
            f"as zeros (the model is still correct, but they cost time):\n{lines}")


def _check(work: nn.Module, inputs: tuple, expected: list, rtol: float, caller: str) -> str | None:
    """None if ``work`` still computes ``expected``, else why not."""
    work.eval()
    try:
        with torch.no_grad():
            actual = output_leaves(work(*inputs), caller)
    except Exception as exc:  # noqa: BLE001 - any failure of the pruned model is reported
        return f"the model no longer runs without them ({type(exc).__name__}: {_first_line(exc)})"
    shapes = [tuple(a.shape) for a in actual], [tuple(e.shape) for e in expected]
    if shapes[0] != shapes[1]:
        return f"removing them changes the shape of a model output ({shapes[1]} -> {shapes[0]})"
    diff, rel = relative_difference([a.detach().cpu().numpy() for a in actual],
                                    [e.detach().cpu().numpy() for e in expected])
    if not rel <= rtol:
        return (f"removing them changes the outputs (max abs difference {diff:.3g}, relative {rel:.3g} > "
                f"rtol={rtol:g}): an operation between the layers does not keep zeros at zero")
    return None


def _compact(model: nn.Module, inputs: tuple, ignored_copies: list, rtol: float, strict: bool,
             caller: str, work: nn.Module) -> tuple[nn.Module, dict[str, str]]:
    """Compact ``work`` (a copy of ``model``) in place; ``(work, {layer: why kept})``."""
    tp = require_torch_pruning(caller)
    model_name = type(model).__name__
    work.eval()
    with torch.no_grad():
        expected = [t.detach().clone() for t in output_leaves(work(*inputs), caller)]
    try:
        DG, readers = _build(tp, work, inputs, caller)
    except ExportError as exc:
        if strict:
            raise
        kept = {"": f"the whole model is kept: {exc}"}
        warnings.warn(CompactionWarning(
            f"{caller}: {model_name} is exported without compaction: {exc}", kept), stacklevel=3)
        return work, kept
    names = {m: n for n, m in work.named_modules()}
    plan, kept = _plan(tp, DG, work, ignored_copies, readers)
    if strict and kept:
        raise ExportError(_kept_message(caller, model_name, kept, strict=True))
    original = _Snapshot(work.modules())

    def prune(module, handler, idxs) -> str | None:
        try:
            group = DG.get_pruning_group(module, handler, idxs)
            if not DG.check_pruning_group(group):
                return "torch-pruning refuses to remove them (the group would lose all its channels)"
            group.prune(record_history=False)
        except Exception as exc:  # noqa: BLE001 - torch-pruning failures are reported by layer
            return f"torch-pruning cannot remove them ({type(exc).__name__}: {_first_line(exc)})"
        return None

    # all at once (the usual case: one check); one by one if that fails
    failed = next((why for why in (prune(*step) for step in plan) if why is not None), None)
    if failed is None:
        failed = _check(work, inputs, expected, rtol, caller)
    if failed is not None and len(plan) > 1:
        original.restore()
        for module, handler, idxs in plan:
            step = _Snapshot(work.modules())
            why = prune(module, handler, idxs) or _check(work, inputs, expected, rtol, caller)
            if why is not None:
                step.restore()
                kept[names.get(module, "?")] = f"{len(idxs)} zero output channel(s): {why}"
                if strict:
                    break
    elif failed is not None and plan:  # nothing planned: the final check below reports the failure
        original.restore()
        module, _, idxs = plan[0]
        kept[names.get(module, "?")] = f"{len(idxs)} zero output channel(s): {failed}"
    if strict and kept:
        original.restore()
        raise ExportError(_kept_message(caller, model_name, kept, strict=True))
    final = _check(work, inputs, expected, rtol, caller)
    if final is not None:  # not expected: every step was checked; never hand back a changed model
        original.restore()
        kept = {"": f"the whole model is kept: {final}"}
    for p in work.parameters():
        p.grad = None
    work.eval()
    if kept:
        warnings.warn(CompactionWarning(_kept_message(caller, model_name, kept), kept), stacklevel=3)
    return work, kept


def compact_channels(
    model: nn.Module,
    example_inputs: Any,
    *,
    ignored_layers: Iterable[nn.Module] = (),
    rtol: float = 1e-4,
    strict: bool = True,
) -> nn.Module:
    """A smaller copy of ``model`` without its all-zero channels; same outputs.

    Output channels of Conv/Linear layers that are exactly zero (all weights and the
    bias zero, and zero after the BatchNorm that follows) are removed through
    torch-pruning's dependency graph, so the layers that read them lose the matching
    inputs and residual-coupled layers stay consistent. The rules that keep the
    function unchanged are in this module's docstring. Every removal is checked on
    ``example_inputs`` (all at once, and one layer at a time if that fails); a removal
    that breaks the model or changes its outputs is undone. Masks of
    ``torch.nn.utils.prune`` are made permanent first.

    Args:
        model: the pruned model (not changed).
        example_inputs: a tensor or tuple of tensors ``model`` accepts.
        ignored_layers: layers whose output channels must be kept (the classifier and
            every other layer that feeds a model output are kept anyway).
        rtol: allowed ``max|compacted - original| / max|original|`` on ``example_inputs``.
        strict: ``True`` (default): all-zero channels that cannot be removed (attention
            heads that would change shape, layers torch-pruning cannot map, a model it
            cannot trace) are an :class:`ExportError` naming each layer and why.
            ``False``: compact what can be compacted, keep the rest and say so in one
            :class:`CompactionWarning` (what ``export_onnx(compact=None)`` does).

    Returns:
        A new module in eval mode (BatchNorm uses running statistics).

    Raises:
        ImportError: torch-pruning is not installed (extra ``[torch-pruning]``).
        ExportError: with ``strict=True``, zero channels that cannot be removed, or a
            model that cannot be traced.

    Example:
        >>> import torch, torch.nn as nn
        >>> model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.Flatten(), nn.Linear(8 * 30 * 30, 2))
        >>> with torch.no_grad():
        ...     model[0].weight[:4] = 0; model[0].bias[:4] = 0
        >>> small = compact_channels(model, torch.randn(1, 3, 32, 32))
        >>> small[0].out_channels, small[3].in_features
        (4, 3600)
    """
    caller = "compact_channels()"
    require_torch_pruning(caller)
    inputs = as_input_tuple(example_inputs, caller)
    ignored = list(ignored_layers)
    if any(not isinstance(m, nn.Module) for m in ignored):
        raise PruningTypeError(f"{caller}: ignored_layers should hold torch.nn.Module objects")
    if isinstance(rtol, bool) or not isinstance(rtol, (int, float)) or not rtol >= 0:
        raise PruningError(f"{caller}: rtol={rtol!r} should be a number >= 0, e.g. 1e-4")
    if not isinstance(strict, bool):
        raise PruningTypeError(f"{caller}: strict should be True or False, got {strict!r}")
    work = _working_copy(model, caller)
    # ignored layers are given as modules of `model`; find their copies by name
    names = {id(m): n for n, m in model.named_modules()}
    missing = [m for m in ignored if id(m) not in names]
    if missing:
        raise PruningError(f"{caller}: ignored_layers holds a {type(missing[0]).__name__} that is not part of model")
    ignored_copies = [work.get_submodule(names[id(m)]) for m in ignored]
    work, _ = _compact(model, inputs, ignored_copies, rtol, strict, caller, work)
    return work
