"""Scores to masks: exact top-k, global or per-layer budgets, schedules, the iterative loop.

:func:`compute_masks` is the one function every adapter calls. It scores a private
copy of the model (see :func:`~synflow_plugin.targets.scoring_copy`) round after
round and returns one boolean mask per target; the model itself is never changed.

Counts are exact: a call keeps exactly ``survivors - round(amount * survivors)``
weights, whatever the ties (the published SynFlow code prunes every score
``<= threshold`` and so removes too many when scores tie). Ties are broken by
position: the earlier weight is pruned first.
"""

from __future__ import annotations

import math
import numbers
import warnings
from typing import Any, Callable, Iterable, Sequence

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from synflow_plugin.criteria import Criterion, Inputs, ScoringState, get_criterion
from synflow_plugin.errors import PruningError, PruningTypeError
from synflow_plugin.selection import Survivors, drop_smallest, smallest_positions
from synflow_plugin.targets import Target, current_mask, resolve_targets, scoring_copy

__all__ = [
    # the loop
    "compute_masks",
    "compute_scores",
    # its parts
    "SCHEDULES",
    "SCOPES",
    "ZeroFlowWarning",
    "PrecisionWarning",
    "check_amount",
    "check_progress",
    "num_to_prune",
    "keep_schedule",
    "erk_allocation",
    "smallest_positions",
    "drop_smallest",
]

SCHEDULES = ("exponential", "linear")
#: ``global``: one ranking over all targets (the paper); ``local`` (or its alias
#: ``uniform``): every target keeps the same fraction (layer-wise pruning); ``erk``:
#: Erdős–Rényi-Kernel layer budgets.
SCOPES = ("global", "local", "uniform", "erk")


class ZeroFlowWarning(UserWarning):
    """A pruned tensor scores zero everywhere at the first round, so it would be removed first."""


# --------------------------------------------------------------------------- counts
def check_amount(amount: Any, caller: str = "prune") -> int | float:
    """Validate ``amount`` as torch.nn.utils.prune does: an integer >= 0 (a number of
    weights) or a real number in [0, 1] (a fraction of the surviving weights). numpy
    scalars are accepted and returned as ``int`` / ``float``."""
    if isinstance(amount, (bool, np.bool_)) or not isinstance(amount, numbers.Real):
        raise PruningTypeError(
            f"{caller}: amount={amount!r} should either be a float in the range [0, 1] or a "
            f"non-negative integer, got {type(amount).__name__}"
        )
    amount = int(amount) if isinstance(amount, numbers.Integral) else float(amount)
    if (isinstance(amount, int) and amount < 0) or (
        isinstance(amount, float) and not 0.0 <= amount <= 1.0
    ):
        raise PruningError(
            f"{caller}: amount={amount} should either be a float in the range [0, 1] or a "
            "non-negative integer (a compression of 100x is amount=0.99)"
        )
    return amount


def check_progress(progress: Any, caller: str = "prune") -> bool | None:
    """``progress`` is True, False or None (a bar only on a terminal)."""
    if progress is not None and not isinstance(progress, (bool, np.bool_)):
        raise PruningTypeError(
            f"{caller}: progress={progress!r} should be True, False or None (a bar only on a terminal)"
        )
    return None if progress is None else bool(progress)


def num_to_prune(amount: int | float, survivors: int, caller: str = "prune") -> int:
    """How many of ``survivors`` weights ``amount`` removes (``round`` for fractions, as torch)."""
    if isinstance(amount, int):
        if amount > survivors:
            raise PruningError(
                f"{caller}: amount={amount} should be at most the number of weights that can "
                f"still be pruned ({survivors})"
            )
        return amount
    return round(amount * survivors)


def keep_schedule(start: int, final: int, iterations: int, schedule: str = "exponential") -> list[int]:
    """Weights kept after each of ``iterations`` rounds, ending exactly at ``final``.

    ``exponential`` keeps ``start * (final/start) ** (k/iterations)`` after round k (the
    paper's schedule: every round removes the same fraction); ``linear`` removes the
    same number each round.

    >>> keep_schedule(1000, 10, 2)
    [100, 10]
    """
    if schedule not in SCHEDULES:
        raise PruningError(f"schedule={schedule!r} is not valid; expected one of {SCHEDULES}")
    if start == 0 or final >= start:
        return [final] * iterations
    counts = []
    for k in range(1, iterations + 1):
        if schedule == "exponential":
            value = start * (final / start) ** (k / iterations) if final > 0 else (
                start * (1.0 / start) ** (k / iterations) if k < iterations else 0
            )
        else:
            value = start - (start - final) * k / iterations
        counts.append(max(final, min(start, round(value))))
    counts[-1] = final
    return counts


