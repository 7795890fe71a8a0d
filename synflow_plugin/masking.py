"""Scores to masks: exact top-k, global or per-layer budgets, schedules, the iterative loop.

:func:`run_plan` is the one pruning loop of every host: it runs a
:class:`~synflow_plugin.plan.Plan` (what to prune, in which groups, to which budgets)
on a :class:`~synflow_plugin.session.ScoringSession` (the private scoring copy of the
model), round after round, and returns one boolean mask per target; the model itself
is never changed. :func:`compute_masks` is the plan of the ``torch.nn.utils.prune``
methods: ``amount`` of the survivors, globally, per layer or on ERK budgets.

Counts are exact: a call keeps exactly ``survivors - round(amount * survivors)``
weights, whatever the ties (the published SynFlow code prunes every score
``<= threshold`` and so removes too many when scores tie). Ties are broken by
position: the earlier weight is pruned first.
"""

from __future__ import annotations

import math
import numbers
import warnings
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from synflow_plugin._kernels import normal_range
from synflow_plugin.collapse import LayerCollapseWarning, warn_collapse
from synflow_plugin.criteria import Criterion, GradientCriterion
from synflow_plugin.distributed import check_same_on_every_rank
from synflow_plugin.errors import PruningError, PruningTypeError
from synflow_plugin.plan import Group, Member, Plan, bounded_drop
from synflow_plugin.selection import Round, Survivors, drop_smallest, smallest_positions
from synflow_plugin.session import SCHEDULES, SCOPES, ScoringRequest, ScoringSession, ZeroFlowWarning
from synflow_plugin.targets import Target, count_true

__all__ = [
    # the loop
    "compute_masks",
    "compute_scores",
    "run_plan",
    "scope_plan",
    "check_min_density",
    # its parts
    "SCHEDULES",
    "SCOPES",
    "ZeroFlowWarning",
    "LayerCollapseWarning",
    "PrecisionWarning",
    "check_amount",
    "num_to_prune",
    "keep_schedule",
    "erk_allocation",
    "smallest_positions",
    "drop_smallest",
]

class PrecisionWarning(UserWarning):
    """Scores fell near the subnormal range of float64: their ranking may be inexact."""


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


