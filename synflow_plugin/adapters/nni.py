r"""The criteria as NNI 3.0 pruners.

A drop-in beside NNI's own pruners: swap ``L1NormPruner(model, config_list)`` for
``SynFlowPruner(model, config_list, dummy_input=x)`` and the rest of an NNI script
stays as it is::

    from synflow_plugin.nni import SynFlowPruner

    config_list = [{"op_types": ["Conv2d", "Linear"], "sparse_ratio": 0.99, "global_group_id": 0}]
    pruner = SynFlowPruner(model, config_list, dummy_input=torch.randn(1, 3, 32, 32))
    _, masks = pruner.compress()   # {module_name: {"weight": mask, "bias": mask_or_None}}
    pruner.unwrap_model()

How it fits NNI. The pruners subclass NNI's ``Pruner``, so parsing the config_list,
wrapping the model, ``update_masks``, ``get_masks``, ``unwrap_model`` and
``from_compressor`` are NNI's own. What changes is where the masks come from: NNI's
``_collect_data -> _calculate_metrics -> _generate_sparsity`` computes one metric and
thresholds it once, while pruning at initialisation re-scores the network between
rounds (SynFlow: 100). So :meth:`PaIPruner.generate_masks` runs the core's iterative
loop on a private, unwrapped copy of the model:

* an element-wise ``global_group_id`` group (or layer-wise groups sharing one
  ``sparse_ratio``) goes straight to :func:`synflow_plugin.masking.compute_masks`, so
  its masks equal, element for element, those of the ``torch.nn.utils.prune``
  adapter on the same model and seed;
* every other config (several groups, per-layer ratios, ``max_sparse_ratio`` /
  ``min_sparse_ratio`` bounds, ``out_channel`` granularity, ``dependency_group_id``,
  ``sparse_threshold``) runs the same loop with the ranking below: all groups thin
  together, round after round, each on its own schedule.

Rankings are exact and vectorised: counts are those asked for, ties go to the earlier
weight. (NNI's own global ranking pushes every element through a Python heap: 6.5 s
of CPU for the 2.3M weights of a half-width VGG-11-BN, against 0.1 s here, and it kept
2331 weights where 2330 were asked for.)

Config keys, as NNI defines them:

* ``op_types``, ``op_names``, ``op_names_re``, ``exclude_op_names``,
  ``exclude_op_types``, ``exclude_op_names_re``, ``target_names``,
  ``target_settings``, ``apply_method``: NNI's own code handles them.
* ``sparse_ratio``: the fraction of a tensor's elements (of a global group's elements,
  or of a dependency group's shared channels) that is masked, rounded as
  ``torch.nn.utils.prune`` rounds (NNI's own pruners truncate, so where the count is
  not whole they may mask one weight fewer). Masks are computed from the unmasked
  weights, as NNI's pruners do: a second ``compress()`` replaces, not stacks.
* ``global_group_id``: one ranking over the group; every member needs the same
  ``sparse_ratio``. With ``out_channel`` members, channels are masked lowest score
  first while the masked elements stay within the group's budget (as NNI counts them).
* ``max_sparse_ratio`` / ``min_sparse_ratio``: per-tensor bounds, kept exactly, also
  inside a global group and in every round (NNI itself only applies them when the
  group's ratio is out of reach). Where the bounds and the ratio conflict, the bounds
  win, as in NNI.
* ``sparse_threshold``: units whose score (one round, on the unpruned network) is below
  it are masked, then the min/max bounds apply, as NNI does.
* ``dependency_group_id`` (with ``internal_metric_block``): the members' channel
  scores are averaged and one mask is shared by all, per block.
* ``granularity``: ``None`` (element-wise, the default, as LevelPruner: the criteria
  score single weights) or ``"out_channel"`` (a channel's score is the sum of its
  weights' scores, i.e. their L1 norm for the non-negative criteria). NNI's
  L1NormPruner defaults to ``out_channel``: a config_list written for it without a
  ``granularity`` gets element-wise masks here, so add ``"granularity":
  "out_channel"`` to keep channel masks. ``in_channel``, ``per_channel`` and block
  kernels are rejected.

Anything that cannot be honoured raises :class:`~synflow_plugin.errors.PruningError`
naming the key, never a silent fallback.

A module registered under several names (``model.b = model.a``, a block used twice)
is one set of weights, and NNI cannot wrap it twice (its own pruners stop with a bare
``AssertionError``). Here it is wrapped and pruned once, under the first of its
selected names in ``model.named_modules()`` order (or the name another compressor's
wrapper already uses), and a ``UserWarning`` names the names dropped. Its mask acts on
every use of the module and is returned under that one name, because NNI's own
``update_masks`` and ``ModelSpeedup`` know no second name; this pruner's
``update_masks`` and :func:`synflow_plugin.export.make_permanent` /
``apply_masks`` accept any of its names.

Data-driven pruners (SNIP, GraSP, IterSNIP, FORCE) take NNI's ``evaluator`` (a
``TorchEvaluator``, as NNI's TaylorPruner) and read their ``(inputs, targets)``
batches from it: the evaluator's training function runs until ``num_batches``
batches have passed through ``training_step``, then stops; every parameter, gradient,
buffer and train/eval flag of the model is put back exactly afterwards, and the
optimizers the evaluator builds for that run are thrown away.

From ``out_channel`` masks to a physically smaller model: NNI's ``ModelSpeedup``
fails on torch 2.13 inside its ``concrete_trace``; :func:`speedup_model` runs it on a
``torch.fx.symbolic_trace`` graph instead, after masking the BatchNorm channels that
follow removed channels, so the small model computes what the masked model computes.
"""

from __future__ import annotations

import copy
import logging
import math
import warnings
from dataclasses import dataclass, field
from typing import Any, Callable, ClassVar, Mapping

import numpy as np
import torch
import torch.fx
from torch import nn
from tqdm.auto import tqdm

from nni.compression.base.compressor import Pruner
from nni.compression.base.config import (
    default_config_schema,
    select_modules_by_config,
    trans_legacy_config_list,
)
from nni.compression.base.setting import PruningSetting
from nni.compression.base.target_space import PruningTargetSpace, TargetType
from nni.compression.base.wrapper import ModuleWrapper
from nni.compression.pruning.tools.sparse_gen import _expand_masks, _generate_align_sparsity
from nni.compression.utils.evaluator import Evaluator
from schema import SchemaError

from synflow_plugin import masking
from synflow_plugin.criteria import get_criterion
from synflow_plugin.criteria.base import describe
from synflow_plugin.errors import PruningError, PruningTypeError
from synflow_plugin.export.permanent import apply_masks
from synflow_plugin.masking import SCHEDULES, compute_masks, compute_scores, drop_smallest, keep_schedule

__all__ = [
    # pruners
    "PaIPruner",
    "RandomPruner",
    "MagnitudePruner",
    "SNIPPruner",
    "GraSPPruner",
    "SynFlowPruner",
    "IterSNIPPruner",
    "FORCEPruner",
    # from masks to a model
    "complete_masks",
    "speedup_model",
    # what the config_list may hold
    "CONFIG_KEYS",
    "GRANULARITIES",
]

_SELECTION_KEYS = ("op_types", "op_names", "op_names_re", "exclude_op_names", "exclude_op_types",
                   "exclude_op_names_re")
_SETTING_KEYS = ("sparse_ratio", "sparse_threshold", "max_sparse_ratio", "min_sparse_ratio", "global_group_id",
                 "dependency_group_id", "internal_metric_block", "granularity", "apply_method", "align")
