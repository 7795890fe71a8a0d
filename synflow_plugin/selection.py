"""Exact selection of the weights to prune: the ``count`` smallest scores, ties broken by position.

:func:`smallest_positions` ranks one array. :class:`Survivors` runs the rounds of the
iterative loop: it holds the weights each tensor may still lose and, in each round,
scores them, prunes the smallest and zeroes them in the scored model, in one pass
over the survivors.

How a round stays at one pass. A stratified sample of the survivors' scores
brackets the threshold between ``lo`` and ``hi``. The pass then drops the entries
pruned in the previous round (compacting the survivors in place), scores the others
and notes which lie below ``lo`` (pruned for sure) and which inside the bracket
(ranked exactly afterwards, a small fraction of the survivors). If the bracket turns
out not to contain the threshold, the pass is repeated with an infinite bracket, so
the result never depends on the sample.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np

from synflow_plugin import _kernels

__all__ = ["smallest_positions", "drop_smallest", "Survivors"]

_SAMPLE = 1 << 14
_MAX_SPAN = 2**31 - 1  # offsets in a segment are int32


# --------------------------------------------------------------------------- one array
def smallest_positions(values: np.ndarray, count: int) -> np.ndarray:
    """Sorted positions of the ``count`` smallest ``values``; among equal values the
    earliest positions come first. Exact, whatever the ties.

    A random sample first brackets the threshold, so that only the values on the
    short side of it are partitioned: a few linear passes over ``values`` instead of a sort.

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
            candidates = _kernels.positions_beyond(values, bound, upper=not largest)
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


# --------------------------------------------------------------------------- the rounds
@dataclass(eq=False)
class _Segment:
    """A run of one tensor's survivors: int32 offsets from ``start``, ascending."""

    target: int
    start: int
    pos: np.ndarray  # pos[:n] in use; an offset < 0 was pruned in the previous round
    n: int
    live: int  # entries of pos[:n] not marked
    initial: np.ndarray | None  # the offsets the call started with, if they may come back
    below: np.ndarray | None = None  # per round: indices into pos scored below the bracket
    band: np.ndarray | None = None  # ... inside it, and their scores
    band_score: np.ndarray | None = None
    n_below: int = 0
    n_band: int = 0
    nan: int = 0
    nonzero: int = 0
    outside: int = 0

    def scan_arguments(self, score: np.ndarray, weight: np.ndarray | None, lo: float, hi: float) -> tuple:
        """The arguments of this segment's :func:`~synflow_plugin._kernels.score_passes` pass.

        ``below`` and ``band`` have room for every survivor, but a pass writes only the
        entries it finds, from the start: the pages past them are never touched, so they
        take address space, not memory."""
        if self.band_score is None or self.band_score.dtype != score.dtype:
            size = self.pos.size
            self.below, self.band = np.empty(size, np.int32), np.empty(size, np.int32)
            self.band_score = np.empty(size, score.dtype)
        return (self.pos, self.n, score[self.start:], None if weight is None else weight[self.start:],
                lo, hi, self.below, self.band, self.band_score)


@dataclass
class Round:
    """What one round saw, per target."""

    #: NaN scores among the survivors (nothing was pruned if there were any)
    nan: list[int]
    #: non-zero scores among the survivors
    nonzero: list[int]
    #: survivors' scores outside the normal range of their dtype
    #: (:func:`~synflow_plugin._kernels.normal_range`)
    outside: list[int]
    #: flat positions pruned, for the targets asked for in ``record``
    pruned: list[np.ndarray | None]
    #: whether the round was held back unpruned (see ``Survivors.prune(hold_outside=...)``)
    held: bool = False
    #: per target, how many survivors the call prunes (or, with ``dry_run``, would prune)
    would: list[int] | None = None