# --------------------------------------------------------------------------- entry points
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
    request = ScoringRequest.build(criterion, example_inputs=example_inputs, data=data, loss_fn=loss_fn,
                                   num_batches=num_batches, caller="compute_scores()", **options)
    with ScoringSession(model, params, request) as session:
        return session.per_pair([s.detach() for s in session.ranked_scores()])


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
    min_density: float = 0.0,
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
        min_density: the fraction of each tensor kept at least, in every round and at
            the end (``0.01``: no layer keeps fewer than 1% of its weights); the total
            count stays exact.
        **options: the criterion's own options, e.g. ``batchnorm="identity"`` or ``seed=0``.

    Returns:
        One boolean mask per pair, shaped like the tensor, on its device. A
        :class:`~synflow_plugin.collapse.LayerCollapseWarning` names any tensor left empty.

    Raises:
        PruningError: any invalid argument, with a message saying what to fix.

    >>> model = nn.Sequential(nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 2))
    >>> masks = compute_masks(model, [(model[0], "weight"), (model[2], "weight")], "synflow",
    ...                       amount=0.75, example_inputs=torch.randn(1, 8))
    >>> sum(int(m.sum()) for m in masks)
    20
    """
    amount = check_amount(amount, caller)
    request = ScoringRequest.build(
        criterion, example_inputs=example_inputs, data=data, loss_fn=loss_fn, num_batches=num_batches,
        iterations=iterations, schedule=schedule, scope=scope, progress=progress, caller=caller, **options)
    session = ScoringSession(model, params, request)
    return session.per_pair(run_plan(session, scope_plan(session, amount, min_density)))


def check_min_density(min_density: Any, caller: str = "prune") -> float:
    """``min_density`` is a real number in [0, 1]: the fraction of each tensor every prune keeps."""
    if isinstance(min_density, (bool, np.bool_)) or not isinstance(min_density, numbers.Real) or not (
            0.0 <= float(min_density) <= 1.0):
        raise PruningError(
            f"{caller}: min_density={min_density!r} should be a float in [0, 1], the fraction of each tensor "
            "that is kept at least (e.g. 0.01 keeps 1% of every layer)"
        )
    return float(min_density)


def scope_plan(session: ScoringSession, amount: int | float, min_density: float = 0.0) -> Plan:
    """The plan of :func:`compute_masks`: single weights, ``amount`` of the survivors
    pruned in one global group, or in one group per target (``local`` / ``erk``).

    ``min_density``: every tensor keeps at least ``ceil(min_density * numel)`` weights
    (or all its survivors, if an earlier prune left fewer), with the total count still
    exact; an ``amount`` that cannot be met with that floor is a :class:`PruningError`.
    """
    request, targets = session.request, session.targets
    caller = request.caller
    min_density = check_min_density(min_density, caller)
    survivors = [count_true(m) for m in session.start_masks]
    floors = [min(n, math.ceil(min_density * t.numel - 1e-9)) for n, t in zip(survivors, targets)]
    members = [Member((t,), 0, target.numel, hi=n - floor if floor else None)
               for t, (target, n, floor) in enumerate(zip(targets, survivors, floors))]
    units = [target.numel for target in targets]
    if request.scope == "global":
        budget = num_to_prune(amount, sum(survivors), caller)
        room = sum(n - f for n, f in zip(survivors, floors))
        if budget > room:
            raise PruningError(
                f"{caller}: amount={amount} prunes {budget} of {sum(survivors)} weights, but min_density="
                f"{min_density} keeps at least {sum(floors)}, so only {room} can go; lower one of them."
            )
        return Plan(units, [Group("global", members, budget)])
    if request.scope in ("local", "uniform"):
        if isinstance(amount, int) and amount > min(survivors):
            smallest = min(range(len(targets)), key=survivors.__getitem__)
            raise PruningError(
                f"{caller}: amount={amount} weights from each tensor (scope={request.scope!r}), but "
                f"'{targets[smallest].qualified_name}' has only {survivors[smallest]} that can still be pruned. "
                "Pass a fraction (amount=0.9), or an amount of at most that, or scope='global'."
            )
        budgets = [num_to_prune(amount, n, caller) for n in survivors]
    else:
        total = sum(survivors)
        keep = erk_allocation([t.shape for t in targets], survivors, total - num_to_prune(amount, total, caller))
        budgets = [n - k for n, k in zip(survivors, keep)]
    for target, budget, n, floor in zip(targets, budgets, survivors, floors):
        if budget > n - floor:
            raise PruningError(
                f"{caller}: scope={request.scope!r} prunes {budget} of the {n} weights of "
                f"'{target.qualified_name}', but min_density={min_density} keeps at least {floor}; lower "
                "amount or min_density, or use scope='global'."
            )
    return Plan(units, [Group(f"'{t.qualified_name}'", [m], b) for t, m, b in zip(targets, members, budgets)])


# --------------------------------------------------------------------------- the loop
def run_plan(session: ScoringSession, plan: Plan) -> list[torch.Tensor]:
    """Prune ``plan`` on ``session``'s scoring copy, round after round; the one loop of
    every host.

    Each round scores every target once, then every group prunes to its budget for that
    round on the request's schedule (``lo`` floors follow the schedule too, ``hi`` caps
    hold in every round, thresholds are applied in the first round only). Groups of
    single, unbounded weights are ranked by the compiled kernels
    (:class:`~synflow_plugin.selection.Survivors`); the others (channels, tied tensors,
    bounds, thresholds) by a vectorised ranking of units. A round whose scores leave the
    range of the model's dtype is scored again in float64 (criteria with ``wide_range``).

    The session is entered here (no copy is made when the plan prunes nothing).

    A :class:`~synflow_plugin.collapse.LayerCollapseWarning` names every tensor the
    prune emptied (or left with one channel) and says whether the network is disconnected.

    Returns:
        One boolean mask per target, shaped like it, on its device: the targets'
        existing masks with the pruned weights removed.
    """
    if plan.empty:
        return [m.clone() for m in session.start_masks]
    _keep_freed_memory()
    loop = _Loop(session, plan)
    request = session.request
    with session:
        session.state.rounds = loop.rounds
        session.state.survivors = loop.masks
        session.state.density = loop.density
        for r in tqdm(range(loop.rounds), desc=request.criterion.name, unit="round",
                      disable=(not request.progress) if request.progress is not None else None, leave=False):
            loop.round(r)
    masks = loop.masks()
    check_same_on_every_rank(masks, request.group, "the masks",
                             "The scores differed between the ranks: every rank must call the prune with the "
                             "same arguments (the same seed= for random criteria).", request.caller)
    warn_collapse(session.model, session.targets, masks, session.start_masks, request.inputs,
                  f"{request.caller} ({request.criterion.name})", units=plan.units, stacklevel=3)
    return masks


#: A round streams the gradients (ranks each as the backward pass produces it, and
#: frees it) when holding all of them would take more than this fraction of the
#: memory available at the start of the call; the masks are the same either way.
STREAM_FRACTION = 0.25


#: A container's memory limit and use: cgroup v2, then v1 (as mounted in the container).
_CGROUP_FILES = (("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory.current"),
                 ("/sys/fs/cgroup/memory/memory.limit_in_bytes", "/sys/fs/cgroup/memory/memory.usage_in_bytes"))


def _available_memory() -> int | None:
    """The bytes of memory this process can still get: Linux's MemAvailable, or the
    container's cgroup limit less its use where that is lower; None where the system
    does not say (then the loop never streams)."""
    available = None
    try:
        with open("/proc/meminfo") as meminfo:
            for line in meminfo:
                if line.startswith("MemAvailable:"):
                    available = int(line.split()[1]) * 1024
                    break
    except (OSError, ValueError, IndexError):
        return None
    for limit_file, usage_file in _CGROUP_FILES:
        try:
            limit, usage = Path(limit_file).read_text().strip(), Path(usage_file).read_text().strip()
        except OSError:
            continue
        if limit.isdigit() and usage.isdigit() and int(limit) < 2**60:  # "max" or a huge number: no limit
            headroom = max(0, int(limit) - int(usage))
            available = headroom if available is None else min(available, headroom)
        break
    return available


_GLIBC_MMAP_THRESHOLD_MAX = 32 * 2**20


def _keep_freed_memory() -> None:
    """Let the C allocator keep a round's freed gradients for the next round.

    glibc's malloc gives memory at the top of its heap back to the system once more
    than its trim threshold (twice its mmap threshold: 256 KiB at start) is free, so
    the gradients freed at the end of a round could come back as page faults in the
    next one: about a million faults (1-1.5 s) in a 100-round VGG-16 prune, in some
    fresh processes and not in others, depending on what the heap held before.
    Freeing one block just under glibc's 32 MiB cap sets both thresholds as glibc itself
    does after any block that size is freed (mmap 32 MiB, trim 64 MiB), once per
    process. The block is never touched, so it costs no memory; elsewhere it is one
    allocation."""
    torch.empty(_GLIBC_MMAP_THRESHOLD_MAX - 8192, dtype=torch.uint8)


def _on_kernels(group: Group, plan: Plan, targets: Sequence[Target]) -> bool:
    """Whether the compiled kernels rank ``group``: single weights of whole tensors,
    one member each (bounds allowed, no threshold, no tied tensors, unit cost)."""
    return all(len(m.tensors) == 1 and plan.units[m.tensors[0]] == targets[m.tensors[0]].numel
               and m.start == 0 and m.stop == plan.units[m.tensors[0]] and m.size == 1
               and m.threshold is None for m in group.members)


class _Loop:
    """The state of one :func:`run_plan` call: the kernel-ranked groups' survivors and
    the unit-ranked groups' surviving units, and the budgets of every round."""

    def __init__(self, session: ScoringSession, plan: Plan) -> None:
        self.session, self.plan = session, plan
        request, targets = session.request, session.targets
        self.criterion = request.criterion
        scheduled = any(m.threshold is None for m in plan.members())
        fast = [g for g in plan.groups if _on_kernels(g, plan, targets)]
        self.fast = [[m.tensors[0] for m in g.members] for g in fast]
        self.slow = [g for g in plan.groups if not _on_kernels(g, plan, targets)]

        # Kernel-ranked targets: the flat positions they may lose.
        on_kernels = {t for group in self.fast for t in group}
        self.on_kernels = on_kernels
        self.alive = Survivors([m if t in on_kernels else None for t, m in enumerate(session.start_masks)],
                               revivable=self.criterion.revives, threads=torch.get_num_threads())
        self.start_live = [self.alive.live(t) for t in range(len(targets))]
        # Unit-ranked members: the units they may lose.
        self.members = [m for g in self.slow for m in g.members]
        self.units_alive = [self._candidate_units(m) for m in self.members]
        self.units_start = [u.copy() for u in self.units_alive]
        position = {id(m): k for k, m in enumerate(self.members)}
        fast_ends = [(start, start - min(g.budget, start))
                     for g, start in ((g, sum(self.start_live[t] for t in group)) for g, group in zip(fast, self.fast))]
        slow_ends = [(cost, cost - min(g.budget, cost)) for g, cost in (
            (g, sum(self.units_alive[position[id(m)]].size * m.size for m in g.members)) for g in self.slow)]

        # The rounds: the request's, or the criterion's own schedule (keep_fractions).
        total = sum(start for start, _ in fast_ends + slow_ends)
        self.density = density = sum(final for _, final in fast_ends + slow_ends) / total if total else 1.0
        self.fractions = self.criterion.keep_fractions(density, request.iterations) if scheduled else None
        if self.fractions is not None:
            self.rounds = len(self.fractions)
        else:
            self.rounds = request.rounds if scheduled else 1

        # The weights each group keeps after every round, and its members' floors (lo) and caps (hi), if bounded.
        self.fast_keep, self.fast_bounds = [], []
        for g, (start, final) in zip(fast, fast_ends):
            self.fast_keep.append(self._keeps(start, final))
            bounded = any(m.bounded for m in g.members)
            self.fast_bounds.append([(
                [n - k for k in self._keeps(n, n - min(m.lo, n))], min(m.hi, n))
                for m, n in ((m, self.start_live[m.tensors[0]]) for m in g.members)] if bounded else None)

        # Unit-ranked members: their budgets and floors per round.
        self.budgets = [[cost - k for k in self._keeps(cost, final)] for cost, final in slow_ends]
        self.floors = [[u.size - k for k in self._keeps(u.size, u.size - min(m.lo, u.size))]
                       for m, u in zip(self.members, self.units_alive)]

        # Whether rounds take the gradients as they come (see _streams): where they can,
        # and where holding every gradient at once would take memory the machine lacks.
        gradient_bytes = session.weight_bytes(on_kernels)
        available = _available_memory()
        self.streaming = (isinstance(self.criterion, GradientCriterion) and self.criterion.streamable
                          and not self.criterion.revives and not self.members and bool(self.fast)
                          and all(b is None for b in self.fast_bounds)
                          and available is not None and gradient_bytes > STREAM_FRACTION * available)

    def _keeps(self, start: int, final: int) -> list[int]:
        """What a group of ``start`` that ends at ``final`` keeps after each round."""
        if self.fractions is None:
            return keep_schedule(start, final, self.rounds, self.session.request.schedule)
        keeps = [max(final, min(start, round(start * f))) for f in self.fractions]
        keeps[-1] = final
        return keeps

    def _candidate_units(self, member: Member) -> np.ndarray:
        """The units of ``member`` with a weight left in every one of its tensors."""
        keep = None
        for t in member.tensors:
            mask = self.session.start_masks[t].reshape(self.plan.units[t], -1).any(dim=1).cpu().numpy()
            keep = mask if keep is None else keep & mask
        return member.start + np.flatnonzero(keep[member.start:member.stop])

    # ----------------------------------------------------------------- a round
    def round(self, r: int) -> None:
        session, criterion = self.session, self.criterion
        state = session.state
        state.round = r
        state.keeps = [(tuple(group), keep[r]) for group, keep in zip(self.fast, self.fast_keep)]
        if criterion.revives:
            self._revive(r)
        before = [self.alive.live(t) for t in range(len(session.targets))]

        result, units = None, []
        if self._streams(state):
            result = self._streamed_round(r, before)
        if result is None:
            scores = session.scores()
            # After scoring: a criterion may have promoted the copy itself (SynFlow does
            # when its flow leaves the dtype's range), and then nothing is left to widen.
            widen = criterion.wide_range and state.can_promote
            units, outside = self._unit_scores(scores)
            result = self._rank(scores, before, r, hold=widen)
            if widen and (result.held or outside) and state.promote():
                # A score left the normal range of the model's dtype: this round again in float64.
                scores = session.scores()
                units, outside = self._unit_scores(scores)
                result = self._rank(scores, before, r, hold=False)
            self._check(scores, units, result)
        if r == 0:
            zero = [n > 0 and not nz for n, nz in zip(before, result.nonzero)]
            for m, values in zip(self.members, units):
                for t in m.tensors:
                    zero[t] = values.size > 0 and not values.any()
            session.warn_zero_flow(zero)
        with torch.no_grad():
            for p, pruned in zip(state.params, result.pruned):
                if pruned is not None and pruned.size:
                    p.data.reshape(-1).index_fill_(0, torch.from_numpy(pruned).to(p.device), 0)
        self._prune_units(r, units)

    def _counts(self, before: list[int], r: int) -> list[int]:
        """What each kernel-ranked group loses in round ``r`` on its schedule (before bounds)."""
        return [sum(before[t] for t in group) - keep[r] for group, keep in zip(self.fast, self.fast_keep)]

    def _zero_views(self) -> list[np.ndarray | None]:
        """Per target, the numpy view of the copy's tensor in which the kernels zero the
        weights they prune (None: not ranked here, a criterion that revives, or a tensor
        numpy cannot share: its positions are recorded and zeroed through torch)."""
        params = self.session.state.params
        return [None if self.criterion.revives or t not in self.on_kernels else _shared_numpy(p)
                for t, p in enumerate(params)]

    def _streams(self, state) -> bool:
        """Whether this round takes each gradient as the backward pass produces it
        (:meth:`_streamed_round`): a :class:`~synflow_plugin.criteria.GradientCriterion`
        whose every group is ranked by the kernels without bounds, on CPU tensors of
        one float dtype."""
        if not self.streaming:
            return False
        dtypes = {state.params[t].dtype for t in self.on_kernels}
        return (len(dtypes) == 1 and dtypes <= {torch.float32, torch.float64}
                and all(state.params[t].device.type == "cpu" for t in self.on_kernels))

    def _streamed_round(self, r: int, before: list[int]) -> Round | None:
        """The round with each target's scores ranked while its gradient is fresh, and
        the gradient freed then (:meth:`ScoringSession.stream`,
        :meth:`Survivors.prune_streamed`): a round holds one large gradient, or a batch
        of small ones, at a time instead of all of them. None, with nothing pruned,
        when a score is NaN or out of its dtype's range: the round is then scored again
        the usual way, which promotes or reports it."""
        session, criterion = self.session, self.criterion
        state = session.state

        def stream(visit) -> None:
            def take(t: int, gradient: torch.Tensor) -> None:
                weight = _shared_numpy(state.params[t]) if criterion.times_weight else None
                visit(t, _as_numpy(gradient), weight)

            for t in session.stream(take):  # no gradient reached these: every score is zero
                param = state.params[t]
                take(t, torch.zeros_like(param))

        # Held back on a NaN score, and, for scores that can leave the dtype's range, on
        # one outside it: the usual way then promotes the copy, or raises, or warns. The
        # views to zero are taken after the passes: the objective may have promoted the copy.
        result = self.alive.prune_streamed(stream, criterion.ranks_magnitude, self.fast, self._counts(before, r),
                                           zero_after=self._zero_views,
                                           record=[False] * len(before), seed=state.round,
                                           hold_outside=criterion.wide_range)
        if not result.held:
            return result
        if not state.can_promote:
            self.streaming = False  # out-of-range scores would be scored twice in every round
        return None

    def _revive(self, r: int) -> None:
        """Criteria that revive: every candidate is ranked again, the survivors with
        their initial values and the rest zero."""
        state = self.session.state
        if r > 0:
            with torch.no_grad():
                for t, (p, theta0) in enumerate(zip(state.params, state.initial)):
                    if t in self.on_kernels:
                        index = torch.from_numpy(self.alive.positions(t)).to(p.device)
                        flat = p.data.reshape(-1)
                        flat.zero_()
                        flat.index_copy_(0, index, theta0.reshape(-1).index_select(0, index))
                    elif any(t in m.tensors for m in self.members):
                        keep = _unit_mask(self._unit_flags(t), self.plan.units[t], p.shape, p.device)
                        p.data.copy_(torch.where(keep, theta0, torch.zeros((), dtype=p.dtype, device=p.device)))
        self.alive.reset()

    def _rank(self, scores: list[torch.Tensor], before: list[int], r: int, hold: bool):
        """The kernel-ranked groups' round; nothing is pruned (the result ``held``) when
        ``hold`` and a score is outside its dtype's normal range.

        Each group loses what its schedule says for round ``r``. A bounded group first
        prunes every member to its floor, then ranks the rest: a dry pass tells which
        members the ranking would take past their cap; those are pruned exactly to it,
        the others ranked again (a clamped threshold, as :func:`~synflow_plugin.plan.bounded_drop`).
        """
        criterion, state, fast = self.criterion, self.session.state, self.on_kernels
        dtype = np.float64 if any(s.dtype == torch.float64 for s in scores) else np.float32
        # Pruned weights are zeroed in the scored copy: in place where numpy shares its
        # memory, else (another device or dtype) through torch with the recorded positions.
        zero = self._zero_views()
        arrays = dict(
            scores=[_as_numpy(s, dtype) if t in fast else None for t, s in enumerate(scores)],
            weights=[_as_numpy(p, dtype) if criterion.times_weight and t in fast else None
                     for t, p in enumerate(state.params)],
            absolute=criterion.ranks_magnitude, zero=zero, seed=state.round,
            record=[t in fast and not criterion.revives and z is None for t, z in enumerate(zero)],
        )
        plain, bounded = [], []
        for group, count, bounds in zip(self.fast, self._counts(before, r), self.fast_bounds):
            if bounds is None:
                plain.append((group, count))
                continue
            already = [self.start_live[t] - before[t] for t in group]
            floors = [max(0, lo[r] - a) for (lo, _), a in zip(bounds, already)]
            caps = [hi - a for (_, hi), a in zip(bounds, already)]
            bounded.append((group, min(max(count, sum(floors)), sum(caps)), floors, caps))
        if not bounded:
            return self.alive.prune(groups=[g for g, _ in plain], counts=[c for _, c in plain],
                                    hold_outside=hold, **arrays)
        # One dry pass over every kernel-ranked target: the round's statistics, and its precision.
        first = self.alive.prune(groups=[g for g, _ in plain] + [g for g, *_ in bounded],
                                 counts=[c for _, c in plain] + [c for _, c, *_ in bounded],
                                 hold_outside=hold, dry_run=True, **arrays)
        if first.held:
            return first
        steps = [([g for g, _ in plain] + [[t] for g, _, floors, _ in bounded for t, f in zip(g, floors) if f],
                  [c for _, c in plain] + [f for _, _, floors, _ in bounded for f in floors if f])]
        passes = [self.alive.prune(groups=steps[0][0], counts=steps[0][1], **arrays)]
        for group, count, floors, caps in bounded:
            free = {t: cap - floor for t, floor, cap in zip(group, floors, caps)}
            rest = count - sum(floors)
            # Without floors the group's survivors are as the first pass ranked them: its
            # counts are the first trial.
            trial = first if not any(floors) else None
            while rest > 0 and free:
                if trial is None:
                    trial = self.alive.prune(groups=[list(free)], counts=[rest], dry_run=True, **arrays)
                over = {t: room for t, room in free.items() if trial.would[t] > room}
                if not over:
                    passes.append(self.alive.prune(groups=[list(free)], counts=[rest], **arrays))
                    break
                passes.append(self.alive.prune(groups=[[t] for t in over], counts=list(over.values()), **arrays))
                rest -= sum(over.values())
                free = {t: room for t, room in free.items() if t not in over}
                trial = None
        merged = [None if all(p.pruned[t] is None for p in passes) else
                  np.sort(np.concatenate([p.pruned[t] for p in passes if p.pruned[t] is not None]))
                  for t in range(len(state.params))]
        return Round(first.nan, first.nonzero, first.outside, merged)

    def _unit_scores(self, scores: list[torch.Tensor]) -> tuple[list[np.ndarray], bool]:
        """Per unit-ranked member, the scores of all its units (a tied member's averaged),
        and whether any candidate's score is outside the normal range of its dtype."""
        if not self.members:
            return [], False
        state = self.session.state
        needed = {t for m in self.members for t in m.tensors}
        ranked = self.criterion.finish(state, scores)
        per_target = {t: _units_of(ranked[t], self.plan.units[t]) for t in needed}
        values, outside = [], False
        small, big = _normal_range(scores)
        for m, alive in zip(self.members, self.units_alive):
            unit = per_target[m.tensors[0]] if len(m.tensors) == 1 else (
                sum(per_target[t] for t in m.tensors) / len(m.tensors))  # NNI averages a dependency group
            values.append(unit)
            live = np.abs(unit[alive])
            outside = outside or bool(((live > big) | ((live < small) & (live != 0))).any())
        return values, outside

    def _check(self, scores: list[torch.Tensor], units: list[np.ndarray], result) -> None:
        criterion, targets = self.criterion, self.session.targets
        bad = [targets[t].qualified_name for t, nan in enumerate(result.nan) if nan]
        bad += [targets[m.tensors[0]].qualified_name for m, v in zip(self.members, units) if np.isnan(v).any()]
        if bad:
            raise PruningError(
                f"criterion {criterion.name} gave NaN scores for '{bad[0]}' although every weight is "
                f"finite: a value computed from them overflowed in {scores[0].dtype}. Check for layers "
                "scaled far from unit size, or score a float64 copy of the model (model.double())."
            )
        if criterion.wide_range and any(result.outside):
            _check_range(self.session, self.alive, scores, result.outside)

    def _prune_units(self, r: int, units: list[np.ndarray]) -> None:
        """The unit-ranked groups' round: each group to its budget, members within bounds."""
        if not self.members:
            return
        criterion, state = self.criterion, self.session.state
        position = {id(m): k for k, m in enumerate(self.members)}
        pools = self.units_start if criterion.revives else self.units_alive
        values = [np.take(v, pool) for v, pool in zip(units, pools)]
        drops = [np.zeros(pool.size, dtype=bool) for pool in pools]
        for g, budget in zip(self.slow, self.budgets):
            index = [position[id(m)] for m in g.members]
            if g.members[0].threshold is not None:
                if r == 0:  # decided once, on the unpruned network
                    k, m = index[0], g.members[0]
                    drop = values[k] < m.threshold
                    if not m.lo <= int(drop.sum()) <= m.hi:
                        drop = drop_smallest(values[k], min(max(int(drop.sum()), m.lo), m.hi))
                    drops[k] = drop
                continue
            already = [0 if criterion.revives else self.units_start[k].size - self.units_alive[k].size
                       for k in index]
            chosen = bounded_drop(
                [values[k] for k in index],
                [m.size for m in g.members],
                [self.floors[k][r] - a for k, a in zip(index, already)],
                [m.hi - a for m, a in zip(g.members, already)],
                budget[r] - sum(a * m.size for a, m in zip(already, g.members)),
            )
            for k, drop in zip(index, chosen):
                drops[k] = drop
        for k, (m, pool, drop) in enumerate(zip(self.members, pools, drops)):
            if criterion.revives and m.threshold is not None and r > 0:
                continue  # a threshold decision stands
            self.units_alive[k] = pool[~drop]
            if not criterion.revives:
                for t in m.tensors:
                    _zero_units(state.params[t], self.plan.units[t], pool[drop])

    # ----------------------------------------------------------------- the result
    def _unit_flags(self, t: int) -> np.ndarray:
        flags = np.zeros(self.plan.units[t], dtype=bool)
        for m, alive in zip(self.members, self.units_alive):
            if t in m.tensors:
                flags[alive] = True
        return flags

    def masks(self) -> list[torch.Tensor]:
        masks = []
        in_members = {t for m in self.members for t in m.tensors}
        for t, (target, start) in enumerate(zip(self.session.targets, self.session.start_masks)):
            if t in self.on_kernels:
                mask = torch.from_numpy(self.alive.flags(t)).reshape(target.shape).to(start.device)
            elif t in in_members:
                flags = self._unit_flags(t)
                mask = _unit_mask(flags, self.plan.units[t], target.shape, start.device) & start
            else:
                mask = start.clone()
            masks.append(mask)
        return masks