#: Every key an NNI 3.0 pruning config may hold (after NNI translates the legacy v2 keys).
CONFIG_KEYS: tuple[str, ...] = _SELECTION_KEYS + ("target_names", "target_settings") + _SETTING_KEYS
#: The granularities the pruners rank: ``None`` (element-wise) and ``"out_channel"``.
GRANULARITIES: tuple[str | None, ...] = (None, "out_channel")
_EPS = 1e-9
_logger = logging.getLogger(__name__)


# --------------------------------------------------------------------------- the plan
@dataclass(frozen=True)
class _Tensor:
    """One pruned tensor: where it lives and how it splits into units (elements or channels)."""

    module_name: str
    name: str
    shape: torch.Size
    units: int

    @property
    def label(self) -> str:
        return f"{self.module_name}.{self.name}"

    @property
    def numel(self) -> int:
        return self.shape.numel()


@dataclass
class _Member:
    """Units ranked as one block: a tensor's units, or the units a dependency group shares.

    ``tensors`` are indices into the plan's tensors; tied tensors (a dependency group)
    share every unit, their unit scores are averaged and a dropped unit is dropped in all
    of them. ``lo`` / ``hi`` bound how many of the units ``[start, stop)`` are pruned;
    ``size`` is what pruning one unit costs the group's budget.
    """

    tensors: tuple[int, ...]
    start: int
    stop: int
    size: int
    lo: int
    hi: int
    threshold: float | None = None

    @property
    def units(self) -> int:
        return self.stop - self.start


@dataclass
class _Group:
    """Members pruned to one budget: a global group, a dependency group or one tensor."""

    label: str
    members: list[_Member]
    budget: int
    ratio: float | None = None
    is_global: bool = False

    @property
    def cost(self) -> int:
        return sum(m.units * m.size for m in self.members)


@dataclass
class _Plan:
    tensors: list[_Tensor] = field(default_factory=list)
    groups: list[_Group] = field(default_factory=list)

    def core_request(self) -> tuple[str, int | float] | None:
        """``(scope, amount)`` when :func:`compute_masks` computes exactly this plan: one
        element-wise global group without bounds, or element-wise tensors that all prune
        the same ``sparse_ratio`` on their own."""
        members = [m for g in self.groups for m in g.members]
        if (not self.groups or any(t.units != t.numel for t in self.tensors)
                or any(m.threshold is not None or len(m.tensors) != 1 for m in members)):
            return None
        if len(self.groups) == 1 and self.groups[0].is_global:
            group = self.groups[0]
            return ("global", group.budget) if all(m.lo == 0 and m.hi == m.units for m in members) else None
        ratios = {g.ratio for g in self.groups}
        if len(ratios) == 1 and all(not g.is_global and g.budget == round(g.ratio * g.cost) for g in self.groups):
            return "local", float(ratios.pop())
        return None


def _prune_bounds(space: PruningTargetSpace, units: int) -> tuple[int, int]:
    """Fewest and most units ``min_sparse_ratio`` / ``max_sparse_ratio`` allow to prune."""
    low = space.min_sparse_ratio or 0.0
    high = space.max_sparse_ratio if space.max_sparse_ratio is not None else 1.0
    return math.ceil(low * units - _EPS), math.floor(high * units + _EPS)


def _clamped_count(ratio: float, units: int, lo: int, hi: int) -> int:
    return min(hi, max(lo, round(ratio * units)))


