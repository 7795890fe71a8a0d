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
import warnings
from typing import Any, Callable, Iterable, Sequence

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from synflow_plugin._kernels import delete_sorted, gather, positions_beyond
from synflow_plugin.criteria import Criterion, Inputs, ScoringState, get_criterion
from synflow_plugin.errors import PruningError, PruningTypeError
from synflow_plugin.targets import Target, current_mask, resolve_targets, scoring_copy

__all__ = [
    # the loop
    "compute_masks",
    "compute_scores",
    # its parts
    "SCHEDULES",
    "SCOPES",
    "ZeroFlowWarning",
    "check_amount",
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
    """Validate ``amount`` as torch.nn.utils.prune does: an int >= 0 (a number of
    weights) or a float in [0, 1] (a fraction of the surviving weights)."""
    if isinstance(amount, bool) or not isinstance(amount, (int, float)):
        raise PruningTypeError(
            f"{caller}: amount={amount!r} should either be a float in the range [0, 1] or a "
            f"non-negative integer, got {type(amount).__name__}"
        )
    if (isinstance(amount, int) and amount < 0) or (
        isinstance(amount, float) and not 0.0 <= amount <= 1.0
    ):
        raise PruningError(
            f"{caller}: amount={amount} should either be a float in the range [0, 1] or a "
            "non-negative integer (a compression of 100x is amount=0.99)"
        )
    return amount


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


# --------------------------------------------------------------------------- selection
_SAMPLE = 1 << 16


def smallest_positions(values: np.ndarray, count: int) -> np.ndarray:
    """Sorted positions of the ``count`` smallest ``values``; among equal values the
    earliest positions come first. Exact, whatever the ties.

    A random sample first brackets the threshold, so that only the values on the
    short side of it are partitioned: an iterative round removes a small fraction of
    the survivors and costs a few linear passes over ``values`` instead of a sort.

    >>> smallest_positions(np.array([3.0, 1.0, 1.0, 2.0, 1.0]), 2).tolist()
    [1, 2]
    """
    n = values.size
    if count <= 0:
        return np.empty(0, dtype=np.int64)
    if count >= n:
        return np.arange(n, dtype=np.int64)
    if count > n // 2:  # select the survivors instead: the short side
        kept = _extreme_positions(values, n - count, largest=True)
        drop = np.ones(n, dtype=bool)
        drop[kept] = False
        return np.flatnonzero(drop)
    return _extreme_positions(values, count, largest=False)


def _extreme_positions(values: np.ndarray, count: int, largest: bool) -> np.ndarray:
    """Sorted positions of the ``count`` smallest (or largest) values; ties are resolved
    so that the earliest positions count as the smallest."""
    n = values.size
    candidates = None
    if n > 4 * _SAMPLE:
        rng = np.random.default_rng(n)  # the result is exact; the sample only speeds it up
        sample = values[rng.integers(0, n, _SAMPLE)]
        q = count / n
        margin = int(q * _SAMPLE + 5.0 * math.sqrt(_SAMPLE * q * (1.0 - q)) + 2)
        if margin < _SAMPLE:
            rank = _SAMPLE - 1 - margin if largest else margin
            bound = np.partition(sample, rank)[rank]
            candidates = positions_beyond(values, bound, upper=not largest)
            if candidates.size < count:  # an unlucky sample: fall back to all values
                candidates = None
    sub = values if candidates is None else values[candidates]
    rank = sub.size - count if largest else count - 1
    threshold = np.partition(sub, rank)[rank]
    chosen = sub > threshold if largest else sub < threshold
    missing = count - int(np.count_nonzero(chosen))
    if missing > 0:
        ties = np.flatnonzero(sub == threshold)
        chosen[ties[-missing:] if largest else ties[:missing]] = True
    positions = np.flatnonzero(chosen)
    return positions if candidates is None else candidates[positions]


def drop_smallest(values: np.ndarray, count: int) -> np.ndarray:
    """A boolean array with exactly ``count`` True entries at the smallest ``values``;
    among equal values the earliest positions are dropped first."""
    drop = np.zeros(values.size, dtype=bool)
    drop[smallest_positions(values, count)] = True
    return drop


def _positions(mask: torch.Tensor) -> np.ndarray:
    """Flat positions (int64, which numpy gathers fastest) of a mask's True entries."""
    if bool(mask.all()):
        return np.arange(mask.numel(), dtype=np.int64)
    return np.flatnonzero(mask.reshape(-1).cpu().numpy())


def _as_numpy(tensor: torch.Tensor, dtype: type = None) -> np.ndarray:
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


def _scoring_state(model: nn.Module, targets: list[Target], inputs: Inputs, criterion: Criterion) -> ScoringState:
    copy = scoring_copy(model)
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

    alive = list(candidates)  # rounds build new arrays: sharing them is safe
    starts = [sum(survivors)] if scope == "global" else survivors
    if any(plan[-1] < n for plan, n in zip(plans, starts)):
        with torch.enable_grad():
            state = _scoring_state(model, targets, inputs, criterion)
            for r in tqdm(range(rounds), desc=f"{criterion.name}", unit="round",
                          disable=(not progress) if progress is not None else None, leave=False):
                state.round = r
                alive = _one_round(state, criterion, candidates, alive, plans, r, scope)

    masks = []
    for target, keep, start in zip(targets, alive, start_masks):
        mask = torch.zeros(target.numel, dtype=torch.bool)
        mask[torch.from_numpy(keep)] = True
        masks.append(mask.reshape(target.shape).to(start.device))
    return masks


def _one_round(state, criterion, candidates, alive, plans, r, scope):
    """Score once, keep the round's budget; returns the new survivors of each target."""
    with torch.no_grad():
        if criterion.revives and r > 0:  # restore the candidates' initial values, then mask
            for p, theta0, keep in zip(state.params, state.initial, alive):
                flat = p.data.reshape(-1)
                flat.zero_()
                index = torch.from_numpy(keep).to(p.device)
                flat.index_copy_(0, index, theta0.reshape(-1).index_select(0, index))
    scores = _raw_scores(criterion, state)
    pools = candidates if criterion.revives else alive

    # Gather the pools' scores into one buffer: a view per target.
    bounds = np.cumsum([0] + [pool.size for pool in pools])
    dtype = np.float64 if any(s.dtype == torch.float64 for s in scores) else np.float32
    buffer = state.cache.get("_joined")
    if buffer is None or buffer.dtype != dtype or buffer.size < bounds[-1]:
        buffer = state.cache["_joined"] = np.empty(bounds[-1], dtype=dtype)  # reused by later rounds
    joined = buffer[: bounds[-1]]
    values = [joined[a:b] for a, b in zip(bounds[:-1], bounds[1:])]
    for score, param, pool, out in zip(scores, state.params, pools, values):
        weight = _as_numpy(param, dtype) if criterion.times_weight else None
        gather(_as_numpy(score, dtype), pool, out, weight=weight, absolute=criterion.ranks_magnitude)
    if np.isnan(joined.sum()):
        bad = next(t.qualified_name for t, v in zip(state.targets, values) if np.isnan(v).any())
        raise PruningError(
            f"criterion {criterion.name} gave NaN scores for '{bad}'; check the model for "
            "NaN/inf weights or outputs."
        )
    if r == 0:
        _warn_zero_flow(state, criterion, values)

    if scope == "global":
        dropped = smallest_positions(joined, joined.size - plans[0][r])
        cuts = np.searchsorted(dropped, bounds)
        drops = [dropped[a:b] - lo for a, b, lo in zip(cuts[:-1], cuts[1:], bounds[:-1])]
    else:
        drops = [smallest_positions(v, v.size - plan[r]) for v, plan in zip(values, plans)]

    # Survivors go to two buffers per target used in turn, so that no round allocates
    # (and page-faults) arrays as large as the model.
    buffers = state.cache.get("_survivors")
    if buffers is None:
        buffers = state.cache["_survivors"] = [(np.empty(c.size, np.int64), np.empty(c.size, np.int64))
                                               for c in candidates]
    survivors = []
    with torch.no_grad():
        for p, pool, drop, pair in zip(state.params, pools, drops, buffers):
            if not criterion.revives and drop.size:
                index = torch.from_numpy(pool[drop]).to(p.device)
                p.data.reshape(-1).index_fill_(0, index, 0)
            target = pair[1] if np.may_share_memory(pool, pair[0]) else pair[0]
            survivors.append(delete_sorted(pool, drop, out=target))
    return survivors


def _warn_zero_flow(state: ScoringState, criterion: Criterion, values: list[np.ndarray]) -> None:
    dead = [t.qualified_name for t, v in zip(state.targets, values) if v.size and not np.any(v)]
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