class Survivors:
    """The weights each target may still lose, over the rounds of one pruning call.

    Args:
        positions: per target, the ascending flat positions the call may prune (an int32
            array starting at 0 is taken over as it is, not copied).
        revivable: keep the starting positions for :meth:`reset` (criteria that revive).
        threads: the scoring passes run on this many threads of torch's own OpenMP
            team, where there is one (see :func:`~synflow_plugin._kernels.score_passes`).
    """

    def __init__(self, positions: Sequence[np.ndarray], revivable: bool = False, threads: int = 1) -> None:
        self.threads = threads
        self._by_target = [self._split(t, np.asarray(p), revivable) for t, p in enumerate(positions)]

    @staticmethod
    def _split(target: int, positions: np.ndarray, revivable: bool) -> list[_Segment]:
        """Segments whose offsets fit in int32 (one per tensor below 2**31 weights)."""
        segments, a = [], 0
        while a < positions.size:
            b = a + int(np.searchsorted(positions[a:], int(positions[a]) + _MAX_SPAN))
            if a == 0 and b == positions.size and positions.dtype == np.int32 and positions[0] == 0:
                offsets = positions  # already the offsets: taken over, not copied
            else:
                offsets = np.subtract(positions[a:b], positions[a], out=np.empty(b - a, np.int32), casting="unsafe")
            segments.append(_Segment(target, int(positions[a]), offsets, offsets.size, offsets.size,
                                     offsets.copy() if revivable else None))
            a = b
        return segments

    # ----------------------------------------------------------------- queries
    def live(self, target: int) -> int:
        """How many weights of ``target`` survive."""
        return sum(s.live for s in self._by_target[target])

    def positions(self, target: int) -> np.ndarray:
        """The flat positions (int64, ascending) of ``target``'s survivors."""
        parts = [s.start + s.pos[: s.n][s.pos[: s.n] >= 0].astype(np.int64) for s in self._by_target[target]]
        return np.concatenate(parts) if parts else np.empty(0, dtype=np.int64)

    def reset(self) -> None:
        """Back to the positions the call started with (needs ``revivable=True``)."""
        for s in (s for segments in self._by_target for s in segments):
            s.pos[:] = s.initial
            s.n = s.live = s.initial.size

    # ----------------------------------------------------------------- a round
    def prune(
        self,
        scores: Sequence[np.ndarray],
        weights: Sequence[np.ndarray | None],
        absolute: bool,
        groups: Sequence[Sequence[int]],
        counts: Sequence[int],
        zero: Sequence[np.ndarray | None],
        record: Sequence[bool],
        seed: int = 0,
        hold_outside: bool = False,
        dry_run: bool = False,
    ) -> Round:
        """Prune the ``counts[g]`` smallest scores among the survivors of each group of targets.

        A weight's score is ``scores[t][p]``, times ``weights[t][p]`` where given, in
        absolute value if ``absolute`` (flat arrays of one dtype per target). The pruned
        positions of target ``t`` are set to zero in ``zero[t]`` where given, and
        returned where ``record[t]``. Ties: the earliest (target, position) goes first.
        Nothing is pruned when a score is NaN (see :attr:`Round.nan`), nor, with
        ``hold_outside``, when a score lies outside its dtype's normal range: the caller
        can then score the round again in a wider dtype and call again. With ``dry_run``
        nothing is pruned either, and :attr:`Round.would` says how many survivors of each
        target the call would prune (a bounded ranking fixes the targets over their bound
        and ranks the rest again).
        """
        members = [[s for t in group for s in self._by_target[t]] for group in groups]
        in_call = {s for segments in members for s in segments}
        brackets = [self._bracket(segments, count, scores, weights, absolute, seed)
                    for segments, count in zip(members, counts)]
        self._scan([(s, b) for segments, b in zip(members, brackets) for s in segments], scores, weights, absolute)
        chosen: dict[_Segment, np.ndarray] = {}
        for segments, count in zip(members, counts):
            below = sum(s.n_below for s in segments)
            if not below <= count <= below + sum(s.n_band for s in segments):
                # The sample missed: every survivor goes into the band.
                self._scan([(s, (-math.inf, math.inf)) for s in segments], scores, weights, absolute)
                below = 0
            chosen.update(self._choose(segments, count - below))

        # Per target, over the segments this call scanned (the others are left as they are).
        scanned = [[s for s in segments if s in in_call] for segments in self._by_target]
        nan, nonzero, outside = ([sum(getattr(s, stat) for s in segments) for segments in scanned]
                                 for stat in ("nan", "nonzero", "outside"))
        pruned: list[np.ndarray | None] = [None] * len(self._by_target)
        would = [sum(s.n_below + (chosen[s].size if s in chosen else 0) for s in segments) for segments in scanned]
        if any(nan) or (hold_outside and any(outside)):
            return Round(nan, nonzero, outside, pruned, held=True, would=would)
        if dry_run:
            return Round(nan, nonzero, outside, pruned, would=would)
        drops = []
        for t, segments in enumerate(scanned):
            parts = []
            for s in segments:
                index = s.below[: s.n_below]
                if s in chosen:
                    index = np.concatenate((index, chosen[s]))
                if record[t]:
                    parts.append(s.start + s.pos[index].astype(np.int64))
                drops.append((s.pos, index, None if zero[t] is None else zero[t][s.start:]))
                s.live -= index.size
            if record[t]:
                pruned[t] = np.sort(np.concatenate(parts)) if parts else np.empty(0, dtype=np.int64)
        _kernels.drop_many(drops, self.threads)
        return Round(nan, nonzero, outside, pruned, would=would)

    def _scan(self, work: list[tuple[_Segment, tuple[float, float]]], scores, weights, absolute) -> None:
        """One scoring pass over each segment of ``work``, with its bracket ``(lo, hi)``."""
        results = _kernels.score_passes(
            [s.scan_arguments(scores[s.target], weights[s.target], lo, hi) for s, (lo, hi) in work],
            absolute, self.threads)
        for (s, _), (n, s.n_below, s.n_band, s.nan, s.nonzero, s.outside) in zip(work, results):
            s.n = s.live = n

    def _bracket(self, segments, count, scores, weights, absolute, seed) -> tuple[float, float]:
        """Bounds ``lo <= threshold <= hi`` of the ``count``-th smallest score, from a sample."""
        live = sum(s.live for s in segments)
        if count <= 0:
            return -math.inf, -math.inf
        if live <= 4 * _SAMPLE:
            return -math.inf, math.inf
        draws = []
        for k, s in enumerate(segments):
            if s.live:
                out = np.empty(max(1, round(_SAMPLE * s.live / live)), dtype=scores[s.target].dtype)
                weight = weights[s.target]
                draws.append((s.pos, s.n, scores[s.target][s.start:], None if weight is None else weight[s.start:],
                              out, seed * 1_000_003 + k))
        taken = _kernels.sample_many(draws, absolute, self.threads)
        sample = np.concatenate([draw[4][:m] for draw, m in zip(draws, taken)])
        m = sample.size
        q = min(1.0, count / live)
        margin = 5.0 * math.sqrt(m * q * (1.0 - q)) + 2.0
        low, high = math.floor(q * m - margin), math.ceil(q * m + margin)
        ranks = [r for r in (low, high) if 0 <= r < m]
        if ranks:
            sample = np.partition(sample, ranks)
        return (float(sample[low]) if low >= 0 else -math.inf), (float(sample[high]) if high < m else math.inf)

    @staticmethod
    def _choose(segments: list[_Segment], count: int) -> dict[_Segment, np.ndarray]:
        """The ``count`` smallest band entries of ``segments`` (indices into each one's pos)."""
        if count <= 0:
            return {}
        sizes = [s.n_band for s in segments]
        if count >= sum(sizes):
            return {s: s.band[: s.n_band] for s in segments}
        values = np.concatenate([s.band_score[: s.n_band] for s in segments])
        picked = smallest_positions(values, count)
        bounds = np.cumsum([0] + sizes)
        cuts = np.searchsorted(picked, bounds)
        return {s: s.band[picked[a:b] - lo] for s, a, b, lo in zip(segments, cuts[:-1], cuts[1:], bounds[:-1])}