def erk_allocation(shapes: Sequence[torch.Size], survivors: Sequence[int], keep: int) -> list[int]:
    """Erdős–Rényi-Kernel budgets: layer l keeps ∝ ``sum(shape)/prod(shape)`` of its
    weights (Evci et al., 2020), layers that would exceed their survivors stay dense and
    their excess is redistributed; the budgets add up to ``keep`` exactly."""
    sizes = [math.prod(s) for s in shapes]
    raw = [sum(s) / math.prod(s) if math.prod(s) else 0.0 for s in shapes]
    dense: set[int] = set()
    while True:
        rest = keep - sum(survivors[i] for i in dense)
        weight = sum(raw[i] * sizes[i] for i in range(len(shapes)) if i not in dense)
        eps = rest / weight if weight > 0 else 0.0
        exact = [float(survivors[i]) if i in dense else eps * raw[i] * sizes[i] for i in range(len(shapes))]
        over = {i for i in range(len(shapes)) if i not in dense and exact[i] > survivors[i]}
        if not over:
            break
        dense |= over
    return _round_to_total(exact, keep, survivors)


def _round_to_total(exact: Sequence[float], total: int, caps: Sequence[int]) -> list[int]:
    """Integers within ``[0, caps]`` close to ``exact`` that add up to ``total`` (largest remainder)."""
    counts = [min(cap, max(0, math.floor(x))) for x, cap in zip(exact, caps)]
    order = sorted(range(len(exact)), key=lambda i: counts[i] - exact[i])
    missing = total - sum(counts)
    while missing > 0:
        progressed = False
        for i in order:
            if missing and counts[i] < caps[i]:
                counts[i] += 1
                missing -= 1
                progressed = True
        if not progressed:
            break
    return counts


def _positions(mask: torch.Tensor) -> np.ndarray:
    """Flat positions (ascending) of a mask's True entries."""
    if bool(mask.all()):
        return np.arange(mask.numel(), dtype=np.int32 if mask.numel() < 2**31 else np.int64)
    return np.flatnonzero(mask.reshape(-1).cpu().numpy())


def _as_numpy(tensor: torch.Tensor, dtype: type | None = None) -> np.ndarray:
    """A flat float32/float64 numpy view (a copy only where needed) of ``tensor``."""
    tensor = tensor.detach()
    if dtype is not None:
        tensor = tensor.to(torch.float64 if dtype == np.float64 else torch.float32)
    elif tensor.dtype not in (torch.float32, torch.float64):
        tensor = tensor.float()
    return tensor.cpu().reshape(-1).numpy()


# --------------------------------------------------------------------------- the loop
def _prepare(model, params, criterion, options, example_inputs, data, loss_fn, num_batches, caller):
    criterion = get_criterion(criterion, **options)
    targets = resolve_targets(model, params, caller=caller)
    inputs = Inputs(example_inputs=example_inputs, data=data, loss_fn=loss_fn, num_batches=num_batches)
    if criterion.needs_data:
        inputs.require_data(criterion.name, caller)
    start_masks = [current_mask(model.get_submodule(t.module_name), t.name) for t in targets]
    return criterion, targets, inputs, start_masks


def _check_finite(model: nn.Module) -> None:
    """Refuse a model holding NaN or infinite values: every criterion would rank garbage."""
    with torch.no_grad():
        for kind, named in (("parameter", model.named_parameters()), ("buffer", model.named_buffers())):
            for name, tensor in named:
                if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
                    bad = int((~torch.isfinite(tensor)).sum())
                    raise PruningError(
                        f"the model's {kind} '{name}' holds {bad} NaN or infinite value"
                        f"{'s' if bad > 1 else ''}; scores computed from it would be meaningless. "
                        "Re-initialise or repair that tensor before pruning."
                    )


def _scoring_state(model: nn.Module, targets: list[Target], inputs: Inputs, criterion: Criterion) -> ScoringState:
    copy = scoring_copy(model)
    _check_finite(copy)
    copy.eval()
    for p in copy.parameters():
        p.requires_grad_(False)
    params = [copy.get_submodule(t.module_name)._parameters[t.name] for t in targets]
    for p in params:
        p.requires_grad_(True)
        if not p.data.is_contiguous():  # e.g. channels_last: flat views must alias the data
            p.data = p.data.contiguous()
    state = ScoringState(model=copy, targets=targets, params=params, initial=[], inputs=inputs)
    criterion.prepare(state)
    state.initial = [p.detach().clone() for p in params] if criterion.revives else [p.detach() for p in params]
    return state