# --------------------------------------------------------------------------- helpers
def _as_numpy(tensor: torch.Tensor, dtype: type | None = None) -> np.ndarray:
    """A flat float32/float64 numpy view (a copy only where needed) of ``tensor``."""
    tensor = tensor.detach()
    if dtype is not None:
        tensor = tensor.to(torch.float64 if dtype == np.float64 else torch.float32)
    elif tensor.dtype not in (torch.float32, torch.float64):
        tensor = tensor.float()
    return tensor.cpu().reshape(-1).numpy()


def _shared_numpy(tensor: torch.Tensor) -> np.ndarray | None:
    """A flat numpy array sharing ``tensor``'s memory, if numpy can hold it."""
    if tensor.device.type != "cpu" or tensor.dtype not in (torch.float32, torch.float64):
        return None
    return tensor.detach().reshape(-1).numpy()


def _units_of(score: torch.Tensor, units: int) -> np.ndarray:
    """One score per unit: the weights' own, or a channel's sum (in float64)."""
    values = _as_numpy(score)
    if units == values.size:
        return values
    return values.reshape(units, -1).sum(axis=1, dtype=np.float64)


def _normal_range(scores: list[torch.Tensor]) -> tuple[float, float]:
    return normal_range(np.float64 if any(s.dtype == torch.float64 for s in scores) else np.float32)


