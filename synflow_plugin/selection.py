"""Exact selection of the weights to prune: the ``count`` smallest scores, ties broken by position.

:func:`smallest_positions` ranks one array. :class:`Survivors` runs the rounds of the
iterative loop: it holds the weights each tensor may still lose and, in each round,
scores them, prunes the smallest and zeroes them in the scored model, in one pass
over the survivors, shared out over threads.

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
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np

from synflow_plugin import _kernels

__all__ = ["smallest_positions", "drop_smallest", "Survivors"]

_SAMPLE = 1 << 15
_MIN_SEGMENT = 1 << 16  # no tensor is split into segments smaller than this
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
    initial: np.ndarray  # the offsets the call started with
    pos: np.ndarray  # pos[:n] in use; an offset < 0 was pruned in the previous round
    n: int
    live: int  # entries of pos[:n] not marked
    below: np.ndarray | None = None  # per round: indices into pos scored below the bracket
    band: np.ndarray | None = None  # ... inside it, and their scores
    band_score: np.ndarray | None = None
    n_below: int = 0
    n_band: int = 0
    nan: int = 0
    nonzero: int = 0


@dataclass
class Round:
    """What one scoring pass saw, per target: NaN scores and non-zero scores."""

    nan: list[int]
    nonzero: list[int]
    #: flat positions pruned this round, for the targets asked for in ``record``
    pruned: list[np.ndarray | None]


class Survivors:
    """The weights each target may still lose, over the rounds of one pruning call.

    Args:
        positions: per target, the ascending flat positions the call may prune.
        threads: how many threads share the work of a round.

    Use as a context manager (it owns a thread pool).
    """

    def __init__(self, positions: Sequence[np.ndarray], threads: int = 1) -> None:
        self.sizes = [p.size for p in positions]
        self.threads = max(1, int(threads))
        # Tensors larger than a fair share of the work are split, so that the threads
        # can be balanced; each call on a segment costs some microseconds, so no more.
        piece = max(_MIN_SEGMENT, -(-sum(self.sizes) // (2 * self.threads)))
        self._segments = [s for t, p in enumerate(positions) for s in self._split(t, p, piece)]
        self._by_target: list[list[_Segment]] = [[] for _ in positions]
        for segment in self._segments:
            self._by_target[segment.target].append(segment)
        # Each thread takes a share of the segments, largest first to the least loaded.
        self._shares: list[list[_Segment]] = [[] for _ in range(self.threads)]
        loads = [0] * self.threads
        for segment in sorted(self._segments, key=lambda s: -s.n):
            k = loads.index(min(loads))
            self._shares[k].append(segment)
            loads[k] += segment.n
        self._shares = [share for share in self._shares if share]
        self._pool = ThreadPoolExecutor(len(self._shares) - 1) if len(self._shares) > 1 else None

    @staticmethod
    def _split(target: int, positions: np.ndarray, piece: int) -> list[_Segment]:
        segments = []
        a = 0
        while a < positions.size:  # pieces of at most `piece` entries spanning less than 2**31
            b = min(positions.size, a + piece)
            b = a + int(np.searchsorted(positions[a:b], positions[a] + _MAX_SPAN))
            offsets = (positions[a:b] - positions[a]).astype(np.int32)
            segments.append(_Segment(target, int(positions[a]), offsets, offsets.copy(), offsets.size, offsets.size))
            a = b
        return segments

    def __enter__(self) -> "Survivors":
        return self

    def __exit__(self, *exc) -> None:
        if self._pool is not None:
            self._pool.shutdown()

    def _run(self, work: Callable[[_Segment], None], segments: set[_Segment] | None = None) -> None:
        """``work(segment)`` for every segment (or those given), each thread on its share."""
        def run_share(share: list[_Segment]) -> None:
            for segment in share:
                if segments is None or segment in segments:
                    work(segment)

        if self._pool is None:
            run_share(self._segments)
            return
        futures = [self._pool.submit(run_share, share) for share in self._shares[1:]]
        run_share(self._shares[0])
        for future in futures:
            future.result()

    # ----------------------------------------------------------------- queries
    def live(self, target: int) -> int:
        """How many weights of ``target`` survive."""
        return sum(s.live for s in self._by_target[target])

    def positions(self, target: int) -> np.ndarray:
        """The flat positions (int64, ascending) of ``target``'s survivors."""
        parts = [s.start + s.pos[: s.n][s.pos[: s.n] >= 0].astype(np.int64) for s in self._by_target[target]]
        return np.concatenate(parts) if parts else np.empty(0, dtype=np.int64)

    def reset(self) -> None:
        """Back to the positions the call started with (for criteria that revive weights)."""
        for s in self._segments:
            s.pos[: s.initial.size] = s.initial
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
        record: Sequence[bool] = (),
        seed: int = 0,
    ) -> Round:
        """Prune the ``counts[g]`` smallest scores among the survivors of each group of targets.

        A weight's score is ``scores[t][p]``, times ``weights[t][p]`` where given, in
        absolute value if ``absolute`` (flat arrays of one dtype per target). The pruned
        positions of target ``t`` are set to zero in ``zero[t]`` where given, and
        returned where ``record[t]``. Ties: the earliest (target, position) goes first.
        """
        members = [[s for t in group for s in self._by_target[t]] for group in groups]
        brackets = [self._bracket(segments, count, scores, weights, absolute, seed)
                    for segments, count in zip(members, counts)]
        bracket_of = {s: b for segments, b in zip(members, brackets) for s in segments}

        def scan(s: _Segment) -> None:
            if s.band is None or s.band_score.dtype != scores[s.target].dtype:
                s.below = np.empty(s.initial.size, dtype=np.int32)
                s.band = np.empty(s.initial.size, dtype=np.int32)
                s.band_score = np.empty(s.initial.size, dtype=scores[s.target].dtype)
            weight = weights[s.target]
            lo, hi = bracket_of[s]
            s.n, s.n_below, s.n_band, s.nan, s.nonzero = _kernels.score_pass(
                s.pos, s.n, scores[s.target][s.start:], None if weight is None else weight[s.start:],
                absolute, lo, hi, s.below, s.band, s.band_score)
            s.live = s.n

        self._run(scan, set(bracket_of))
        for segments, count in zip(members, counts):
            below = sum(s.n_below for s in segments)
            if not below <= count <= below + sum(s.n_band for s in segments):
                for s in segments:  # the sample missed: every survivor goes into the band
                    bracket_of[s] = (-math.inf, math.inf)
                self._run(scan, set(segments))

        chosen = {}
        for segments, count in zip(members, counts):
            chosen.update(self._choose(segments, count - sum(s.n_below for s in segments)))

        pruned: dict[_Segment, np.ndarray] = {}
        record = list(record) or [False] * len(self.sizes)

        def drop(s: _Segment) -> None:
            index = s.below[: s.n_below], chosen.get(s, s.below[:0])
            if record[s.target]:
                pruned[s] = np.sort(s.start + np.concatenate([s.pos[i] for i in index]).astype(np.int64))
            z = zero[s.target]
            for i in index:
                _kernels.drop(s.pos, i, None if z is None else z[s.start:])
                s.live -= i.size

        self._run(drop, set(bracket_of))
        return Round(
            nan=[sum(s.nan for s in segs) for segs in self._by_target],
            nonzero=[sum(s.nonzero for s in segs) for segs in self._by_target],
            pruned=[np.concatenate([pruned[s] for s in segs]) if record[t] else None
                    for t, segs in enumerate(self._by_target)],
        )

    def _bracket(self, segments, count, scores, weights, absolute, seed) -> tuple[float, float]:
        """Bounds ``lo <= threshold <= hi`` of the ``count``-th smallest score, from a sample."""
        live = sum(s.live for s in segments)
        if count <= 0:
            return -math.inf, -math.inf
        if live <= 4 * _SAMPLE:
            return -math.inf, math.inf
        dtype = scores[segments[0].target].dtype
        sizes = [max(1, round(_SAMPLE * s.live / live)) if s.live else 0 for s in segments]
        sample = np.empty(sum(sizes), dtype=dtype)
        offsets = np.cumsum([0] + sizes)
        taken = {}

        def draw(s: _Segment) -> None:
            k = segments.index(s)
            weight = weights[s.target]
            taken[k] = _kernels.sample_scores(
                s.pos, s.n, scores[s.target][s.start:], None if weight is None else weight[s.start:],
                absolute, sample[offsets[k]: offsets[k + 1]], seed + k)

        self._run(draw, set(segments))
        sample = np.concatenate([sample[offsets[k]: offsets[k] + taken[k]] for k in range(len(segments))])
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