def _checked_scores(criterion: Criterion, state: ScoringState) -> list[torch.Tensor]:
    """The scores ranked, for every weight (see :meth:`Criterion.finish`)."""
    return criterion.finish(state, _raw_scores(criterion, state))


def _raw_scores(criterion: Criterion, state: ScoringState) -> list[torch.Tensor]:
    """What ``criterion.score`` returns, checked; the loop finishes them for the survivors."""
    scores = criterion.score(state)
    if len(scores) != len(state.targets):
        raise PruningError(
            f"criterion {criterion.name} returned {len(scores)} score tensors for "
            f"{len(state.targets)} targets"
        )
    for target, score in zip(state.targets, scores):
        if tuple(score.shape) != tuple(target.shape):
            raise PruningError(
                f"criterion {criterion.name} returned scores of shape {tuple(score.shape)} for "
                f"'{target.qualified_name}' of shape {tuple(target.shape)}"
            )
    return scores


def compute_scores(
    model: nn.Module,
    params: Iterable[tuple[nn.Module, str]],
    criterion: str | Criterion = "synflow",
    *,
    example_inputs: Any = None,
    data: Iterable | None = None,
    loss_fn: Callable | None = None,
    num_batches: int | None = None,
    **options: Any,
) -> list[torch.Tensor]:
    """One round of ``criterion`` scores for ``params`` (no pruning), on a copy of ``model``.

    Returns one tensor per ``(module, name)`` pair, shaped like it; weights already
    pruned by ``torch.nn.utils.prune`` count as zero. ``model`` is left unchanged.

    >>> model = nn.Sequential(nn.Linear(2, 2, bias=False), nn.Linear(2, 1, bias=False))
    >>> scores = compute_scores(model, [(model[0], "weight"), (model[1], "weight")],
    ...                         "synflow", example_inputs=torch.ones(1, 2))
    >>> torch.allclose(scores[0].sum(), scores[1].sum())  # synaptic flow is conserved
    True
    """
    criterion, targets, inputs, _ = _prepare(
        model, params, criterion, options, example_inputs, data, loss_fn, num_batches, "compute_scores()"
    )
    with torch.enable_grad():
        state = _scoring_state(model, targets, inputs, criterion)
        scores = _checked_scores(criterion, state)
    return [s.detach() for s in scores]