def _unit_mask(keep: np.ndarray, units: int, shape: torch.Size, device: torch.device) -> torch.Tensor:
    """A boolean mask shaped like the tensor from one keep flag per unit."""
    flags = torch.from_numpy(keep).to(device)
    if units == shape.numel():
        return flags.reshape(shape)
    return flags.reshape((units,) + (1,) * (len(shape) - 1)).expand(shape)


def _zero_units(param: torch.Tensor, units: int, drop: np.ndarray) -> None:
    """Zero the given units (elements, or slices along dim 0) of ``param`` in place."""
    if drop.size == 0:
        return
    index = torch.from_numpy(drop).to(param.device)
    data = param.data
    if units != data.numel():
        data.index_fill_(0, index, 0)
    elif data.is_contiguous():
        data.view(-1).index_fill_(0, index, 0)
    else:  # e.g. channels_last: no flat view, mask it instead
        keep = torch.ones(data.numel(), dtype=torch.bool, device=param.device)
        keep[index] = False
        data.masked_fill_(~keep.reshape(data.shape), 0)


def _check_range(session: ScoringSession, alive: Survivors, scores: list[torch.Tensor],
                 outside: list[int]) -> None:
    """Raise for infinite scores, warn (once per call) for scores too small to rank exactly,
    after the round was already scored in float64 (or could not be)."""
    state, criterion = session.state, session.criterion
    names = [f"'{t.qualified_name}'" for t, n in zip(state.targets, outside) if n]
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
            stacklevel=5,
        )