# --------------------------------------------------------------------------- ranking
def _drop_prefix(values: list[np.ndarray], sizes: list[int], budget: int) -> list[np.ndarray]:
    """Drop the smallest units (earliest first among ties) while their cost stays within ``budget``."""
    lengths = [v.size for v in values]
    if not values or sum(lengths) == 0:
        return [np.zeros(n, dtype=bool) for n in lengths]
    joined = np.concatenate(values)
    if len(set(sizes)) == 1:
        drop = drop_smallest(joined, min(max(budget, 0) // sizes[0], joined.size))
    else:
        order = np.argsort(joined, kind="stable")
        cost = np.cumsum(np.repeat(np.asarray(sizes, dtype=np.int64), lengths)[order])
        drop = np.zeros(joined.size, dtype=bool)
        drop[order[: int(np.searchsorted(cost, budget, side="right"))]] = True
    return np.split(drop, np.cumsum(lengths)[:-1])


def _bounded_drop(values: list[np.ndarray], sizes: list[int], lo: list[int], hi: list[int],
                  budget: int) -> list[np.ndarray]:
    """One ranking over all ``values`` that drops between ``lo[i]`` and ``hi[i]`` units of
    block ``i`` and costs ``budget`` (clamped to what the bounds allow).

    The answer is a threshold with every block clamped to its bounds. Rank the free
    blocks; if the blocks over their ``hi`` exceed by more than those under their ``lo``
    fall short, the true threshold is higher, so the over-full blocks sit at ``hi`` in the
    answer: fix them and rank the rest again (and symmetrically). At most one pass per block.
    """
    lo = [max(0, min(a, v.size)) for a, v in zip(lo, values)]
    hi = [max(a, min(b, v.size)) for a, b, v in zip(lo, hi, values)]
    budget = min(max(budget, sum(a * s for a, s in zip(lo, sizes))), sum(b * s for b, s in zip(hi, sizes)))
    fixed: dict[int, int] = {}
    drops: list[np.ndarray | None] = [None] * len(values)
    while len(fixed) < len(values):
        free = [i for i in range(len(values)) if i not in fixed]
        rest = budget - sum(fixed[i] * sizes[i] for i in fixed)
        trial = dict(zip(free, _drop_prefix([values[i] for i in free], [sizes[i] for i in free], rest)))
        counts = {i: int(trial[i].sum()) for i in free}
        over = [i for i in free if counts[i] > hi[i]]
        under = [i for i in free if counts[i] < lo[i]]
        if not over and not under:
            for i in free:
                drops[i] = trial[i]
            break
        excess = sum((counts[i] - hi[i]) * sizes[i] for i in over)
        deficit = sum((lo[i] - counts[i]) * sizes[i] for i in under)
        if excess >= deficit:
            fixed.update({i: hi[i] for i in over})
        if deficit >= excess:
            fixed.update({i: lo[i] for i in under})
    for i, count in fixed.items():
        drops[i] = drop_smallest(values[i], count)
    return drops  # type: ignore[return-value]


def _unit_scores(score: torch.Tensor, tensor: _Tensor) -> np.ndarray:
    values = masking._as_numpy(score)
    if tensor.units == tensor.numel:
        return values
    return values.reshape(tensor.units, -1).sum(axis=1, dtype=np.float64)


def _unit_mask(keep: np.ndarray, tensor: _Tensor, device: torch.device) -> torch.Tensor:
    """A boolean mask shaped like ``tensor`` from one keep flag per unit."""
    flags = torch.from_numpy(keep).to(device)
    if tensor.units == tensor.numel:
        return flags.reshape(tensor.shape)
    return flags.reshape((tensor.units,) + (1,) * (len(tensor.shape) - 1)).expand(tensor.shape)


def _zero_units(param: torch.Tensor, tensor: _Tensor, units: np.ndarray) -> None:
    """Zero the given units (elements, or slices along dim 0) of ``param`` in place."""
    if units.size == 0:
        return
    index = torch.from_numpy(units).to(param.device)
    data = param.data
    if tensor.units != tensor.numel:
        data.index_fill_(0, index, 0)
    elif data.is_contiguous():
        data.view(-1).index_fill_(0, index, 0)
    else:  # e.g. channels_last: no flat view, mask it instead
        keep = torch.ones(tensor.numel, dtype=torch.bool, device=param.device)
        keep[index] = False
        data.masked_fill_(~keep.reshape(tensor.shape), 0)


def _run_plan(state: Any, criterion: Any, plan: _Plan, rounds: int, schedule: str,
              progress: bool | None) -> list[np.ndarray]:
    """The iterative loop of :func:`compute_masks` over a plan: each round scores every
    tensor once, then prunes every group to its budget for that round (thresholds are
    applied in the first round only). Returns one keep flag per unit of every tensor."""
    members = [m for g in plan.groups for m in g.members]
    positions = {id(m): k for k, m in enumerate(members)}
    candidates = [np.arange(m.start, m.stop) for m in members]
    alive = [c.copy() for c in candidates]
    budgets = [[g.cost - k for k in keep_schedule(g.cost, g.cost - g.budget, rounds, schedule)] for g in plan.groups]
    floors = [[m.units - k for k in keep_schedule(m.units, m.units - m.lo, rounds, schedule)] for m in members]

    def keep_flags(index: int) -> np.ndarray:
        flags = np.zeros(plan.tensors[index].units, dtype=bool)
        for k, m in enumerate(members):
            if index in m.tensors:
                flags[alive[k]] = True
        return flags

    for r in tqdm(range(rounds), desc=criterion.name, unit="round",
                  disable=(not progress) if progress is not None else None, leave=False):
        state.round = r
        if criterion.revives and r > 0:  # every candidate gets its initial value back, then the mask
            with torch.no_grad():
                for index, (tensor, p, theta0) in enumerate(zip(plan.tensors, state.params, state.initial)):
                    keep = _unit_mask(keep_flags(index), tensor, p.device)
                    p.data.copy_(torch.where(keep, theta0, torch.zeros((), dtype=p.dtype, device=p.device)))
        scores = masking._checked_scores(criterion, state)
        unit_scores = [_unit_scores(s, t) for s, t in zip(scores, plan.tensors)]
        for tensor, values in zip(plan.tensors, unit_scores):
            if np.isnan(values).any():
                raise PruningError(
                    f"criterion {criterion.name} gave NaN scores for '{tensor.label}'; "
                    "check the model for NaN/inf weights or outputs."
                )
        if r == 0:
            masking._warn_zero_flow(state, criterion, [v.size > 0 and not v.any() for v in unit_scores])

        pools = candidates if criterion.revives else alive
        values = []
        for m, pool in zip(members, pools):
            shared = unit_scores[m.tensors[0]] if len(m.tensors) == 1 else (
                sum(unit_scores[t] for t in m.tensors) / len(m.tensors))  # NNI averages a dependency group
            values.append(np.take(shared, pool))
        drops = [np.zeros(pool.size, dtype=bool) for pool in pools]
        for g, budget in zip(plan.groups, budgets):
            index = [positions[id(m)] for m in g.members]
            if g.members[0].threshold is not None:
                if r == 0:  # decided once, on the unpruned network
                    k, m = index[0], g.members[0]
                    drop = values[k] < m.threshold
                    if not m.lo <= int(drop.sum()) <= m.hi:
                        drop = drop_smallest(values[k], min(max(int(drop.sum()), m.lo), m.hi))
                    drops[k] = drop
                continue
            already = [0 if criterion.revives else m.units - alive[k].size for k, m in zip(index, g.members)]
            chosen = _bounded_drop(
                [values[k] for k in index],
                [m.size for m in g.members],
                [floors[k][r] - a for k, a in zip(index, already)],
                [m.hi - a for m, a in zip(g.members, already)],
                budget[r] - sum(a * m.size for a, m in zip(already, g.members)),
            )
            for k, drop in zip(index, chosen):
                drops[k] = drop
        for k, (m, pool, drop) in enumerate(zip(members, pools, drops)):
            if criterion.revives and m.threshold is not None and r > 0:
                continue  # a threshold decision stands
            alive[k] = pool[~drop]
            if not criterion.revives:
                for t in m.tensors:
                    _zero_units(state.params[t], plan.tensors[t], pool[drop])
    return [keep_flags(i) for i in range(len(plan.tensors))]


# --------------------------------------------------------------------------- the model
def _plain_copy(model: nn.Module, wrappers: Mapping[str, ModuleWrapper]) -> nn.Module:
    """A copy of an NNI-wrapped ``model`` without NNI: every wrapped module holds its
    (unmasked) parameters again and its own ``forward``. The model is not touched."""
    memo: dict[int, Any] = {}
    wrapped = []
    for name, wrapper in wrappers.items():
        module = wrapper.module
        if getattr(module, "_nni_wrapper", None) is not wrapper:
            continue  # unwrapped: the module holds its own parameters
        memo[id(wrapper)] = None
        if "forward" in module.__dict__:
            memo[id(module.__dict__["forward"])] = None
        params = {}
        for spaces in (wrapper.pruning_target_spaces, wrapper.quantization_target_spaces,
                       wrapper.distillation_target_spaces):
            for target_name, space in spaces.items():
                if space.type is TargetType.PARAMETER and isinstance(space.target, nn.Parameter):
                    if module._buffers.get(target_name) is not None:
                        memo[id(module._buffers[target_name])] = None
                    params[target_name] = space.target
        wrapped.append((name, params))
    for module in model.modules():  # e.g. the weight torch.nn.utils.prune recomputes: rebuilt by scoring_copy
        for value in module.__dict__.values():
            if isinstance(value, torch.Tensor) and not value.is_leaf:
                memo[id(value)] = None
    try:
        clone = copy.deepcopy(model, memo)
    except Exception as exc:
        raise PruningError(
            f"cannot copy the {type(model).__name__} model to score it ({exc}). Scoring runs on a "
            "copy so that the model is left exactly as it was; make the model deep-copyable."
        ) from exc
    with torch.no_grad():
        for name, params in wrapped:
            module = clone.get_submodule(name)
            module._modules.pop("_nni_wrapper", None)
            module.__dict__.pop("forward", None)
            for target_name, param in params.items():
                module._buffers.pop(target_name, None)
                module.register_parameter(target_name, nn.Parameter(param.detach().clone(), param.requires_grad))
    return clone


class _ModelState:
    """Every parameter (value, gradient, ``requires_grad``), buffer and train/eval flag of
    a model, to be put back exactly, objects included."""

    def __init__(self, model: nn.Module) -> None:
        self._entries = []
        for module in model.modules():
            params = {n: (p, p.detach().clone(), None if p.grad is None else p.grad.detach().clone(), p.requires_grad)
                      for n, p in module._parameters.items() if p is not None}
            buffers = {n: (b, None if b is None else b.detach().clone()) for n, b in module._buffers.items()}
            self._entries.append((module, module.training, params, buffers))

    def restore(self) -> None:
        with torch.no_grad():
            for module, training, params, buffers in self._entries:
                module.training = training
                for name, (p, value, grad, requires_grad) in params.items():
                    module._parameters[name] = p
                    p.copy_(value)
                    p.grad = grad
                    p.requires_grad_(requires_grad)
                for name, (b, value) in buffers.items():
                    module._buffers[name] = b
                    if b is not None and b.grad_fn is None:
                        b.copy_(value)


class _EnoughBatches(BaseException):
    """Stops the evaluator's training function once the batches are in. A BaseException,
    so that a training loop's ``except Exception`` does not swallow it."""


def _detached(value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        return value.detach().clone()
    if isinstance(value, Mapping):
        return {k: _detached(v) for k, v in value.items()}
    if isinstance(value, (tuple, list)):
        return type(value)(_detached(v) for v in value)
    return value


# --------------------------------------------------------------------------- the pruners
class PaIPruner(Pruner):
    """Base of the pruning-at-initialisation NNI pruners; subclasses name a criterion.

    Args:
        model: the model to prune; NNI wraps its selected modules (undo with
            :meth:`unwrap_model`).
        config_list: NNI's config list (see the module docstring for each key).
        evaluator: an NNI ``Evaluator`` (``TorchEvaluator``) whose ``training_step``
            batches feed the data-driven criteria; data-free pruners accept it (NNI's
            ``from_compressor`` passes one) and SynFlow takes its dummy input from it.
        dummy_input: an input the model accepts (SynFlow uses only its shape).
        num_batches: batches read from ``evaluator`` for data-driven criteria.
        loss_fn: ``loss_fn(logits, targets)`` for data-driven criteria; cross-entropy by default.
        iterations: pruning rounds; default: the criterion's (SynFlow 100, IterSNIP 10, ...).
        schedule: ``"exponential"`` (the paper) or ``"linear"``.
        progress: a tqdm bar over the rounds (default: on a terminal only).
        existed_wrappers: NNI's ``from_compressor`` passes the wrappers of another compressor.
        **options: the criterion's options (``seed=``, ``batchnorm=``, ``temperature=``).

    Raises:
        PruningError: a config key or argument that cannot be honoured, with what to use.
    """

    criterion: ClassVar[str]

    def __init__(
        self,
        model: nn.Module,
        config_list: list[dict],
        evaluator: Evaluator | None = None,
        *,
        dummy_input: Any = None,
        num_batches: int = 1,
        loss_fn: Callable | None = None,
        iterations: int | None = None,
        schedule: str = "exponential",
        progress: bool | None = None,
        existed_wrappers: dict[str, ModuleWrapper] | None = None,
        **options: Any,
    ) -> None:
        caller = type(self).__name__
        if not isinstance(getattr(type(self), "criterion", None), str):
            raise PruningTypeError(
                f"{caller} names no criterion; use SynFlowPruner, SNIPPruner, ... or subclass it with "
                "criterion = '<registry name>'."
            )
        self._criterion = get_criterion(self.criterion, **options)  # bad options fail before any work
        self._options = options
        if not isinstance(model, nn.Module):
            raise PruningTypeError(f"{caller}: model should be a torch.nn.Module, got {type(model).__name__}")
        if evaluator is not None and not isinstance(evaluator, Evaluator):
            raise PruningTypeError(
                f"{caller}: evaluator should be an NNI Evaluator such as nni.compression.TorchEvaluator, "
                f"got {type(evaluator).__name__}"
            )
        if self._criterion.needs_data and evaluator is None:
            raise PruningError(
                f"{caller}: {self._criterion.name} is data-driven: pass evaluator=TorchEvaluator(training_func, "
                "optimizers, training_step) whose training_step receives (inputs, targets) batches, as for "
                "NNI's TaylorPruner."
            )
        if self._criterion.name == "synflow" and dummy_input is None:
            dummy_input = evaluator.get_dummy_input() if evaluator is not None else None
            if dummy_input is None:
                raise PruningError(
                    f"{caller}: SynFlow needs dummy_input=<a tensor shaped like one input batch, e.g. "
                    "torch.randn(1, 3, 32, 32)>; only its shape is used."
                )
        if isinstance(num_batches, bool) or not isinstance(num_batches, int) or num_batches < 1:
            raise PruningError(f"{caller}: num_batches={num_batches!r} should be a positive int")
        if iterations is not None and (isinstance(iterations, bool) or not isinstance(iterations, int)
                                       or iterations < 1):
            raise PruningError(f"{caller}: iterations={iterations!r} should be a positive int or None")
        if schedule not in SCHEDULES:
            raise PruningError(f"{caller}: schedule={schedule!r} is not valid; expected one of {SCHEDULES}")
        if loss_fn is not None and not callable(loss_fn):
            raise PruningTypeError(f"{caller}: loss_fn should be callable as loss_fn(logits, targets)")
        if existed_wrappers is None:
            wrapped = [name or "the model" for name, m in model.named_modules() if hasattr(m, "_nni_wrapper")]
            if wrapped:
                raise PruningError(
                    f"{caller}: the model is already wrapped by another NNI compressor ({', '.join(wrapped[:3])}"
                    f"{', ...' if len(wrapped) > 3 else ''}); call its unwrap_model() first, or build this "
                    f"pruner with {caller}.from_compressor(other, config_list, ...)."
                )
        _check_config_list(model, config_list, caller)
        config_list = _merge_aliases(model, config_list, existed_wrappers, caller)

        self.dummy_input = dummy_input
        self.num_batches = num_batches
        self.loss_fn = loss_fn
        self.iterations = iterations
        self.schedule = schedule
        self.progress = progress
        self._compressed = False
        super().__init__(model, config_list, evaluator, existed_wrappers)
        try:
            self._plan = self._build_plan()
        except BaseException:
            self.unwrap_model()  # leave the model as it came
            raise

    # ---- NNI hooks
    def _validate_config(self) -> None:
        try:
            super()._validate_config()
        except SchemaError as exc:
            raise PruningError(f"{type(self).__name__}: config_list does not follow NNI's schema: {exc}") from None

    def _set_default_sparse_granularity(self, target_space: PruningTargetSpace) -> list[int] | str | None:
        # Element-wise by default, as NNI's LevelPruner: the criteria score single weights.
        if target_space.type is TargetType.PARAMETER:
            return None
        return super()._set_default_sparse_granularity(target_space)

    def _collect_data(self) -> list[tuple[Any, Any]] | None:
        """The ``(inputs, targets)`` batches the evaluator's ``training_step`` sees first
        (``None`` for data-free criteria). The model is put back exactly afterwards."""
        if not self._criterion.needs_data:
            return None
        caller = type(self).__name__
        evaluator, model = self.evaluator, self.bound_model
        batches: list[tuple[Any, Any]] = []

        def record(loss: torch.Tensor, batch: Any) -> torch.Tensor:
            if not (isinstance(batch, (tuple, list)) and len(batch) >= 2):
                raise PruningError(
                    f"{caller}: the evaluator's training_step received {describe(batch)}; the data-driven "
                    "pruners read (inputs, targets) batches: make training_step(batch, model) take "
                    "batch = (inputs, targets)."
                )
            batches.append((_detached(batch[0]), _detached(batch[1])))
            if len(batches) >= self.num_batches:
                raise _EnoughBatches
            return loss

        state = _ModelState(model)
        evaluator.bind_model(model, self._get_param_names_map() if self._is_wrapped else None)
        try:
            evaluator.patch_loss(record)
            try:
                evaluator.train(max_steps=self.num_batches, max_epochs=None)
            except _EnoughBatches:
                pass
        finally:
            evaluator.unbind_model()
            state.restore()
        if not batches:
            raise PruningError(
                f"{caller}: the evaluator's training_func ran no training_step, so there is no batch to "
                "score with; check that it loops over a non-empty DataLoader."
            )
        if len(batches) < self.num_batches:
            warnings.warn(
                f"{caller}: the evaluator's training_func stopped after {len(batches)} of num_batches="
                f"{self.num_batches} batches; scoring with those.",
                UserWarning,
                stacklevel=4,
            )
        return batches

    def _calculate_metrics(self, data: list | None) -> dict[str, dict[str, torch.Tensor]]:
        """NNI's metrics: one round of the criterion's scores on the unpruned network, per
        element, or per channel (the sum over the channel, shaped ``[out, 1, ...]`` as
        NNI's) for ``out_channel`` tensors. The masks come from :meth:`generate_masks`,
        which re-scores between rounds."""
        scores = self._scores(data)
        metrics: dict[str, dict[str, torch.Tensor]] = {}
        for tensor in self._plan.tensors:
            score = scores[tensor.module_name][tensor.name]
            if tensor.units != tensor.numel:
                score = score.reshape(tensor.units, -1).sum(dim=1).reshape(
                    (tensor.units,) + (1,) * (len(tensor.shape) - 1))
            metrics.setdefault(tensor.module_name, {})[tensor.name] = score
        return metrics

    def generate_masks(self) -> dict[str, dict[str, torch.Tensor]]:
        """Masks for every configured tensor in NNI's format, from the iterative loop.

        Returns:
            ``{module_name: {target_name: mask}}``, float masks shaped like the targets
            (biases and other ``align`` targets follow their weight, as in NNI).
        """
        keep = self._keep(self._collect_data())
        masks: dict[str, dict[str, torch.Tensor]] = {}
        for tensor, flags in zip(self._plan.tensors, keep):
            target = self._target_spaces[tensor.module_name][tensor.name].target
            mask = _unit_mask(flags, tensor, target.device).to(target.dtype)
            masks.setdefault(tensor.module_name, {})[tensor.name] = mask.contiguous()
        aligned = {}
        for module_name, spaces in self._target_spaces.items():
            for target_name, space in spaces.items():
                if (space.sparse_ratio is None and space.sparse_threshold is None and space.align is not None
                        and space.target is not None
                        and (space.align["module_name"] or module_name) in masks
                        and space.align["target_name"] in masks[space.align["module_name"] or module_name]):
                    aligned.setdefault(module_name, {})[target_name] = space
        for module_name, module_masks in _expand_masks(_generate_align_sparsity(masks, aligned), aligned).items():
            for target_name, mask in module_masks.items():
                masks.setdefault(module_name, {})[target_name] = mask
        return masks

    def _single_compress(self, max_steps: int | None, max_epochs: int | None) -> None:
        if max_steps is not None or max_epochs is not None:
            raise PruningError(
                f"{type(self).__name__} prunes at initialisation and trains nothing: call compress() "
                f"without max_steps/max_epochs (got max_steps={max_steps}, max_epochs={max_epochs})."
            )
        self.update_masks(self.generate_masks())
        self._compressed = True

    def _fuse_preprocess(self, evaluator: Evaluator) -> None:
        # Fused with another compressor (from_compressor): prune before its training starts.
        if self._compressed:
            return
        if self._criterion.needs_data:
            raise PruningError(
                f"{type(self).__name__} reads batches through the evaluator, which the fused training "
                "holds: call compress() on it first, then build the other compressor with from_compressor()."
            )
        self.update_masks(self.generate_masks())
        self._compressed = True

    def _fuse_postprocess(self, evaluator: Evaluator) -> None:
        pass

    def update_masks(self, masks: Mapping[str, Mapping[str, torch.Tensor | None]]) -> None:
        """Install ``masks`` (``{module_name: {target_name: mask}}``) in the wrappers, as
        NNI's ``Pruner.update_masks``, after checking all of them: a module this pruner
        does not wrap is a :class:`PruningError` (NNI's own method would fail with a bare
        ``KeyError`` after installing the masks before it), and any name of a module
        registered under several names addresses that module's one wrapper.
        Targets that are not configured are ignored with NNI's warning.
        """
        caller = f"{type(self).__name__}.update_masks()"
        _check_mask_format(masks, caller)
        wrapper_of = {id(w.module): name for name, w in self._module_wrappers.items()}
        modules = dict(self.bound_model.named_modules(remove_duplicate=False))
        resolved: dict[str, dict[str, torch.Tensor | None]] = {}
        for module_name, per_target in masks.items():
            name = module_name if module_name in self._module_wrappers else wrapper_of.get(
                id(modules[module_name]) if module_name in modules else None)
            if name is None:
                raise PruningError(
                    f"{caller}: masks name module {module_name!r}, which this pruner does not wrap; it wraps "
                    f"{', '.join(repr(n) for n in sorted(self._module_wrappers)) or 'nothing'}. Masks must come from "
                    "this pruner's config_list."
                )
            for target_name, mask in per_target.items():
                if mask is not None and not isinstance(mask, torch.Tensor):
                    raise PruningTypeError(
                        f"{caller}: masks[{module_name!r}][{target_name!r}] should be a tensor or None, got "
                        f"{type(mask).__name__}"
                    )
                space = self._module_wrappers[name].pruning_target_spaces.get(target_name)
                target = getattr(space, "target", None)
                if mask is not None and isinstance(target, torch.Tensor):
                    try:
                        torch.broadcast_shapes(mask.shape, target.shape)
                    except RuntimeError as exc:
                        raise PruningError(
                            f"{caller}: masks[{module_name!r}][{target_name!r}] has shape {tuple(mask.shape)}, "
                            f"which does not fit '{name}.{target_name}' of shape {tuple(target.shape)}."
                        ) from exc
                resolved.setdefault(name, {})[target_name] = mask
        super().update_masks(resolved)

    def compress(self, max_steps: int | None = None, max_epochs: int | None = None):
        """Compute and install the masks.

        Returns:
            ``(model, masks)`` as NNI's pruners: the wrapped model (the masks applied in
            its forward) and ``{module_name: {"weight": mask, "bias": mask_or_None}}``.
        """
        if len(self.fused_compressors) > 1 and (self.evaluator is None or (max_steps is None and max_epochs is None)):
            raise PruningError(
                f"{type(self).__name__} is fused with {len(self.fused_compressors) - 1} other compressor(s) "
                "(from_compressor); NNI runs fused compressors together through the evaluator's training: "
                "pass evaluator=TorchEvaluator(...) and call compress(max_steps=..., max_epochs=...). Our "
                "pruners prune before that training starts."
            )
        return super().compress(max_steps, max_epochs)

    # ---- scoring
    def scores(self) -> dict[str, dict[str, torch.Tensor]]:
        """One round of the criterion's scores for every pruned tensor, per element, on
        the unpruned network (what :func:`synflow_plugin.compute_scores` gives)."""
        return self._scores(self._collect_data())

    def _scoring_request(self, data: list | None) -> tuple[nn.Module, list, dict]:
        plain = _plain_copy(self.bound_model, self._module_wrappers)
        params = [(plain.get_submodule(t.module_name), t.name) for t in self._plan.tensors]
        request = dict(example_inputs=self.dummy_input, data=data, loss_fn=self.loss_fn, **self._options)
        return plain, params, request

    def _scores(self, data: list | None) -> dict[str, dict[str, torch.Tensor]]:
        if not self._plan.tensors:
            return {}
        plain, params, request = self._scoring_request(data)
        scores = compute_scores(plain, params, self.criterion, **request)
        out: dict[str, dict[str, torch.Tensor]] = {}
        for tensor, score in zip(self._plan.tensors, scores):
            out.setdefault(tensor.module_name, {})[tensor.name] = score
        return out

    def _keep(self, data: list | None, *, use_core: bool = True) -> list[np.ndarray]:
        plan = self._plan
        if not plan.tensors:
            return []
        caller = type(self).__name__
        plain, params, request = self._scoring_request(data)
        core = plan.core_request() if use_core else None
        if core is not None:
            scope, amount = core
            masks = compute_masks(plain, params, self.criterion, amount, iterations=self.iterations,
                                  schedule=self.schedule, scope=scope, progress=self.progress, caller=caller,
                                  **request)
            return [m.reshape(-1).cpu().numpy() for m in masks]
        if all(g.budget == 0 and all(m.threshold is None and m.lo == 0 for m in g.members) for g in plan.groups):
            return [np.ones(t.units, dtype=bool) for t in plan.tensors]
        options = dict(self._options)
        criterion, targets, inputs, _ = masking._prepare(
            plain, params, self.criterion, options, self.dummy_input, data, self.loss_fn, None, caller)
        scheduled = any(m.threshold is None for g in plan.groups for m in g.members)
        rounds = (self.iterations or criterion.default_iterations) if scheduled else 1
        with torch.enable_grad():
            state = masking._scoring_state(plain, targets, inputs, criterion)
            return _run_plan(state, criterion, plan, rounds, self.schedule, self.progress)

    # ---- the config, checked once
    def _build_plan(self) -> _Plan:
        caller = type(self).__name__
        order = {name: i for i, (name, _) in enumerate(self.bound_model.named_modules())}
        entries = sorted(
            ((module_name, target_name, space) for module_name, spaces in self._target_spaces.items()
             for target_name, space in spaces.items()),
            key=lambda e: order.get(e[0], len(order)),
        )
        plan = _Plan()
        global_groups: dict[Any, list] = {}
        dependency_groups: dict[Any, list] = {}
        for module_name, target_name, space in entries:
            label = f"'{module_name}.{target_name}'"
            active = space.sparse_ratio is not None or space.sparse_threshold is not None
            if not active:
                for key in ("global_group_id", "dependency_group_id"):
                    if getattr(space, key) is not None:
                        raise PruningError(
                            f"{caller}: {label} has {key}={getattr(space, key)!r} but no sparse_ratio; give "
                            "every config of the group the same sparse_ratio."
                        )
                continue
            if space.type is not TargetType.PARAMETER:
                raise PruningError(
                    f"{caller}: {label} is a module input/output; the criteria score parameters only. "
                    "Use target_names=['weight'] (or 'bias')."
                )
            target = space.target
            if target is None:
                continue  # e.g. a bias=False layer configured with target_names=['bias']
            module = space._wrapper.module
            if f"{target_name}_orig" in module._parameters:
                raise PruningError(
                    f"{caller}: {label} carries a torch.nn.utils.prune mask; NNI cannot wrap it. Call "
                    f"torch.nn.utils.prune.remove(model.get_submodule({module_name!r}), {target_name!r}) first."
                )
            if not target.is_floating_point():
                raise PruningError(
                    f"{caller}: {label} has dtype {target.dtype}; only floating-point tensors are pruned."
                )
            if space.granularity not in GRANULARITIES:
                raise PruningError(
                    f"{caller}: {label} has granularity={space.granularity!r}; the criteria rank single "
                    "weights (granularity None, the default) or output channels ('out_channel'). For "
                    "input channels or blocks use NNI's own pruners."
                )
            if space.align is not None:
                raise PruningError(
                    f"{caller}: {label} has both align and a sparsity setting; align is for targets without "
                    "sparse_ratio (NNI aligns biases with their weights). Drop one."
                )
            if space.internal_metric_block is not None and space.dependency_group_id is None:
                raise PruningError(
                    f"{caller}: {label} has internal_metric_block={space.internal_metric_block!r} without a "
                    "dependency_group_id; NNI only uses it inside a dependency group."
                )
            if space.global_group_id is not None and space.dependency_group_id is not None:
                raise PruningError(
                    f"{caller}: {label} has both global_group_id and dependency_group_id; NNI ranks a "
                    "dependency group on its own and would ignore global_group_id. Drop one."
                )
            if space.sparse_threshold is not None and (space.global_group_id is not None
                                                       or space.dependency_group_id is not None):
                raise PruningError(
                    f"{caller}: {label} combines sparse_threshold with a group id; groups are pruned to a "
                    "sparse_ratio. Use sparse_ratio, or drop the group id."
                )
            ratio = space.sparse_ratio
            for key in ("sparse_ratio", "min_sparse_ratio", "max_sparse_ratio"):
                value = getattr(space, key)
                if value is not None and not 0.0 <= value <= 1.0:
                    raise PruningError(f"{caller}: {label} has {key}={value}; expected a float in [0, 1].")
            most = space.max_sparse_ratio if space.max_sparse_ratio is not None else 1.0
            if (space.min_sparse_ratio or 0.0) > most:
                raise PruningError(
                    f"{caller}: {label} has min_sparse_ratio={space.min_sparse_ratio} > "
                    f"max_sparse_ratio={space.max_sparse_ratio}."
                )
            shape = target.shape
            units = shape[0] if space.granularity == "out_channel" and len(shape) > 0 else shape.numel()
            index = len(plan.tensors)
            plan.tensors.append(_Tensor(module_name, target_name, shape, units))
            lo, hi = _prune_bounds(space, units)
            if space.sparse_threshold is not None:
                member = _Member((index,), 0, units, 1, lo, hi, threshold=float(space.sparse_threshold))
                plan.groups.append(_Group(label, [member], 0))
            elif space.global_group_id is not None:
                global_groups.setdefault(space.global_group_id, []).append((index, space, lo, hi))
            elif space.dependency_group_id is not None:
                dependency_groups.setdefault(space.dependency_group_id, []).append((index, space))
            else:
                low = space.min_sparse_ratio or 0.0
                high = space.max_sparse_ratio if space.max_sparse_ratio is not None else 1.0
                count = _clamped_count(min(high, max(low, ratio)), units, lo, hi)
                plan.groups.append(_Group(label, [_Member((index,), 0, units, 1, count, count)], count, ratio))

        for group_id, members in global_groups.items():
            ratios = {space.sparse_ratio for _, space, _, _ in members}
            names = ", ".join(plan.tensors[i].label for i, *_ in members)
            if len(ratios) > 1:
                raise PruningError(
                    f"{caller}: global group {group_id!r} ({names}) has sparse_ratio values {sorted(ratios)}; "
                    "a global group is ranked to one ratio: give all its configs the same sparse_ratio."
                )
            ratio = ratios.pop()
            group_members = []
            for index, _, lo, hi in members:
                tensor = plan.tensors[index]
                group_members.append(_Member((index,), 0, tensor.units, tensor.numel // tensor.units, lo, hi))
            group = _Group(f"global group {group_id!r}", group_members, 0, ratio, is_global=True)
            # where the bounds and the ratio conflict, the bounds win (as in NNI)
            least = sum(m.lo * m.size for m in group_members)
            group.budget = min(max(round(ratio * group.cost), least), sum(m.hi * m.size for m in group_members))
            plan.groups.append(group)

        for group_id, members in dependency_groups.items():
            label = f"dependency group {group_id!r}"
            first = plan.tensors[members[0][0]]
            ratios = {space.sparse_ratio for _, space in members}
            if len(ratios) > 1:
                raise PruningError(
                    f"{caller}: {label} has sparse_ratio values {sorted(ratios)}; its members share one mask: "
                    "give them the same sparse_ratio."
                )
            for index, _ in members:
                if plan.tensors[index].units != first.units:
                    raise PruningError(
                        f"{caller}: {label} shares one mask, but '{first.label}' has {first.units} units and "
                        f"'{plan.tensors[index].label}' has {plan.tensors[index].units} (granularity "
                        "'out_channel' ranks output channels); put tensors of equal shape in a group."
                    )
            blocks = math.lcm(*[space.internal_metric_block or 1 for _, space in members])
            if first.units % blocks:
                raise PruningError(
                    f"{caller}: {label} has {first.units} units, not divisible into internal_metric_block="
                    f"{blocks} blocks."
                )
            ratio = ratios.pop()
            low = max(space.min_sparse_ratio or 0.0 for _, space in members)
            high = min(space.max_sparse_ratio if space.max_sparse_ratio is not None else 1.0 for _, space in members)
            per_block = first.units // blocks
            lo, hi = math.ceil(low * per_block - _EPS), math.floor(high * per_block + _EPS)
            count = _clamped_count(min(high, max(low, ratio)), per_block, lo, hi)
            tensors = tuple(index for index, _ in members)
            group_members = [_Member(tensors, b * per_block, (b + 1) * per_block, 1, count, count)
                             for b in range(blocks)]
            plan.groups.append(_Group(label, group_members, count * blocks, ratio))
        return plan


def _merge_aliases(model: nn.Module, config_list: list[dict], existed_wrappers: Mapping[str, ModuleWrapper] | None,
                   caller: str) -> list[dict]:
    """``config_list`` with every module that is registered under several names (``model.b
    = model.a``, a block used twice) selected under one name only.

    NNI selects by name and wraps each selected name, and a module cannot be wrapped
    twice. The name kept is the one an existing wrapper uses (``from_compressor``), else
    the first of the selected names in ``model.named_modules()`` order. Configs that
    select no second name are returned unchanged; the others select the same modules by
    ``op_names``. Warns when a selected name is dropped: its mask is under the kept name.
    """
    names_of: dict[int, list[str]] = {}
    for name, module in model.named_modules(remove_duplicate=False):
        names_of.setdefault(id(module), []).append(name)
    if all(len(names) == 1 for names in names_of.values()):
        return config_list
    order = {name: i for i, (name, _) in enumerate(model.named_modules(remove_duplicate=False))}
    ident = {name: key for key, names in names_of.items() for name in names}
    configs = trans_legacy_config_list(copy.deepcopy(list(config_list)))
    selections = [select_modules_by_config(model, c)[0] if any(k in c for k in ("op_types", "op_names", "op_names_re"))
                  else {} for c in configs]
    chosen: dict[int, set[str]] = {}
    for selected in selections:
        for name in selected:
            chosen.setdefault(ident[name], set()).add(name)
    wrapper_names = {id(w.module): name for name, w in (existed_wrappers or {}).items()}
    home = {key: wrapper_names.get(key, min(names, key=order.__getitem__)) for key, names in chosen.items()
            if len(names) > 1 or wrapper_names.get(key, next(iter(names))) not in names}
    if not home:
        return config_list
    merged = []
    for config, selected in zip(configs, selections):
        if not any(ident[n] in home and home[ident[n]] != n for n in selected):
            merged.append(config)
            continue
        names = {home.get(ident[n], n) for n in selected}
        rewritten = {k: v for k, v in config.items() if k not in _SELECTION_KEYS}
        rewritten["op_names"] = sorted(names, key=order.__getitem__)
        merged.append(rewritten)
    pairs = sorted({(n, home[ident[n]]) for selected in selections for n in selected
                    if ident[n] in home and home[ident[n]] != n}, key=lambda p: order[p[0]])
    warnings.warn(
        f"{caller}: {', '.join(f'{a!r} is the same module as {b!r}' for a, b in pairs)}; each such module "
        "is pruned once and its mask is given under the second name (the mask acts wherever the module "
        "is used). Exclude the first name with exclude_op_names to silence this.",
        UserWarning,
        stacklevel=4,
    )
    return merged


def _check_config_list(model: nn.Module, config_list: Any, caller: str) -> None:
    """Reject what NNI would silently ignore or fail on obscurely: unknown keys, configs
    that select no module, modules NNI has no pruning setting for."""
    if not isinstance(config_list, (list, tuple)) or not config_list:
        raise PruningTypeError(
            f"{caller}: config_list should be a non-empty list of dicts, e.g. "
            "[{'op_types': ['Conv2d', 'Linear'], 'sparse_ratio': 0.9}], got "
            f"{config_list!r:.80}"
        )
    for i, config in enumerate(config_list):
        if not isinstance(config, dict):
            raise PruningTypeError(f"{caller}: config_list[{i}] should be a dict, got {type(config).__name__}")
    for i, config in enumerate(trans_legacy_config_list(copy.deepcopy(list(config_list)))):
        unknown = sorted(set(config) - set(CONFIG_KEYS))
        if unknown:
            raise PruningError(
                f"{caller}: config_list[{i}] has key(s) {unknown} that NNI's pruning config does not define "
                f"(or NNI translates only when the first config uses legacy keys); valid keys: "
                f"{', '.join(CONFIG_KEYS)}."
            )
        for target_name, setting in (config.get("target_settings") or {}).items():
            unknown = sorted(set(setting) - set(_SETTING_KEYS)) if isinstance(setting, dict) else []
            if unknown:
                raise PruningError(
                    f"{caller}: config_list[{i}]['target_settings'][{target_name!r}] has key(s) {unknown}; "
                    f"valid keys: {', '.join(_SETTING_KEYS)}."
                )
        for target_name in config.get("target_names") or []:
            if str(target_name).startswith(("_input_", "_output_")):
                raise PruningError(
                    f"{caller}: config_list[{i}] has target_names={config['target_names']!r}; the criteria "
                    "score parameters, not module inputs/outputs: use target_names=['weight'] (or 'bias')."
                )
            if target_name not in ("weight", "bias") and target_name not in (config.get("target_settings") or {}):
                raise PruningError(
                    f"{caller}: config_list[{i}] names target {target_name!r}, for which NNI has no pruning "
                    f"setting; give one in target_settings={{{target_name!r}: {{'sparse_ratio': ...}}}}."
                )
        if "sparse_ratio" in config and "sparse_threshold" in config:
            raise PruningError(f"{caller}: config_list[{i}] sets both sparse_ratio and sparse_threshold; keep one.")
        try:
            default_config_schema("pruning").validate(config)
        except SchemaError as exc:
            raise PruningError(f"{caller}: config_list[{i}] does not follow NNI's config schema: {exc}") from None
        if not any(k in config for k in ("op_types", "op_names", "op_names_re")):
            continue  # NNI's schema reports it
        selected, _, _ = select_modules_by_config(model, config)
        asks = any(k in config for k in ("sparse_ratio", "sparse_threshold")) or any(
            isinstance(v, dict) and ("sparse_ratio" in v or "sparse_threshold" in v)
            for v in (config.get("target_settings") or {}).values())
        if not selected and asks:  # (a translated legacy 'exclude' config selects nothing and asks nothing)
            types = sorted({type(m).__name__ for m in model.modules()})
            raise PruningError(
                f"{caller}: config_list[{i}] selects no module of the model "
                f"({', '.join(f'{k}={config[k]!r}' for k in _SELECTION_KEYS if k in config)}); "
                f"its module types are {', '.join(types)}."
            )
        unregistered = sorted(f"'{name}' ({type(m).__name__})" for name, m in selected.items()
                              if type(m).__name__ not in PruningSetting.registry)
        if unregistered:
            raise PruningError(
                f"{caller}: config_list[{i}] selects {', '.join(unregistered)}, which NNI cannot prune; select "
                f"layers of the types {', '.join(sorted(PruningSetting.registry))}, e.g. op_types=['Conv2d', "
                "'Linear']."
            )


class RandomPruner(PaIPruner):
    """Random pruning: Gaussian scores (the paper's baseline); ``seed=`` makes the mask
    reproducible and equal to :class:`synflow_plugin.Random` with the same seed.

    >>> model = nn.Sequential(nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 2))
    >>> _, masks = RandomPruner(model, [{"op_types": ["Linear"], "sparse_ratio": 0.5}], seed=0).compress()
    >>> int(masks["0"]["weight"].sum()), int(masks["2"]["weight"].sum())
    (32, 8)
    """

    criterion = "random"

    def __init__(self, model: nn.Module, config_list: list[dict], evaluator: Evaluator | None = None, *,
                 seed: int | None = None, progress: bool | None = None,
                 existed_wrappers: dict[str, ModuleWrapper] | None = None) -> None:
        super().__init__(model, config_list, evaluator, seed=seed, progress=progress,
                         existed_wrappers=existed_wrappers)


class MagnitudePruner(PaIPruner):
    """Magnitude pruning at initialisation: keep the largest |θ| (per element, or the
    largest L1 norm per channel with ``granularity: 'out_channel'``, i.e. NNI's
    L1NormPruner ranking)."""

    criterion = "magnitude"

    def __init__(self, model: nn.Module, config_list: list[dict], evaluator: Evaluator | None = None, *,
                 progress: bool | None = None, existed_wrappers: dict[str, ModuleWrapper] | None = None) -> None:
        super().__init__(model, config_list, evaluator, progress=progress, existed_wrappers=existed_wrappers)


class SynFlowPruner(PaIPruner):
    """SynFlow (Tanaka et al., 2020, https://arxiv.org/abs/2006.05467): iterative
    synaptic flow, data-free.

    Args:
        dummy_input: an input the model accepts (only its shape is used); taken from
            ``evaluator.get_dummy_input()`` when not given.
        iterations: rounds (default 100); ``schedule``: ``"exponential"`` or ``"linear"``.
        batchnorm: ``"eval"`` (the paper) or ``"identity"`` (see :class:`~synflow_plugin.criteria.SynFlowCriterion`).

    >>> model = nn.Sequential(nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, 4))
    >>> config_list = [{"op_types": ["Linear"], "sparse_ratio": 0.9, "global_group_id": 0}]
    >>> pruner = SynFlowPruner(model, config_list, dummy_input=torch.randn(1, 16), iterations=10)
    >>> _, masks = pruner.compress()
    >>> sum(int(m["weight"].sum()) for m in masks.values())
    32
    """

    criterion = "synflow"

    def __init__(self, model: nn.Module, config_list: list[dict], dummy_input: Any = None, *,
                 iterations: int | None = None, schedule: str = "exponential", batchnorm: str = "eval",
                 evaluator: Evaluator | None = None, progress: bool | None = None,
                 existed_wrappers: dict[str, ModuleWrapper] | None = None) -> None:
        super().__init__(model, config_list, evaluator, dummy_input=dummy_input, iterations=iterations,
                         schedule=schedule, batchnorm=batchnorm, progress=progress,
                         existed_wrappers=existed_wrappers)


class _DataPruner(PaIPruner):
    def __init__(self, model: nn.Module, config_list: list[dict], evaluator: Evaluator | None = None,
                 num_batches: int = 1, *, loss_fn: Callable | None = None, iterations: int | None = None,
                 schedule: str = "exponential", progress: bool | None = None,
                 existed_wrappers: dict[str, ModuleWrapper] | None = None, **options: Any) -> None:
        super().__init__(model, config_list, evaluator, num_batches=num_batches, loss_fn=loss_fn,
                         iterations=iterations, schedule=schedule, progress=progress,
                         existed_wrappers=existed_wrappers, **options)


class SNIPPruner(_DataPruner):
    """SNIP (Lee et al., 2019, https://arxiv.org/abs/1810.02340): |θ ⊙ ∂L/∂θ| on the first
    ``num_batches`` batches of ``evaluator``'s training step; one shot.

    Args:
        evaluator: an NNI ``TorchEvaluator`` whose ``training_step(batch, model)`` gets
            ``batch = (inputs, targets)``.
        num_batches: batches read (default 1); ``loss_fn(logits, targets)``: cross-entropy by default.
    """

    criterion = "snip"


class GraSPPruner(_DataPruner):
    """GraSP (Wang et al., 2020, https://arxiv.org/abs/2002.07376): keeps the largest θ ⊙ Hg;
    batches from ``evaluator`` as :class:`SNIPPruner`; ``temperature=`` (default 200)."""

    criterion = "grasp"

    def __init__(self, model: nn.Module, config_list: list[dict], evaluator: Evaluator | None = None,
                 num_batches: int = 1, *, loss_fn: Callable | None = None, temperature: float = 200.0,
                 progress: bool | None = None, existed_wrappers: dict[str, ModuleWrapper] | None = None) -> None:
        super().__init__(model, config_list, evaluator, num_batches, loss_fn=loss_fn, temperature=temperature,
                         progress=progress, existed_wrappers=existed_wrappers)


class IterSNIPPruner(_DataPruner):
    """Iterative SNIP (de Jorge et al., 2021, https://arxiv.org/abs/2006.09081): SNIP
    re-scored over ``iterations`` rounds (default 10); batches from ``evaluator``."""

    criterion = "itersnip"

    def __init__(self, model: nn.Module, config_list: list[dict], evaluator: Evaluator | None = None,
                 num_batches: int = 1, *, loss_fn: Callable | None = None, iterations: int | None = None,
                 schedule: str = "exponential", progress: bool | None = None,
                 existed_wrappers: dict[str, ModuleWrapper] | None = None) -> None:
        super().__init__(model, config_list, evaluator, num_batches, loss_fn=loss_fn, iterations=iterations,
                         schedule=schedule, progress=progress, existed_wrappers=existed_wrappers)


class FORCEPruner(IterSNIPPruner):
    """FORCE (de Jorge et al., 2021): iterative SNIP in which weights pruned in an earlier
    round may come back; ``iterations`` rounds (default 10); batches from ``evaluator``."""

    criterion = "force"


# --------------------------------------------------------------------------- masks to a model
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


def _dead_channels(module_masks: Mapping[str, torch.Tensor | None]) -> torch.Tensor | None:
    weight = module_masks.get("weight")
    if weight is None or weight.dim() < 2:
        return None
    dead = weight.reshape(weight.shape[0], -1).sum(dim=1) == 0
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
        dead = _dead_channels(masks[node.target])
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
        PruningError: the model is still wrapped or cannot be traced by ``torch.fx``.
    """
    with warnings.catch_warnings():  # NNI registers torch pytree nodes with a deprecated call
        warnings.filterwarnings("ignore", message=".*pytree.*")
        from nni.compression.speedup import ModelSpeedup

    caller = "speedup_model()"
    _check_unwrapped(model, caller)
    _check_mask_names(model, masks, caller)
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
        dead = _dead_channels(masks[name])
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