def compute_masks(
    model: nn.Module,
    params: Iterable[tuple[nn.Module, str]],
    criterion: str | Criterion,
    amount: int | float,
    *,
    example_inputs: Any = None,
    data: Iterable | None = None,
    loss_fn: Callable | None = None,
    num_batches: int | None = None,
    iterations: int | None = None,
    schedule: str = "exponential",
    scope: str = "global",
    progress: bool | None = False,
    caller: str = "compute_masks()",
    **options: Any,
) -> list[torch.Tensor]:
    """Prune ``amount`` of the surviving weights of ``params`` with ``criterion``.

    Args:
        model: the network that contains every module of ``params``; never modified.
        params: ``(module, name)`` pairs, in any order, as for ``prune.global_unstructured``.
        criterion: a registry name (``"synflow"``, ``"snip"``, ...) or a :class:`Criterion`.
        amount: a fraction in [0, 1] of the weights that survive existing masks, or a
            number of weights; weights already pruned stay pruned.
        example_inputs: an input the model accepts (SynFlow uses only its shape).
        data: labelled batches for data-driven criteria; ``loss_fn`` (cross-entropy by
            default) and ``num_batches`` (default: all) go with it.
        iterations: pruning rounds; default: the criterion's (SynFlow 100, SNIP 1, ...).
        schedule: ``"exponential"`` (the paper) or ``"linear"`` density schedule.
        scope: ``"global"`` ranking, ``"local"`` (alias ``"uniform"``: the same fraction
            in every tensor) or ``"erk"`` budgets.
        progress: show a tqdm bar over the rounds (``None``: only on a terminal).
        **options: the criterion's own options, e.g. ``batchnorm="identity"`` or ``seed=0``.

    Returns:
        One boolean mask per pair, shaped like the tensor, on its device.

    Raises:
        PruningError: any invalid argument, with a message saying what to fix.

    >>> model = nn.Sequential(nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 2))
    >>> masks = compute_masks(model, [(model[0], "weight"), (model[2], "weight")], "synflow",
    ...                       amount=0.75, example_inputs=torch.randn(1, 8))
    >>> sum(int(m.sum()) for m in masks)
    20
    """
    amount = check_amount(amount, caller)
    if iterations is not None and (isinstance(iterations, bool) or not isinstance(iterations, int) or iterations < 1):
        raise PruningError(f"{caller}: iterations={iterations!r} should be a positive int")
    if schedule not in SCHEDULES:
        raise PruningError(f"{caller}: schedule={schedule!r} is not valid; expected one of {SCHEDULES}")
    if scope not in SCOPES:
        raise PruningError(f"{caller}: scope={scope!r} is not valid; expected one of {SCOPES}")
    progress = check_progress(progress, caller)
    criterion, targets, inputs, start_masks = _prepare(
        model, params, criterion, options, example_inputs, data, loss_fn, num_batches, caller
    )
    rounds = iterations or criterion.default_iterations

    # Per target: positions (flat, sorted) of the weights this call may rank.
    candidates = [_positions(m) for m in start_masks]
    survivors = [c.size for c in candidates]
    if scope == "global":
        total = sum(survivors)
        final = total - num_to_prune(amount, total, caller)
        plans = [keep_schedule(total, final, rounds, schedule)]
    else:
        if scope in ("local", "uniform"):
            finals = [n - num_to_prune(amount, n, caller) for n in survivors]
        else:
            total = sum(survivors)
            finals = erk_allocation([t.shape for t in targets], survivors,
                                    total - num_to_prune(amount, total, caller))
        plans = [keep_schedule(n, f, rounds, schedule) for n, f in zip(survivors, finals)]

    groups = [list(range(len(targets)))] if scope == "global" else [[t] for t in range(len(targets))]
    starts = [sum(survivors)] if scope == "global" else survivors
    alive = Survivors(candidates, revivable=criterion.revives, threads=torch.get_num_threads())
    if any(plan[-1] < n for plan, n in zip(plans, starts)):
        with torch.enable_grad():
            state = _scoring_state(model, targets, inputs, criterion)
            for r in tqdm(range(rounds), desc=f"{criterion.name}", unit="round",
                          disable=(not progress) if progress is not None else None, leave=False):
                state.round = r
                _one_round(state, criterion, alive, groups, [plan[r] for plan in plans])
    masks = []
    for t, (target, start) in enumerate(zip(targets, start_masks)):
        mask = torch.zeros(target.numel, dtype=torch.bool)
        mask[torch.from_numpy(alive.positions(t))] = True
        masks.append(mask.reshape(target.shape).to(start.device))
    return masks


def _one_round(state: ScoringState, criterion: Criterion, alive: Survivors, groups: list[list[int]],
               keep: list[int]) -> None:
    """Score once; each group of targets keeps ``keep[g]`` of its survivors."""
    if criterion.revives:
        if state.round > 0:  # the survivors get their initial values back, the rest zero
            with torch.no_grad():
                for t, (p, theta0) in enumerate(zip(state.params, state.initial)):
                    index = torch.from_numpy(alive.positions(t)).to(p.device)
                    flat = p.data.reshape(-1)
                    flat.zero_()
                    flat.index_copy_(0, index, theta0.reshape(-1).index_select(0, index))
        alive.reset()  # every candidate is ranked again
    counts = [sum(alive.live(t) for t in group) - k for group, k in zip(groups, keep)]
    before = [alive.live(t) for t in range(len(state.targets))]
    scores = _raw_scores(criterion, state)
    widen = criterion.wide_range and state.can_promote
    result = _rank(state, criterion, alive, groups, counts, scores, hold=widen)
    if widen and result.held and state.promote():
        # A score left the normal range of the model's dtype: this round again in float64.
        scores = _raw_scores(criterion, state)
        result = _rank(state, criterion, alive, groups, counts, scores, hold=False)
    bad = [t.qualified_name for t, nan in zip(state.targets, result.nan) if nan]
    if bad:
        raise PruningError(
            f"criterion {criterion.name} gave NaN scores for '{bad[0]}' although every weight is "
            f"finite: a value computed from them overflowed in {scores[0].dtype}. Check for layers "
            "scaled far from unit size, or score a float64 copy of the model (model.double())."
        )
    if criterion.wide_range and any(result.outside):
        _check_range(state, criterion, alive, scores, result.outside)
    if state.round == 0:
        _warn_zero_flow(state, criterion, [n > 0 and not nz for n, nz in zip(before, result.nonzero)])
    with torch.no_grad():
        for p, pruned in zip(state.params, result.pruned):
            if pruned is not None and pruned.size:
                p.data.reshape(-1).index_fill_(0, torch.from_numpy(pruned).to(p.device), 0)


