"""What a prune asks for, as one structure every host translates into: a :class:`Plan`.

A plan splits each target tensor into *units*: single weights, or output channels
(slices along dim 0). Units are pruned in *members*: the units of one tensor, a range
of them, or the units several tied tensors share (a dependency group: their unit
scores are averaged and a unit is pruned in all of them). Members are pruned in
*groups*, each to one budget of weights:

- ``scope="global"`` is one group holding every tensor (the paper);
- ``scope="local"`` and ``"erk"`` are one group per tensor;
- NNI's config_list gives any mix: global groups, per-tensor ratios, min/max bounds
  (``lo`` / ``hi``), thresholds, channel units, dependency groups.

:func:`synflow_plugin.masking.run_plan` runs every plan in one loop. This module holds
the plan and the vectorised ranking of units under bounds; single weights without
bounds are ranked by the compiled kernels of :mod:`synflow_plugin.selection`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from synflow_plugin.selection import drop_smallest

__all__ = ["Member", "Group", "Plan", "drop_prefix", "bounded_drop"]


@dataclass
class Member:
    """Units ranked as one block.

    Attributes:
        tensors: indices of the plan's targets; several are tied (one mask for all).
        start, stop: the block's units ``[start, stop)`` of those tensors.
        lo, hi: fewest and most units of the block this prune removes (of the units that
            are still candidates when the prune starts).
        size: weights one unit holds (what pruning it costs the group's budget).
        threshold: units scoring below it are pruned in the first round, then ``lo`` /
            ``hi`` apply (NNI's ``sparse_threshold``); such a member takes no budget.
    """

    tensors: tuple[int, ...]
    start: int
    stop: int
    size: int = 1
    lo: int = 0
    hi: int | None = None
    threshold: float | None = None

    def __post_init__(self) -> None:
        if self.hi is None:
            self.hi = self.units

    @property
    def units(self) -> int:
        return self.stop - self.start

    @property
    def bounded(self) -> bool:
        return self.lo > 0 or self.hi < self.units


@dataclass
class Group:
    """Members pruned to one budget: ``budget`` weights removed by the end of the prune."""

    label: str
    members: list[Member]
    budget: int

    @property
    def cost(self) -> int:
        return sum(m.units * m.size for m in self.members)


@dataclass
class Plan:
    """The units of every target and the groups that prune them.

    Attributes:
        units: per target, its number of units: ``numel`` for single weights, ``shape[0]``
            for output channels.
        groups: the groups; every target is in at most one member.
    """

    units: list[int]
    groups: list[Group] = field(default_factory=list)

    def members(self) -> list[Member]:
        return [m for g in self.groups for m in g.members]

    @property
    def empty(self) -> bool:
        """Nothing to prune: no budget, no floor, no threshold."""
        return all(g.budget == 0 and all(m.lo == 0 and m.threshold is None for m in g.members)
                   for g in self.groups)


def drop_prefix(values: list[np.ndarray], sizes: list[int], budget: int) -> list[np.ndarray]:
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


def bounded_drop(values: list[np.ndarray], sizes: list[int], lo: list[int], hi: list[int],
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
        trial = dict(zip(free, drop_prefix([values[i] for i in free], [sizes[i] for i in free], rest)))
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
