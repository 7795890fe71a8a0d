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
Finally the compacted model is run on ``example_inputs`` and compared with the
original; a difference beyond the tolerance is an error, never a silent change.
"""

from __future__ import annotations

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

__all__ = ["compact_channels", "find_zero_channels", "channel_counts"]

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


def _group_zero_channels(tp, DG, group, readers: _ReaderInputs) -> list[int]:
    """Root indices of ``group`` whose channel is exactly zero everywhere (see module doc)."""
    ops = tp.ops
    passthrough = {
        ops.OPTYPE.CONCAT, ops.OPTYPE.SPLIT, ops.OPTYPE.ELEMENTWISE, ops.OPTYPE.RESHAPE,
        ops.OPTYPE.UNBIND, ops.OPTYPE.EXPAND, ops.OPTYPE.SLICE,
    }
    n_root = len(group[0].idxs)
    dead = [True] * n_root
    position = {r: k for k, r in enumerate(group[0].root_idxs)}
    for item in group:
        dep, idxs, root_idxs = item.dep, list(item.idxs), list(item.root_idxs)
        node = dep.target
        writes = DG.is_out_channel_pruning_fn(dep.handler)
        sink = not node.outputs  # nothing reads this node: it feeds a model output
        if node.type == ops.OPTYPE.OUTPUT or (sink and (writes or node.type in passthrough)):
            return []  # the channel is (part of) a model output
        if node.type in passthrough:
            continue
        module = node.module
        if writes:
            flags = _writer_zero(module, idxs)
        elif isinstance(module, _WEIGHTED):
            flags = readers.zero(module, idxs)
        else:
            flags = None
        if flags is None:
            return []
        for root, zero in zip(root_idxs, flags):
            if not zero and root in position:
                dead[position[root]] = False
    zero = [group[0].root_idxs[k] for k in range(n_root) if dead[k]]
    if len(zero) == n_root:  # keep one channel: a layer with no channels is not a layer
        zero = zero[1:]
    return zero


def _plan(tp, DG, model, ignored, readers) -> list[tuple[nn.Module, Any, list[int]]]:
    plan = []
    for group in DG.get_all_groups(ignored_layers=list(ignored), root_module_types=_WEIGHTED):
        zero = _group_zero_channels(tp, DG, group, readers)
        if zero:
            plan.append((group[0].dep.target.module, group[0].dep.handler, zero))
    return plan


# --------------------------------------------------------------------------- public
def find_zero_channels(model: nn.Module, example_inputs: Any) -> dict[str, list[int]]:
    """The output channels :func:`compact_channels` would remove, by root module name.

    Each entry names one layer of a dependency group (the other layers of the group,
    e.g. its BatchNorm and the next layer's inputs, lose the same channels).
    ``model`` is not changed.
    """
    caller = "find_zero_channels()"
    tp = require_torch_pruning(caller)
    work = _working_copy(model, caller)
    inputs = as_input_tuple(example_inputs, caller)
    DG, readers = _build(tp, work, inputs, caller)
    names = {m: n for n, m in work.named_modules()}
    return {names[m]: idxs for m, _, idxs in _plan(tp, DG, work, (), readers)}


def _working_copy(model: nn.Module, caller: str) -> nn.Module:
    if not isinstance(model, nn.Module):
        raise PruningTypeError(f"{caller}: model should be a torch.nn.Module, got {type(model).__name__}")
    check_nni_unwrapped(model, caller)
    return make_permanent(model) if has_pruning_hooks(model) else copy_model(model, caller)


def _build(tp, model: nn.Module, inputs: tuple, caller: str):
    model.eval()
    readers = _ReaderInputs(model)
    try:
        with torch.enable_grad():
            DG = tp.DependencyGraph().build_dependency(model, example_inputs=inputs, verbose=False)
    except Exception as exc:
        raise ExportError(
            f"{caller}: torch-pruning could not trace the {type(model).__name__} model to find its "
            f"channel dependencies ({type(exc).__name__}: {str(exc).strip().splitlines()[0] if str(exc).strip() else ''}). "
            "Check that model(*example_inputs) runs, or pass compact=False."
        ) from exc
    finally:
        readers.remove()
    return DG, readers


def compact_channels(
    model: nn.Module,
    example_inputs: Any,
    *,
    ignored_layers: Iterable[nn.Module] = (),
    rtol: float = 1e-4,
) -> nn.Module:
    """A smaller copy of ``model`` without its all-zero channels; same outputs.

    Output channels of Conv/Linear layers that are exactly zero (all weights and the
    bias zero, and zero after the BatchNorm that follows) are removed through
    torch-pruning's dependency graph, so the layers that read them lose the matching
    inputs and residual-coupled layers stay consistent. The rules that keep the
    function unchanged are in this module's docstring; the result is checked on
    ``example_inputs``. Masks of ``torch.nn.utils.prune`` are made permanent first.

    Args:
        model: the pruned model (not changed).
        example_inputs: a tensor or tuple of tensors ``model`` accepts.
        ignored_layers: layers whose output channels must be kept (the classifier and
            every other layer that feeds a model output are kept anyway).
        rtol: allowed ``max|compacted - original| / max|original|`` on ``example_inputs``.

    Returns:
        A new module in eval mode (BatchNorm uses running statistics).

    Raises:
        ImportError: torch-pruning is not installed (extra ``[torch-pruning]``).
        ExportError: the model cannot be traced, or compaction changed its outputs.

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
    tp = require_torch_pruning(caller)
    inputs = as_input_tuple(example_inputs, caller)
    ignored = list(ignored_layers)
    if any(not isinstance(m, nn.Module) for m in ignored):
        raise PruningTypeError(f"{caller}: ignored_layers should hold torch.nn.Module objects")
    if isinstance(rtol, bool) or not isinstance(rtol, (int, float)) or not rtol >= 0:
        raise PruningError(f"{caller}: rtol={rtol!r} should be a number >= 0, e.g. 1e-4")
    work = _working_copy(model, caller)
    # ignored layers are given as modules of `model`; find their copies by name
    names = {id(m): n for n, m in model.named_modules()}
    missing = [m for m in ignored if id(m) not in names]
    if missing:
        raise PruningError(f"{caller}: ignored_layers holds a {type(missing[0]).__name__} that is not part of model")
    ignored_copies = [work.get_submodule(names[id(m)]) for m in ignored]

    work.eval()
    with torch.no_grad():
        expected = [t.detach().clone() for t in output_leaves(work(*inputs), caller)]
    DG, readers = _build(tp, work, inputs, caller)
    plan = _plan(tp, DG, work, ignored_copies, readers)
    for module, handler, idxs in plan:
        group = DG.get_pruning_group(module, handler, idxs)
        if DG.check_pruning_group(group):
            group.prune()
    for p in work.parameters():
        p.grad = None
    work.eval()

    with torch.no_grad():
        try:
            actual = output_leaves(work(*inputs), caller)
        except Exception as exc:
            raise ExportError(
                f"{caller}: the compacted {type(model).__name__} no longer runs ({type(exc).__name__}: "
                f"{exc}); this model's structure is not supported by compaction: pass compact=False."
            ) from exc
    diff, rel = relative_difference([a.numpy() for a in actual], [e.numpy() for e in expected])
    if not rel <= rtol:
        raise ExportError(
            f"{caller}: removing the zero channels changed the outputs of {type(model).__name__} "
            f"(max abs difference {diff:.3g}, relative {rel:.3g} > rtol={rtol:g}); a layer between "
            "the pruned ones does not keep zeros at zero. Pass compact=False to export it uncompacted."
        )
    return work