def _rank(state: ScoringState, criterion: Criterion, alive: Survivors, groups: list[list[int]],
          counts: list[int], scores: list[torch.Tensor], hold: bool):
    """One ranking pass of ``alive`` over ``scores``: group g loses ``counts[g]`` survivors
    (none with ``hold`` if a score is outside its dtype's normal range)."""
    dtype = np.float64 if any(s.dtype == torch.float64 for s in scores) else np.float32
    # Pruned weights are zeroed in the scored copy: in place where numpy shares its
    # memory, else (another device or dtype) through torch with the recorded positions.
    zero = [None if criterion.revives else _shared_numpy(p) for p in state.params]
    return alive.prune(
        scores=[_as_numpy(s, dtype) for s in scores],
        weights=[_as_numpy(p, dtype) if criterion.times_weight else None for p in state.params],
        absolute=criterion.ranks_magnitude,
        groups=groups,
        counts=counts,
        zero=zero,
        record=[not criterion.revives and z is None for z in zero],
        seed=state.round,
        hold_outside=hold,
    )


class PrecisionWarning(UserWarning):
    """Scores fell near the subnormal range of float64: their ranking may be inexact."""


def _check_range(state: ScoringState, criterion: Criterion, alive: Survivors,
                 scores: list[torch.Tensor], outside: list[int]) -> None:
    """Raise for infinite scores, warn (once per call) for scores too small to rank exactly,
    after the round was already scored in float64 (or could not be)."""
    names = [t.qualified_name for t, n in zip(state.targets, outside) if n]
    for t, target in enumerate(state.targets):
        if not outside[t]:
            continue
        position = torch.from_numpy(alive.positions(t)).to(scores[t].device)
        score = scores[t].reshape(-1).index_select(0, position)
        if criterion.times_weight:
            score = score * state.params[t].detach().reshape(-1).index_select(0, position)
        if bool(torch.isinf(score).any()):
            raise PruningError(
                f"criterion {criterion.name} gave infinite scores for '{target.qualified_name}' even in "
                f"{score.dtype}: the network's weights span too many orders of magnitude for its "
                "scores to be computed (check the model for extreme weights, e.g. a layer scaled by 1e±300)."
            )
    if not state.cache.get("precision_warned"):
        state.cache["precision_warned"] = True
        warnings.warn(
            f"{criterion.name}: some scores of {', '.join(names)} lie near the smallest normal "
            f"{scores[0].dtype} value, where the products they come from lose precision; the ranking "
            "of those weights may be inexact.",
            PrecisionWarning,
            stacklevel=4,
        )


def _shared_numpy(tensor: torch.Tensor) -> np.ndarray | None:
    """A flat numpy array sharing ``tensor``'s memory, if numpy can hold it."""
    if tensor.device.type != "cpu" or tensor.dtype not in (torch.float32, torch.float64):
        return None
    return tensor.detach().reshape(-1).numpy()


def _warn_zero_flow(state: ScoringState, criterion: Criterion, all_zero: list[bool]) -> None:
    """Warn about the targets whose every score is zero (``all_zero``, one flag per target)."""
    dead = [t.qualified_name for t, flag in zip(state.targets, all_zero) if flag]
    if not dead:
        return
    zero_bn = [
        name for name, m in state.model.named_modules()
        if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.weight is not None and not m.weight.any()
    ]
    cause = (
        f" BatchNorm layers with an all-zero weight block the flow: {', '.join(zero_bn)} "
        "(e.g. zero_init_residual); pass batchnorm='identity' to score as if BatchNorm were identity."
        if zero_bn and criterion.name == "synflow"
        else " Nothing downstream depends on them at initialisation (zero weights or gradients)."
    )
    warnings.warn(
        f"{criterion.name}: every score of {', '.join(dead)} is zero, so "
        f"{'it' if len(dead) == 1 else 'they'} will be pruned first (layer collapse).{cause}",
        ZeroFlowWarning,
        stacklevel=4,
    )
